"""`nms` split mode: cut the engine at the raw boxes/scores and move the NMS to its own ONNX model.

The post-processing model is the source's own NMS subgraph, extracted with onnx-graphsurgeon: its
inputs are the tensors where the engine now ends, its outputs the source's detection outputs
under their names. Running engine -> post-processing model therefore reproduces the source's
detections exactly (on the same raw boxes/scores).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.graph.nms_match import Match, node_inputs

if TYPE_CHECKING:
    from trtpipe.registry import PassContext


def _ancestors(tensors):
    """ids of all nodes computing `tensors` (bodies' captures included)."""
    seen, stack = set(), list(tensors)
    while stack:
        for node in stack.pop().inputs:
            if id(node) not in seen:
                seen.add(id(node))
                stack += node_inputs(node)
    return seen


def boundary(match: Match) -> list[gs.Tensor]:
    """Tensors the post-processing model needs from the engine: boxes, scores, and any other
    engine-side tensor the NMS subgraph reads (e.g. a shape computed from the input)."""
    engine_nodes = _ancestors([match.boxes, match.scores])
    cut, seen, stack = [match.boxes, match.scores], set(), list(match.nms_outputs)
    while stack:
        t = stack.pop()
        if t.name in seen or isinstance(t, gs.Constant):
            continue
        seen.add(t.name)
        if t in cut:
            continue
        if not t.inputs or id(t.inputs[0]) in engine_nodes:
            cut.append(t)
            continue
        stack += node_inputs(t.inputs[0])
    return cut


def split(graph: gs.Graph, match: Match, ctx: PassContext) -> tuple[gs.Graph, onnx.ModelProto]:
    """Cut `graph` (modified in place) at `boundary(match)` and extract the NMS subgraph as the
    post-processing model, saved as `<ctx.name>.postprocess.onnx` in `ctx.stage_dir`, registered
    as an artifact and described in `ctx.postprocess`; the NMS outputs leave `ctx.output_map`.

    Returns:
        (the engine-side graph, the post-processing ModelProto).

    Raises:
        PassError: a cut tensor has an unknown dtype, or the extracted model fails onnx.checker or
            strict shape inference.
    """
    cut = boundary(match)
    for t in cut:
        if t.dtype is None:
            raise PassError(f"cannot cut at '{t.name}': its dtype is unknown (shape inference "
                            f"could not derive it)")
    post = _extract(graph, [t.name for t in cut], [t.name for t in match.nms_outputs])

    # Engine: ends at the cut tensors plus the outputs that never depended on the NMS.
    outputs = {t.name: t for t in cut}
    for t in match.other_outputs:
        outputs.setdefault(t.name, t)
    for name, t in list(outputs.items()):
        if t in graph.inputs:  # a graph input the NMS reads: pass it through as an output
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
        "inputs": {t.name: outputs[t.name].name for t in cut},
        "outputs": {t.name: ctx.output_map.get(t.name, t.name) for t in match.nms_outputs},
        "kind": "detections",
    }
    for t in match.nms_outputs:  # these are no longer engine outputs
        ctx.output_map.pop(t.name, None)
    return graph, post


def _extract(graph, inputs, outputs):
    """The subgraph from `inputs` to `outputs` as a checked ModelProto."""
    sub = graph.copy()
    tensors = sub.tensors()
    for name in inputs:
        tensors[name].inputs.clear()  # cut the producer off: the tensor becomes a model input
    sub.inputs = [tensors[n] for n in inputs]
    sub.outputs = [tensors[n] for n in outputs]
    sub.cleanup(remove_unused_graph_inputs=False).toposort()
    sub.name = f"{graph.name or 'model'}_postprocess"
    model = gs.export_onnx(sub)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise PassError(f"the extracted post-processing model is invalid: {str(err).splitlines()[0]}") from err
    return model
