"""Make Resize nodes importable by TensorRT: coordinate modes, nearest modes, constant scales.

tf2onnx writes TF's resize semantics into ONNX attributes TensorRT's parser refuses or restricts:
nearest resizes (FPN upsampling) come as `tf_half_pixel_for_nn` + `floor`, which the parser rejects
("only support round_prefer_floor nearest mode in tf_half_pixel_for_nn"); TF1-style bilinear
resizes come as `asymmetric`, which TensorRT 7 refused for linear resizes with sizes. Target
sizes are often computed (Shape -> Slice -> Concat) even when the input shape is static.

This pass rewrites each selected Resize, top level and (optionally) inside Loop/If/Scan bodies:
  * coordinate_transformation_mode through a mapping per interpolation mode. The default maps
    nearest `tf_half_pixel_for_nn` to `half_pixel` and its `floor` to `round_prefer_ceil`, which
    selects exactly the same pixels for any scale. Remapping a linear mode (e.g. asymmetric ->
    half_pixel, as TensorRT 7 needs) changes values unless the scale is 1: it is logged as such;
  * nearest_mode, when given;
  * with static input and output shapes, computed `scales` or `sizes` become constant scales.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest

# (mode, old ctm, old nearest_mode, new ctm) -> nearest_mode giving identical output
EXACT_NEAREST = {("tf_half_pixel_for_nn", "floor", "half_pixel"): "round_prefer_ceil"}


@register_pass("fix_resize")
def fix_resize(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    graph = _infer(graph)  # static shapes decide whether scales can become constants
    found = list(_resizes(graph, params["subgraphs"], where="graph"))
    wanted = params["nodes"]
    if wanted != "all":
        names = [n.name for n, _ in found]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise PassError(f"fix_resize: no Resize node named {', '.join(repr(m) for m in missing)}"
                            f"{suggest(missing[0], names)}; Resize nodes: {', '.join(names) or 'none'}")
        found = [(n, w) for n, w in found if n.name in wanted]
    changed = 0
    for node, where in found:
        notes = _modes(node, params) + (_constant_scales(node) if params["constant_scales"] else [])
        changed += any(not n.startswith("kept") for n in notes)
        if notes:
            ctx.log(f"fix_resize: {node.name} ({node.attrs.get('mode', 'nearest')}, in {where}): " + "; ".join(notes))
    ctx.log(f"fix_resize: {changed} of {len(found)} Resize node(s) changed")
    return graph


def _resizes(graph, recurse, where):
    for node in graph.nodes:
        if node.op == "Resize":
            yield node, where
        if recurse:
            for value in node.attrs.values():
                for sub in value if isinstance(value, list) else [value]:
                    if isinstance(sub, gs.Graph):
                        yield from _resizes(sub, recurse, f"{node.op} '{node.name}'")


def _modes(node, params):
    mode = node.attrs.get("mode", "nearest")
    ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = node.attrs.get("nearest_mode", "round_prefer_floor")
    mapping = params["coordinate_transformation_mode"].get(mode, {})
    new_ctm = mapping.get(ctm, mapping.get("*", ctm))
    # a forced nearest_mode wins; else the one that keeps values after the coordinate change
    new_nearest = params.get("nearest_mode") or EXACT_NEAREST.get((ctm, nearest, new_ctm), nearest)
    notes = []
    if new_ctm != ctm:
        node.attrs["coordinate_transformation_mode"] = new_ctm
        exact = mode == "nearest" and new_nearest == EXACT_NEAREST.get((ctm, nearest, new_ctm))
        notes.append(f"coordinate_transformation_mode {ctm} -> {new_ctm}"
                     + ("" if exact else " (changes values unless the scale is 1)"))
    if mode == "nearest" and new_nearest != nearest:
        node.attrs["nearest_mode"] = new_nearest
        notes.append(f"nearest_mode {nearest} -> {new_nearest}")
    return notes


def _constant_scales(node):
    x, y = node.inputs[0], node.outputs[0]
    has_sizes = len(node.inputs) > 3 and not _empty(node.inputs[3])
    computed = has_sizes or (len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant))
    if not computed:
        return []
    if not (_static(x.shape) and _static(y.shape) and len(x.shape) == len(y.shape)):
        return [f"kept computed {'sizes' if has_sizes else 'scales'}: shapes not static ({x.shape} -> {y.shape})"]
    kind = "computed scales" if not has_sizes else (
        "constant sizes" if isinstance(node.inputs[3], gs.Constant) else "computed sizes")
    scales = np.array([o / i for i, o in zip(x.shape, y.shape)], np.float32)
    for k, (i, o) in enumerate(zip(x.shape, y.shape)):
        while np.floor(np.float32(i) * scales[k]) < o:  # float32 rounding must not lose a pixel
            scales[k] = np.nextafter(scales[k], np.float32(np.inf))
    while len(node.inputs) > 3:
        del node.inputs[3]
    if len(node.inputs) < 2:
        node.inputs.append(gs.Variable.empty())
    if node.attrs.get("coordinate_transformation_mode") != "tf_crop_and_resize":
        node.inputs[1] = gs.Variable.empty()  # roi only matters for tf_crop_and_resize
    const = gs.Constant(f"{node.name}/scales", scales)
    if len(node.inputs) < 3:
        node.inputs.append(const)
    else:
        node.inputs[2] = const
    return [f"{kind} -> constant scales {[round(float(v), 6) for v in scales]}"]


def _empty(t):
    return isinstance(t, gs.Variable) and not t.name


def _static(shape):
    return shape is not None and all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape)


def _infer(graph):
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # without shapes only the constant-scales part is skipped
        return graph
    return gs.import_onnx(model)
