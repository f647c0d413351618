"""Cut the graph at named tensors: they become the graph outputs and everything else goes.

The TF-OD export problem: the parser chokes on the post-processing (NonMaxSuppression, Loops,
ScatterND) behind `detection_*`, while the tensors TensorRT can handle (`raw_detection_boxes`,
`raw_detection_scores`) sit in the middle of the graph. Making them the outputs and running
graphsurgeon's cleanup drops every node that no longer feeds an output.

With `inputs` the pass extracts the subgraph between two sets of tensors: the named tensors become
the graph inputs (their producers are cut off), e.g. to skip a preprocessing Loop whose result is
fed by the caller. Tensors whose dtype/shape the graph does not record get them from ONNX shape
inference or from the recipe (`dtype`, `shape` per entry).

Records `ctx.output_map` (final output -> source tensor) and updates `ctx.input_contract` for
removed and new inputs.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.shapes import infer_shapes


def _specs(items):
    """Recipe entries (a name or {name, dtype, shape}) -> list of dicts."""
    return [{"name": it} if isinstance(it, str) else dict(it) for it in items or []]


def _require(names, tensors, what, graph):
    for name in names:
        if name not in tensors:
            current = ", ".join(t.name for t in (graph.outputs if what == "output" else graph.inputs))
            raise PassError(f"{what} '{name}' is not a tensor of the graph"
                            f"{suggest(name, list(tensors))}; expected one of its {len(tensors)} "
                            f"tensor names (current graph {what}s: {current})")


def _apply_type(t, spec, what):
    """Give t the recipe's dtype/shape; refuse to contradict what the graph already knows."""
    if isinstance(t, gs.Constant):
        raise PassError(f"{what} '{t.name}' is a constant (an initializer), not a computed tensor")
    if spec.get("dtype"):
        want = np.dtype(spec["dtype"])
        if t.dtype is not None and _dtype_name(t.dtype) != want.name:
            raise PassError(f"{what} '{t.name}' is {_dtype_name(t.dtype)} in the graph, "
                            f"but the recipe says {want.name}")
        t.dtype = want
    if spec.get("shape") is not None:
        shape = list(spec["shape"])
        if t.shape is not None and (len(t.shape) != len(shape) or any(
                isinstance(a, int) and isinstance(b, int) and a >= 0 and a != b
                for a, b in zip(t.shape, shape))):
            raise PassError(f"{what} '{t.name}' has shape {list(t.shape)} in the graph, "
                            f"but the recipe says {shape}")
        t.shape = shape
    if t.dtype is None:
        raise PassError(f"{what} '{t.name}' has no known dtype (shape inference could not derive "
                        f"it); give it in the recipe: {{name: {t.name}, dtype: float32}}")


def _dtype_name(dtype):
    try:
        return np.dtype(dtype).name
    except TypeError:  # types numpy lacks (bfloat16, float8) come as onnx TensorProto enums
        return onnx.TensorProto.DataType.Name(dtype).lower()


def _read_names(graph):
    """Names read by any node, subgraphs (Loop bodies reading outer tensors) included."""
    names = set()
    for g in [graph, *graph.subgraphs(recursive=True)]:
        names |= {t.name for n in g.nodes for t in n.inputs}
    return names


def _dangling(graph, scope=()):
    """Tensors read by some node that nothing produces and no enclosing graph takes as input."""
    scope = set(scope) | {t.name for t in graph.inputs}
    found = []
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.name and not t.inputs and t.name not in scope:
                found.append((t.name, node.name or node.op))
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                found += _dangling(attr, scope)
    return found


@register_pass("set_outputs")
def set_outputs(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    outs, ins = _specs(params["outputs"]), _specs(params.get("inputs"))
    tensors = graph.tensors()
    _require([s["name"] for s in outs], tensors, "output", graph)
    _require([s["name"] for s in ins], tensors, "input", graph)
    names = [s["name"] for s in outs + ins]
    if len(set(names)) != len(names):
        raise PassError(f"tensor(s) {sorted({n for n in names if names.count(n) > 1})} are listed twice")
    both = {s["name"] for s in outs} & {s["name"] for s in ins}
    if both:
        raise PassError(f"tensor(s) {sorted(both)} are listed both as inputs and as outputs")
    if any(tensors[s["name"]].dtype is None or tensors[s["name"]].shape is None for s in outs + ins):
        graph = infer_shapes(graph)  # intermediate tensors often carry no type in tf2onnx output
        tensors = graph.tensors()

    old_inputs = [t.name for t in graph.inputs]
    new_outputs = []
    for spec in outs:
        t = tensors[spec["name"]]
        _apply_type(t, spec, "output")
        new_outputs.append(t)
    graph.outputs = new_outputs

    explicit = []
    for spec in ins:
        t = tensors[spec["name"]]
        _apply_type(t, spec, "input")
        t.inputs.clear()  # detach from its producer: the caller feeds it now
        explicit.append(t)
    before = len(graph.nodes)
    if explicit:
        graph.inputs = explicit
        graph.cleanup().toposort()
        missing = _dangling(graph)  # after cleanup: dead nodes may read anything
        if missing:
            listed = ", ".join(f"'{t}' (read by {n})" for t, n in missing[:5])
            raise PassError(f"the outputs still depend on tensors that are neither produced inside "
                            f"the cut nor listed in `inputs`: {listed}; add them to `inputs`")
    else:
        # Not cleanup(remove_unused_graph_inputs=True): it recurses and strips Loop body inputs.
        graph.cleanup().toposort()
        if params["remove_unused_inputs"]:
            used = _read_names(graph)
            graph.inputs = [t for t in graph.inputs if t.name in used or t in graph.outputs]

    # Validation: which source tensor each output is, and how to feed the inputs.
    previous = dict(ctx.output_map)
    ctx.output_map.clear()
    ctx.output_map.update({t.name: previous.get(t.name, t.name) for t in graph.outputs})
    final_inputs = {t.name for t in graph.inputs}
    dropped = [n for n in old_inputs if n not in final_inputs]
    for name in dropped:
        ctx.input_contract.pop(name, None)
    for t in explicit:
        if t.name not in old_inputs:
            shape = list(t.shape) if t.shape is not None else None
            static = shape if shape and all(isinstance(d, int) and d >= 0 for d in shape) else None
            ctx.input_contract[t.name] = {
                "source_input": None, "source_tensor": t.name, "source_dtype": _dtype_name(t.dtype),
                "source_shape": shape, "shape": static, "steps": []}
    ctx.log(f"set_outputs: outputs {[t.name for t in graph.outputs]}, inputs {sorted(final_inputs)}; "
            f"removed {before - len(graph.nodes)} node(s)"
            + (f"; dropped unused input(s) {dropped}" if dropped else ""))
    return graph
