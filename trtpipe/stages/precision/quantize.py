"""int8 / fp8 for the precision stage: explicit quantization with Q/DQ nodes.

TensorRT 11 and TensorRT-RTX have no calibrators: an int8 engine comes from an ONNX graph that
already carries QuantizeLinear/DequantizeLinear pairs with their scales. ONNX Runtime's
`quantize_static` (QDQ format) makes them from calibration data, configured for what TensorRT can
fuse (the TensorRT-RTX parser and builder reject anything else):

* symmetric activations and weights (the parser refuses non-zero zero points);
* only Conv, ConvTranspose, Gemm and MatMul are quantized, on their inputs only (a quantized
  constant anywhere but before a DequantizeLinear fails the build), biases stay float;
* the last Conv/Gemm/MatMul before each output (classifier, box/class predictors) and everything
  after it (decoding, NMS) stays float unless the recipe says otherwise, and so do depthwise
  convolutions (memory-bound; TensorRT-RTX stores their int8 weights expanded).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from trtpipe.errors import PassError, RecipeError, ValidationError
from trtpipe.graph.types import convert_opset, opset_of
from trtpipe.recipe.precision import where_prefix
from trtpipe.stages.precision.select import match_nodes

QUANT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
MIN_OPSET = {"int8": 13, "fp8": 19}  # per-channel axis (13); float8 Q/DQ (19)


def quantize(model: onnx.ModelProto, cfg: dict, data_feeds: list[dict[str, np.ndarray]] | None = None, *,
             locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None,
             recipe_dir: str | Path | None = None,
             make_feeds: Callable[[dict], list[dict[str, np.ndarray]]] | None = None,
             ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Q/DQ-quantize `model` per the normalized precision config -> (model, stats part).

    Raises:
        RecipeError: an `exclude_nodes` pattern matching no node or no quantizable layer, nothing
            left to quantize, or unreadable or empty calibration data.
        PassError: the opset conversion or ONNX Runtime's quantization failed, or the result
            breaks a TensorRT Q/DQ rule.
    """
    from onnxruntime import quantization as oq
    log = log or (lambda msg: None)
    mode, notes = cfg["mode"], []
    method = cfg.get("method") or "minmax"
    # fp8 + minmax/entropy/percentile: calibrate int8 ranges, then rescale to fp8 (amax / 448, the
    # recipe TensorRT's own FP8 tools use); ORT's float8 path knows only its `distribution` fit,
    # which clips ReLU outliers hard (resnet50: 23% logit error against 9% with amax scales).
    native_fp8 = mode == "fp8" and method == "distribution"
    # int8 + distribution is refused by recipe.precision.normalize (apply_precision calls it)
    opset = opset_of(model)
    if opset < MIN_OPSET[mode]:
        model = convert_opset(model, MIN_OPSET[mode])
        notes.append(f"opset {opset} -> {MIN_OPSET[mode]} for {mode} Q/DQ")
    names = [n.name for n in model.graph.node]
    if len(set(names)) != len(names) or "" in names:  # ORT selects and excludes nodes by name
        model = copy.deepcopy(model)
        _name_nodes(model.graph)
        names = [n.name for n in model.graph.node]
    op_types = [t for t in QUANT_OPS if t not in cfg["exclude_op_types"]]
    layers = {n.name for n in model.graph.node if n.op_type in QUANT_OPS}
    excluded = {}
    for i, pattern in enumerate(cfg["exclude_nodes"]):
        path = ("precision", "exclude_nodes", i)
        hits = match_nodes([pattern], names, locate, path[:2])
        if not hits & layers:
            raise RecipeError(f"{where_prefix(locate, path)}precision.exclude_nodes[{i}]: '{pattern}' matches "
                              f"{len(hits)} node(s), none of them Conv/ConvTranspose/Gemm/MatMul (the only "
                              f"layers quantized), e.g. {sorted(hits)[0]}")
        excluded.update({n: "exclude_nodes" for n in hits & layers})
    if not cfg["quantize_depthwise"]:
        for name in depthwise_convs(model.graph):
            excluded.setdefault(name, "depthwise conv (quantize_depthwise: false)")
    if cfg["keep_output_layers"]:
        for name in output_layers(model.graph, op_types):
            excluded.setdefault(name, "keep_output_layers: last layer before an output")
    targets = [n for n in model.graph.node if n.op_type in op_types and n.name not in excluded]
    if not targets:
        raise RecipeError(f"{where_prefix(locate, ('precision',))}precision {mode}: nothing left to quantize: the "
                          f"graph has {sum(n.op_type in QUANT_OPS for n in model.graph.node)} "
                          f"Conv/ConvTranspose/Gemm/MatMul node(s) and all are excluded")
    feeds, calib = calibration_feeds(model, cfg, data_feeds, locate=locate, recipe_dir=recipe_dir,
                                     make_feeds=make_feeds)
    if calib["source"] == "random":
        notes.append("calibrated on seeded random data: scales will not fit real inputs; "
                     "declare precision.calibration (images or .npz)")
    qtype = oq.QuantType.QFLOAT8E4M3FN if native_fp8 else oq.QuantType.QInt8
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             "OpTypesToExcludeOutputQuantization": op_types, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
             "CalibPercentile": cfg["percentile"], "DedicatedQDQPair": False}
    methods = {"minmax": oq.CalibrationMethod.MinMax, "entropy": oq.CalibrationMethod.Entropy,
               "percentile": oq.CalibrationMethod.Percentile, "distribution": oq.CalibrationMethod.Distribution}
    log(f"{mode}: calibrating {len(targets)} layer(s) on {len(feeds)} batch(es) of {calib['source']} "
        f"({method})")
    large = model.ByteSize() >= 2**31 - 1
    with tempfile.TemporaryDirectory(prefix="trtpipe-quant-") as tmp, _quiet_ort():
        # A path, not the ModelProto: ORT saves a ModelProto with external data, which rewrites
        # the caller's initializers in place to point at its temporary files.
        in_path, out_path = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "quantized.onnx")
        onnx.save_model(model, in_path, save_as_external_data=large, location="model.onnx.data")
        try:
            oq.quantize_static(in_path, out_path, _Reader(feeds), quant_format=oq.QuantFormat.QDQ,
                               op_types_to_quantize=op_types, per_channel=cfg["per_channel"], reduce_range=False,
                               activation_type=qtype, weight_type=qtype, nodes_to_exclude=sorted(excluded),
                               calibrate_method=methods[method], use_external_data_format=large,
                               extra_options=extra)
        except Exception as err:
            raise PassError(f"precision {mode}: ONNX Runtime quantization failed: {type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from err
        out = onnx.load(out_path)
    _strip_metadata(out)
    if mode == "fp8" and not native_fp8:
        int8_to_fp8(out.graph, model.graph)
    _float_inputs_for_excluded(out.graph, excluded)
    check_trt_rules(out, mode)
    producer = {t: n.op_type for n in out.graph.node for t in n.output}
    quantized = sorted({n.name for n in out.graph.node if n.op_type in op_types
                        and any(producer.get(t) == "DequantizeLinear" for t in n.input[:2])})
    log(f"{mode}: {len(quantized)} layer(s) quantized, {len(excluded)} excluded")
    return out, {"tool": f"onnxruntime.quantization {_ort_version()} (QDQ, symmetric)", "method": method,
                 "per_channel": cfg["per_channel"], "calibration": calib, "quantized_nodes": len(quantized),
                 "excluded": excluded, "notes": notes}


def output_layers(graph: onnx.GraphProto, op_types: Collection[str]) -> list[str]:
    """Names of quantizable nodes from which no other quantizable node is reachable: the layers
    that predict the outputs (classifier, detection box/class predictors)."""
    consumers = collections.defaultdict(list)
    for node in graph.node:
        for t in node.input:
            consumers[t].append(node)
    reaches = {}  # id(node) -> a quantizable node is downstream of it
    for node in reversed(graph.node):  # ONNX orders nodes topologically: consumers come later
        reaches[id(node)] = any(c.op_type in op_types or reaches.get(id(c), False)
                                for t in node.output for c in consumers[t])
    return [n.name for n in graph.node if n.op_type in op_types and not reaches[id(n)]]


def depthwise_convs(graph: onnx.GraphProto) -> list[str]:
    """Conv nodes with one input channel per group (weight shape [C, 1, kh, kw], group > 1)."""
    dims = {t.name: list(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "Conv" and len(n.input) > 1
            and any(a.name == "group" and a.i > 1 for a in n.attribute)
            and len(dims.get(n.input[1], [])) > 1 and dims[n.input[1]][1] == 1]


def calibration_feeds(model: onnx.ModelProto, cfg: dict, data_feeds: list[dict[str, np.ndarray]] | None, *,
                      locate: Callable[[tuple], str] | None = None, recipe_dir: str | Path | None = None,
                      make_feeds: Callable[[dict], list[dict[str, np.ndarray]]] | None = None,
                      ) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Feeds for the final model: the recipe's `calibration` data (through `make_feeds`, which
    the run wires to validation's data loader + input contract, else generated for the final
    model's own inputs), else the validation feeds, else seeded random data."""
    cal = cfg.get("calibration")
    if cal is None and data_feeds:
        return list(data_feeds), {"source": "validation data", "batches": len(data_feeds)}
    declared = cal is not None
    cal = cal or {"seed": 1, "iterations": 16}
    kind = "npz" if cal.get("npz") else "images" if cal.get("images") else "random"
    try:
        if make_feeds is not None and declared:
            feeds = list(make_feeds(cal))
        else:
            from trtpipe.stages.validate.data import make_source_feeds
            feeds, _ = make_source_feeds(cal, _final_inputs(model), {}, base_dir=recipe_dir)
    except (ValidationError, RecipeError) as err:  # the data loader speaks of validate.data; this is calibration
        raise RecipeError(f"{where_prefix(locate, ('precision', 'calibration'))}precision.calibration: "
                          f"{err.message.replace('validate.data.', 'calibration.')}") from None
    if not feeds:
        raise RecipeError(f"{where_prefix(locate, ('precision', 'calibration'))}precision.calibration gave no data")
    info = {"source": kind, "batches": len(feeds)}
    if kind == "random":
        info["seed"] = cal.get("seed", 1)
    for key in ("npz",):
        if cal.get(key):
            info[key] = cal[key]
    if cal.get("images"):
        info["images"] = cal["images"].get("dir")
    return feeds, info


def check_trt_rules(model: onnx.ModelProto, mode: str) -> None:
    """What TensorRT requires of Q/DQ graphs; a violation here is a trt-pipeline bug, named."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    qtypes = (TensorProto.INT8, TensorProto.FLOAT8E4M3FN)
    consumers = collections.defaultdict(list)
    for n in g.node:
        for t in n.input:
            consumers[t].append(n.op_type)
    for name, t in inits.items():
        if t.data_type in qtypes and t.dims and any(c != "DequantizeLinear" for c in consumers[name]):
            raise PassError(f"precision {mode}: quantized constant '{name}' feeds "
                            f"{sorted(set(consumers[name]))}; TensorRT allows it only before DequantizeLinear")
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = inits.get(n.input[1])
        if scale is not None:
            s = numpy_helper.to_array(scale).astype(np.float64)
            if not np.all(np.isfinite(s)) or np.any(s <= 0):
                raise PassError(f"precision {mode}: {n.op_type} '{n.name}' has scale {s.min():g}..{s.max():g}; "
                                "TensorRT needs positive finite scales (did a calibration tensor never change?)")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is not None and np.any(numpy_helper.to_array(zp).astype(np.float32) != 0):
            raise PassError(f"precision {mode}: {n.op_type} '{n.name}' has a non-zero zero point; TensorRT "
                            "supports symmetric quantization only")


def int8_to_fp8(graph: onnx.GraphProto, original: onnx.GraphProto) -> None:
    """Turn symmetric int8 Q/DQ into fp8 (E4M3) Q/DQ with the same clipping range: activation
    scales * 127/448; weights re-quantized from their float originals (amax per channel / 448).
    127 is int8's symmetric maximum, 448 the largest finite float8 E4M3FN value (the ONNX
    FLOAT8E4M3FN type; the amax / 448 scaling is what TensorRT's own FP8 tools use). Modifies
    `graph` in place."""
    import ml_dtypes  # onnx's dependency: numpy has no float8
    f8 = ml_dtypes.float8_e4m3fn
    floats = {t.name: t for t in original.initializer}
    inits = {t.name: i for i, t in enumerate(graph.initializer)}
    arr = lambda name: numpy_helper.to_array(graph.initializer[inits[name]])  # noqa: E731
    new = {}
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or n.input[1] in new:
            continue
        x, s, zp = n.input[0], n.input[1], n.input[2]
        scale = arr(s).astype(np.float32)
        if n.op_type == "DequantizeLinear" and x in inits:  # a weight
            src = floats.get(x[:-len("_quantized")]) if x.endswith("_quantized") else None
            w = numpy_helper.to_array(src) if src is not None else arr(x).astype(np.float32) * scale
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % max(w.ndim, 1)
            shape = [-1 if d == axis else 1 for d in range(w.ndim)] if scale.ndim else []
            amax = np.abs(w).max(axis=tuple(d for d in range(w.ndim) if d != axis)) if scale.ndim else np.abs(w).max()
            scale = np.where(amax > 0, amax / 448.0, 1.0).astype(np.float32)
            new[x] = numpy_helper.from_array((w / scale.reshape(shape)).astype(f8), x)
        else:
            scale = scale * np.float32(127.0 / 448.0)
        new[s] = numpy_helper.from_array(scale, s)
        new[zp] = numpy_helper.from_array(np.zeros(scale.shape, f8), zp)
    for name, tensor in new.items():
        graph.initializer[inits[name]].CopyFrom(tensor)


def _float_inputs_for_excluded(graph, excluded):
    """ORT shares one Q/DQ pair among a tensor's consumers, so an excluded layer reading a tensor
    that a quantized layer also reads would get int8-rounded input: give it the float tensor."""
    producer = {t: n for n in graph.node for t in n.output}
    for node in graph.node:
        if node.name not in excluded:
            continue
        for i, t in enumerate(node.input):
            dq = producer.get(t)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
    used = {t for n in graph.node for t in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "DequantizeLinear" or n.output[0] in used]
    used = {t for n in keep for t in n.input} | {o.name for o in graph.output}
    keep = [n for n in keep if n.op_type != "QuantizeLinear" or n.output[0] in used]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return dict(self.feeds[self.i - 1])

    def __len__(self):
        return len(self.feeds)

    def set_range(self, start_index, end_index):
        self.i = start_index


def _final_inputs(model):
    from trtpipe.stages.validate.data import graph_io
    return graph_io(model.graph)[0]


def _name_nodes(graph):
    seen = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.name or n.op_type}_{i}"
        seen.add(n.name)


def _strip_metadata(model):
    # ORT stamps its own producer/metadata; the pipeline's model keeps its producer's.
    keep = [p for p in model.metadata_props if not p.key.startswith("onnx.quant")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)


@contextlib.contextmanager
def _quiet_ort():
    """ORT's quantizer logs advice through the root logger ('run pre-processing first', ...)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:  # ... and its calibrators print progress to stdout
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logging.disable(previous)


def _ort_version():
    import onnxruntime
    return onnxruntime.__version__
