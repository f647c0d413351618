"""What the installed tools can read: the source model's IR version and opsets against onnx and
ONNX Runtime, its graph inputs and outputs against what a TensorRT network can take, and a
SavedModel's `source.opset` against tf2onnx.

Checked by the source stage before anything else runs on the model, so a model ONNX Runtime cannot
load is refused there (exit 4) instead of failing validation, and `--no-validate` cannot build a plan
from it. ONNX Runtime has no API for its limits; they are probed once per process by loading a
one-node model stamped with the source model's IR version and opsets (milliseconds). The TensorRT /
TensorRT-RTX ONNX parser reads any IR version and opset and decides per node, so there is no
backend limit to check up front.
"""
from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
from pathlib import Path

import onnx

from trtpipe.errors import SourceError

_STD = ("", "ai.onnx")


def _domain_name(domain: str) -> str:
    return "ai.onnx" if domain in _STD else domain


def check_versions(model: onnx.ModelProto, where: str, what: str = "the model") -> None:
    """Refuse a model whose IR version or opsets the installed onnx or ONNX Runtime cannot read.

    Limits: onnx's `IR_VERSION` and its opset per domain (`onnx.defs` schema version map);
    ONNX Runtime's (when installed; validation and constant folding run the model in it), probed.
    Custom domains (TensorRT plugins, tf2onnx's) are not checked: no schema knows them.

    Args:
        model: the source model (its graph is not read).
        where: the recipe location for messages ("recipe.yaml:3:9: source.onnx").
        what: how messages name the model.

    Raises:
        SourceError: the IR version or an opset is newer than onnx or ONNX Runtime support;
            the message names both numbers and the installed version.
    """
    problems = []
    if model.ir_version > onnx.IR_VERSION:
        problems.append((f"IR version {model.ir_version} is newer than onnx {onnx.__version__} (installed) reads "
                         f"(at most IR {onnx.IR_VERSION})", _fix("ir", onnx.IR_VERSION)))
    known = onnx.defs.C.schema_version_map()
    for imp in model.opset_import:
        dom = "" if imp.domain in _STD else imp.domain
        if dom in known and imp.version > known[dom][1]:
            problems.append((f"{_domain_name(dom)} opset {imp.version} is newer than onnx {onnx.__version__} "
                             f"(installed) defines (at most {known[dom][1]})", _fix("opset", known[dom][1])))
    if not problems:
        problems = _ort_problems(model)
    if problems:
        raise SourceError(f"{where}: {what} cannot be read by the installed tools: "
                          + "; ".join(text for text, _ in problems),
                          hint="; ".join(dict.fromkeys(fix for _, fix in problems)) + ", or install newer "
                               "onnx / onnxruntime")


def _fix(kind: str, top: int | None) -> str:
    """The way out of a too-new IR version or opset, naming the highest one that works."""
    n = top if top else "N"
    if kind == "ir":
        return (f"save the model with IR version {n} (model.ir_version = {n}; onnx.checker then says "
                f"whether it uses anything newer)")
    return f"convert the model to opset {n} (onnx.version_converter.convert_version(model, {n}))"


def _probe_model(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> bytes:
    """One Identity node stamped with `ir_version` and `opsets` (the default domain added at 13
    when missing): what ONNX Runtime checks when it loads a model."""
    imports = dict(opsets)
    imports.setdefault("", 13)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in imports.items()])
    model.ir_version = ir_version
    return model.SerializeToString()


@functools.lru_cache(maxsize=256)
def _ort_loads(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str | None:
    """None when ONNX Runtime loads a probe model with this IR version and these opsets, else its error."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(_probe_model(ir_version, opsets), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidGraph types
        return str(err).strip() or type(err).__name__
    return None


def _highest(ok, low: int, high: int) -> int | None:
    """The highest v in [low, high] with ok(v), assuming ok holds up to some point (binary search)."""
    if not ok(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ok(mid) else (low, mid - 1)
    return low


def _ort_problems(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """What ONNX Runtime (when installed) cannot load about the model's IR version and opsets:
    [(problem, way out)]."""
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort
    known = set(onnx.defs.C.schema_version_map())
    opsets = tuple(sorted(("" if i.domain in _STD else i.domain, i.version) for i in model.opset_import
                          if ("" if i.domain in _STD else i.domain) in known))
    if _ort_loads(model.ir_version, opsets) is None:
        return []
    label = f"ONNX Runtime {ort.__version__} (installed; validation runs the model in it)"
    problems = []
    if _ort_loads(model.ir_version, ()) is not None:
        top = _highest(lambda v: _ort_loads(v, ()) is None, 3, model.ir_version)
        problems.append((f"IR version {model.ir_version} is newer than {label} reads"
                         + (f" (at most IR {top})" if top else ""), _fix("ir", top)))
    safe_ir = min(model.ir_version, 8)
    for dom, version in opsets:
        if _ort_loads(safe_ir, ((dom, version),)) is not None:
            top = _highest(lambda v, d=dom: _ort_loads(safe_ir, ((d, v),)) is None, 1, version)
            problems.append((f"{_domain_name(dom)} opset {version} is newer than {label} supports"
                             + (f" (at most {top})" if top else ""), _fix("opset", top)))
    if not problems:  # the combination fails, each part loads: say what ORT said
        said = (_ort_loads(model.ir_version, opsets) or "?").splitlines()[0]
        problems.append((f"{label} cannot load it: {said}", "re-export the model for an older onnx release"))
    return problems


# ------------------------------------------------------------------------------------------ tf2onnx

@functools.lru_cache(maxsize=1)
def tf2onnx_max_opset() -> tuple[str, int] | None:
    """(tf2onnx version, highest opset it converts to), read from its `constants.py` without
    importing tf2onnx (which imports TensorFlow: seconds); None when tf2onnx is not installed or
    the table is not found."""
    spec = importlib.util.find_spec("tf2onnx")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    try:
        tree = ast.parse(path.read_text())
        version = importlib.metadata.version("tf2onnx")
    except (OSError, SyntaxError, importlib.metadata.PackageNotFoundError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "OPSET_TO_IR_VERSION" for t in node.targets):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                return None
            return version, max(table)
    return None


def check_tf2onnx_opset(opset: int, where: str) -> None:
    """Refuse a `source.opset` the installed tf2onnx cannot convert to (tf2onnx 1.17: at most 18),
    before TensorFlow is imported.

    Raises:
        SourceError: naming the opset, tf2onnx's version and its highest opset.
    """
    limit = tf2onnx_max_opset()
    if limit and opset > limit[1]:
        raise SourceError(f"{where}: opset {opset} is newer than tf2onnx {limit[0]} (installed) converts to "
                          f"(at most opset {limit[1]})",
                          hint=f"set source.opset to {limit[1]} or lower, or install a tf2onnx that supports "
                               f"opset {opset}")


# ------------------------------------------------------------------------------------ graph I/O

def type_name(type_proto: onnx.TypeProto) -> str:
    """An ONNX type as the spec writes it: `tensor(float)`, `seq(tensor(int64))`, `optional(...)`."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        name = onnx.TensorProto.DataType.Name(elem).lower() if elem else "undefined"
        return f"{'sparse_tensor' if kind == 'sparse_tensor_type' else 'tensor'}({name})"
    if kind == "sequence_type":
        return f"seq({type_name(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({type_name(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key}, {type_name(type_proto.map_type.value_type)})"
    return kind or "no type"


def _optional_values(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """Optional-typed values inside the model (subgraph inputs/outputs, value_info): TensorRT has
    no optional type, and onnx-graphsurgeon (what passes edit the graph with) cannot write them
    back (its exporter fails on them)."""
    found = []

    def walk(graph, inside):
        values = [("value", v) for v in graph.value_info]
        if inside:
            values += [(f"{inside} input", v) for v in graph.input] + [(f"{inside} output", v) for v in graph.output]
        for role, v in values:
            if "optional(" in type_name(v.type):
                found.append((role, v.name, type_name(v.type)))
        for node in graph.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    node_name = f"{node.op_type} node '{node.name}'" if node.name else f"the {node.op_type} node"
                    walk(sub, f"{node_name}'s {attr.name}")
    walk(model.graph, None)
    return found


def check_io_types(model: onnx.ModelProto, where: str, what: str = "the model") -> None:
    """Refuse graph inputs and outputs that are not plain tensors (sequences, optionals, maps,
    sparse tensors, tensors without an element type): a TensorRT network takes and produces
    dense tensors only (TensorRT's ONNX parser: ITensor inputs and outputs), and validation can
    neither make data for them nor compare them. Weights IR < 4 models list as inputs are skipped.
    Optional-typed values inside (an If/Loop body's outputs) are refused too: TensorRT has no
    optional type, and passes could not write the graph back.

    Raises:
        SourceError: naming every such input/output and its type.
    """
    weights = {t.name for t in model.graph.initializer}
    bad = [(role, vi.name, type_name(vi.type))
           for role, values in (("input", model.graph.input), ("output", model.graph.output))
           for vi in values if vi.name not in weights
           and not (vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.elem_type)]
    bad += _optional_values(model)
    if bad:
        listed = ", ".join(f"{role} '{name}' is {kind}" for role, name, kind in bad)
        raise SourceError(f"{where}: {what} has values of types a TensorRT network cannot have: {listed}; "
                          f"TensorRT networks take and produce dense tensors only, and have no optional type",
                          hint="export the model with tensor inputs and outputs and without Optional values "
                               "(e.g. stack a sequence into one tensor; make an optional input a required one)")
