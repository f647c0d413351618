"""TensorRT plugin nodes in ONNX graphs: writing them, and checking their attributes against the
plugin creator that will receive them.

TensorRT's ONNX parser imports an op it does not know as a plugin: the op type is the creator's
name, the node's `plugin_version` / `plugin_namespace` attributes pick the version and namespace,
and every other attribute whose name is one of the creator's fields becomes that field
(onnx-tensorrt `loadFields`). The attribute's ONNX type decides the field type the creator
receives: INT/INTS -> INT32, FLOAT/FLOATS -> FLOAT32, STRING -> CHAR, a TENSOR attribute -> its
element type (FLOAT32, FLOAT16, FLOAT64, BF16, INT8, INT16, INT32). Attributes that name no field
are dropped without a word, and a field of another type reaches the creator as raw bytes of the
wrong type; hence `check_attrs` and `attribute_values` here, which both follow the creator's
field collection (`IPluginCreator*.field_names`: name, type, length). Where no creator is known
(no backend installed), values are written by their Python type (int -> INT, float -> FLOAT,
str -> STRING, lists -> INTS/FLOATS/STRINGS).

Lengths: a creator field of length n > 1 takes exactly n values (GridAnchor_TRT `variance`: 4).
Creators declare 1 (or 0) for fields that take arrays as well (GridAnchor_TRT `aspectRatios`,
`featureMapShapes`), so a length of 0 or 1 is not enforced.

The registry lookup itself (backend, `build.plugins` libraries) is in
trtpipe/stages/build/plugin_fields.py; passes reach it through `PassContext.plugin_creator`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from trtpipe.errors import PassError, RecipeError, suggest

DEFAULT_DOMAIN = "trt.plugins"  # any non-standard domain: the parser dispatches on the op type
RESERVED = ("plugin_version", "plugin_namespace")  # written from the node's version / namespace

# PluginFieldType name -> (kind of value, how the attribute is written: "scalar" INT/FLOAT/STRING(S)
# or the numpy dtype of a TENSOR attribute). Types missing here cannot be filled from ONNX.
_WRITABLE = {
    "INT32": ("int", "scalar"), "FLOAT32": ("float", "scalar"), "CHAR": ("str", "scalar"),
    "INT8": ("int", np.int8), "INT16": ("int", np.int16), "FLOAT16": ("float", np.float16),
    "FLOAT64": ("float", np.float64), "BF16": ("float", "bfloat16"),
}
_KIND_TEXT = {"int": "an integer", "float": "a number", "str": "a string"}


@dataclasses.dataclass(frozen=True)
class PluginFieldSpec:
    """One field of a plugin creator's field collection."""

    name: str
    type: str     # PluginFieldType member name: INT32, FLOAT32, CHAR, ...
    length: int   # number of values the creator declares (0/1: not enforced, see the module docstring)

    @property
    def described(self) -> str:
        """'spatial_scale FLOAT32' or 'variance FLOAT32[4]'."""
        return f"{self.name} {self.type}" + (f"[{self.length}]" if self.length > 1 else "")


@dataclasses.dataclass(frozen=True)
class PluginCreatorSpec:
    """A plugin creator as a registry lists it; `fields` is None when the creator lists none it
    can be asked about (its attributes are then not checked)."""

    name: str
    version: str
    namespace: str
    fields: tuple[PluginFieldSpec, ...] | None
    origin: str = ""       # "tensorrt_rtx 1.7.1" or the library that registered it

    @property
    def label(self) -> str:
        """'ROIAlign_TRT v2' (with the namespace when it has one)."""
        return f"{self.name} v{self.version}" + (f" (namespace '{self.namespace}')" if self.namespace else "")

    def field(self, name: str) -> PluginFieldSpec | None:
        """The field called `name`, or None."""
        return next((f for f in self.fields or () if f.name == name), None)


def _kind_of(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def _fits(kind, want):
    return kind == want or (want == "float" and kind == "int")  # a bool is no number (YAML `true`)


# PluginFieldType -> (lowest, highest) value it holds: integers by their width (numpy.iinfo), floats
# by their largest finite value (numpy.finfo; BF16 shares FLOAT32's exponent range). A value outside
# would wrap around or become inf when written; NaN and inf are refused for every float type.
_RANGE = {name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max)) for name, dt in (
    ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
    ("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64))}
_RANGE.update({name: (-float(np.finfo(dt).max), float(np.finfo(dt).max)) for name, dt in (
    ("FLOAT16", np.float16), ("FLOAT32", np.float32), ("FLOAT64", np.float64), ("BF16", np.float32))})


def _range_problem(field_type, values):
    """Why a value of `values` does not fit `field_type`'s range (see _RANGE), or None."""
    if field_type not in _RANGE:
        return None
    low, high = _RANGE[field_type]
    for v in values:
        if isinstance(v, (float, np.floating)) and not np.isfinite(v):
            return f"got {v!r}: a {field_type} field takes finite numbers only"
        if not low <= v <= high:
            return f"got {v!r}, outside the {field_type} range {low:g} to {high:g}" if isinstance(low, float) \
                else f"got {v!r}, outside the {field_type} range {low} to {high}"
    return None


def check_attrs(attrs: Mapping[str, Any], creator: PluginCreatorSpec) -> tuple[list[tuple[str, str]], list[str]]:
    """Check a plugin node's attributes against its creator's fields, before anything runs.

    Args:
        attrs: {field name: value} as a recipe writes them (numbers, strings, lists of them),
            without plugin_version / plugin_namespace.
        creator: the creator the node will be handed to.

    Returns:
        (problems, warnings). problems: [(attribute name, message)] for names the creator has no
        field for (with a did-you-mean), values of the wrong type (a bool is no number), values
        outside the field type's range (INT32: -2**31..2**31-1; floats: finite, within the
        type's largest value; numpy.iinfo / finfo), lists of the wrong length, and
        fields the ONNX parser cannot fill (DIMS, INT64, ...); warnings: fields left unset (the
        creator's default applies; if it has none, creating the plugin fails in the build), and
        lists given to fields that declare length 1.
    """
    problems: list[tuple[str, str]] = []
    many: list[str] = []
    if creator.fields is None:
        return problems, [f"{creator.label} does not list its fields: its attributes are not checked"]
    names = [f.name for f in creator.fields]
    listed = ", ".join(f.described for f in creator.fields) or "none"
    for key, value in attrs.items():
        if key in RESERVED:
            problems.append((key, f"'{key}' is written from the pass's "
                                  f"{'version' if key == 'plugin_version' else 'namespace'} parameter; "
                                  f"remove it from attrs"))
            continue
        spec = creator.field(key)
        if spec is None:
            problems.append((key, f"{creator.label} has no field '{key}'{suggest(key, names)}; "
                                  f"its fields: {listed}"))
            continue
        why = _value_problem(spec, value)
        if why:
            problems.append((key, f"field '{key}' of {creator.label} is {spec.type}"
                                  f"{f'[{spec.length}]' if spec.length > 1 else ''}: {why}"))
        elif spec.length == 1 and isinstance(value, (list, tuple)) and len(value) > 1:
            many.append(key)
    unset = [f.name for f in creator.fields if f.name not in attrs]
    warnings = [f"{creator.label}: field(s) not set, the creator's defaults apply (if it has none, creating "
                f"the plugin fails in the build): {', '.join(unset)}"] if unset else []
    warnings += [f"{creator.label}: field '{key}' declares length 1 but is given {len(attrs[key])} values; creators "
                 f"declare 1 for array fields too (GridAnchor_TRT aspectRatios), so this is not refused, but a "
                 f"scalar field reads only the first" for key in many]
    return problems, warnings


def _value_problem(spec, value):
    """Why `value` cannot be written into `spec`, or None."""
    if spec.type not in _WRITABLE:
        return (f"TensorRT's ONNX parser cannot fill a field of type {spec.type} from a node attribute "
                f"(it passes INT32, FLOAT32, CHAR and FLOAT16/FLOAT64/BF16/INT8/INT16 tensors); leave it unset")
    want = _WRITABLE[spec.type][0]
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        return "got an empty list"
    if want == "str" and isinstance(value, (list, tuple)):
        return f"expected a string, got a list {value!r}"
    bad = [v for v in values if not _fits(_kind_of(v), want)]
    if bad:
        return f"expected {_KIND_TEXT[want]}{' or a list of them' if want != 'str' else ''}, got {bad[0]!r} " \
               f"({_kind_of(bad[0])})"
    if spec.length > 1 and len(values) != spec.length:
        return f"expected {spec.length} values, got {len(values)}"
    return _range_problem(spec.type, values)


def attribute_values(attrs: Mapping[str, Any], creator: PluginCreatorSpec | None = None) -> dict[str, Any]:
    """ONNX attribute values (as onnx-graphsurgeon node attrs) that hand the creator each field
    in the type it declares: integers for INT32, floats for FLOAT32 (an integer written 1 in a
    recipe becomes 1.0), strings for CHAR, typed TENSOR attributes for FLOAT16/FLOAT64/BF16/INT8/
    INT16. Without a creator, or for a name it does not list, the Python type decides.

    Raises:
        PassError: a value cannot be written as an attribute (e.g. a mapping, or mixed types).
    """
    out = {}
    for key, value in attrs.items():
        spec = creator.field(key) if creator else None
        out[key] = _typed(key, value, spec)
    return out


def _typed(key, value, spec):
    listed = isinstance(value, (list, tuple))
    values = list(value) if listed else [value]
    if spec is not None and spec.type in _WRITABLE:
        kind, how = _WRITABLE[spec.type]
        if kind == "int":
            values = [int(v) for v in values]
        elif kind == "float":
            values = [float(v) for v in values]
        if how == "scalar":
            return values if listed else values[0]
        if how == "bfloat16":
            return onnx.helper.make_tensor(key, onnx.TensorProto.BFLOAT16, [len(values)], values)
        return numpy_helper.from_array(np.array(values, dtype=how), key)
    kinds = {_kind_of(v) for v in values}
    if kinds <= {"int", "bool"}:
        values = [int(v) for v in values]
    elif kinds <= {"int", "float", "bool"}:
        values = [float(v) for v in values]
    elif kinds != {"str"}:
        raise PassError(f"plugin attribute '{key}': {value!r} is not a number, string or list of one of them")
    return values if listed else values[0]


def add_plugin_node(graph: gs.Graph, op: str, inputs: Sequence[gs.Tensor], outputs: Sequence[gs.Variable],
                    attrs: Mapping[str, Any], *, version: str = "1", namespace: str = "",
                    domain: str = DEFAULT_DOMAIN, name: str | None = None,
                    creator: PluginCreatorSpec | None = None) -> gs.Node:
    """Append one TensorRT plugin node to `graph` (the one place plugin nodes are written).

    Args:
        graph: the graph to add to.
        op: the plugin creator's name (the node's op type), e.g. "ROIAlign_TRT".
        inputs, outputs: the node's tensors, in the plugin's order; outputs need a dtype (shape
            inference cannot know what a plugin computes).
        attrs: {field name: value}; typed as the creator's fields say (attribute_values).
        version, namespace: written as the `plugin_version` / `plugin_namespace` attributes the
            parser looks the creator up with (the namespace only when not "").
        domain: the node's ONNX domain; a non-standard one keeps onnx.checker and shape inference
            off it (TensorRT's parser ignores it).
        name: the node name (default "plugin/<op>").
        creator: the creator's spec, when known.

    Returns:
        The node.

    Raises:
        PassError: an output has no dtype, or an attribute value cannot be written.
    """
    untyped = [t.name for t in outputs if getattr(t, "dtype", None) is None]
    if untyped:
        raise PassError(f"plugin node {op}: output(s) {untyped} have no dtype; ONNX shape inference cannot "
                        f"know what a plugin computes, so give each output's dtype (and shape)")
    written = {"plugin_version": str(version)}
    if namespace:
        written["plugin_namespace"] = namespace
    written.update(attribute_values(attrs, creator))
    node = gs.Node(op, name=name or f"plugin/{op}", attrs=written, inputs=list(inputs), outputs=list(outputs),
                   domain=domain)
    graph.nodes.append(node)
    return node


# -- finding plugin nodes in a model (validation) ----------------------------------------------------

_STANDARD = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")
_ORT = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")


def is_plugin_node(node: onnx.NodeProto, local_functions: Iterable[tuple[str, str]] = ()) -> bool:
    """Whether ONNX Runtime's own kernels cannot run `node` because it is a TensorRT plugin: an op
    of a non-standard, non-ONNX-Runtime domain that is not a model-local function, or a `*_TRT` op
    in any domain."""
    domain = node.domain or ""
    if (domain, node.op_type) in set(local_functions):
        return False
    return node.op_type.endswith("_TRT") or domain not in (*_STANDARD, *_ORT)


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """An attribute's value (bytes decoded), or `default`."""
    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


class PluginAttributeError(RecipeError):
    """Plugin attributes that do not fit the creator (unknown field, wrong type or length): a recipe
    error (exit 3), located at `key_path` (relative to the pass item, e.g. ("params", "attrs", "mode"))."""

    def __init__(self, message: str, *, key_path: tuple = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key_path = tuple(key_path)


def attribute_error(problems: Sequence[tuple[str, str]], creator: PluginCreatorSpec) -> PluginAttributeError:
    """One error for check_attrs' problems, located at the first attribute's recipe key."""
    lines = [f"attrs.{key}: {msg}" for key, msg in problems]
    return PluginAttributeError("\n".join(lines), key_path=("params", "attrs", problems[0][0]),
                                hint=f"`python pipeline.py plugins {creator.name}` lists its fields")


# -- adapter steps (layout, dtype, coordinates) between the graph and a plugin -------------------------

STEP_OPS = ("transpose", "cast", "reshape", "mul", "add", "sub", "div", "matmul")
_ARITH = {"mul": "Mul", "add": "Add", "sub": "Sub", "div": "Div"}


def apply_steps(graph: gs.Graph, tensor: gs.Tensor, steps: Sequence[Mapping[str, Any]], prefix: str,
                out: gs.Variable | None = None) -> gs.Tensor:
    """Append standard ONNX nodes computing `steps` on `tensor`; returns the last result (`out`
    when given: the last step writes into it).

    Steps: {"op": "transpose", "perm": [...]}, {"op": "cast", "to": "<numpy dtype>"},
    {"op": "reshape", "shape": [...]}, {"op": "mul"|"add"|"sub"|"div", "value": scalar or array
    (broadcast, numpy rules)}, {"op": "matmul", "value": 2-D array} (tensor @ value).

    Raises:
        PassError: an unknown step op or a value that is not numeric.
    """
    cur = tensor
    for i, step in enumerate(steps):
        op = step.get("op")
        last = i == len(steps) - 1
        target = out if last and out is not None else gs.Variable(f"{prefix}/{op}_{i}")
        name = f"{prefix}/{op}_{i}"
        if op == "transpose":
            node = gs.Node("Transpose", name, {"perm": [int(p) for p in step["perm"]]}, [cur], [target])
        elif op == "cast":
            to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(step["to"]))
            node = gs.Node("Cast", name, {"to": to}, [cur], [target])
        elif op == "reshape":
            shape = gs.Constant(f"{name}/shape", np.array(step["shape"], dtype=np.int64))
            node = gs.Node("Reshape", name, {}, [cur, shape], [target])
        elif op in _ARITH or op == "matmul":
            dtype = np.dtype(cur.dtype) if getattr(cur, "dtype", None) is not None else np.dtype(np.float32)
            try:
                value = np.array(step["value"], dtype=dtype)
            except (TypeError, ValueError) as err:
                raise PassError(f"step {i} ({op}) of '{tensor.name}': value {step['value']!r} is not numeric: "
                                f"{err}") from err
            const = gs.Constant(f"{name}/value", value)
            node = gs.Node(_ARITH.get(op, "MatMul"), name, {}, [cur, const], [target])
        else:
            raise PassError(f"step {i} of '{tensor.name}': unknown op {op!r}{suggest(op, STEP_OPS)}; "
                            f"steps: {', '.join(STEP_OPS)}")
        graph.nodes.append(node)
        cur = target
    return cur
