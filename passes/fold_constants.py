"""Fold constant subgraphs, including shape arithmetic, until nothing more folds.

tf2onnx output is full of Shape -> Gather -> Concat -> Reshape chains and constant math that
TensorRT handles poorly (or not at all, for data-dependent shapes). One folding round often
exposes more: a folded Shape makes the next Reshape's target constant, which makes its output
shape known, and so on. This pass alternates ONNX shape inference and onnx-graphsurgeon's
`fold_constants` (which evaluates with ONNX Runtime) until the node count stops changing.
Parameters: schemas/passes/fold_constants.schema.json.
"""

import onnx_graphsurgeon as gs

from trtpipe import PassContext, register_pass
from trtpipe.graph.tidy import fold_to_fixpoint


@register_pass("fold_constants")
def fold_constants(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    graph, rounds = fold_to_fixpoint(graph, fold_shapes=params["fold_shapes"], partitioning=params["partitioning"],
                                     size_threshold=params.get("size_threshold"), max_rounds=params["max_rounds"],
                                     pass_name="fold_constants", log=ctx.log)
    ctx.log(f"fold_constants: {rounds} round(s), {len(graph.nodes)} nodes")
    return graph
