"""The fold check: does the folded graph still compute what the unfolded one computed?

A cheap net for faults like graphsurgeon's cast elision (fold_guard.py): `tidy.fold_to_fixpoint`
keeps the graph `before_folding`; after folding, `check_outputs` runs both graphs in ONNX Runtime
on seeded random inputs and compares their outputs when the graph is small enough to run twice
quickly (the `CHECK_*` limits); a difference raises PassError naming the pass and the output.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.graph.fold_guard import fold_graphs, np_dtype

# The check runs only when the graph is small enough to run twice quickly, before and after
# folding (graphs that build their weights in-graph, like the onnx wheel's light models, are small
# before and large after).
# The two single-threaded ORT runs cost roughly 0.1 s per MiB of conv weights (light_squeezenet,
# 4 MiB: +0.25 s; light_densenet121, 31 MiB: +4 s, not checked), hence the weight limit.
CHECK_MAX_NODES = 2000               # nodes, Loop/If bodies and functions included
CHECK_MAX_CONSTANT_BYTES = 16 << 20  # constants (weights), before and after folding
CHECK_MAX_VALUE_BYTES = 64 << 20     # all other values of known shape (activations), likewise
CHECK_MAX_FEED_BYTES = 8 << 20       # random inputs, all together
CHECK_DYNAMIC_DIM = 3                # fed for every dynamic dim (not 1: no broadcasting, int(3 * 0.5) != 0)
CHECK_SEED = 0
# Outputs compared: ints/bools exactly, floats with these (ulp noise of a differently scheduled
# computation; a value-changing fold is orders of magnitude off, or a different shape).
CHECK_TOLERANCES = {2: (1e-2, 1e-3), 4: (1e-4, 1e-5), 8: (1e-4, 1e-5)}  # itemsize -> (rtol, atol)
_NONDETERMINISTIC_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                                   "Multinomial", "Bernoulli"})


def _export_for_ort(graph: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(graph)
    model.ir_version = max(model.ir_version, 4)  # as the pass runner exports (IR 3 model-zoo graphs)
    return model


def _random_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray] | str:
    """Seeded random values for the graph inputs (dynamic dims = CHECK_DYNAMIC_DIM), or why not."""
    rng = np.random.default_rng(CHECK_SEED)
    inits = {i.name for i in model.graph.initializer}
    feeds, total = {}, 0
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if not inp.type.HasField("tensor_type"):
            return f"input '{inp.name}' is not a tensor"
        t = inp.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else CHECK_DYNAMIC_DIM
                 for d in t.shape.dim]
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, TypeError, ValueError):
            return f"input '{inp.name}' has element type {t.elem_type}"
        if dtype.kind == "f" and dtype.itemsize in (2, 4, 8):
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            value = rng.integers(0, 4, size=shape).astype(dtype)  # small: also valid as indices
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        else:
            return f"input '{inp.name}' has dtype {dtype}"
        total += value.nbytes
        if total > CHECK_MAX_FEED_BYTES:
            return f"inputs above {CHECK_MAX_FEED_BYTES} bytes"
        feeds[inp.name] = value
    return feeds


def _ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, object]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs() if i.name in feeds})))


def _bytes_of(tensor: gs.Tensor) -> int:
    """A tensor's size from its dtype and shape (dynamic dims = CHECK_DYNAMIC_DIM); 0 when unknown."""
    dtype = np_dtype(tensor.dtype)
    if dtype is None or tensor.shape is None:
        return 0
    return math.prod(d if isinstance(d, int) and d >= 0 else CHECK_DYNAMIC_DIM for d in tensor.shape) * dtype.itemsize


def _too_big(graph: gs.Graph) -> str | None:
    """Why the check would not run quickly on `graph` (CHECK_* limits), or None."""
    graphs = fold_graphs(graph)
    nodes = sum(len(g.nodes) for g in graphs)
    if nodes > CHECK_MAX_NODES:
        return f"{nodes} nodes (> {CHECK_MAX_NODES})"
    if any(n.op in _NONDETERMINISTIC_OPS for g in graphs for n in g.nodes):
        return "random ops"
    tensors = {id(t): t for g in graphs for t in g.tensors().values()}.values()
    constants = sum(_bytes_of(t) for t in tensors if isinstance(t, gs.Constant))
    constants += sum(_bytes_of(n.attrs["value"]) for g in graphs for n in g.nodes
                     if n.op == "Constant" and isinstance(n.attrs.get("value"), gs.Constant))
    if constants > CHECK_MAX_CONSTANT_BYTES:
        return f"constants above {CHECK_MAX_CONSTANT_BYTES >> 20} MiB"
    values = sum(_bytes_of(t) for t in tensors if not isinstance(t, gs.Constant))
    if values > CHECK_MAX_VALUE_BYTES:
        return f"values of known shape above {CHECK_MAX_VALUE_BYTES >> 20} MiB"
    return None


def before_folding(graph: gs.Graph) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | str:
    """The unfolded graph and the random feeds to check its folding with, or why it is not checked."""
    reason = _too_big(graph)
    if reason:
        return reason
    try:
        model = _export_for_ort(graph)
    except Exception as err:  # the runner's checks report graphs that cannot be exported
        return f"graph not exportable ({type(err).__name__})"
    if model.ByteSize() > CHECK_MAX_CONSTANT_BYTES:  # e.g. sparse or attribute data not counted above
        return f"model above {CHECK_MAX_CONSTANT_BYTES >> 20} MiB"
    feeds = _random_feeds(model)
    return feeds if isinstance(feeds, str) else (model, feeds)


def _difference(ref: object, got: object) -> str | None:
    """How `got` differs from `ref`, or None (same within CHECK_TOLERANCES; non-tensors not compared)."""
    if not isinstance(ref, np.ndarray):
        return None
    if not isinstance(got, np.ndarray):
        return f"{type(got).__name__} instead of a tensor"
    if ref.dtype != got.dtype:
        return f"dtype {got.dtype} differs from the unfolded graph's {ref.dtype}"
    if ref.shape != got.shape:
        return f"shape {list(got.shape)} differs from the unfolded graph's {list(ref.shape)}"
    if ref.dtype.kind == "f":
        rtol, atol = CHECK_TOLERANCES.get(ref.dtype.itemsize, (1e-4, 1e-5))
        if np.allclose(got, ref, rtol=rtol, atol=atol, equal_nan=True):
            return None
        with np.errstate(invalid="ignore"):
            worst = float(np.nanmax(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        return f"values differ (max abs difference {worst:g}, rtol {rtol:g}, atol {atol:g})"
    if np.array_equal(got, ref):
        return None
    diff = np.flatnonzero(got.reshape(-1) != ref.reshape(-1))
    i = int(diff[0])
    return (f"{diff.size} of {ref.size} values differ (first at flat index {i}: "
            f"{got.reshape(-1)[i]!r} instead of {ref.reshape(-1)[i]!r})")


def check_outputs(reference: tuple[onnx.ModelProto, dict] | str, graph: gs.Graph, pass_name: str) -> str:
    """Run the unfolded and the folded graph and compare their outputs; a status line, or PassError."""
    if isinstance(reference, str):
        return f"outputs not checked after folding: {reference}"
    reason = _too_big(graph)  # the folded graph: materialized constants count now
    if reason:
        return f"outputs not checked after folding: {reason}"
    source, feeds = reference
    try:
        expected = _ort_run(source, feeds)
    except Exception as err:  # custom ops, inputs that must hold particular values, no onnxruntime...
        return f"outputs not checked after folding: ONNX Runtime cannot run the unfolded graph ({type(err).__name__})"
    where = (f"ONNX Runtime, seeded random inputs (seed {CHECK_SEED}, dynamic dims {CHECK_DYNAMIC_DIM}): "
             + (", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items()) or "none"))
    try:
        model = _export_for_ort(graph)
    except Exception:  # the pass runner names an unexportable graph itself
        return "outputs not checked after folding: the folded graph is not exportable"
    try:
        got = _ort_run(model, feeds)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PassError(f"constant folding in pass '{pass_name}' left a graph ONNX Runtime cannot run, the "
                        f"unfolded one ran ({where}): {reason}") from err
    for name, ref in expected.items():
        problem = "missing after folding" if name not in got else _difference(ref, got[name])
        if problem:
            raise PassError(f"constant folding in pass '{pass_name}' changed output '{name}': {problem} "
                            f"({where}). "
                            "Folding must not change what the graph computes: this is a folding bug, "
                            "please report it with the model")
    return f"outputs unchanged by folding ({where})"
