"""Remove dead nodes and tensors, and sort nodes topologically.

After surgery, nodes that no longer feed any graph output (the old preprocessing Loop, a cut-off
NMS) stay in the graph until removed; TensorRT's parser would still try to import them. This
runs onnx-graphsurgeon's `cleanup` and `toposort`. Parameters: schemas/passes/cleanup.schema.json.
"""

import onnx_graphsurgeon as gs

from trtpipe import PassContext, register_pass
from trtpipe.graph.tidy import remove_dead


@register_pass("cleanup")
def cleanup(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    before = len(graph.nodes)
    graph = remove_dead(graph, remove_unused_inputs=params["remove_unused_inputs"],
                        remove_unused_node_outputs=params["remove_unused_node_outputs"], toposort=params["toposort"])
    ctx.log(f"cleanup: removed {before - len(graph.nodes)} node(s)")
    return graph
