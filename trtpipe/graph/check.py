"""Graph checks: the source stage's, and the one every pass output and precision rewrite gets.

`check_model` reports op types the model's opsets do not define (tf2onnx leaves TF ops it cannot
convert in place and carries on) before onnx.checker, which stops at the first, less helpfully.
`check_rewritten` is onnx.checker + strict shape inference after every pass and precision rewrite.
`relaxed_for_checker` relaxes onnx.checker for what TensorRT accepts (plugin ops, shapeless I/O).
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx

from trtpipe.errors import PassError, SourceError

_PROTO_LIMIT = 2**31 - 1            # protobuf cannot serialize more; onnx.checker then needs a path
_STD = ("", "ai.onnx")
_TF_DOMAIN = "ai.onnx.converters.tensorflow"    # tf2onnx's domain for TF ops kept as they are
_ORT_DOMAINS = ("com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc")


def opset_version(model: onnx.ModelProto, domain: str = "") -> int | None:
    """The model's opset import for `domain` ("" and "ai.onnx" are the same), None without one."""
    domains = _STD if domain in _STD else (domain,)
    return next((imp.version for imp in model.opset_import if imp.domain in domains), None)


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (Loop/If/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from all_graphs(sub)


def _nodes(model):
    return (node for g in all_graphs(model.graph) for node in g.node)


# ------------------------------------------------------------------------------ op and model checks

@functools.lru_cache(maxsize=1)
def _known_domains():
    return {*_STD, _TF_DOMAIN, *_ORT_DOMAINS, *(s.domain for s in onnx.defs.get_all_schemas())}


def _is_plugin(node):
    """TensorRT plugins: `*_TRT` ops (any domain: the TRT parser looks them up by name) or custom domains."""
    return node.op_type.endswith("_TRT") or node.domain not in _known_domains()


def _is_known(model, node, local_functions):
    dom = "" if node.domain == "ai.onnx" else node.domain
    if (dom, node.op_type) in local_functions or _is_plugin(node) or dom in _ORT_DOMAINS:
        return True     # ORT contrib ops: ONNX Runtime (validation) knows them; the TRT parser decides
    version = opset_version(model, dom)     # None: no opset import for the domain, which onnx.checker reports
    return dom != _TF_DOMAIN and (version is None or onnx.defs.has(node.op_type, version, dom))


def _check_ops(model, where, what, hint, unconverted):
    """SourceError listing op types the model's opsets do not define (plus tf2onnx's `unconverted`)."""
    local_functions = {(f.domain, f.name) for f in model.functions}
    unknown, present = {}, set()
    for node in _nodes(model):
        present.add(node.op_type)
        if not _is_known(model, node, local_functions):
            unknown.setdefault((node.domain, node.op_type), [0, node.name])[0] += 1
    for op, seen in unconverted.items():    # tf2onnx's word, for ops still in the graph
        if op in present:
            unknown.setdefault(("", op), list(seen))
    if not unknown:
        return
    opset, lines = opset_version(model), []
    for (dom, op), (count, example) in sorted(unknown.items()):
        later = next((v for v in range((opset or 0) + 1, onnx.defs.onnx_opset_version() + 1)
                      if dom in _STD and onnx.defs.has(op, v)), None)
        note = f"; ONNX defines it from opset {later}" if later else ""
        lines.append(f"    {dom + '::' if dom else ''}{op}  x{count}  (e.g. node {example!r}{note})")
    raise SourceError(f"{where}: {what} has {len(unknown)} op type(s) that ONNX opset {opset} does not define:"
                      "\n" + "\n".join(lines), hint=hint)


def check_model(model: onnx.ModelProto, path: str | Path | None, where: str, what: str, hint: str | None,
                unconverted: dict[str, list], log: Callable[[str], Any] | None = None) -> None:
    """Unknown ops first, then onnx.checker (from `path` when given: it copes with external data
    and > 2 GB), then strict shape inference on the graph's skeleton (what every pass output is
    checked with, so a broken source is not blamed on the first pass). SourceError naming `where`
    (recipe location), `what` (the model) and the check otherwise.
    `unconverted`: {op: [count, example node]} tf2onnx reported as left unconverted."""
    _check_ops(model, where, what, hint, unconverted)
    try:
        with relaxed_for_checker(model) as relaxed:
            if path and not relaxed:
                onnx.checker.check_model(path)
            elif model.ByteSize() < _PROTO_LIMIT:
                onnx.checker.check_model(model)
            elif log:
                log("source: onnx.checker skipped: model over 2 GB that needs a relaxed check")
    except (onnx.checker.ValidationError, ValueError) as err:
        raise SourceError(f"{where}: onnx.checker rejected {what}: {str(err).strip()}") from err
    # The check every pass output gets (check_rewritten): a source that fails it is the source's
    # problem, not the first pass's.
    from trtpipe.graph.types import skeleton
    light = skeleton(model)  # a copy: plugin domains get the opset import inference needs
    for domain in {n.domain for n in _nodes(light)} - {i.domain for i in light.opset_import} - set(_STD):
        light.opset_import.add(domain=domain, version=1)
    try:
        onnx.shape_inference.infer_shapes(light, strict_mode=True)
    except onnx.shape_inference.InferenceError as err:
        text = str(err).strip()
        raise SourceError(f"{where}: ONNX shape inference (strict, onnx {onnx.__version__}) rejects {what}: "
                          f"{text.splitlines()[0] if text else type(err).__name__}",
                          hint="every pass output gets this check too; fix the model's shapes or types "
                               "where the message points, and re-export it") from err


@contextlib.contextmanager
def relaxed_for_checker(model: onnx.ModelProto) -> Iterator[bool]:
    """Relax onnx.checker (in place, undone on exit; no copy of the weights) for what TensorRT and
    the ONNX IR accept and the checker does not:
    - TensorRT plugin nodes: `*_TRT` ops in the default domain, or custom domains without an opset
      import ("No Op registered for EfficientNMS_TRT"): moved to a declared plugin domain;
    - graph inputs/outputs without a `shape` (unknown rank; IR.md allows it, the checker requires
      the field: onnx/onnx#2492, #2932): given an empty one. full_check=False infers no shapes,
      so this fake rank is never used.
    The model-zoo light graphs need neither: onnx 1.23 accepts them as they are."""
    moved = [(n, n.domain) for n in _nodes(model) if _is_plugin(n) and n.domain in _STD]
    shapeless = [vi.type.tensor_type for g in all_graphs(model.graph) for vi in (*g.input, *g.output)
                 if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape")]
    n_imports = len(model.opset_import)
    for node, _ in moved:
        node.domain = "trt.plugins"
    for tensor_type in shapeless:
        tensor_type.shape.SetInParent()
    for domain in {n.domain for n in _nodes(model)} - {i.domain for i in model.opset_import} - set(_STD):
        if domain not in _known_domains():
            model.opset_import.add(domain=domain, version=1)
    try:
        yield bool(moved or shapeless or len(model.opset_import) > n_imports)
    finally:
        for node, domain in moved:
            node.domain = domain
        for tensor_type in shapeless:
            tensor_type.ClearField("shape")
        del model.opset_import[n_imports:]


def check_rewritten(model: onnx.ModelProto, what: str) -> None:
    """onnx.checker + strict shape inference on a rewritten model.

    Runs on a skeleton (large weights replaced by typed inputs): the checks need types and
    shapes, not bytes, so this is faster and also works for models over 2 GB.

    Raises:
        PassError: the graph is invalid; the message starts with `what` (e.g. the recipe line and pass).
    """
    from trtpipe.graph.types import skeleton
    light = skeleton(model)
    try:
        with relaxed_for_checker(light):
            onnx.checker.check_model(light)
        onnx.shape_inference.infer_shapes(light, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        text = str(err).strip()
        raise PassError(f"{what} produced an invalid ONNX graph: "
                        f"{text.splitlines()[0] if text else type(err).__name__}") from err
