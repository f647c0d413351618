"""Build stage against the real TensorRT-RTX (ahead of time for SM 8.9, on CPU): no mocks.

The error tests use tiny graphs made with onnx.helper; the model-zoo tests use the light models
the onnx wheel ships. Whole file: about 20-30 s on 2 cores.
"""

import os
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtpipe.backend import has_runtime_gpu, resolve_backend
from trtpipe.errors import BuildError
from trtpipe.stages.build.plan import build_plan

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def light(name):
    return os.path.join(LIGHT, f"light_{name}.onnx")


def save(tmp_path, name, nodes, inputs, outputs, initializers=(), extra_opsets=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    path = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return str(path)


def conv_model(tmp_path, batch="batch"):
    """images [batch, 3, 8, 8] -> 1x1 Conv -> y: a dynamic-batch graph."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")  # raw_data: can go external
    node = helper.make_node("Conv", ["images", "w"], ["y"], name="conv")
    return save(tmp_path, f"conv_{batch}", [node], [x], [y], [w])


def profile(name="p", **inputs):
    return {"profiles": [{"name": name, "inputs": inputs}]}


def shapes(lo, opt, hi):
    return {"min": lo, "opt": opt, "max": hi}


class Phases:
    def __init__(self):
        self.calls = []

    def phase(self, name, current, total):
        self.calls.append((name, current, total))


# --- backend ---------------------------------------------------------------------------------

def test_backend_resolves_rtx_and_registers_module_name(rtx):
    assert rtx.name == "tensorrt_rtx" and rtx.major >= 1
    assert rtx.version.startswith(".".join(map(str, rtx.version_tuple[:2])))
    trt = rtx.trt  # imported at first use (backend.py: a cached run never loads it)
    assert sys.modules["tensorrt_rtx"] is trt  # what Polygraphy imports in RTX mode
    assert os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] == "1"
    assert resolve_backend("tensorrt_rtx") is rtx  # cached


def test_auto_prefers_tensorrt_and_falls_back_to_rtx(rtx):
    import importlib.util
    expected = "tensorrt" if importlib.util.find_spec("tensorrt") else "tensorrt_rtx"
    try:
        assert resolve_backend("auto").name == expected
    except BuildError as exc:  # tensorrt present but broken (no libnvinfer): the message says so
        assert "tensorrt" in str(exc)


def test_unknown_backend_name():
    with pytest.raises(BuildError, match="unknown build backend 'tensorrt_llm'"):
        resolve_backend("tensorrt_llm")


def test_has_runtime_gpu_answers_without_crashing(rtx):
    ok, reason = has_runtime_gpu(rtx)
    assert isinstance(ok, bool) and reason
    if not ok:
        assert "CUDA" in reason or "compute capability" in reason


# --- model-zoo builds ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_runs(rtx, tmp_path_factory):
    """resnet50 built twice: once with a timing cache and a progress recorder, once plain."""
    cache = tmp_path_factory.mktemp("cache") / "sub" / "resnet50.timing"
    phases, logs = Phases(), []
    first = build_plan(light("resnet50"), {"timing_cache": str(cache)}, rtx,
                       progress=phases, log=logs.append)
    second = build_plan(light("resnet50"), {}, rtx)
    return first, second, cache, phases, logs


def test_resnet50_plan_is_byte_identical_across_builds(resnet_runs):
    first, second, *_ = resnet_runs
    assert len(first.plan) > 1_000_000  # weights alone are ~100 KB per conv block
    assert first.plan == second.plan


def test_resnet50_build_result(resnet_runs, rtx):
    first, *_ = resnet_runs
    assert first.backend == "tensorrt_rtx" and first.backend_version == rtx.version
    assert first.compute_capabilities == ["8.9"]
    assert first.inputs == [{"name": "gpu_0/data_0", "dtype": "float32", "shape": [1, 3, 224, 224]}]
    assert first.outputs[0]["shape"] == [1, 1000]
    assert first.memory["activation_bytes"] > 0 and first.memory["weights_bytes"] > 0
    assert first.num_layers > 100 and first.duration_s > 0
    assert "plan" not in first.summary() and first.summary()["plan_bytes"] == len(first.plan)


def test_no_timing_cache_on_tensorrt_rtx(resnet_runs):
    """TensorRT-RTX has no timing cache (its calls force a GPU query during ahead-of-time builds):
    the file is neither read nor written, and the build says so."""
    first, _, cache, _, logs = resnet_runs
    assert not cache.exists() and not cache.parent.exists()
    assert not any("timing cache" in line for line in logs)
    assert any("is not used with tensorrt_rtx" in w for w in first.warnings)
    assert first.timing_cache is None


def test_progress_monitor_reports_phases(resnet_runs):
    *_, phases, _ = resnet_runs
    names = {name for name, _, _ in phases.calls}
    assert "Building engine" in names
    assert all(0 <= cur <= total for _, cur, total in phases.calls if total)


@pytest.mark.parametrize("name", ["inception_v2", "densenet121"])
def test_light_models_build(rtx, name):
    result = build_plan(light(name), {"compute_capabilities": ["8.9"]}, rtx)
    assert len(result.plan) > 1_000_000
    assert int(np.prod(result.outputs[0]["shape"])) == 1000  # densenet keeps [1, 1000, 1, 1]


# --- graphs TensorRT-RTX cannot build --------------------------------------------------------

def test_nonmaxsuppression_names_node_and_op(rtx, tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 100])
    sel = helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])
    consts = [helper.make_tensor("max_out", TensorProto.INT64, [1], [10]),
              helper.make_tensor("iou", TensorProto.FLOAT, [1], [0.5]),
              helper.make_tensor("score_thr", TensorProto.FLOAT, [1], [0.1])]
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"],
                            ["selected"], name="postprocess/nms")
    path = save(tmp_path, "nms", [node], [boxes, scores], [sel], consts)
    with pytest.raises(BuildError) as err:
        build_plan(path, {}, rtx)
    msg = str(err.value)
    assert "ONNX node 'postprocess/nms' (NonMaxSuppression)" in msg
    assert "tensorrt_rtx 1.7" in msg and "no runners" in msg
    assert "failed to build engine" not in msg
    assert err.value.exit_code == 7


def test_missing_plugin_is_reported_before_parsing(rtx, tmp_path):
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 100, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 100, 1])
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in
            [("num", TensorProto.INT32), ("det_boxes", TensorProto.FLOAT),
             ("det_scores", TensorProto.FLOAT), ("det_classes", TensorProto.INT32)]]
    node = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], [o.name for o in outs], name="nms",
                            domain="trt.plugins", plugin_version="1", background_class=-1,
                            max_output_boxes=10, score_threshold=0.1, iou_threshold=0.5,
                            score_activation=0, box_coding=0)
    path = save(tmp_path, "efficient_nms", [node], [boxes, scores], outs, extra_opsets=["trt.plugins"])
    with pytest.raises(BuildError) as err:
        build_plan(path, {}, rtx)
    msg = str(err.value)
    assert "graph needs plugin 'EfficientNMS_TRT'" in msg and "node 'nms'" in msg
    assert f"which backend {rtx.label} does not provide" in msg
    assert "available plugins: " in msg and "ROIAlign_TRT" in msg
    assert "build.plugins" in msg  # the hint


def test_parser_error_names_node_op_and_index(rtx, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["y"], name="to_string", to=TensorProto.STRING)]
    path = save(tmp_path, "cast_string", nodes, [x], [y])
    with pytest.raises(BuildError) as err:
        build_plan(path, {}, rtx)
    msg = str(err.value)
    assert "node 'to_string' (Cast, node index 1): Unsupported data type for the Cast operator!" in msg
    assert "STRING" in msg  # printed by the parser to stderr, not to the logger: captured anyway


def test_parser_error_message_is_readable(rtx, tmp_path):
    f = TensorProto.FLOAT
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upsample_crop", mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize")
    path = save(tmp_path, "resize", [node], [helper.make_tensor_value_info("x", f, [1, 1, 4, 4]),
                                              helper.make_tensor_value_info("scales", f, [4])],
                [helper.make_tensor_value_info("y", f, None)])
    with pytest.raises(BuildError) as err:
        build_plan(path, {}, rtx)
    msg = str(err.value)
    assert "node 'upsample_crop' (Resize, node index 0)" in msg
    assert "asymmetric and align_corners transformation modes" in msg  # C++ literals joined
    assert '" "' not in msg


def test_missing_plugin_library_is_named(rtx, tmp_path):
    path = conv_model(tmp_path, batch=1)
    message = r"recipe.yaml:30:7: build.plugins\[0\]: plugin library .*nope.so does not exist"
    with pytest.raises(BuildError, match=message):
        build_plan(path, {"plugins": [str(tmp_path / "nope.so")]}, rtx, locate=lambda p: "recipe.yaml:30:7")


def test_unsupported_compute_capability(rtx, tmp_path):
    with pytest.raises(BuildError, match=r"compute capability '9.0' is not supported .* 8.9"):
        build_plan(conv_model(tmp_path, batch=1), {"compute_capabilities": ["9.0"]}, rtx)


# --- profiles --------------------------------------------------------------------------------

def locate(path):
    return "recipe.yaml:" + "/".join(map(str, path))


def test_profile_for_unknown_input_suggests_the_real_one(rtx, tmp_path):
    cfg = profile(imgs=shapes([1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]))
    with pytest.raises(BuildError) as err:
        build_plan(conv_model(tmp_path), cfg, rtx, locate=locate)
    msg = str(err.value)
    assert msg.startswith("recipe.yaml:build/profiles/0/inputs/imgs: ")
    assert "names input 'imgs', which the network does not have; did you mean 'images'?" in msg
    assert "images [batch, 3, 8, 8] float32" in msg
    assert err.value.exit_code == 3  # a recipe mistake, found once the network is known


def test_profile_min_greater_than_max(rtx, tmp_path):
    cfg = profile(images=shapes([4, 3, 8, 8], [2, 3, 8, 8], [1, 3, 8, 8]))
    with pytest.raises(BuildError, match=r"need min <= opt <= max .* axis 0 has min=4, opt=2, max=1"):
        build_plan(conv_model(tmp_path), cfg, rtx, locate=locate)


def test_profile_must_keep_static_dims(rtx, tmp_path):
    cfg = profile(images=shapes([1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 16, 8]))
    with pytest.raises(BuildError, match=r"axis 2 is static \(8\) but the profile gives min=8, opt=8, max=16"):
        build_plan(conv_model(tmp_path), cfg, rtx)


def test_profile_rank_mismatch(rtx, tmp_path):
    cfg = profile(images=shapes([1, 3, 8], [2, 3, 8, 8], [4, 3, 8, 8]))
    with pytest.raises(BuildError, match=r"min \[1, 3, 8\] has rank 3, the input has rank 4"):
        build_plan(conv_model(tmp_path), cfg, rtx)


def test_dynamic_input_without_profile_explains_and_shows_yaml(rtx, tmp_path):
    with pytest.raises(BuildError) as err:
        build_plan(conv_model(tmp_path), {}, rtx)
    msg = str(err.value)
    assert "dynamic inputs but build.profiles is empty" in msg
    assert "images [batch, 3, 8, 8] float32" in msg
    assert "images: {min: [1, 3, 8, 8], opt: [1, 3, 8, 8], max: [8, 3, 8, 8]}" in msg


def test_dynamic_batch_with_profile_builds(rtx, tmp_path):
    cfg = profile("batch1to4", images=shapes([1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]))
    result = build_plan(conv_model(tmp_path), cfg, rtx)
    assert len(result.plan) > 1000
    assert result.inputs[0]["shape"] == [-1, 3, 8, 8]
    assert result.profiles == ["batch1to4"]


def test_external_data_next_to_the_model_is_found(rtx, tmp_path):
    model = onnx.load(conv_model(tmp_path, batch=1))
    path = tmp_path / "ext" / "conv_ext.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="conv_ext.weights", size_threshold=0)
    assert (path.parent / "conv_ext.weights").is_file()
    assert len(build_plan(str(path), {}, rtx).plan) > 1000


def test_progress_callback_error_cancels_and_propagates(rtx, tmp_path):
    class Boom:
        def phase(self, name, current, total):
            raise KeyError("ui broke")

    with pytest.raises(KeyError, match="ui broke"):
        build_plan(conv_model(tmp_path, batch=1), {}, rtx, progress=Boom())
