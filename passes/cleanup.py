"""Remove dead nodes and tensors, and sort nodes topologically.

After surgery, nodes that no longer feed any graph output (the old preprocessing Loop, a cut-off
NMS) stay in the graph until removed; TensorRT's parser would still try to import them. This
runs onnx-graphsurgeon's `cleanup` and `toposort`.
"""

from trtpipe.registry import register_pass


@register_pass("cleanup")
def cleanup(graph, params, ctx):
    before = len(graph.nodes)
    graph.cleanup(remove_unused_node_outputs=params["remove_unused_node_outputs"])
    if params["remove_unused_inputs"]:
        # Only the main graph: a Loop body's inputs are positional and must all stay.
        graph.cleanup(remove_unused_graph_inputs=True, recurse_subgraphs=False)
    if params["toposort"]:
        graph.toposort()
    ctx.log(f"cleanup: removed {before - len(graph.nodes)} node(s)")
    return graph
