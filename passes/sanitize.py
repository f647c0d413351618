"""Fold constants to a fixpoint, clean up, sort, and infer every derivable dtype/shape, in one go.

tf2onnx output and hand-edited graphs reach the parser with constant shape arithmetic, dead
branches left by earlier surgery, nodes out of order and intermediate tensors without dtype or
shape. Each of those is its own pass (`fold_constants`, `cleanup`); this one runs them in the usual
order and then ONNX shape inference (with data propagation, so shapes computed from Shape ops are
resolved too), so the next passes and the TensorRT parser see a graph whose tensors all carry
types. It reports the tensors that still have no complete shape.

Parameters: schemas/passes/sanitize.schema.json.
"""

import onnx_graphsurgeon as gs

from trtpipe import PassContext, register_pass
from trtpipe.graph.shapes import incomplete_tensors, infer_shapes
from trtpipe.graph.tidy import fold_to_fixpoint, remove_dead


@register_pass("sanitize")
def sanitize(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    nodes_before = len(graph.nodes)
    if params["fold"]:
        graph, rounds = fold_to_fixpoint(graph, fold_shapes=params["fold_shapes"], partitioning=params["partitioning"],
                                         size_threshold=params.get("size_threshold"), max_rounds=params["max_rounds"],
                                         pass_name="sanitize", log=ctx.log)
        ctx.log(f"fold_constants: {rounds} round(s), {len(graph.nodes)} nodes")
    before = len(graph.nodes)
    graph = remove_dead(graph, remove_unused_inputs=params["remove_unused_inputs"],
                        remove_unused_node_outputs=False, toposort=True)
    ctx.log(f"cleanup: removed {before - len(graph.nodes)} node(s)")
    if params["infer_shapes"]:
        graph = infer_shapes(graph, data_prop=True)
    missing = incomplete_tensors(graph)
    msg = f"sanitize: {nodes_before} -> {len(graph.nodes)} nodes"
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        msg += f"; tensors without dtype/shape: {shown}"
    ctx.log(msg)
    return graph
