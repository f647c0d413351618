"""Plugin nodes through the stages: the checks a run makes before any conversion, validation around
a plugin ONNX Runtime cannot run (engine only), ONNX Runtime custom-op libraries, `build.plugins`
libraries, and recipes/roialign.yaml (ROIAlign_TRT for tf.image.crop_and_resize) built for real.

Small graphs are built with onnx.helper; the recipe uses the committed demo model
(models/crop_demo, made by models/make_crop_demo.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import REPO, run_passes
from trtpipe.errors import RecipeError, ValidationError
from trtpipe.stages.passes.runner import initial_input_contract
from trtpipe.stages.validate.compare import validate_models

F32 = TensorProto.FLOAT
ATTRS = {"output_height": 2, "output_width": 2, "sampling_ratio": 1, "mode": 1,
         "coordinate_transformation_mode": 1, "spatial_scale": 1.0}


def source_model(first_op="Relu"):
    """x [1,4,8,8] -> `first_op` 'feat' -> RoiAlign (rois: input) 'crops' [3,4,2,2] -> ReduceMean 'scores';
    'pooled' = ReduceMean(feat) does not depend on the crop."""
    nodes = [helper.make_node(first_op, ["x"], ["feat"], name="act"),
             helper.make_node("RoiAlign", ["feat", "rois", "bidx"], ["crops"], name="crop/roi", output_height=2,
                              output_width=2, sampling_ratio=1, coordinate_transformation_mode="half_pixel"),
             helper.make_node("ReduceMean", ["crops"], ["scores"], name="crop/mean", axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["feat"], ["pooled"], name="pool", axes=[2, 3], keepdims=0)]
    graph = helper.make_graph(
        nodes, "roi", [helper.make_tensor_value_info("x", F32, [1, 4, 8, 8]),
                       helper.make_tensor_value_info("rois", F32, [3, 4])],
        [helper.make_tensor_value_info("crops", F32, [3, 4, 2, 2]),
         helper.make_tensor_value_info("scores", F32, [3, 4]), helper.make_tensor_value_info("pooled", F32, [1, 4])],
        [numpy_helper.from_array(np.zeros(3, np.int64), "bidx")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def plugin_params(domain="trt.plugins"):
    return {"op": "ROIAlign_TRT", "version": "2", "nodes": ["crop/roi"], "domain": domain, "attrs": ATTRS,
            "inputs": ["feat", "rois", {"tensor": "bidx", "steps": [{"op": "cast", "to": "int32"}]}]}


def models(tmp_path, domain="trt.plugins", final_first_op="Relu"):
    """(source path, final path, input contract): the final model is the plugin pass's output."""
    src, base = source_model(), source_model(final_first_op)
    final, _ = run_passes(base, [("plugin", plugin_params(domain))])
    onnx.save(src, str(tmp_path / "source.onnx"))
    onnx.save(final, str(tmp_path / "final.onnx"))
    return tmp_path / "source.onnx", tmp_path / "final.onnx", initial_input_contract(src)


def validate(tmp_path, cfg=None, **kw):
    src, fin, contract = models(tmp_path, **kw)
    return validate_models(src, fin, {"data": {"iterations": 2}, **(cfg or {})}, precision="fp32",
                           input_contract=contract, output_map=None, postprocess=None, base_dir=tmp_path)


def entries(result):
    return {e["output"]: e for c in result["comparisons"] for e in c.get("outputs") or []
            if c["name"] == "source-ort vs final-ort"}


# -- validation around a plugin ----------------------------------------------------------------------

def test_plugin_outputs_are_engine_only_never_passed(tmp_path):
    result = validate(tmp_path)
    found = entries(result)
    for name in ("crops", "scores"):  # the plugin's output and what is computed from it
        assert found[name]["status"] == "skipped" and found[name]["engine_only"]
        assert found[name]["reason"].startswith("engine only: depends on plugin node 'plugin/ROIAlign_TRT' "
                                                "(ROIAlign_TRT v2), which ONNX Runtime cannot run")
    assert not any(e["output"] in ("crops", "scores") and e["status"] == "passed"
                   for c in result["comparisons"] for e in c.get("outputs") or [])
    assert found["pooled"]["status"] == "passed"
    assert found["feat"]["status"] == "passed" and found["feat"]["informative"]  # what reaches the plugin
    assert found["feat"]["plugin_input"].startswith("input 0 of plugin node 'plugin/ROIAlign_TRT'")
    not_compared = result["plugins"]["inputs_not_compared"]
    assert any(k.startswith("rois (input 1") and "graph input" in v for k, v in not_compared.items())
    assert result["status"] == "inconclusive"  # the plan's outputs are unproven here
    assert "final output 'crops' is engine only" in result["reason"]
    engine = next(c for c in result["comparisons"] if c["name"] == "engine vs final-ort")
    assert engine["status"] == "skipped"


def test_engine_only_outputs_fail_require_informative(tmp_path):
    with pytest.raises(ValidationError, match=r"final output 'scores' is engine only") as err:
        validate(tmp_path, {"require_informative": True})
    assert err.value.exit_code == 6


def test_plugin_inputs_are_really_compared(tmp_path):
    """A final model whose features differ from the source's before the plugin fails validation there."""
    with pytest.raises(ValidationError, match=r"output 'feat'") as err:
        validate(tmp_path, final_first_op="Sigmoid")
    assert err.value.result["status"] == "failed"


def test_missing_custom_op_library_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match=r"validate.ort_custom_ops\[0\]: ONNX Runtime custom-op library .*nope.so"):
        validate(tmp_path, {"ort_custom_ops": ["nope.so"]})


SCALE = {"value": 1.0}  # what the custom op multiplies its result by (1: a faithful ROIAlign_TRT)


def _register_roialign_custom_op():
    """ROIAlign_TRT for ONNX Runtime (onnxruntime-extensions Python op, domain ai.onnx.contrib),
    computed by ONNX Runtime's RoiAlign, which ROIAlign_TRT documents it follows."""
    ortx = pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions (test extra) provides an "
                                                                "ONNX Runtime custom-op library")
    import onnxruntime as ort
    int_attr = ortx.PyCustomOpDef.dt_int64
    attrs = {"output_height": int_attr, "output_width": int_attr, "sampling_ratio": int_attr, "mode": int_attr,
             "coordinate_transformation_mode": int_attr, "spatial_scale": ortx.PyCustomOpDef.dt_float}

    @ortx.onnx_op(op_type="ROIAlign_TRT", inputs=[ortx.PyCustomOpDef.dt_float, ortx.PyCustomOpDef.dt_float,
                                                  ortx.PyCustomOpDef.dt_int32],
                  outputs=[ortx.PyCustomOpDef.dt_float], attrs=attrs)
    def roialign(x, rois, batch_indices, **kw):
        node = helper.make_node("RoiAlign", ["x", "r", "b"], ["y"], output_height=int(kw["output_height"]),
                                output_width=int(kw["output_width"]), sampling_ratio=int(kw["sampling_ratio"]),
                                spatial_scale=float(kw["spatial_scale"]), mode="avg" if kw["mode"] else "max",
                                coordinate_transformation_mode="half_pixel" if kw["coordinate_transformation_mode"]
                                else "output_half_pixel")
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", F32, None),
                                                helper.make_tensor_value_info("r", F32, None),
                                                helper.make_tensor_value_info("b", TensorProto.INT64, None)],
                                  [helper.make_tensor_value_info("y", F32, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"x": x, "r": rois, "b": batch_indices.astype(np.int64)})[0]
        return (out * SCALE["value"]).astype(np.float32)

    return ortx.get_library_path()


def test_ort_custom_op_library_runs_the_plugin(tmp_path):
    library = _register_roialign_custom_op()
    SCALE["value"] = 1.0
    result = validate(tmp_path, {"ort_custom_ops": [library]}, domain="ai.onnx.contrib")
    found = entries(result)
    assert found["crops"]["status"] == "passed" and found["scores"]["status"] == "passed"
    assert result["status"] == "passed" and result["plugins"]["custom_ops"] == [library]
    SCALE["value"] = 2.0  # a wrong implementation is caught: the library's results are what is compared
    try:
        with pytest.raises(ValidationError, match=r"output 'crops'"):
            validate(tmp_path / "..", {"ort_custom_ops": [library]}, domain="ai.onnx.contrib")
    finally:
        SCALE["value"] = 1.0


# -- recipes: checks before conversion, build.plugins, the ROIAlign_TRT build ---------------------------

def roialign_recipe(tmp_path, edit=None, plugins=None):
    """recipes/roialign.yaml with its paths made absolute (and `edit` applied to the plugin params)."""
    data = yaml.safe_load((REPO / "recipes" / "roialign.yaml").read_text())
    data["source"]["saved_model"] = str(REPO / "models" / "crop_demo" / "saved_model")
    data["output"]["dir"] = str(tmp_path / "out")
    if edit:
        edit(data["passes"][0]["params"])
    if plugins:
        data["build"]["plugins"] = plugins
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


@pytest.mark.parametrize("edit, code, message", [
    (lambda p: p["attrs"].__setitem__("sampling_ratoi", p["attrs"].pop("sampling_ratio")), 3,
     r"recipe.yaml:\d+:\d+: passes\[0\] plugin: attrs.sampling_ratoi: ROIAlign_TRT v2 has no field 'sampling_ratoi' "
     r"\(did you mean 'sampling_ratio'\?\)"),
    (lambda p: p["attrs"].__setitem__("output_width", "seven"), 3,
     r"recipe.yaml:\d+:\d+: passes\[0\] plugin: attrs.output_width: field 'output_width' of ROIAlign_TRT v2 is "
     r"INT32: expected an integer"),
    (_set("version", "1"), 7, r"plugin 'ROIAlign_TRT' version 1 is not provided by backend tensorrt_rtx 1.7.1: it "
                              r"has version\(s\) 2"),
    (_set("op", "PyramidROIAlign_TRT"), 7, r"plugin 'PyramidROIAlign_TRT' is not provided by backend "
                                           r"tensorrt_rtx 1.7.1 \(it has: .*ROIAlign_TRT"),
], ids=["misspelled-field", "wrong-type", "wrong-version", "missing-plugin"])
def test_plugin_problems_stop_the_run_before_conversion(tmp_path, run_cli, edit, code, message):
    recipe = roialign_recipe(tmp_path, edit)
    got, out, err = run_cli(recipe, "-o", tmp_path / "out")
    assert got == code
    assert __import__("re").search(message, err), err
    assert "tf2onnx" not in out + err and not (tmp_path / "out").exists()  # nothing converted, nothing written
    checked, _, check_err = run_cli("check", recipe)
    assert checked == 3 and __import__("re").search(message, check_err)


def test_attribute_error_points_at_the_attribute_line(tmp_path, run_cli):
    recipe = roialign_recipe(tmp_path, lambda p: p["attrs"].__setitem__("mode", 1.5))
    line = next(i for i, text in enumerate(recipe.read_text().splitlines(), 1) if text.strip().startswith("mode:"))
    code, _, err = run_cli("check", recipe)
    assert code == 3 and f"recipe.yaml:{line}:" in err and "attrs.mode:" in err


def _ep_plugin_library():
    spec = importlib.util.find_spec("onnxruntime_ep_nv_tensorrt_rtx")
    return Path(spec.origin).parent / "libtensorrt_plugins.so" if spec and spec.origin else None


def test_build_plugins_library_creators_reach_plugins_and_the_check(tmp_path, run_cli):
    """The TensorRT-RTX plugin library the ONNX Runtime EP wheel ships. It links libcuda.so.1, so it
    loads only where a CUDA driver is installed: here the run and `check` name the library and the
    loader's reason; the visibility of its creators is tested where it loads."""
    library = _ep_plugin_library()
    if library is None or not library.is_file():
        pytest.skip("no TensorRT-RTX plugin library installed (onnxruntime-ep-nv-tensorrt-rtx-cu13 ships one)")
    recipe = roialign_recipe(tmp_path, plugins=[str(library)])
    code, _, err = run_cli("check", recipe)
    import ctypes
    try:
        ctypes.CDLL(str(library))
    except OSError as why:
        assert code == 3 and f"build.plugins[0]: plugin library {library} could not be loaded" in err
        assert "libcuda.so.1" in err and str(why).split(":")[0] in err
        pytest.skip(f"{library.name} needs {str(why).split(':')[0]} (no CUDA driver here): its creators cannot be "
                    f"registered, so their visibility in `plugins` and the check is untested here")
    assert code == 0, err
    _, plain, _ = run_cli("plugins", "--backend", "tensorrt_rtx")
    code, listed, _ = run_cli("plugins", "--recipe", recipe)
    assert code == 0 and str(library) in listed and len(listed.splitlines()) > len(plain.splitlines())


@pytest.mark.slow
def test_roialign_recipe_builds_where_the_plugin_can_be_created(tmp_path, run_cli, rtx):
    """recipes/roialign.yaml end to end: the crop_and_resize Loop (a parser crash) becomes ROIAlign_TRT,
    validation compares everything up to the plugin and reports the crops engine only, and the
    builder gets the plugin. TensorRT-RTX 1.7.1 creates ROIAlign_TRT only with a CUDA device (its
    constructor queries it): without one the build is exit 7 naming the node and the CUDA error,
    nothing published; with one, a plan."""
    from trtpipe.backend import probe_cuda
    recipe = roialign_recipe(tmp_path)
    code, out, err = run_cli(recipe, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    text = out + err
    assert "validation: inconclusive (final output 'roi_features' is engine only" in text  # before the build
    has_cuda, _ = probe_cuda()
    if has_cuda:
        assert code == 0, text
        assert (tmp_path / "out" / "roialign.plan").stat().st_size > 0
        return
    assert code == 7, text
    assert "node 'plugin/ROIAlign_TRT' (ROIAlign_TRT" in err and "Could not create the plugin" in err
    assert "CUDA driver version is insufficient" in err
    assert not list((tmp_path / "out").glob("*.plan"))
