"""Fold constants to a fixpoint, clean up, sort, and infer every derivable dtype/shape, in one go.

tf2onnx output and hand-edited graphs reach the parser with constant shape arithmetic, dead
branches left by earlier surgery, nodes out of order and intermediate tensors without dtype or
shape. Each of those is its own pass (`fold_constants`, `cleanup`); this one runs them in the usual
order and then ONNX shape inference (with data propagation, so shapes computed from Shape ops are
resolved too), so the next passes and the TensorRT parser see a graph whose tensors all carry
types. It reports the tensors that still have no complete shape.

`infer_shapes(graph)` is also used by the other utility passes.
"""

import onnx
import onnx_graphsurgeon as gs

from passes.cleanup import cleanup
from passes.fold_constants import fold_constants
from trtpipe.errors import PassError
from trtpipe.registry import register_pass

_PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialize more; shape inference needs a ModelProto


def infer_shapes(graph, data_prop=True):
    """Return a new Graph with dtypes/shapes filled in by ONNX shape inference where derivable.

    The returned Graph holds new Tensor objects: look tensors up again after calling this.
    """
    model = gs.export_onnx(graph, do_type_check=False)
    if model.ByteSize() >= _PROTO_LIMIT:
        return graph  # weights beyond 2 GiB: leave shapes as they are rather than fail
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except onnx.shape_inference.InferenceError as err:
        raise PassError(f"ONNX shape inference failed: {str(err).strip().splitlines()[0]}")
    return gs.import_onnx(model)


def incomplete_tensors(graph):
    """Names of top-level non-constant tensors in use whose dtype or shape (rank) is unknown."""
    out, outputs = [], {t.name for t in graph.outputs}
    for name, t in graph.tensors().items():
        if not isinstance(t, gs.Variable) or not name or not (t.outputs or name in outputs):
            continue  # e.g. Dropout's unused mask output
        if t.dtype is None or t.shape is None:
            out.append(name)
    return sorted(out)


@register_pass("sanitize")
def sanitize(graph, params, ctx):
    nodes_before = len(graph.nodes)
    if params["fold"]:
        fold_params = {"fold_shapes": params["fold_shapes"], "partitioning": params["partitioning"],
                       "max_rounds": params["max_rounds"]}
        if params.get("size_threshold") is not None:
            fold_params["size_threshold"] = params["size_threshold"]
        graph = fold_constants(graph, fold_params, ctx)
    graph = cleanup(graph, {"remove_unused_inputs": params["remove_unused_inputs"],
                            "remove_unused_node_outputs": False, "toposort": True}, ctx)
    if params["infer_shapes"]:
        graph = infer_shapes(graph, data_prop=True)
    missing = incomplete_tensors(graph)
    msg = f"sanitize: {nodes_before} -> {len(graph.nodes)} nodes"
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        msg += f"; tensors without dtype/shape: {shown}"
    ctx.log(msg)
    return graph
