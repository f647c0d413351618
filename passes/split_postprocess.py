"""Move ops the engine cannot run (TopK with K > 3840, Unique, NonZero) into a post-processing model.

What the selected nodes compute, and everything computed from it, becomes an ONNX model that ONNX
Runtime runs after the engine.

TensorRT's TopK takes K <= 3840 (the builder refuses "K exceeds the maximum value allowed (3840)");
TensorRT-RTX's parser has no Unique, and no NonZero (tf.boolean_mask) without a plugin. This pass
ends the engine where the first selected node starts: by op type (`ops`, default TopK; a TopK
whose constant K is within `topk_limit` stays in the engine), by node name (`nodes`), or at named
tensors (`tensors`). Everything computed from the selected nodes leaves the engine; the engine's
outputs become the tensors that part reads (and the outputs it does not need). The part is
written as `RECIPE-NAME.postprocess.onnx` (recorded like `nms: split`'s, with kind `outputs`):
validation runs final model + post-processing model and compares the source's outputs element-wise,
`predict` and `bench` run both.

For detectors prefer `nms` (mode: split): it finds where any NMS starts and compares detections by
IoU, and its NMS settings stay editable.
"""

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.nms_match import constant_value
from trtpipe.graph.nms_postprocess import split
from trtpipe.graph.postprocess_cut import find_cut
from trtpipe.graph.shapes import infer_shapes


def _holds(node, ops):
    if node.op in ops:
        return True
    return any(_holds(n, ops) for sub in node.subgraphs() for n in sub.nodes)


@register_pass("split_postprocess")
def split_postprocess(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    if ctx.stage_dir is None:
        raise PassError("split_postprocess writes the post-processing model into ctx.stage_dir, which is unset")
    graph = infer_shapes(graph)
    ops, limit = set(params["ops"]), params["topk_limit"]
    names = {n.name for n in graph.nodes}
    for name in params.get("nodes") or []:
        if name not in names:
            raise PassError(f"node '{name}' is not in the graph{suggest(name, sorted(names))}")

    def selected(node):
        if params.get("nodes"):
            return node.name in params["nodes"]
        if node.op == "TopK" and "TopK" in ops:
            k = constant_value(node.inputs[1])
            return k is None or int(np.asarray(k).reshape(-1)[0]) > limit  # computed K: may exceed it
        return _holds(node, ops)

    named = {f"tensors[{i}]": t for i, t in enumerate(params.get("tensors") or [])}
    by_tensors = named and not params.get("nodes") and params["ops"] == ["TopK"]
    seed = (lambda node: False) if by_tensors else selected  # tensors alone: what reads them moves
    if not by_tensors and not any(selected(n) for n in graph.nodes):
        what = (f"node named {params['nodes']}" if params.get("nodes") else
                f"TopK with K > {limit}" if ops == {"TopK"} else f"node of the ops {sorted(ops)}")
        raise PassError(f"split_postprocess: the graph has no {what}; nothing to move out of the engine",
                        hint="remove the pass, or name the tensors the engine should end at with `tensors:`")
    cut = find_cut(graph, named, "post-processing", seed=seed)
    ctx.log(f"split_postprocess: {cut.describe()}")
    graph, _ = split(graph, cut, ctx, kind="outputs")
    ctx.log(f"split_postprocess: engine outputs {[t.name for t in graph.outputs]}; post-processing model "
            f"{ctx.postprocess['file']} -> {list(ctx.postprocess['outputs'])}")
    return graph
