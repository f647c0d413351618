"""Replace TF's in-graph preprocessing (the tf.map_fn Loop) with explicit normalization.

TF Object Detection exports preprocess inside tf.map_fn, which tf2onnx turns into an ONNX Loop
whose body gathers uint8 images from a TensorList, resizes and normalizes them. TensorRT cannot
import it (uint8 Gather inside a loop body, asymmetric resize). This pass cuts the subgraph between
the image input and the tensor the backbone reads (`attach_to`, or the Loop output that reaches the
first Conv), removes what only fed that tensor (the Loop, its trip-count logic, Casts), and feeds
the backbone `x * scale`, then `(x - mean) / std` (or the folded `x * a + b`), then the
NHWC->NCHW Transpose the backbone expects, computed from the graph input directly.

Other Loop outputs still in use (e.g. per-image true_image_shape, Model Garden's image_info, also
when it is a graph output) must not depend on pixel values: with a static input they are
evaluated once with ONNX Runtime and become constants (a graph output keeps its name).
Shape readers of the input become constants when its shape is static.

The input must already be float (TensorRT has no uint8 inputs): run `set_input` first or give
`input_dtype`, which changes the graph input here and records a cast step in the input contract.
Normalization moved into the graph adds no contract step: the engine still takes raw pixels.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.inputs import SHAPE_ONLY_OPS, find_input, record_change, replace_input


@register_pass("replace_preprocessing")
def replace_preprocessing(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    graph = _infer(graph)  # shapes of the Loop outputs and of the attach tensor
    inp = find_input(graph, params.get("input"), "replace_preprocessing", "input")
    if inp.shape is not None and len(inp.shape) != 4:
        raise PassError(f"replace_preprocessing: expected a 4-D image input, '{inp.name}' has shape {inp.shape}")
    top = _owner_map(graph)
    attach, conv = _find_attach(graph, inp, params.get("attach_to"), top)

    in_dtype = np.dtype(inp.dtype)
    new_dtype = np.dtype(params["input_dtype"]) if params.get("input_dtype") else in_dtype
    if new_dtype.kind != "f":
        raise PassError(f"replace_preprocessing: input '{inp.name}' is {in_dtype.name}, but TensorRT has "
                        f"no {in_dtype.name} inputs and normalization needs floats; run set_input with "
                        f"dtype: float32 first, or set input_dtype: float32")

    channels = _conv_channels(conv)
    in_layout = params["layout"] if params["layout"] != "auto" else _guess_layout(inp.shape, channels)
    att_layout = _attach_layout(attach, channels, graph, conv, top)
    transpose = params["transpose"]
    transpose = (in_layout != att_layout) if transpose == "auto" else transpose
    in_shape = list(inp.shape or [None] * 4)
    hw_in = [in_shape[i] for i in ((1, 2) if in_layout == "NHWC" else (2, 3))]
    att_shape = _shape_of(attach)
    if not (att_shape and all(isinstance(d, int) for d in att_shape)):  # e.g. a Loop whose resize size is computed
        att_shape = _measured_shape(graph, inp, attach) or att_shape
    hw_att = att_shape and [att_shape[i] for i in ((1, 2) if att_layout == "NHWC" else (2, 3))]
    resize = params.get("resize")
    if resize and hw_att and all(isinstance(d, int) for d in hw_att) and list(resize["size"]) != hw_att:
        raise PassError(f"replace_preprocessing: resize.size {resize['size']} differs from the size "
                        f"{hw_att} the backbone reads at '{attach.name}'")
    if not (hw_att and all(isinstance(d, int) for d in hw_att)):
        ctx.log(f"replace_preprocessing: size of '{attach.name}' unknown ({att_shape}); cannot check that "
                f"input '{inp.name}' {in_shape} already has the size the removed resize produced")
    elif not resize and hw_in != hw_att:
        raise PassError(
            f"replace_preprocessing: the removed preprocessing resized images to {hw_att} (tensor "
            f"'{attach.name}'), but input '{inp.name}' is {in_shape} ({in_layout}); set the input "
            f"to that size with set_input (shape), or insert a Resize with the `resize` parameter")

    # Values of other still-used outputs of the removed region, before anything changes.
    region = _ancestors(attach, graph, top)
    constants = _fold_boundary(graph, inp, region, attach, top)

    # Build input -> normalization -> [Transpose] -> [Resize], ending in the attach tensor itself
    # (detached from its producer) so its name and all its readers, even in subgraphs, stay.
    builder = _Builder(graph, inp.name + "/preprocess", new_dtype)
    c_axis = 3 if in_layout == "NHWC" else 1
    x = builder.normalize(inp, params, c_axis, in_shape[c_axis])
    if transpose:  # `true` means the usual NHWC->NCHW; auto may also go the other way
        perm = [0, 2, 3, 1] if params["transpose"] == "auto" and in_layout == "NCHW" else [0, 3, 1, 2]
        x = builder.node("Transpose", [x], "transpose", perm=perm)
    if resize:
        x = builder.resize(x, resize, att_layout)
    if attach.dtype is not None and np.dtype(attach.dtype) != new_dtype:  # e.g. fp16 input, fp32 backbone
        to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(attach.dtype))
        x = builder.node("Cast", [x], "cast", dtype=attach.dtype, to=to)
    if not builder.nodes:
        builder.node("Identity", [x], "identity")
    producer = attach.inputs[0]
    producer.outputs[producer.outputs.index(attach)] = gs.Variable(attach.name + "/replaced")
    builder.nodes[-1].outputs[0] = attach

    for tensor, value in constants:  # other Loop outputs, now constants
        const = gs.Constant(tensor.name + "/const", value)
        for node in list(tensor.outputs):
            replace_input(node, tensor, const)
        if tensor in graph.outputs:  # e.g. Model Garden's image_info: the output keeps its name
            producer = tensor.inputs[0]
            producer.outputs[producer.outputs.index(tensor)] = gs.Variable(tensor.name + "/replaced")
            graph.nodes.append(gs.Node("Identity", name=tensor.name + "/const", inputs=[const], outputs=[tensor]))
    # Shape readers of the input (or of adapters in front of the Loop) -> constants when static
    folded_shapes = _constant_shapes(graph, [inp] + [o for n in region for o in n.outputs])
    removed = _prune(graph, region)

    if new_dtype != in_dtype:
        inp.dtype = new_dtype
        _cast_back_readers(graph, inp, in_dtype, builder.nodes)
        record_change(ctx, inp.name, in_dtype, inp.shape, inp, new_dtype, None)
    graph.toposort()
    chain = " -> ".join(n.op for n in builder.nodes if n.op not in _SIZE_OPS)
    ctx.log(f"replace_preprocessing: removed {len(removed)} node(s) ({', '.join(sorted({n.op for n in removed}))}); "
            f"'{inp.name}' ({in_layout}) -> {chain} -> '{attach.name}' (read by "
            f"{conv.name if conv is not None else '?'}); {len(constants)} Loop output(s) and "
            f"{folded_shapes} Shape reader(s) made constant")
    return graph


_SIZE_OPS = {"Shape", "Slice", "Concat"}  # the Resize's sizes computation, left out of the log


class _Builder:
    def __init__(self, graph, prefix, dtype):
        self.graph, self.prefix, self.dtype, self.nodes = graph, prefix, dtype, []

    def const(self, name, value, dtype=None):
        return gs.Constant(f"{self.prefix}/{name}", np.asarray(value, dtype or self.dtype))

    def node(self, op, inputs, name, dtype=None, **attrs):
        out = gs.Variable(f"{self.prefix}/{name}:0", dtype=dtype or self.dtype)
        node = gs.Node(op, name=f"{self.prefix}/{name}", attrs=attrs, inputs=inputs, outputs=[out])
        self.graph.nodes.append(node)
        self.nodes.append(node)
        return out

    def normalize(self, x, params, c_axis, channels):
        scale = float(params["scale"])
        mean, std = (np.atleast_1d(np.asarray(params[k], np.float64)) for k in ("mean", "std"))
        for key, v in (("mean", mean), ("std", std)):
            if v.size != 1 and isinstance(channels, int) and v.size != channels:
                raise PassError(f"replace_preprocessing: {key} has {v.size} values but the input has "
                                f"{channels} channels (axis {c_axis})")
        shape = [1] * 4
        shape[c_axis] = -1
        per_channel = lambda v: v.reshape(shape) if v.size > 1 else v.reshape([])
        if params["fold"]:  # x * (scale / std) + (-mean / std): two ops instead of three
            a, b = scale / std, -mean / std
            if np.any(a != 1):
                x = self.node("Mul", [x, self.const("scale", per_channel(a))], "mul")
            if np.any(b != 0):
                x = self.node("Add", [x, self.const("offset", per_channel(b))], "add")
            return x
        if scale != 1:
            x = self.node("Mul", [x, self.const("scale", np.float64(scale))], "scale")
        if np.any(mean != 0):
            x = self.node("Sub", [x, self.const("mean", per_channel(mean))], "sub_mean")
        if np.any(std != 1):
            x = self.node("Div", [x, self.const("std", per_channel(std))], "div_std")
        return x

    def resize(self, x, resize, layout):
        # sizes = shape(x) with H, W replaced: works for dynamic batch; fold_constants folds it.
        shape = self.node("Shape", [x], "resize/shape", dtype=np.int64)
        h = 1 if layout == "NHWC" else 2
        part = lambda a, b: self.node("Slice", [shape, self.const(f"resize/{a}", [a], np.int64),
                                                self.const(f"resize/{b}", [b], np.int64)],
                                      f"resize/dims{a}_{b}", dtype=np.int64)
        hw = self.const("resize/hw", resize["size"], np.int64)
        sizes = self.node("Concat", [part(0, h), hw, part(h + 2, 4)], "resize/sizes", dtype=np.int64, axis=0)
        empty = gs.Variable.empty()
        return self.node("Resize", [x, empty, empty, sizes], "resize", mode=resize["mode"],
                         coordinate_transformation_mode=resize["coordinate_transformation_mode"],
                         nearest_mode=resize["nearest_mode"])


def _infer(graph):
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shapes only sharpen the checks below; the runner's checker catches breakage
        return graph
    return gs.import_onnx(model)


def _owner_map(graph):
    """id(node) -> the top-level node it belongs to (itself, or the Loop/If whose body holds it)."""
    owners = {}

    def walk(g, owner):
        for n in g.nodes:
            owners[id(n)] = owner or n
            for sub in _subgraphs(n):
                walk(sub, owner or n)
    walk(graph, None)
    return owners


def _subgraphs(node):
    for v in node.attrs.values():
        for g in (v if isinstance(v, list) else [v]):
            if isinstance(g, gs.Graph):
                yield g


def _readers(tensor, top):
    """Top-level nodes reading `tensor` (a read inside a Loop body counts as the Loop's)."""
    out = []
    for n in tensor.outputs:
        owner = top.get(id(n))
        if owner is not None and owner not in out:
            out.append(owner)
    return out


def _bfs(graph, start, top):
    """(distance, node) for top-level nodes downstream of tensor `start`, nearest first."""
    seen, frontier, order, dist = set(), [start], [], 0
    while frontier:
        dist += 1
        nxt = []
        for t in frontier:
            for n in _readers(t, top):
                if id(n) not in seen:
                    seen.add(id(n))
                    order.append((dist, n))
                    nxt.extend(n.outputs)
        frontier = nxt
    return order


def _find_attach(graph, inp, name, top):
    """(tensor to replace, first Conv reading it): `name`, or the Loop output nearest a Conv."""
    loop = next((n for _, n in _bfs(graph, inp, top) if n.op in ("Loop", "Scan")), None)
    if name:
        attach = _tensor(graph, name, loop)
        return attach, _first_conv(graph, attach, top)
    if loop is None:
        raise PassError(f"replace_preprocessing: no Loop (tf.map_fn) reads input '{inp.name}'; "
                        f"name the tensor the backbone reads with `attach_to`")
    # Only the image output reaches the backbone soon; shape outputs reach it late or never.
    found = [(d, i, c) for i, o in enumerate(loop.outputs) for d, c in [_first_conv(graph, o, top, True)] if c]
    if not found:
        raise PassError(f"replace_preprocessing: no Conv is reachable from the outputs of Loop "
                        f"'{loop.name}'; name the tensor the backbone reads with `attach_to`")
    _, index, conv = min(found, key=lambda f: f[:2])
    return loop.outputs[index], conv


def _first_conv(graph, tensor, top, with_distance=False):
    hit = next(((d, n) for d, n in _bfs(graph, tensor, top) if n.op == "Conv"), (None, None))
    return hit if with_distance else hit[1]


def _tensor(graph, name, loop):
    tensors = graph.tensors()
    if name in tensors and isinstance(tensors[name], gs.Variable) and tensors[name].inputs:
        return tensors[name]
    outs = (f"; the preprocessing Loop '{loop.name}' produces: " + ", ".join(o.name for o in loop.outputs)
            if loop else "")
    if name in tensors:
        raise PassError(f"replace_preprocessing: attach_to tensor '{name}' is a graph input or constant; "
                        f"expected a tensor some node produces{outs}")
    hint = suggest(name, [n for n, t in tensors.items() if isinstance(t, gs.Variable)])
    raise PassError(f"replace_preprocessing: attach_to tensor '{name}' does not exist{hint}{outs}")


def _conv_channels(conv):
    if conv is None or not isinstance(conv.inputs[1], gs.Constant):
        return None
    return int(conv.inputs[1].values.shape[1]) * int(conv.attrs.get("group", 1))


def _guess_layout(shape, channels):
    if shape is not None and len(shape) == 4 and channels is not None:
        if shape[1] == channels and shape[3] != channels:
            return "NCHW"
    return "NHWC"  # TF's layout


def _shape_of(t):
    return list(t.shape) if t.shape is not None and len(t.shape) == 4 else None


def _attach_layout(attach, channels, graph, conv, top):
    shape = _shape_of(attach)
    if shape and channels is not None:
        if shape[1] == channels and shape[3] != channels:
            return "NCHW"
        if shape[3] == channels and shape[1] != channels:
            return "NHWC"
    # Unknown shape: NCHW unless a NHWC->NCHW Transpose sits between the tensor and the Conv.
    for _, n in _bfs(graph, attach, top):
        if n is conv:
            break
        if n.op == "Transpose" and list(n.attrs.get("perm", [])) == [0, 3, 1, 2]:
            return "NHWC"
    return "NCHW"


def _measured_shape(graph, inp, attach):
    """The shape of `attach` when the preprocessing runs (ONNX Runtime, random pixels) on an input of
    `inp`'s static shape: the size the backbone reads, where shape inference cannot tell it (a Loop
    whose resize sizes are computed). None when the input shape is not static or the run fails."""
    if inp.shape is None or not all(isinstance(d, int) and d > 0 for d in inp.shape):
        return None
    import onnxruntime as ort
    g = graph.copy()
    tensors = g.tensors()
    g.inputs, g.outputs = [tensors[inp.name]], [tensors[attach.name]]
    g.cleanup()
    try:
        sess = ort.InferenceSession(gs.export_onnx(g, do_type_check=False).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        value = sess.run(None, {inp.name: np.random.default_rng(0).integers(0, 256, inp.shape).astype(inp.dtype)})[0]
    except Exception:  # only sharpens the size check; the runner's checks catch a broken graph
        return None
    return list(value.shape) if value.ndim == 4 else None


def _ancestors(tensor, graph, top):
    """Top-level nodes that `tensor` depends on, including outer tensors their bodies read."""
    found, stack = {}, [tensor]
    while stack:
        t = stack.pop()
        for n in t.inputs:
            n = top.get(id(n), n)
            if id(n) not in found:
                found[id(n)] = n
                stack.extend(n.inputs)
                stack.extend(_outer_reads(n))
    return list(found.values())


def _outer_reads(node):
    """Tensors a node's subgraphs read from the enclosing scope."""
    out = []
    for sub in _subgraphs(node):
        inner = set(map(id, sub.inputs)) | {id(t) for n in sub.nodes for t in n.outputs}
        for n in sub.nodes:
            out += [t for t in n.inputs if id(t) not in inner and not isinstance(t, gs.Constant)]
            out += _outer_reads(n)
    return out


def _fold_boundary(graph, inp, region, attach, top):
    """Outputs of region nodes (other than `attach`) read outside the region -> constant values."""
    ids = set(map(id, region))
    downstream = {id(n) for _, n in _bfs(graph, inp, top)}  # the rest does not need the image
    boundary = [o for n in region if id(n) in downstream for o in n.outputs if o is not attach and
                (o in graph.outputs or any(id(r) not in ids for r in _readers(o, top)))]
    # Shape-only readers of the input stay as they are; only value-dependent outputs matter.
    boundary = [o for o in boundary if not (o.inputs and o.inputs[0].op in SHAPE_ONLY_OPS)]
    if not boundary:
        return []
    names = ", ".join(o.name for o in boundary)
    if inp.shape is None or not all(isinstance(d, int) for d in inp.shape):
        raise PassError(f"replace_preprocessing: {names} come from the removed preprocessing and are "
                        f"still used; they can only become constants when input '{inp.name}' has a "
                        f"static shape (found {inp.shape}): set one with set_input")
    import onnxruntime as ort
    g = graph.copy()
    tensors = g.tensors()
    g.outputs = [tensors[o.name] for o in boundary]
    g.inputs = [tensors[inp.name]]
    g.cleanup()
    sess = ort.InferenceSession(gs.export_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    runs = [sess.run(None, {inp.name: rng.integers(0, 256, inp.shape).astype(inp.dtype)}) for _ in range(2)]
    varying = [o.name for o, a, b in zip(boundary, *runs) if not np.array_equal(a, b)]
    if varying:
        raise PassError(f"replace_preprocessing: {', '.join(varying)} come from the removed preprocessing, "
                        f"are still used, and depend on pixel values; they cannot be replaced")
    return list(zip(boundary, runs[0]))


def _prune(graph, region):
    """Drop region nodes whose outputs nobody reads any more, until none is left to drop."""
    removed, live = [], set(map(id, graph.outputs))
    while True:
        top = _owner_map(graph)
        dead = [n for n in region if n in graph.nodes and n not in removed and
                not any(id(o) in live or _readers(o, top) for o in n.outputs)]
        if not dead:
            return removed
        for n in dead:
            graph.nodes.remove(n)
            removed.append(n)
            n.inputs.clear()  # also drops it from its inputs' reader lists
            for sub in _subgraphs(n):
                for inner in sub.nodes:
                    inner.inputs.clear()


def _cast_back_readers(graph, inp, old_dtype, ours):
    """Nodes outside the preprocessing that read the input's values keep their old dtype."""
    readers = [n for n in inp.outputs if n not in ours and n.op not in SHAPE_ONLY_OPS]
    if readers:
        cast = gs.Variable(f"{inp.name}/cast_back:0", dtype=old_dtype)
        graph.nodes.append(gs.Node("Cast", name=f"{inp.name}/cast_back", inputs=[inp], outputs=[cast],
                                   attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(old_dtype)}))
        for n in readers:
            replace_input(n, inp, cast)


def _constant_shapes(graph, tensors):
    """Shape(t) -> constant for tensors t of static shape (e.g. TF-OD's true_image_shape)."""
    count = 0
    static = [t for t in tensors if t.shape is not None and all(isinstance(d, int) and d >= 0 for d in t.shape)]
    for t, node in [(t, n) for t in static for n in t.outputs if n.op == "Shape" and n in graph.nodes
                    and n.outputs[0] not in graph.outputs]:
        start, end = node.attrs.get("start", 0), node.attrs.get("end", len(t.shape))
        value = np.asarray(t.shape, np.int64)[slice(start, end)]
        out = node.outputs[0]
        node.outputs.clear()
        node.inputs.clear()
        graph.nodes.remove(node)
        const = gs.Constant(out.name + "/const", value)
        for reader in list(out.outputs):
            replace_input(reader, out, const)
        count += 1
    return count
