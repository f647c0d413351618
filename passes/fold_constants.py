"""Fold constant subgraphs, including shape arithmetic, until nothing more folds.

tf2onnx output is full of Shape -> Gather -> Concat -> Reshape chains and constant math that
TensorRT handles poorly (or not at all, for data-dependent shapes). One folding round often
exposes more: a folded Shape makes the next Reshape's target constant, which makes its output
shape known, and so on. This pass alternates ONNX shape inference and onnx-graphsurgeon's
`fold_constants` (which evaluates with ONNX Runtime) until the node count stops changing.
"""

import onnx
import onnx_graphsurgeon as gs

from trtpipe.registry import register_pass


@register_pass("fold_constants")
def fold_constants(graph, params, ctx):
    for round_ in range(1, params["max_rounds"] + 1):
        before = len(graph.nodes)
        graph = _infer_shapes(graph)
        # graphsurgeon re-imports Loop bodies without an IR version and then exports them with the
        # newest one, which ONNX Runtime rejects when it folds inside the body.
        for sub in graph.subgraphs(recursive=True):
            sub.ir_version = graph.ir_version
        graph.fold_constants(fold_shapes=params["fold_shapes"], partitioning=params["partitioning"],
                             size_threshold=params.get("size_threshold"), error_ok=False)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        if len(graph.nodes) == before:
            break
    ctx.log(f"fold_constants: {round_} round(s), {len(graph.nodes)} nodes")
    return graph


def _infer_shapes(graph):
    # Shapes must be known for Shape nodes to fold; graphsurgeon does not infer them itself.
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is an optimisation here; the runner's checker catches real breakage
        return graph
    return gs.import_onnx(model)
