"""Make the NMS of a TF detection export buildable: plugin, bounded native NMS, or split off.

tf2onnx turns TF's NMS (combined_non_max_suppression, TF-OD's per-class NMS, NMS inside a
map_fn Loop) into NonMaxSuppression plus a tangle of ScatterND/GatherND/TopK/Loop nodes.
TensorRT imports NonMaxSuppression as INMSLayer but caps its top-k box limit (5000) and TopK's K
(3840); TensorRT-RTX has no NMS implementation at all, and the TensorRT 8-era answer, the
BatchedNMS_TRT plugin, is gone in TensorRT 11. Modes:

* `efficient_nms`: replace the whole NMS subgraph by one EfficientNMS_TRT plugin node (optionally
  with fused box decoding against anchors); outputs num_detections/detection_boxes/
  detection_scores/detection_classes. The node gets the domain `trt.plugins` so onnx.checker and
  shape inference accept it; TensorRT's parser dispatches on the op type and finds the plugin by
  name, `plugin_version` and `plugin_namespace` (default ""). The node is written by the same
  code as the `plugin` pass's (trtpipe.graph.plugin_nodes): where the backend has the creator,
  each attribute in the type its field declares, and the names checked against its fields.
* `native`: keep NonMaxSuppression (TensorRT's INMSLayer) but feed it at most `max_candidates`
  boxes through a pre-NMS TopK; selected indices are mapped back, so the rest of the graph is
  untouched. Refused on TensorRT-RTX (no NMS runners).
* `split`: the engine ends at the raw boxes/scores; the original NMS subgraph goes to
  `RECIPE-NAME.postprocess.onnx` (an artifact, recorded in `ctx.postprocess`) for ONNX Runtime or
  custom code to run after the engine. The only mode TensorRT-RTX can build.
* `batched_nms`: the legacy BatchedNMS_TRT/BatchedNMSDynamic_TRT plugin (TensorRT <= 10 only).

Boxes/scores are found by structure (walking back from the NonMaxSuppression inputs through
Slice/Squeeze/Transpose/Gather... to the most upstream [B,N,4] and [B,N,C] tensors) unless the
`boxes`/`scores` parameters name them; thresholds and box counts default to the source's.
"""

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import BuildError, PassContext, PassError, PipelineError, register_pass
from trtpipe.graph import nms_match as match_mod
from trtpipe.graph.nms_postprocess import split
from trtpipe.graph.plugin_nodes import add_plugin_node, check_attrs
from trtpipe.graph.postprocess_cut import find_cut
from trtpipe.graph.shapes import infer_shapes

ROLES = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


_PLUGINS = {"efficient_nms": "EfficientNMS_TRT", "batched_nms": "BatchedNMS_TRT"}


def precheck(params: dict, ctx: PassContext) -> None:
    """Refuse, before any conversion, a mode the recipe's backend cannot build."""
    mode = params["mode"]
    _check_backend(mode, ctx)
    if mode in _PLUGINS:  # the backend's registry after loading build.plugins (plugin_fields.py)
        plugin = _PLUGINS[mode]
        if mode == "batched_nms" and params.get("plugin") not in (None, "auto"):
            plugin = params["plugin"]
        try:
            ctx.require_plugin(plugin)
        except PipelineError as err:  # a backend limitation: reported as a build error (exit 7)
            raise BuildError(f"mode {mode} needs the {plugin} plugin: {err.message}",
                             hint="on TensorRT-RTX use `mode: split`; or add the plugin library to build.plugins"
                             ) from err


@register_pass("nms", precheck=precheck)
def nms(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    p = params  # schema defaults filled by the runner (run_passes / run_pass)
    mode = p["mode"]
    _check_backend(mode, ctx)
    graph = infer_shapes(graph)  # tracing needs shapes; tf2onnx leaves most of them unset
    if mode == "split":
        return _split(graph, p, ctx)
    m = match_mod.locate(graph, p, require_nms=mode == "native")
    ctx.log(f"nms ({mode}): found {m.describe()}")
    if mode == "native":
        return _native(graph, m, p, ctx)
    return _plugin(graph, m, p, ctx)


SETTINGS = ("score_threshold", "iou_threshold", "max_detections")


def _split(graph, p, ctx):
    """Engine up to the raw detections (named, or where the post-processing starts by structure);
    the rest, with the recipe's NMS settings applied, as the post-processing model."""
    if ctx.stage_dir is None:
        raise PassError("split mode writes the post-processing model into ctx.stage_dir, which is unset")
    cut = find_cut(graph, {r: p.get(r) for r in ("boxes", "scores", "classes", "anchors")}, "NMS")
    ctx.log(f"nms (split): {cut.describe()}")
    for t in cut.extra:
        ctx.log(f"nms: the post-processing reads '{t.name}', computed before the cut: an extra engine output")
    try:
        graph, _ = split(graph, cut, ctx, {k: p.get(k) for k in SETTINGS})
    except PassError as err:
        if getattr(err, "key", None):  # a setting: point at its recipe line
            err.key_path = ("params", err.key)
        raise
    ctx.log(f"nms: engine outputs {[t.name for t in graph.outputs]}; post-processing model "
            f"{ctx.postprocess['file']} -> {list(ctx.postprocess['outputs'])}")
    return graph


def _check_backend(mode, ctx):
    rtx = ctx.backend == "tensorrt_rtx"
    if mode == "native" and rtx:
        raise PassError("mode native keeps ONNX NonMaxSuppression, but TensorRT-RTX has no NMS "
                        "implementation (its build fails: 'no runners')",
                        hint="use `mode: split` (NMS runs after the engine, e.g. in ONNX Runtime)")
    major = (ctx.backend_version or (None,))[0]
    if mode == "batched_nms" and (rtx or (major is not None and major >= 11)):
        raise PassError(f"BatchedNMS_TRT was removed in TensorRT 11 and never existed in TensorRT-RTX "
                        f"(backend: {ctx.backend} {'.'.join(map(str, ctx.backend_version or ())) or ''})",
                        hint="use `mode: efficient_nms` (TensorRT) or `mode: split` (any backend)")
    if mode == "batched_nms" and major is None:
        ctx.log("nms: backend version unknown; BatchedNMS_TRT exists only up to TensorRT 10")


# -- efficient_nms / batched_nms -----------------------------------------------------------------
def _settings(m, p, ctx):
    """Thresholds and detection count: parameters, else the source NMS's, else common defaults."""
    source = bool(m.nms)  # without an NMS in the graph there is nothing to copy
    iou, score, keep = p.get("iou_threshold"), p.get("score_threshold"), p.get("max_output_boxes")
    if iou is None:  # an absent NonMaxSuppression input means 0 (ONNX default)
        iou = (match_mod.nms_setting(m.nms, 3, "iou_threshold") or 0.0) if source else 0.5
    if score is None:
        score = (match_mod.nms_setting(m.nms, 4, "score_threshold") or 0.0) if source else 0.0
    if keep is None:  # the source's final count: a static [B,K,4] NMS output, else per-class max
        keep = next((t.shape[1] for t in m.nms_outputs if t.shape and len(t.shape) == 3
                     and isinstance(t.shape[1], int) and t.shape[2] == 4), None)
        keep = keep or (match_mod.nms_setting(m.nms, 2, "max_output_boxes") if source else None) or 100
    if not source:
        ctx.log(f"nms: no NonMaxSuppression to copy settings from; using iou_threshold {iou}, "
                f"score_threshold {score}, max_output_boxes {keep}")
    return float(iou), max(float(score), 0.0), int(keep)  # plugins take no negative thresholds


def _plugin(graph, m, p, ctx):
    iou, score, keep = _settings(m, p, ctx)
    names = {r: (p.get("outputs") or {}).get(r, r) for r in ROLES}
    for t in list(graph.tensors().values()):  # free the names the plugin outputs will take
        if t.name in names.values():
            t.name = f"{t.name}__replaced"
    b = _Nodes(graph, "nms")
    boxes, scores, batch = m.boxes, m.scores, m.boxes.shape[0]
    efficient = p["mode"] == "efficient_nms"
    cls_dtype = np.int32 if efficient else np.float32
    outs = [gs.Variable(names["num_detections"], np.int32, [batch, 1]),
            gs.Variable(names["detection_boxes"], np.float32, [batch, keep, 4]),
            gs.Variable(names["detection_scores"], np.float32, [batch, keep]),
            gs.Variable(names["detection_classes"] + ("__raw" if p["class_offset"] else ""),
                        cls_dtype, [batch, keep])]
    if efficient:
        if len(boxes.shape) == 4 and boxes.shape[2] == 1:  # [B,N,1,4] -> [B,N,4]
            boxes = b.op("Squeeze", [boxes, b.const("axes", [2])], [list(boxes.shape[:2]) + [4]])
        inputs, op, attrs = [boxes, scores], "EfficientNMS_TRT", {
            "background_class": p["background_class"],
            "max_output_boxes": keep, "score_threshold": score, "iou_threshold": iou,
            "score_activation": int(p["score_activation"]), "class_agnostic": int(p["class_agnostic"]),
            "box_coding": int(_box_coding(m, p) == "center_size")}
        if p.get("anchors"):
            inputs.append(_anchors(b, p["anchors"], boxes, ctx))
    else:
        if len(boxes.shape) == 3:  # BatchedNMS wants [B,N,1,4] for boxes shared by all classes
            boxes = b.op("Unsqueeze", [boxes, b.const("axes", [2])], [list(boxes.shape[:2]) + [1, 4]])
        classes = scores.shape[2]
        if not isinstance(classes, int):
            raise PassError(f"BatchedNMS_TRT needs a static class count; scores '{scores.name}' is "
                            f"{list(scores.shape)}")
        dynamic = p["plugin"] == "BatchedNMSDynamic_TRT" or (
            p["plugin"] == "auto" and not all(isinstance(d, int) for d in boxes.shape))
        inputs, op = [boxes, scores], "BatchedNMSDynamic_TRT" if dynamic else "BatchedNMS_TRT"
        attrs = {"shareLocation": int(boxes.shape[2] == 1),
                 "backgroundLabelId": p["background_class"], "numClasses": classes,
                 "topK": min(p["top_k"], boxes.shape[1]) if isinstance(boxes.shape[1], int) else p["top_k"],
                 "keepTopK": keep, "scoreThreshold": score, "iouThreshold": iou,
                 "isNormalized": int(p["is_normalized"]), "clipBoxes": int(p["clip_boxes"]),
                 "scoreBits": p["score_bits"]}
    add_plugin_node(graph, op, inputs, outs, attrs, version="1", domain=p["plugin_domain"], name=f"nms/{op}",
                    creator=_creator(op, attrs, ctx))
    if p["class_offset"]:  # TF-OD numbers classes from 1 (label_id_offset); the plugins from 0
        final = gs.Variable(names["detection_classes"], cls_dtype, [batch, keep])
        b.op("Add", [outs[3], b.const("class_offset", np.array(p["class_offset"], cls_dtype))],
             outputs=[final])
        outs[3] = final
    source = {t.name.removesuffix("__replaced"): t for t in m.nms_outputs}
    for role, out in zip(ROLES, outs):
        if role in source:
            ctx.output_map[out.name] = ctx.output_map.pop(role, role)
    graph.outputs = outs + (m.other_outputs if p["keep_other_outputs"] else [])
    graph.cleanup().toposort()
    ctx.log(f"nms: {op} (iou {iou:.6g}, score {score:.6g}, keep {keep}) on "
            f"'{m.boxes.name}', '{m.scores.name}'")
    return graph


def _creator(op, attrs, ctx):
    """The plugin's creator where the backend has it (its fields type the attributes, and the
    attribute names this pass writes are checked against them); None where it does not (the
    precheck refuses such a run; tests write the node for TensorRT on a TensorRT-RTX machine)."""
    try:
        creator = ctx.plugin_creator(op, "1")
    except PipelineError:
        ctx.log(f"nms: {op} is not in the backend's plugin registry here; attributes written by their Python types")
        return None
    problems, unset = check_attrs(attrs, creator)
    if problems:
        raise PassError(f"{op} attributes do not fit {creator.label} ({creator.origin}): "
                        + "; ".join(f"{k}: {m}" for k, m in problems))
    for note in unset:
        ctx.log(f"nms: {note}")
    return creator


def _box_coding(m, p):
    """The parameter, else what the source NMS used (center_point_box=1: [yc,xc,h,w])."""
    if p.get("box_coding"):
        return p["box_coding"]
    return "center_size" if any(n.attrs.get("center_point_box", 0) for _, n in m.nms) else "corners"


def _anchors(b, spec, boxes, ctx):
    """Anchors as a [1,N,4] constant, from a graph constant's name or a .npy file."""
    if spec.endswith(".npy"):
        path = (ctx.recipe_dir / spec) if ctx.recipe_dir else spec
        try:
            values = np.load(path)
        except OSError as err:
            raise PassError(f"anchors file {path} cannot be read: {err}") from err
    else:
        values = match_mod.constant_value(match_mod.lookup(b.graph, spec, "anchors"))
        if values is None:
            raise PassError(f"anchors '{spec}' is computed at run time; it must be a constant")
    n = boxes.shape[1]
    if values.size % 4 or (isinstance(n, int) and values.size != n * 4):
        raise PassError(f"anchors must hold N*4 values for the {n} boxes of '{boxes.name}', "
                        f"found shape {list(values.shape)}")
    return b.const("anchors", values.reshape(1, -1, 4).astype(np.float32))


class _Nodes:
    """Appends nodes/constants to one graph (a Loop body, maybe) under unique, readable names."""

    def __init__(self, graph, prefix):
        self.graph, self.prefix, self.count = graph, prefix, itertools.count()

    def name(self, what):
        return f"{self.prefix}/{what}_{next(self.count)}"

    def const(self, what, values):
        return gs.Constant(self.name(what), np.asarray(values))

    def op(self, op, inputs, shapes=(None,), attrs=None, dtypes=None, outputs=None):
        """Append one node; returns its output (a list when it has several)."""
        dtypes = dtypes or [inputs[0].dtype] * len(shapes)
        outs = outputs or [gs.Variable(self.name(op), d, s) for d, s in zip(dtypes, shapes)]
        self.graph.nodes.append(gs.Node(op, self.name(op), attrs or {}, inputs, outs))
        return outs[0] if len(outs) == 1 else outs


# -- native ----------------------------------------------------------------------------------------
def _native(graph, m, p, ctx):
    k = p["max_candidates"]
    changed = 0
    for owner, node in m.nms:
        n = node.inputs[0].shape[1] if node.inputs[0].shape else None
        if isinstance(n, int) and n <= k:
            continue
        _bound(owner, node, k, graph.opset)
        changed += 1
    graph.toposort()
    ctx.log(f"nms: pre-NMS TopK (K <= {k}) inserted before {changed} of {len(m.nms)} "
            f"NonMaxSuppression node(s)" + ("" if changed else "; every NMS already gets <= K boxes"))
    return graph


def _bound(graph, node, k, opset):
    """Feed `node` only the top-k boxes by best class score, then map the selected box indices
    back to the original numbering so every consumer stays valid."""
    b, i64 = _Nodes(graph, f"{node.name}/topk"), np.int64
    boxes, scores = node.inputs[0], node.inputs[1]  # [B,N,4], [B,C,N]
    if opset >= 18:  # ReduceMax takes axes as an input from opset 18 on
        best = b.op("ReduceMax", [scores, b.const("axes", np.array([1], i64))], attrs={"keepdims": 0})
    else:
        best = b.op("ReduceMax", [scores], attrs={"axes": [1], "keepdims": 0})  # [B,N]
    kk = b.const("k", np.array([k], i64))
    if not (boxes.shape and isinstance(boxes.shape[1], int)):  # unknown N: K = min(N, k) at run time
        kk = b.op("Min", [b.op("Shape", [boxes], [[1]], {"start": 1, "end": 2}, [i64]), kk], [[1]])
    _, keep = b.op("TopK", [best, kk], [None, None], {"axis": 1}, [scores.dtype, i64])  # [B,K]
    idx = b.op("Unsqueeze", [keep, b.const("axes", np.array([2], i64))])  # [B,K,1]
    boxes_k = b.op("GatherND", [boxes, idx], attrs={"batch_dims": 1})  # [B,K,4]
    per_box = b.op("Transpose", [scores], attrs={"perm": [0, 2, 1]})  # [B,N,C]
    scores_k = b.op("Transpose", [b.op("GatherND", [per_box, idx], attrs={"batch_dims": 1})],
                    attrs={"perm": [0, 2, 1]})  # [B,C,K]
    selected = node.outputs[0]
    raw = gs.Variable(b.name("selected"), i64, None)
    node.inputs[0], node.inputs[1], node.outputs = boxes_k, scores_k, [raw]
    zero, one, two, three = (b.const("i", np.array([v], i64)) for v in range(4))
    axes = b.const("axes", np.array([1], i64))
    column = lambda lo, hi: b.op("Slice", [raw, lo, hi, axes])  # noqa: E731
    # selected rows are (batch, class, index into the top-k): look the index up in `keep`
    batch_box = b.op("Concat", [column(zero, one), column(two, three)], attrs={"axis": 1})
    original = b.op("Unsqueeze", [b.op("GatherND", [keep, batch_box]), axes])
    b.op("Concat", [column(zero, two), original], attrs={"axis": 1}, outputs=[selected])
