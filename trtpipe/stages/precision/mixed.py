"""Stage 4: realize the recipe's `precision` in the ONNX graph, before the build.

TensorRT 11 and TensorRT-RTX are strongly typed: there are no FP16/INT8 builder flags and no
calibrators, every layer runs in the types the ONNX graph gives it. So precision is a graph
rewrite, done here and recorded in the report:

* `fp16` / `bf16`: mixed precision. Float tensors on the data path (computed from the model
  inputs) become fp16/bf16 and their weights are converted; Casts are inserted where that meets
  what stays fp32: numerically sensitive op types (`keep_op_types`), nodes named in `keep_nodes`,
  nodes whose activations leave the fp16 range on the validation data (the overflow guard), ops
  whose ONNX schema has no such variant, control flow, and shape arithmetic (Shape -> Cast ->
  Mul -> Cast chains keep exact integers). Which inputs may change type comes from the ONNX op
  schemas' type constraints, not from a hand-kept table (Resize's `scales` stay float32, ...).
* `int8` / `fp8`: explicit quantization with Q/DQ nodes, see trtpipe/quantize.py.

`apply_precision` is the stage's entry point; `precision_counts` describes any model's types.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtpipe.cache.files import external_files, external_tensor, read_tensor, save_model
from trtpipe.graph.check import check_rewritten  # the same check every pass output gets
from trtpipe.graph.types import (
    LOW,
    SHORT,
    activation_ranges,
    convert_opset,
    data_path,
    infer_types,
    np_low_dtype,
    opset_of,
    precision_counts,
    subgraph_reads,
)
from trtpipe.graph.types import emulate_in_fp32 as _emulate_in_fp32
from trtpipe.recipe.precision import check_targets, normalize
from trtpipe.stages.precision.select import check_op_types, match_nodes

__all__ = ["apply_precision", "normalize", "check_targets", "emulate_in_fp32", "precision_counts"]

FP16_MAX = 65504.0    # largest finite IEEE 754 binary16 value
BF16_OPSET = 22       # Conv, pooling, ... have bf16 variants only from ai.onnx opset 22
GUARD_SAMPLES = 8     # the overflow guard looks at this many feeds at most
# Shape/Size read only metadata: what they compute from is not data (keeps shape arithmetic exact).
_ATTR_TYPED = {"ConstantOfShape", "EyeLike", "RandomNormalLike", "RandomUniformLike", "Bernoulli",
               "Multinomial", "RandomNormal", "RandomUniform"}


def apply_precision(model: onnx.ModelProto, precision_cfg: str | dict | None, *,
                    compute_capabilities: list[str] | None,
                    data_feeds: list[dict[str, np.ndarray]] | None,
                    locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None,
                    recipe_dir: str | Path | None = None,
                    make_feeds: Callable[[dict], list[dict[str, np.ndarray]]] | None = None,
                    scratch_dir: str | Path | None = None,
                    ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Rewrite `model` (not modified) to the recipe's precision (stage 4).

    TensorRT 11 and TensorRT-RTX are strongly typed (no precision builder flags, no calibrators),
    so the precision is realized in the graph: fp16/bf16 as mixed precision with Casts, int8/fp8
    as explicit QuantizeLinear/DequantizeLinear pairs (ONNX Runtime's quantize_static, QDQ format,
    symmetric, as TensorRT fuses them). bf16 needs ai.onnx opset 22 (the model is converted up).

    Args:
        model: the model after the passes.
        precision_cfg: the recipe's `precision` (a mode name, a mapping, or None for fp32);
            normalized here (`fp16` and `{mode: fp16}` are the same).
        compute_capabilities: TensorRT-RTX build targets ("8.9", ...), checked against the mode
            (e.g. fp8 needs 8.9 or later); empty or None on tensorrt.
        data_feeds: the validation data for the final model, one {input name: array} per batch
            (shapes and dtypes of the final model's inputs); drives the fp16 overflow guard (at
            most GUARD_SAMPLES feeds; nodes reading or producing a tensor whose max |x| exceeds
            `overflow_threshold` stay fp32) and, when
            the recipe declares no `calibration`, int8/fp8 calibration. None: no data (the guard
            is skipped; calibration falls back to seeded random data).
        locate: recipe key path -> "file:line:col", so messages point at the recipe line.
        log: optional sink for detail lines.
        recipe_dir: base directory of relative calibration data paths.
        make_feeds: `make_feeds(calibration_cfg)` turns a declared `precision.calibration`
            (validate.data's form, for the source model) into final-model feeds; None: the data is
            made for the final model's inputs directly.
        scratch_dir: where fp16/bf16 weights converted from external data are written, tensor
            by tensor (the result refers to them there; trtpipe.cache.files.save_model stores
            them); default a temporary directory that lives as long as the process.

    Returns:
        (the rewritten model, or `model` itself for fp32; stats): `mode`, `config` (normalized),
        `before` (precision_counts of the input), node and initializer counts per type, Q/DQ
        pairs and Casts of the result, and per mode what was converted or quantized, what was
        kept in fp32 and why, the overflow guard's or calibration's summary, `io_types_changed`
        and notes.

    Raises:
        RecipeError: options of another mode; a mode the build targets cannot run; a
            `keep_op_types` entry ONNX does not define; a `keep_nodes` / `exclude_nodes` pattern
            that matches no node (or no quantizable layer); nothing left to quantize; calibration
            data that cannot be read or is empty.
        PassError: the opset conversion failed; ONNX Runtime could not run the overflow guard or
            the quantization; the Q/DQ graph breaks a TensorRT rule; the rewritten graph fails
            onnx.checker or strict shape inference (a trt-pipeline bug).
    """
    log = log or (lambda msg: None)
    cfg = normalize(precision_cfg, locate)
    mode = cfg["mode"]
    check_targets(mode, compute_capabilities, locate)
    stats = {"mode": mode, "config": cfg, "before": precision_counts(model)}
    if mode == "fp32":
        out = model
    elif mode in LOW:
        out, part = convert_float(model, cfg, data_feeds, locate=locate, log=log, scratch_dir=scratch_dir)
        stats.update(part)
    else:
        from trtpipe.stages.precision.quantize import quantize
        out, part = quantize(model, cfg, data_feeds, locate=locate, log=log, recipe_dir=recipe_dir,
                             make_feeds=make_feeds)
        stats.update(part)
    # fp32 leaves the model as it is: its counts are the ones just taken (no second shape inference)
    stats.update(precision_counts(out) if out is not model else stats["before"])
    if out is not model:  # fp32 changes nothing: the graph was checked after the last pass
        _check(out, mode)
    return out, stats


# ----------------------------------------------------------------------------- fp16 / bf16

def convert_float(model: onnx.ModelProto, cfg: dict, data_feeds: list[dict[str, np.ndarray]] | None = None, *,
                  locate: Callable[[tuple], str] | None = None,
                  log: Callable[[str], Any] | None = None,
                  scratch_dir: str | Path | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Mixed-precision rewrite (fp16 or bf16) -> (model, stats part). Weights in external data
    (trtpipe.cache.files.load_model) are read, converted and written to `scratch_dir` one
    tensor at a time: the model's weights are never all in memory."""
    log = log or (lambda msg: None)
    mode, lp = cfg["mode"], LOW[cfg["mode"]]
    notes = []
    model = copy.deepcopy(model)
    opset = opset_of(model)
    if mode == "bf16" and opset < BF16_OPSET:
        model = convert_opset(model, BF16_OPSET)
        notes.append(f"opset {opset} -> {BF16_OPSET}: ONNX defines bf16 Conv/pooling from opset {BF16_OPSET}")
        opset = BF16_OPSET
    g = model.graph
    types = infer_types(model)
    inits = {t.name: t for t in g.initializer}
    names = [n.name for n in g.node]
    keep_ops = check_op_types(cfg["keep_op_types"], locate, ("precision", "keep_op_types"))
    keep_nodes = match_nodes(cfg["keep_nodes"], names, locate, ("precision", "keep_nodes"))
    data = data_path(g)
    pinned = subgraph_reads(g)
    guard, maxabs = {"enabled": False}, {}
    if mode == "fp16" and cfg["overflow_guard"]:
        feeds = (data_feeds or [])[:GUARD_SAMPLES]
        if feeds:
            watch = [t for t in data if types.get(t) == TensorProto.FLOAT]
            maxabs = (_ranges_from_file(model, watch, feeds) if external_files(model)
                      else activation_ranges(model, watch, feeds))
            guard = {"enabled": True, "samples": len(feeds), "threshold": cfg["overflow_threshold"],
                     "max_abs": max(maxabs.values(), default=0.0)}
        else:
            guard = {"enabled": False, "reason": "no validation data to measure activations on"}
            notes.append("overflow guard skipped: no validation data")
    elif mode == "bf16":
        guard = {"enabled": False, "reason": "bf16 has the fp32 exponent range"}

    plan, kept = {}, {}
    for idx, node in enumerate(g.node):
        f32_in = [i for i, t in enumerate(node.input) if t and types.get(t) == TensorProto.FLOAT]
        f32_out = [i for i, t in enumerate(node.output) if t and types.get(t) == TensorProto.FLOAT]
        if not (f32_in or f32_out) or not any(t in data for t in node.input):
            continue  # no float work on the data path (shape arithmetic, constants)
        why = _keep_reason(node, keep_ops, keep_nodes, pinned, cfg)
        positions = None
        if why is None:
            positions, why = lp_positions(node, opset, lp, f32_in, f32_out)
        if why is None:
            why = _range_reason(node, maxabs, inits, cfg, mode, positions)
        if why:
            kept[node.name or f"#{idx} {node.op_type}"] = why
        else:
            plan[idx] = (positions, f32_out)
    io_before = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output)}
    stream = _LowWriter(scratch_dir) if external_files(model) else None
    try:
        casts = _rewrite(model, plan, types, data, pinned, lp, mode, cfg["keep_io_types"], stream)
    finally:
        if stream is not None:
            stream.close()
    # with keep_io_types false callers feed/read these in the new type (validation casts its data)
    io_changed = {v.name: SHORT[lp] for v in list(g.input) + list(g.output)
                  if io_before.get(v.name) != v.type.tensor_type.elem_type}
    if model.ir_version < (min_ir := helper.find_min_ir_version_for(list(model.opset_import), True)):
        model.ir_version = min_ir
    reasons = collections.Counter(r.split(":")[0] for r in kept.values())
    log(f"{mode}: {len(plan)} node(s) converted, {len(kept)} kept in fp32, {casts} cast(s) added")
    return model, {"tool": f"trtpipe mixed precision (onnx {onnx.__version__} type constraints)",
                   "converted_nodes": len(plan), "kept_fp32": kept, "kept_reasons": dict(reasons),
                   "casts_added": casts, "io_types_changed": io_changed, "overflow_guard": guard,
                   "opset": opset, "notes": notes}


def _keep_reason(node, keep_ops, keep_nodes, pinned, cfg):
    if node.op_type in keep_ops:
        return "keep_op_types"
    if node.name in keep_nodes:
        return "keep_nodes"
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return "control flow: its subgraph stays fp32"
    if any(t in pinned for t in node.output):
        return "control flow: a subgraph reads its output"
    if node.op_type in _ATTR_TYPED:
        return "output type set by an attribute"
    return None


def lp_positions(node: onnx.NodeProto, opset: int, lp: int, f32_in: list[int],
                 f32_out: list[int]) -> tuple[list[int] | None, str | None]:
    """(input positions to convert, None) or (None, reason to keep fp32), from the op schema's
    type constraints: a float input bound to a fixed `tensor(float)` keeps its type."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return None, f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op_type} (custom op)"
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    target = f"tensor({helper.tensor_dtype_to_string(lp).split('.')[-1].lower()})"

    def formal(params, i):
        if i < len(params):
            return params[i].type_str
        variadic = params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic
        return params[-1].type_str if variadic else None

    out_types = set()
    for i in f32_out:
        ts = formal(schema.outputs, i)
        if ts not in allowed or target not in allowed[ts]:
            return None, f"ONNX {node.op_type} (opset {opset}) has no {SHORT[lp]} variant"
        out_types.add(ts)
    positions = []
    for i in f32_in:
        ts = formal(schema.inputs, i)
        if ts in allowed and target in allowed[ts]:
            positions.append(i)
        elif ts in out_types:  # e.g. an fp32 input that must match a converted output's type
            return None, f"ONNX {node.op_type} (opset {opset}) has no {SHORT[lp]} variant"
        # else a separately typed input (Resize roi/scales): it keeps fp32
    return positions, None


def _range_reason(node, maxabs, inits, cfg, mode, positions):
    if mode != "fp16":
        return None
    for i in positions or ():
        init = inits.get(node.input[i])
        if init is not None and init.data_type == TensorProto.FLOAT:
            big = float(np.max(np.abs(read_tensor(init)), initial=0.0))  # one tensor at a time
            if big > FP16_MAX:
                return f"weights: |w| reaches {big:.3g} (tensor '{init.name}'), beyond fp16's {FP16_MAX:g}"
    limit = cfg["overflow_threshold"]
    for t in list(node.input) + list(node.output):
        if maxabs.get(t, 0.0) > limit:
            return (f"overflow guard: |x| reaches {maxabs[t]:.3g} on tensor '{t}' "
                    f"(threshold {limit:g}, fp16 max {FP16_MAX:g})")
    return None


def _rewrite(model, plan, types, data, pinned, lp, mode, keep_io, stream=None):
    """Apply the plan in one pass over the (topologically ordered) nodes; Casts are created
    just before their first consumer. Returns how many Casts were added."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    used = {t for n in g.node for t in list(n.input) + list(n.output)} | set(inits)
    used |= {v.name for v in list(g.input) + list(g.output)}
    outputs = {o.name for o in g.output}
    lowered, to_low, to_f32, renamed = set(), {}, {}, {}
    nodes, added = [], [0]

    def fresh(base):
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    def cast(src, dst_base, to):
        dst = fresh(dst_base)
        nodes.append(helper.make_node("Cast", [src], [dst], to=to, name=fresh(f"precision/{dst}")))
        added[0] += 1
        return dst

    def low(t):
        if t in lowered:
            return renamed.get(t, t)
        if t not in to_low:
            init = inits.get(t)
            if init is not None:  # weights: convert once (round to nearest even)
                arr = read_tensor(init).astype(np_low_dtype(lp))
                if stream is not None and init.data_location == TensorProto.EXTERNAL:
                    new = stream.write(arr, fresh(f"{t}_{mode}"), lp)  # streamed to disk
                else:
                    new = numpy_helper.from_array(arr, fresh(f"{t}_{mode}"))
                del arr
                g.initializer.append(new)
                to_low[t] = new.name
            else:
                to_low[t] = cast(t, f"{t}_{mode}", lp)
        return to_low[t]

    def f32(t):
        if t not in lowered or t in renamed:
            return t  # a renamed graph output already has its fp32 Cast under the original name
        if t not in to_f32:
            to_f32[t] = cast(t, f"{t}_fp32", TensorProto.FLOAT)
        return to_f32[t]

    if not keep_io:  # the graph's float inputs themselves become low precision
        for v in g.input:
            if v.name in data and v.name not in pinned and v.type.tensor_type.elem_type == TensorProto.FLOAT:
                v.type.tensor_type.elem_type = lp
                lowered.add(v.name)
    for idx, node in enumerate(list(g.node)):
        if idx in plan:
            positions, outs = plan[idx]
            for i, t in enumerate(node.input):
                if t:
                    node.input[i] = low(t) if i in positions else f32(t)
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = lp
            nodes.append(node)
            for i in outs:
                t = node.output[i]
                lowered.add(t)
                if keep_io and t in outputs:  # the graph output keeps its name and fp32 type
                    renamed[t] = node.output[i] = fresh(f"{t}_{mode}")
                    nodes.append(helper.make_node("Cast", [renamed[t]], [t], to=TensorProto.FLOAT,
                                                  name=fresh(f"precision/{t}")))
                    added[0] += 1
        else:
            for i, t in enumerate(node.input):
                if t in lowered:
                    node.input[i] = f32(t)
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    if not keep_io:
        for v in g.output:
            if v.name in lowered:
                v.type.tensor_type.elem_type = lp
    needed = {t for n in g.node for t in n.input} | outputs
    keep = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(keep)
    inputs = [v for v in g.input if v.name not in inits or v.name in needed]  # IR<4 lists weights as inputs
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]  # stale types; shape inference recomputes them
    return added[0]


_SCRATCH = []


def emulate_in_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """trtpipe.graph.types.emulate_in_fp32 (an fp32 twin of an fp16/bf16 graph for ONNX Runtime),
    with weights in external data converted one tensor at a time into a scratch data file (the
    twin refers to them there) rather than all in memory.

    Args:
        model: the fp16/bf16 model (not modified).

    Returns:
        The twin; its external weights live in a temporary directory kept until the process ends.
    """
    if not external_files(model):
        return _emulate_in_fp32(model)
    # External low-precision weights become typed graph inputs for the rewrite (it rounds such
    # inputs through a Cast pair: a no-op on values already in fp16/bf16), then fp32 weights again.
    lows = set(LOW.values())
    light = copy.deepcopy(model)  # graph only: the weights are references
    g = light.graph
    moved = [t for t in g.initializer if t.data_type in lows and t.data_location == TensorProto.EXTERNAL]
    names = {t.name for t in moved}
    keep = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    twin = _emulate_in_fp32(light)
    inputs = [v for v in twin.graph.input if v.name not in names]
    del twin.graph.input[:]
    twin.graph.input.extend(inputs)
    stream = _LowWriter(None)
    try:
        for t in moved:  # one tensor at a time, into the scratch file
            arr = read_tensor(t).astype(np.float32)
            twin.graph.initializer.append(stream.write(arr, t.name, TensorProto.FLOAT))
            del arr
    finally:
        stream.close()
    return twin


class _LowWriter:
    """Appends converted weights to one data file and returns external references to them."""

    def __init__(self, scratch_dir):
        import tempfile
        if scratch_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="trtpipe-precision-")
            _SCRATCH.append(tmp)  # the returned model refers to it: kept until the process ends
            scratch_dir = tmp.name
        self.path = Path(scratch_dir).resolve() / "converted.data"
        self.file = open(self.path, "wb")
        self.pos = 0

    def write(self, arr, name, data_type):
        pad = -self.pos % 4096
        self.file.write(b"\0" * pad)
        self.pos += pad
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        self.file.write(raw)
        t = external_tensor(name, data_type, list(arr.shape), self.path, self.pos, len(raw))
        self.pos += len(raw)
        return t

    def close(self):
        self.file.close()


def _ranges_from_file(model, names, feeds):
    """activation_ranges for a model whose weights stay in external data: ONNX Runtime reads
    them from a saved copy (data hard-linked where possible), never from a serialized blob."""
    import tempfile

    import onnxruntime as ort

    from trtpipe.errors import PassError
    probe = copy.deepcopy(model)  # graph only: the weights are references
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names
                              if n not in have)
    with tempfile.TemporaryDirectory(prefix="trtpipe-guard-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(probe, path, link_from="/")
        del probe
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            out_names = [o.name for o in sess.get_outputs()]
            inputs = [i.name for i in sess.get_inputs()]
            maxabs = {}
            for feed in feeds:
                for name, val in zip(out_names, sess.run(out_names, {k: feed[k] for k in inputs if k in feed})):
                    if name in names and np.issubdtype(val.dtype, np.floating) and val.size:
                        maxabs[name] = max(maxabs.get(name, 0.0), float(np.max(np.abs(val))))
        except Exception as err:
            raise PassError(f"precision: overflow guard: ONNX Runtime could not run the fp32 model on the "
                            f"validation data: {str(err).strip().splitlines()[0]}") from None
        del sess
    return maxabs


def _check(model, mode):
    """The rewritten graph must still be valid ONNX (a failure here is a trt-pipeline bug)."""
    check_rewritten(model, f"precision {mode}")
