"""Tensor types of an ONNX graph: inference, counting, and running low-precision graphs in fp32.

Shared by the precision stage (what to convert, what it became) and validation (ONNX Runtime's
CPU kernels lack bf16 Conv and compute fp16 in fp32, so an fp32 twin with rounding is run).
"""

from __future__ import annotations

import collections
import copy
import os
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtpipe.errors import PassError

LOW = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
SHORT = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
         TensorProto.DOUBLE: "fp64", TensorProto.INT8: "int8", TensorProto.UINT8: "uint8",
         TensorProto.FLOAT8E4M3FN: "fp8", TensorProto.INT32: "int32", TensorProto.INT64: "int64",
         TensorProto.BOOL: "bool"}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
_METADATA_OPS = {"Shape", "Size"}


def np_low_dtype(lp: int) -> np.dtype:
    """numpy dtype of an ONNX float type (TensorProto.FLOAT16 -> float16, BFLOAT16 -> ml_dtypes.bfloat16)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(lp))  # bfloat16 comes from ml_dtypes, via onnx


def emulate_in_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """An fp32 twin of an fp16/bf16 graph that ONNX Runtime's CPU kernels can run (it has no bf16
    Conv): every low-precision tensor is computed in fp32 and rounded to its type through a
    Cast pair, weights hold their rounded values. For validating bf16 where no GPU is around."""
    m = copy.deepcopy(model)
    g = m.graph
    lows = set(LOW.values())
    for i, t in enumerate(g.initializer):
        if t.data_type in lows:
            g.initializer[i].CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(t).astype(np.float32), t.name))
    types = infer_types(model)
    nodes, k = [], 0

    def round_trip(src, dst, lp):
        nonlocal k
        k += 1
        mid = f"{dst}__emulated_{k}"
        nodes.append(helper.make_node("Cast", [src], [mid], to=lp, name=f"emulate/{mid}"))
        nodes.append(helper.make_node("Cast", [mid], [dst], to=TensorProto.FLOAT, name=f"emulate/{dst}"))

    for v in g.input:
        lp = v.type.tensor_type.elem_type
        if lp in lows:  # a low-precision graph input: feed fp32, rounded on the way in
            v.type.tensor_type.elem_type = TensorProto.FLOAT
            for n in g.node:
                n.input[:] = [f"{v.name}__fp32in" if t == v.name else t for t in n.input]
            round_trip(v.name, f"{v.name}__fp32in", lp)
    for n in g.node:
        outs = [(i, types.get(t)) for i, t in enumerate(n.output) if types.get(t) in lows]
        for i, lp in outs:
            n.output[i] = f"{n.output[i]}__{SHORT[lp]}"
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i in lows:
                a.i = TensorProto.FLOAT
        nodes.append(n)
        for i, lp in outs:
            round_trip(n.output[i], n.output[i].rsplit("__", 1)[0], lp)
    del g.node[:]
    g.node.extend(nodes)
    for v in g.output:
        if v.type.tensor_type.elem_type in lows:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    del g.value_info[:]
    return m


# ----------------------------------------------------------------------------- graph facts

def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    from onnx import version_converter
    try:
        out = version_converter.convert_version(model, target)
    except Exception as err:
        raise PassError(f"precision: cannot convert the model from opset {opset_of(model)} to {target}: "
                        f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from err
    out.ir_version = max(out.ir_version, helper.find_min_ir_version_for(list(out.opset_import), True))
    return out


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> elem_type, from inputs, outputs, value_info, initializers, Constants."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)
             if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return {k: v for k, v in types.items() if v}


def data_path(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from the graph inputs' values (not only from their shapes)."""
    inits = {t.name for t in graph.initializer}
    data = {v.name for v in graph.input if v.name not in inits}
    for node in graph.node:
        if node.op_type not in _METADATA_OPS and any(t in data for t in node.input):
            data.update(t for t in node.output if t)
    return data


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read inside Loop/If/Scan bodies (outer-scope tensors must keep their type)."""
    names = set()
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= {t for n in sub.node for t in n.input} | subgraph_reads(sub)
    return names


def activation_ranges(model: onnx.ModelProto, names: Collection[str],
                      feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |x| per tensor over `feeds`, running the fp32 model with ONNX Runtime (CPU)."""
    import tempfile

    import onnxruntime as ort
    g = model.graph
    have, count = {o.name for o in g.output}, len(g.output)
    g.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    tmp = None
    try:  # extra outputs only while serializing: no copy of the weights
        if sum(len(t.raw_data) for t in g.initializer) < 2**31 - 2**26:
            blob = model.SerializeToString()
        else:  # protobuf's 2 GB limit: ORT reads it from a file with external data
            tmp = tempfile.TemporaryDirectory(prefix="trtpipe-guard-")
            blob = os.path.join(tmp.name, "model.onnx")
            onnx.save_model(model, blob, save_as_external_data=True, location="model.onnx.data")
    finally:
        del g.output[count:]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
        out_names = [o.name for o in sess.get_outputs()]
        inputs = [i.name for i in sess.get_inputs()]
        maxabs = {}
        for feed in feeds:
            values = sess.run(out_names, {k: feed[k] for k in inputs if k in feed})
            for name, val in zip(out_names, values):
                if name in names and np.issubdtype(val.dtype, np.floating) and val.size:
                    maxabs[name] = max(maxabs.get(name, 0.0), float(np.max(np.abs(val))))
    except Exception as err:
        raise PassError(f"precision: overflow guard: ONNX Runtime could not run the fp32 model on the "
                        f"validation data: {str(err).strip().splitlines()[0]}") from None
    finally:
        if tmp is not None:
            tmp.cleanup()
    return maxabs


def skeleton(model: onnx.ModelProto, limit: int = 4096) -> onnx.ModelProto:
    """A copy without the large weights (they become typed graph inputs): shape inference and
    the checker's type rules need their types and shapes, not their bytes."""
    m = onnx.ModelProto()
    m.ir_version, m.producer_name = max(model.ir_version, 4), model.producer_name
    m.opset_import.extend(model.opset_import)
    g, src = m.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    big = [t for t in src.initializer if np.prod(t.dims, dtype=np.int64) > limit]
    bigs = {t.name for t in big}
    g.initializer.extend(t for t in src.initializer if t.name not in bigs)
    g.input.extend(v for v in src.input if v.name not in bigs)
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    m.functions.extend(model.functions)
    return m


def infer_types(model: onnx.ModelProto, strict: bool = False) -> dict[str, int]:
    """Shape inference on the skeleton -> tensor name -> elem_type."""
    typed = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=strict, data_prop=True)
    return tensor_types(typed)


def precision_counts(model: onnx.ModelProto) -> dict[str, Any]:
    """Nodes per compute type, initializers per type, Q/DQ pairs and Casts of a model."""
    try:
        types = infer_types(model)
    except Exception:  # counting must not fail where inference does; untyped tensors count as other
        types = tensor_types(model)
    nodes, inits, casts = collections.Counter(), collections.Counter(), collections.Counter()
    consumers = collections.defaultdict(list)
    g = model.graph
    for n in g.node:
        for t in n.input:
            consumers[t].append(n.op_type)
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            key = SHORT.get(types.get(n.output[0]), "other")
        elif n.op_type == "DequantizeLinear":
            key = SHORT.get(types.get(n.input[0]), "other")
        else:
            floats = [types[t] for t in n.output if types.get(t) in FLOAT_TYPES]
            key = SHORT[floats[0]] if floats else "other"
        nodes[key] += 1
        if n.op_type == "Cast":
            casts[f"{SHORT.get(types.get(n.input[0]), '?')}->{SHORT.get(types.get(n.output[0]), '?')}"] += 1
        if n.op_type == "Constant":
            inits.update(SHORT.get(a.t.data_type, str(a.t.data_type)) for a in n.attribute if a.name == "value")
    params = {t for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for t in n.input[1:]}
    inits.update(SHORT.get(t.data_type, helper.tensor_dtype_to_string(t.data_type).split(".")[-1].lower())
                 for t in g.initializer if t.name not in params)  # scales/zero points: see qdq_pairs
    init_names = {t.name for t in g.initializer}
    return {"nodes": dict(sorted(nodes.items())), "initializers": dict(sorted(inits.items())),
            "qdq_pairs": sum(1 for n in g.node if n.op_type == "QuantizeLinear"
                             and "DequantizeLinear" in consumers[n.output[0]]),
            "weight_dq": sum(1 for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in init_names),
            "casts": dict(sorted(casts.items()))}


# ----------------------------------------------------------------------------- recipe helpers
