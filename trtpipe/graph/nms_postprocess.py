"""`nms` split mode: end the engine before the post-processing and ship that as its own ONNX model.

The post-processing model is the source's own graph after the cut (trtpipe.graph.postprocess_cut:
whatever it holds: NonMaxSuppression, Loops, TopK with K beyond TensorRT's 3840, GatherND),
extracted with onnx-graphsurgeon: its inputs are the tensors where the engine now ends, its outputs
the source's detection outputs under their names. Running engine -> post-processing model therefore
reproduces the source's detections (on the same engine outputs). NMS settings given in the recipe
are applied to the post-processing model (trtpipe.graph.nms_settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.graph import nms_settings
from trtpipe.graph.postprocess_cut import Cut, extract

if TYPE_CHECKING:
    from trtpipe.registry import PassContext


def split(graph: gs.Graph, cut: Cut, ctx: PassContext, settings: dict | None = None,
          kind: str = "detections") -> tuple[gs.Graph, onnx.ModelProto]:
    """Cut `graph` (modified in place) at `cut.tensors` and extract the rest as the post-processing
    model, saved as `<ctx.name>.postprocess.onnx` in `ctx.stage_dir`, registered as an artifact and
    described in `ctx.postprocess`; its outputs leave `ctx.output_map`.

    Args:
        graph: the whole graph (shapes inferred).
        cut: where the engine ends (postprocess_cut.find_cut).
        ctx: the pass context (name, stage_dir, output_map; postprocess is set).
        settings: {"score_threshold", "iou_threshold", "max_detections"} to apply to the
            post-processing model (None values are left as the source has them).
        kind: "detections" (validation matches boxes by IoU) or "outputs" (compared element-wise).

    Returns:
        (the engine-side graph, the post-processing ModelProto).

    Raises:
        PassError: a cut tensor has an unknown dtype, the extracted model fails onnx.checker or strict
            shape inference, a setting cannot be applied (the error's `key` names it), or an earlier
            pass already split off a post-processing model.
    """
    if ctx.postprocess:
        raise PassError(f"a post-processing model was already split off ({ctx.postprocess['file']}); one "
                        f"recipe can split only once")
    for t in cut.tensors:
        if t.dtype is None:
            raise PassError(f"cannot cut at '{t.name}': its dtype is unknown (shape inference could not derive it)")
    names = [t.name for t in cut.tensors]
    post = extract(graph, names, [t.name for t in cut.outputs], f"{graph.name or 'model'}_postprocess")
    applied = {}
    if settings and any(v is not None for v in settings.values()):
        pg = gs.import_onnx(post)
        applied = nms_settings.apply(pg, settings, ctx.log)
        post = extract(pg, names, [t.name for t in cut.outputs], pg.name)

    # Engine: ends at the cut tensors plus the outputs the post-processing does not compute.
    outputs = {t.name: t for t in cut.tensors}
    for t in cut.kept:
        outputs.setdefault(t.name, t)
    for name, t in list(outputs.items()):
        if t in graph.inputs:  # a graph input the post-processing reads: pass it through as an output
            alias = gs.Variable(f"{name}__passthrough", t.dtype, t.shape)
            graph.nodes.append(gs.Node("Identity", f"{name}__passthrough", inputs=[t], outputs=[alias]))
            outputs[name] = alias
    graph.outputs = list(outputs.values())
    graph.cleanup().toposort()

    path = ctx.stage_dir / f"{ctx.name}.postprocess.onnx"
    onnx.save(post, str(path))
    ctx.add_artifact(path.name, path)
    ctx.postprocess = {
        "file": path.name,
        "inputs": {t.name: outputs[t.name].name for t in cut.tensors},
        "outputs": {t.name: ctx.output_map.get(t.name, t.name) for t in cut.outputs},
        "kind": kind,
        # cut tensors nobody named: read by the post-processing from before the cut (extra engine outputs)
        "extra_inputs": [t.name for t in cut.extra],
        # settings changed from the source's: validation then runs this model on the source's cut
        # tensors for the reference (the source's own outputs hold the old settings' detections)
        "settings": {k: v["to"] for k, v in applied.items() if v["to"] != v["from"] and not v.get("unchanged")},
    }
    for t in cut.outputs:  # these are no longer engine outputs
        ctx.output_map.pop(t.name, None)
    return graph, post
