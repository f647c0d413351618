"""Precision stage (trtpipe/precision.py + trtpipe/quantize.py) on real models, real builds.

Models:
* onnx's light resnet50. Its weights are ConstantOfShape fills made in-graph (constant values,
  useless for numerics), so each generator is materialized as a seeded random initializer of its
  shape: what constant folding would give, with values that make accuracy checks mean something.
* the effdet demo detector (models/make_effdet_demo.py, 128x128) converted by tf2onnx, then cut
  the way the passes hand it to the build: float NCHW input instead of the preprocessing Loop,
  raw boxes/scores outputs (no NMS), TF's nearest resize made TensorRT-compatible.

Every fp16/bf16/int8 graph is built with TensorRT-RTX for SM 8.9 (ahead of time, on CPU).
Accuracy is ONNX Runtime (CPU), fp32 model vs converted model on the same data, with TOLERANCES:
fp16/bf16 graphs are run through `emulate_in_fp32` (every low-precision tensor rounded to its
type): ORT's CPU kernels would otherwise compute fp16 in fp32 (hiding overflow) and have no bf16
Conv at all (checked below).
"""

import hashlib
import json
import os
import pathlib
from importlib import metadata

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests import helpers
from trtpipe.errors import RecipeError
from trtpipe.stages.precision.mixed import apply_precision, emulate_in_fp32, normalize

LIGHT_RESNET = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx")
DET_SIZE = 128

# Largest max |converted - fp32| allowed per output on these seeded models and data. resnet's
# output is a softmax over 1000 classes, the detector's boxes are about [-3, 3], scores sigmoids.
# Measured: fp16 ~1e-3, bf16 ~1e-2 (8-bit mantissa), int8 ~1e-2, fp8 ~3e-2 (3-bit mantissa).
TOLERANCES = {
    "fp16": {"resnet": 2e-3, "boxes": 5e-3, "scores": 1e-3},
    "bf16": {"resnet": 1e-2, "boxes": 5e-2, "scores": 1e-2},
    "int8": {"resnet": 3e-2, "boxes": 2e-2, "scores": 1e-2},
    "fp8": {"boxes": 5e-2, "scores": 2e-2},
}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def build(rtx, tmp_path_factory):
    from trtpipe.stages.build.plan import build_plan
    folder = tmp_path_factory.mktemp("plans")

    def run(model, name, cc="8.9"):
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        return build_plan(str(path), {"compute_capabilities": [cc]}, rtx)
    return run


def light_resnet50(seed=0):
    model = onnx.load(LIGHT_RESNET)
    g = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    rng = np.random.default_rng(seed)
    fills = {n.output[0]: [int(d) for d in shapes[n.input[0]]] for n in g.node if n.op_type == "ConstantOfShape"}
    role = {}
    for n in g.node:
        for i, t in enumerate(n.input):
            role.setdefault(t, (n.op_type, i))
    weights = []
    for name, shape in fills.items():
        op, i = role[name]
        if op == "Conv" and i == 1:
            values = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif op == "BatchNormalization" and i in (1, 4):
            values = rng.uniform(0.5, 1.0 if i == 1 else 1.5, shape)
        elif op == "Gemm" and i == 1:
            values = rng.standard_normal(shape) * np.sqrt(1.0 / shape[-1])
        else:
            values = 0.1 * rng.standard_normal(shape)
        weights.append(numpy_helper.from_array(values.astype(np.float32), name))
    nodes = [n for n in g.node if n.op_type != "ConstantOfShape"]
    used = {t for n in nodes for t in n.input}
    weights += [t for t in g.initializer if t.name in used]  # the few stored as values
    graph = helper.make_graph(nodes, g.name, [g.input[0]], list(g.output), weights)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=4)


def cut_detector(model):
    """What replace_preprocessing/set_outputs/fix_resize do to the demo, done directly here."""
    g = gs.import_onnx(model)
    loop = next(n for n in g.nodes if n.op == "Loop")
    image = gs.Variable("image", dtype=np.float32, shape=[1, 3, DET_SIZE, DET_SIZE])
    for t in loop.outputs:  # the scan output feeds the stem Conv (tf2onnx moved the NCHW transpose in)
        for consumer in list(t.outputs):
            consumer.inputs[consumer.inputs.index(t)] = image
    tensors = g.tensors()
    g.inputs, g.outputs = [image], [tensors["raw_detection_boxes"], tensors["raw_detection_scores"]]
    for n in g.nodes:  # TF nearest upsampling == asymmetric/floor for integer scales
        if n.op == "Resize" and n.attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
            n.attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    g.cleanup().toposort()
    for t in g.tensors().values():  # shapes recorded for the dynamic uint8 input are stale
        if isinstance(t, gs.Variable) and t is not image:
            t.shape = [None] * len(t.shape) if t in g.outputs and t.shape else None
    g.fold_constants().cleanup()
    return onnx.shape_inference.infer_shapes(gs.export_onnx(g))


@pytest.fixture(scope="module")
def resnet():
    return light_resnet50()


@pytest.fixture(scope="module")
def detector(request, tmp_path_factory):
    """tf2onnx output of the effdet demo, cut; cached in pytest's cache (TF import + conversion
    take 10-25 s), keyed by the demo script, tfmodels and the converter versions."""
    from tests import tfmodels
    versions = f"{metadata.version('tf2onnx')} {metadata.version('tensorflow-cpu')} {onnx.__version__} {DET_SIZE}"
    key = hashlib.sha256(b"".join(p.read_bytes() for p in (tfmodels.DEMO_SCRIPT, pathlib.Path(tfmodels.__file__)))
                         + versions.encode()).hexdigest()[:16]
    cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    folder = cache.mkdir("trtpipe-precision") if cache else tmp_path_factory.mktemp("effdet-onnx")
    cached = pathlib.Path(folder) / f"effdet-{key}.onnx"
    if cached.exists():
        return onnx.load(str(cached))
    saved = tfmodels.demo(tmp_path_factory.mktemp("effdet") / "saved_model", image_size=DET_SIZE)
    model = cut_detector(tfmodels.convert(saved))
    onnx.save(model, str(cached))
    return model


def engine_io(result):
    """{tensor name: dtype} of the built network's inputs and outputs, as TensorRT reports them."""
    return {t["name"]: t["dtype"] for t in result.inputs + result.outputs}


def graph_io(model):
    """{tensor name: numpy dtype name} of an ONNX model's inputs and outputs."""
    weights = {t.name for t in model.graph.initializer}
    return {v.name: helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            for v in list(model.graph.input) + list(model.graph.output) if v.name not in weights}


def assert_built_as_typed(result, model):
    """A strongly typed build keeps the graph's I/O names and types (fp32 I/O stays fp32, fp16 I/O
    becomes fp16 bindings): the plan was built from this graph as written."""
    assert engine_io(result) == graph_io(model)


def feeds_for(model, n, scale=1.0, seed=0):
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return [{inp.name: (np.random.default_rng(seed + i).uniform(0, 1, shape) * scale).astype(np.float32)}
            for i in range(n)]


def ort_run(model, feed, optimize=True):
    """The model's outputs in graph order (tests.helpers.ort_run returns them by name)."""
    return list(helpers.ort_run(model, feed, optimize=optimize).values())


def assert_close(ref_model, model, feed, mode, keys, optimize=True):
    ref = ort_run(ref_model, feed)
    got = ort_run(emulate_in_fp32(model) if mode in ("fp16", "bf16") else model, feed, optimize)
    for key, r, o in zip(keys, ref, got):
        err = float(np.max(np.abs(r - o)))
        assert np.isfinite(o).all(), f"{mode} {key}: non-finite outputs"
        assert err <= TOLERANCES[mode][key], f"{mode} {key}: max |error| {err:.3g} > {TOLERANCES[mode][key]}"


def computes_in(model, node_name):
    """Float type a node's first output has in `model` (after shape inference)."""
    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(typed.graph.value_info) + list(typed.graph.output)}
    node = next(n for n in model.graph.node if n.name == node_name)
    return types.get(node.output[0])


# ------------------------------------------------------------------------------- configuration

def test_plain_and_object_forms():
    assert normalize("fp16")["keep_io_types"] is True
    cfg = normalize({"mode": "int8", "exclude_nodes": ["a*"]})
    assert cfg["per_channel"] is True and cfg["keep_output_layers"] is True and "keep_op_types" not in cfg
    with pytest.raises(RecipeError, match=r"keep_node.*did you mean 'keep_nodes'"):
        normalize({"mode": "fp16", "keep_node": ["x"]})
    with pytest.raises(RecipeError, match=r"precision.method applies to int8 and fp8, not to mode fp16"):
        normalize({"mode": "fp16", "method": "entropy"})
    with pytest.raises(RecipeError, match=r"'fp61'.*did you mean 'fp16'"):
        normalize("fp61")


def test_recipe_schema_accepts_both_forms(tmp_path, tiny_onnx):
    from trtpipe.recipe.load import load_recipe
    body = f"name: t\nsource: {{onnx: {tiny_onnx}}}\nprecision: {{mode: fp16, keep_nodes: [conv]}}\n"
    (tmp_path / "a.yaml").write_text(body)
    assert load_recipe(tmp_path / "a.yaml").data["precision"]["mode"] == "fp16"
    (tmp_path / "b.yaml").write_text(body.replace("keep_nodes", "keep_nodez"))
    with pytest.raises(RecipeError, match=r"b.yaml:3:\d+: precision.keep_nodez: unknown key"):
        load_recipe(tmp_path / "b.yaml")


@pytest.mark.parametrize("mode,ccs,bad", [("fp8", ["7.5"], "7.5"), ("fp8", ["8.9", "8.6"], "8.6"),
                                          ("bf16", ["7.5", "8.9"], "7.5")])
def test_refused_for_targets_without_hardware(resnet, mode, ccs, bad):
    where = lambda path: "recipe.yaml:12:12"  # noqa: E731
    with pytest.raises(RecipeError) as info:
        apply_precision(resnet, mode, compute_capabilities=ccs, data_feeds=None, locate=where)
    text = str(info.value)
    assert text.startswith("recipe.yaml:12:12: precision") and f"includes {bad}" in text and "hint:" in text


# ------------------------------------------------------------------------------- resnet50

@pytest.fixture(scope="module")
def resnet_feeds(resnet):
    return feeds_for(resnet, 1)


def test_resnet_fp16(resnet, resnet_feeds, build):
    out, stats = apply_precision(resnet, "fp16", compute_capabilities=["8.9"], data_feeds=resnet_feeds)
    weights = sum(1 for t in resnet.graph.initializer if t.data_type == TensorProto.FLOAT)
    assert stats["initializers"] == {"fp16": weights, "int64": 1}  # all weights converted once; Reshape shape
    assert stats["kept_fp32"] == {next(n.name for n in resnet.graph.node if n.op_type == "Softmax"): "keep_op_types"}
    assert stats["overflow_guard"]["enabled"] and stats["overflow_guard"]["max_abs"] < 8192
    assert stats["casts"] == {"fp32->fp16": 1, "fp16->fp32": 1}  # input in, Softmax out: I/O stay fp32
    assert stats["io_types_changed"] == {}
    json.dumps(stats)  # goes into report.json as is
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert_close(resnet, out, resnet_feeds[0], "fp16", ["resnet"])
    assert_built_as_typed(build(out, "resnet_fp16"), out)


def test_resnet_bf16(resnet, resnet_feeds, build):
    out, stats = apply_precision(resnet, "bf16", compute_capabilities=["8.9"], data_feeds=resnet_feeds)
    weights = sum(1 for t in resnet.graph.initializer if t.data_type == TensorProto.FLOAT)
    assert stats["initializers"] == {"bf16": weights, "int64": 1}
    assert stats["opset"] == 22 and stats["nodes"]["bf16"] >= 170
    assert stats["overflow_guard"]["enabled"] is False
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):  # ORT CPU has no bf16 Conv
        ort_run(out, resnet_feeds[0])
    assert_close(resnet, out, resnet_feeds[0], "bf16", ["resnet"])
    assert_built_as_typed(build(out, "resnet_bf16"), out)


def test_resnet_int8(resnet, resnet_feeds, build):
    cfg = {"mode": "int8", "per_channel": False}  # ORT's per-channel weight loop costs ~6 s here
    out, stats = apply_precision(resnet, cfg, compute_capabilities=["8.9"], data_feeds=resnet_feeds)
    convs = sum(1 for n in resnet.graph.node if n.op_type == "Conv")
    gemm = next(n.name for n in resnet.graph.node if n.op_type == "Gemm")
    assert stats["excluded"] == {gemm: "keep_output_layers: last layer before an output"}
    assert stats["quantized_nodes"] == convs and stats["weight_dq"] == convs
    assert stats["initializers"]["int8"] == convs and stats["qdq_pairs"] >= 40
    assert stats["calibration"] == {"source": "validation data", "batches": 1}
    zero_points = [numpy_helper.to_array(t) for t in out.graph.initializer if t.name.endswith("_zero_point")]
    assert zero_points and all(not z.any() for z in zero_points)  # symmetric: TensorRT's rule
    assert_close(resnet, out, resnet_feeds[0], "int8", ["resnet"])
    assert_built_as_typed(build(out, "resnet_int8"), out)


# ------------------------------------------------------------------------------- detector

@pytest.fixture(scope="module")
def det_feeds(detector):
    return feeds_for(detector, 2)


def _box_head(model):
    return sorted(n.name for n in model.graph.node if n.op_type == "Conv" and "box_net/predict" in n.name)


@pytest.mark.slow
def test_detector_fp16_keep_nodes(detector, det_feeds, build):
    cfg = {"mode": "fp16", "keep_nodes": ["*box_net/predict*"]}
    out, stats = apply_precision(detector, cfg, compute_capabilities=["8.9"], data_feeds=det_feeds)
    head = _box_head(detector)
    assert head and all(stats["kept_fp32"][n] == "keep_nodes" for n in head)
    assert all(computes_in(out, n) == TensorProto.FLOAT for n in head)
    assert sum(v == "keep_op_types" for v in stats["kept_fp32"].values()) == 2  # the box decoder's Exp
    assert stats["nodes"]["fp16"] > 100 and stats["initializers"]["fp16"] > 50
    assert_close(detector, out, det_feeds[0], "fp16", ["boxes", "scores"])
    assert_built_as_typed(build(out, "det_fp16"), out)


@pytest.mark.slow
def test_detector_fp16_io_types(detector, det_feeds, build):
    out, stats = apply_precision(detector, {"mode": "fp16", "keep_io_types": False}, compute_capabilities=["8.9"],
                                 data_feeds=det_feeds)
    assert stats["io_types_changed"].get("image") == "fp16" and set(stats["io_types_changed"].values()) == {"fp16"}
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    ref = ort_run(detector, det_feeds[0])
    got = ort_run(out, {k: v.astype(np.float16) for k, v in det_feeds[0].items()})
    for key, r, o in zip(["boxes", "scores"], ref, got):
        assert np.max(np.abs(r - o.astype(np.float32))) <= TOLERANCES["fp16"][key]
    assert_built_as_typed(build(out, "det_fp16_io"), out)


@pytest.mark.slow
def test_detector_fp16_overflow_guard(detector):
    """Inputs 100x out of range: the box decoder's exp() leaves fp16's range; the guard keeps it."""
    feeds = feeds_for(detector, 1, scale=100.0)
    plain, _ = apply_precision(detector, {"mode": "fp16", "overflow_guard": False}, compute_capabilities=["8.9"],
                               data_feeds=feeds)
    assert not np.isfinite(ort_run(emulate_in_fp32(plain), feeds[0])[0]).all()
    out, stats = apply_precision(detector, "fp16", compute_capabilities=["8.9"], data_feeds=feeds)
    guarded = [n for n, why in stats["kept_fp32"].items() if why.startswith("overflow guard")]
    assert guarded and all(computes_in(out, n) == TensorProto.FLOAT for n in guarded)
    for ref, got in zip(ort_run(detector, feeds[0]), ort_run(emulate_in_fp32(out), feeds[0])):
        # finite again; fp16's 11-bit mantissa on activations in the thousands: close, not exact
        rel = np.abs(got - ref) / (np.abs(ref) + 1)
        assert np.isfinite(got).all() and np.median(rel) < 0.01 and rel.max() < 0.5


@pytest.mark.slow
def test_detector_bf16(detector, det_feeds, build):
    out, stats = apply_precision(detector, "bf16", compute_capabilities=["8.9", "12.0"], data_feeds=det_feeds)
    assert stats["initializers"]["bf16"] > 50 and stats["casts"]["fp32->bf16"] >= 1
    assert set(stats["kept_fp32"].values()) == {"keep_op_types"}  # Resize's fp32-only roi/scales stay fp32
    assert_close(detector, out, det_feeds[0], "bf16", ["boxes", "scores"])
    assert_built_as_typed(build(out, "det_bf16"), out)


@pytest.mark.slow
def test_detector_int8_exclusions(detector, det_feeds, build):
    cfg = {"mode": "int8", "exclude_nodes": ["*/class_net/conv0*"], "method": "percentile"}
    before = detector.SerializeToString()
    out, stats = apply_precision(detector, cfg, compute_capabilities=["8.9"], data_feeds=det_feeds)
    assert detector.SerializeToString() == before  # the input model is never modified
    heads = [n for n, why in stats["excluded"].items() if why.startswith("keep_output_layers")]
    assert len(heads) == 6 and all("/predict" in h for h in heads)  # box + class predictors, 3 levels
    assert any(v == "exclude_nodes" for v in stats["excluded"].values())
    producer = {t: n.op_type for n in out.graph.node for t in n.output}
    for node in out.graph.node:  # excluded layers read float weights and activations
        if node.name in stats["excluded"]:
            assert producer.get(node.input[0]) != "DequantizeLinear" and node.input[1] in {
                t.name for t in out.graph.initializer if t.data_type == TensorProto.FLOAT}
    depthwise = [n.name for n in detector.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    by_depthwise = {n for n, why in stats["excluded"].items() if why.startswith("depthwise")}
    assert depthwise and set(depthwise) <= set(stats["excluded"]) and by_depthwise <= set(depthwise)
    assert by_depthwise  # quantize_depthwise: false by default
    convs = sum(n.op_type == "Conv" for n in detector.graph.node)
    assert stats["quantized_nodes"] == convs - len(stats["excluded"]) and stats["qdq_pairs"] >= 10
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in out.graph.node
                   if "Exp" in n.name or "Sigmoid" in n.name)
    assert_close(detector, out, det_feeds[0], "int8", ["boxes", "scores"])
    assert_built_as_typed(build(out, "det_int8"), out)


@pytest.mark.slow
def test_detector_fp8_builds_for_ada(detector, det_feeds, build):
    cfg = {"mode": "fp8", "quantize_depthwise": True}
    out, stats = apply_precision(detector, cfg, compute_capabilities=["8.9", "12.0"], data_feeds=det_feeds)
    assert stats["method"] == "minmax" and stats["initializers"].get("fp8", 0) > 20
    assert "int8" not in stats["initializers"]
    weights = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in out.graph.initializer
               if t.data_type == TensorProto.FLOAT8E4M3FN and t.dims}
    assert max(float(np.abs(w).max()) for w in weights.values()) == 448.0  # amax scaling
    assert_close(detector, out, det_feeds[0], "fp8", ["boxes", "scores"], optimize=False)
    assert_built_as_typed(build(out, "det_fp8"), out)


@pytest.mark.slow
def test_calibration_npz_and_errors(detector, tmp_path):
    name = detector.graph.input[0].name
    data = np.random.default_rng(3).uniform(0, 1, (3, 1, 3, DET_SIZE, DET_SIZE)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", **{name: data})
    cfg = {"mode": "int8", "calibration": {"npz": "cal.npz"}}
    _, stats = apply_precision(detector, cfg, compute_capabilities=["8.9"], data_feeds=None, recipe_dir=tmp_path)
    assert stats["calibration"]["source"] == "npz" and stats["calibration"]["batches"] == 3
    with pytest.raises(RecipeError, match=r"precision.calibration: .*missing.npz"):
        apply_precision(detector, {"mode": "int8", "calibration": {"npz": "missing.npz"}},
                        compute_capabilities=["8.9"], data_feeds=None, recipe_dir=tmp_path)
    with pytest.raises(RecipeError, match=r"precision.method: 'distribution' is ONNX Runtime's float8"):
        apply_precision(detector, {"mode": "int8", "method": "distribution"}, compute_capabilities=["8.9"],
                        data_feeds=None)
    with pytest.raises(RecipeError, match=r"keep_nodes\[0\]: no node named or matching 'StatefulPartitionedCall/Exp_9'"
                                          r".*did you mean 'StatefulPartitionedCall/Exp_1'"):
        apply_precision(detector, {"mode": "fp16", "keep_nodes": ["StatefulPartitionedCall/Exp_9"]},
                        compute_capabilities=["8.9"], data_feeds=None)
