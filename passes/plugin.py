"""Replace a subgraph the parser cannot take by one TensorRT plugin node, its attributes checked
against the plugin's own creator before anything runs.

The subgraph is chosen by node names (`nodes`), a name prefix (`scope`, a TF name scope), or
as the nodes between named tensors (`between: {inputs, outputs}`). It is removed and one node of
op type `op` takes its place: `inputs` name the tensors the plugin reads, in its order (each
optionally adapted by `steps`: transpose, cast, reshape, mul/add/sub/div, matmul), `outputs` the
tensors it replaces (with the dtype and shape the plugin produces where shape inference cannot
know them, and `steps` back to what the consumers expect). `attrs` become the plugin's fields.

Checked before any conversion (this pass's precheck: the run's start and `python pipeline.py
check`), after loading `build.plugins` libraries: the creator exists in that version and
namespace (else exit 7 listing close names and versions); every attribute names one of its
fields (did-you-mean), has its type (integers for INT32, numbers for FLOAT32, strings for CHAR)
and, where the creator declares a length above 1, that length (else exit 3 at the attribute's
recipe line); fields left unset are a warning (the creator's default applies). The pass writes
each attribute in the type its field declares and records what it removed in the report.

Validation: ONNX Runtime cannot run a TensorRT plugin. The plugin's inputs are compared with the
source model's tensors of the same name (walking back through the adapter steps to tensors the
source computes), so everything up to the plugin is validated; outputs that depend on the plugin
are "engine only": compared with the source where a GPU runs the plan, reported skipped here with
the reason, never passed. With `validate.ort_custom_ops` (libraries implementing the op for ONNX
Runtime, in the node's `domain`) the whole final model runs in ONNX Runtime and every output is
compared; that checks the library's implementation, not TensorRT's kernel.

**ROIAlign_TRT for `tf.image.crop_and_resize`.** tf2onnx turns crop_and_resize into a Loop of
per-box Resize (tf_crop_and_resize) nodes, which crashes the TensorRT-RTX 1.7.1 parser; its
ROIAlign_TRT (version 2: coordinate_transformation_mode, mode, output_height, output_width,
sampling_ratio, spatial_scale) follows ONNX RoiAlign. Where the two differ:

* layout: crop_and_resize takes an NHWC image and returns [R, ch, cw, C]; ROIAlign takes NCHW
  features and returns [R, C, oh, ow] (tf2onnx often has the features in NCHW already; a
  `transpose` output step [0, 2, 3, 1] gives the consumers NHWC again);
* boxes: crop_and_resize reads normalized [y1, x1, y2, x2] where 0 and 1 are the centers of the
  first and last pixel (pixel y = y1 * (H - 1)); ROIAlign reads pixel [x1, y1, x2, y2] (times
  `spatial_scale`; with coordinate_transformation_mode 1, half_pixel, shifted by -0.5);
* sampling: crop_and_resize takes one bilinear sample per output pixel, at y1(H-1) + i (y2 -
  y1)(H-1)/(ch-1); ROIAlign averages (mode 1) or takes the max of (mode 0) sampling_ratio^2
  bilinear samples per bin (sampling_ratio 0: ceil(roi size / output size) per axis, adaptive).
  With sampling_ratio 1, mode 1, coordinate_transformation_mode 1 and boxes mapped to
  X1' = X1 - d/2 + 0.5, X2' = X2 + d/2 + 0.5 with X = x (W - 1), d = (X2 - X1)/(cw - 1) (same for
  y), the sample points coincide: one `matmul` step (a 4x4 matrix) and one `add` step (0.5) on the
  boxes reproduce crop_and_resize (recipes/roialign.yaml; the tests check it against ONNX
  Runtime's RoiAlign to 1e-5). For a crop size of 1 the mapping is X1' = X1 + 0.5, X2' = X2 + 0.5;
* extrapolation: crop_and_resize writes `extrapolation_value` for sample points outside
  [0, H-1] x [0, W-1]; ROIAlign clamps points within one pixel of the border to the edge and
  gives 0 only beyond that. Boxes reaching outside the image give different values there;
* flipped boxes (y1 > y2) flip the crop in crop_and_resize; ONNX RoiAlign's half_pixel mode
  follows them with a negative bin size, which TensorRT's kernel is not verified to do.

What validation can say for such a recipe here: the features, boxes and box indices reaching the
plugin equal the source's; the crops and everything computed from them are engine-only (no GPU:
skipped, so the validation is inconclusive, never passed). On this machine TensorRT-RTX 1.7.1
creates ROIAlign_TRT only with a CUDA device (its constructor queries the device: "CUDA driver
version is insufficient"), so the build stops there with exit 7 naming the node; where a CUDA
driver is present the same recipe builds a plan.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, PassError, register_pass, suggest
from trtpipe.graph.plugin_nodes import add_plugin_node, apply_steps, attribute_error, check_attrs
from trtpipe.graph.shapes import infer_shapes


def precheck(params: dict, ctx: PassContext) -> None:
    """The creator exists (build.plugins loaded first) and `attrs` fit its fields; unset ones: a warning."""
    creator = ctx.plugin_creator(params["op"], str(params["version"]), params["namespace"])
    problems, warnings = check_attrs(params["attrs"], creator)
    for warning in warnings:
        ctx.warn(warning)
    if problems:
        raise attribute_error(problems, creator)


@register_pass("plugin", precheck=precheck)
def plugin(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    op, version = params["op"], str(params["version"])
    creator = ctx.plugin_creator(op, version, params["namespace"])
    problems, _ = check_attrs(params["attrs"], creator)
    if problems:
        raise attribute_error(problems, creator)
    graph = infer_shapes(graph)  # dtypes and shapes of the tensors the plugin takes over
    tensors = graph.tensors()
    selected = _select(graph, params, tensors)
    inner = _inner_nodes(selected)
    produced = {t.name: t for n in selected for t in n.outputs if t.name}
    in_specs = _input_specs(params, selected, produced, tensors)
    out_specs = _output_specs(params, selected, produced, inner, graph)

    removed = collections.Counter(n.op for n in selected)
    for node in selected:
        node.inputs.clear()
        node.outputs.clear()
    graph.nodes = [n for n in graph.nodes if n not in selected]

    name = params.get("name") or f"plugin/{op}"
    inputs = [apply_steps(graph, tensors[t], steps, f"{name}/in{i}") if steps else tensors[t]
              for i, (t, steps) in enumerate(in_specs)]
    outputs = []
    for i, (target, dtype, shape, steps) in enumerate(out_specs):
        if steps:
            raw = gs.Variable(f"{name}/out{i}", dtype, shape)
            apply_steps(graph, raw, steps, f"{name}/out{i}", out=target)
            outputs.append(raw)
        else:
            target.dtype, target.shape = dtype, shape
            outputs.append(target)
    add_plugin_node(graph, op, inputs, outputs, params["attrs"], version=version, namespace=params["namespace"],
                    domain=params["domain"], name=name, creator=creator)
    graph.cleanup().toposort()
    ops = ", ".join(f"{k} x{v}" for k, v in sorted(removed.items()))
    ctx.log(f"plugin: replaced {len(selected)} node(s) ({ops}) by {creator.label} node '{name}'; removed: "
            + ", ".join(n.name for n in selected))
    ctx.log(f"plugin: '{name}' inputs {[t.name for t in inputs]}, outputs "
            f"{[(t.name, str(np.dtype(t.dtype)), t.shape) for t in outputs]}")
    return graph


# -- which nodes -----------------------------------------------------------------------------------

def _select(graph, params, tensors):
    nodes = graph.nodes
    if params.get("nodes"):
        by_name = {n.name: n for n in nodes}
        missing = [n for n in params["nodes"] if n not in by_name]
        if missing:
            raise PassError(f"nodes: no node '{missing[0]}' in the main graph{suggest(missing[0], list(by_name))}")
        return [by_name[n] for n in params["nodes"]]
    if params.get("scope"):
        scope = params["scope"]
        found = [n for n in nodes if n.name.startswith(scope)]
        if not found:
            scopes = sorted({n.name.rsplit("/", 1)[0] for n in nodes if "/" in n.name})
            raise PassError(f"scope: no node name starts with '{scope}'{suggest(scope, scopes)}")
        return found
    return _between(graph, params["between"], tensors)


def _between(graph, between, tensors):
    stop = set(between["inputs"])
    for name in [*between["inputs"], *between["outputs"]]:
        if name not in tensors:
            raise PassError(f"between: no tensor '{name}' in the graph{suggest(name, list(tensors))}")
    graph_inputs = {t.name for t in graph.inputs}
    selected, order, stack = set(), [], []
    for name in between["outputs"]:
        t = tensors[name]
        if not t.inputs:
            raise PassError(f"between.outputs: '{name}' is not computed by a node (a graph input or constant)")
        stack.append(t.inputs[0])
    while stack:
        node = stack.pop()
        if id(node) in selected:
            continue
        selected.add(id(node))
        order.append(node)
        for t in _reads(node, tensors):
            if t.name in stop or isinstance(t, gs.Constant):
                continue
            if not t.inputs:
                if t.name in graph_inputs:
                    raise PassError(f"between: node '{node.name}' reads graph input '{t.name}', which is not among "
                                    f"between.inputs {sorted(stop)}: name it there, or the tensor the walk should "
                                    f"stop at")
                continue
            if t.inputs[0].op == "Constant":
                continue
            stack.append(t.inputs[0])
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(order, key=lambda n: position.get(id(n), 0))


def _reads(node, tensors):
    """The tensors a node reads: its inputs and, for Loop/If/Scan, the outer tensors its bodies use."""
    out = [t for t in node.inputs if t.name]
    names = {t.name for t in out}
    for name in _body_reads(node):
        if name not in names and name in tensors:
            out.append(tensors[name])
            names.add(name)
    return out


def _body_reads(node):
    """Names the bodies of a Loop/If/Scan node read from outside them, in order of use."""
    found = []
    for sub in _subgraphs(node):
        inside = {t.name for t in sub.inputs} | {t.name for n in sub.nodes for t in n.outputs}
        for n in sub.nodes:
            for name in [t.name for t in n.inputs if t.name] + _body_reads(n):
                if name not in inside and name not in found:
                    found.append(name)
    return found


def _subgraphs(node):
    return [v for v in node.attrs.values() if isinstance(v, gs.Graph)]


def _inner_nodes(selected):
    """The selected nodes and every node of their bodies (a body node reading a tensor is no
    consumer outside the selection)."""
    out, stack = set(), list(selected)
    while stack:
        node = stack.pop()
        out.add(id(node))
        for sub in _subgraphs(node):
            stack += sub.nodes
    return out


# -- the plugin's inputs and outputs -----------------------------------------------------------------

def _input_specs(params, selected, produced, tensors):
    """[(tensor name, steps)] in the plugin's order."""
    if params.get("inputs"):
        specs = [(i, []) if isinstance(i, str) else (i["tensor"], i.get("steps") or []) for i in params["inputs"]]
    elif params.get("between"):
        specs = [(name, []) for name in params["between"]["inputs"]]
    else:
        seen = []
        for node in selected:
            for t in _reads(node, tensors):
                constant = isinstance(t, gs.Constant) or (t.inputs and t.inputs[0].op == "Constant")
                if t.name not in produced and not constant and t.name not in seen:
                    seen.append(t.name)
        specs = [(name, []) for name in seen]
    for name, _ in specs:
        if name not in tensors:
            raise PassError(f"inputs: no tensor '{name}' in the graph{suggest(name, list(tensors))}")
        if name in produced:
            raise PassError(f"inputs: '{name}' is computed by the nodes being replaced, so the plugin cannot read "
                            f"it; name a tensor outside the selection")
    return specs


def _output_specs(params, selected, produced, inner, graph):
    """[(tensor, dtype, shape, steps)] in the plugin's order; every tensor of the selection that
    is used outside it (or is a graph output) must be among them."""
    graph_outputs = {t.name for t in graph.outputs}
    used_outside = [name for name, t in produced.items()
                    if name in graph_outputs or any(id(c) not in inner for c in t.outputs)]
    given = params.get("outputs") or (params.get("between") or {}).get("outputs") or used_outside
    specs = []
    for item in given:
        spec = {"name": item} if isinstance(item, str) else item
        name = spec["name"]
        if name not in produced:
            raise PassError(f"outputs: '{name}' is not computed by the nodes being replaced"
                            f"{suggest(name, list(produced))}; they compute: {', '.join(produced) or 'nothing'}")
        target, steps = produced[name], spec.get("steps") or []
        dtype = np.dtype(spec["dtype"]) if spec.get("dtype") else _plugin_side_dtype(target, steps)
        shape = spec["shape"] if "shape" in spec else _plugin_side_shape(target, steps)
        if dtype is None:
            raise PassError(f"outputs: the dtype the plugin produces for '{name}' is unknown (shape inference "
                            f"cannot tell{' through a cast step' if steps else ''}); give outputs[].dtype")
        specs.append((target, dtype, shape, steps))
    missing = [n for n in used_outside if n not in {s[0].name for s in specs}]
    if missing:
        users = [c.name for c in produced[missing[0]].outputs if id(c) not in inner]
        raise PassError(f"outputs: '{missing[0]}', computed by the nodes being replaced, is also used outside them "
                        f"({', '.join(users) or 'a graph output'}); list it among outputs, or select its users too")
    return specs


def _plugin_side_dtype(target, steps):
    if any(s["op"] == "cast" for s in steps):
        return None
    return np.dtype(target.dtype) if target.dtype is not None else None


def _plugin_side_shape(target, steps):
    """The target's shape with the transposes of `steps` undone (unknown through a reshape/matmul)."""
    shape = list(target.shape) if target.shape is not None else None
    for step in reversed(steps):
        if shape is None or step["op"] in ("reshape", "matmul"):
            return None
        if step["op"] == "transpose":
            perm, before = step["perm"], [None] * len(step["perm"])
            if len(perm) != len(shape):
                return None
            for axis, p in enumerate(perm):
                before[p] = shape[axis]
            shape = before
    return shape
