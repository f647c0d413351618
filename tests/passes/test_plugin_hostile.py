"""`plugins` and plugin attribute checks against hostile input: case-different names, plugin
libraries that are devices or FIFOs, and attribute values outside their PluginFieldType's range
(against TensorRT-RTX's real ROIAlign_TRT creator)."""

from __future__ import annotations

import os

import onnx
import pytest

from tests.helpers import run_passes, write_recipe
from tests.passes.test_plugin import ROI_ATTRS, ROI_PARAMS, roi_model
from trtpipe import errors
from trtpipe.errors import RecipeError
from trtpipe.graph.plugin_nodes import PluginCreatorSpec, PluginFieldSpec, check_attrs


def test_plugins_name_is_matched_case_insensitively_for_the_suggestion(run_cli):
    code, _, err = run_cli("plugins", "roialign", "--backend", "tensorrt_rtx")
    assert code == errors.EXIT_USAGE and "did you mean 'ROIAlign_TRT'?" in err and "Traceback" not in err
    code, _, err = run_cli("plugins", "roialign_trt", "--backend", "tensorrt_rtx")
    assert code == errors.EXIT_USAGE and "did you mean 'ROIAlign_TRT'?" in err


def test_plugins_library_that_is_no_file_says_what_it_is(tmp_path, run_cli):
    fifo = tmp_path / "lib.so"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a FIFO"), (tmp_path, "a directory")):
        code, _, err = run_cli("plugins", "--library", path)
        assert code == errors.EXIT_BUILD and f"plugin library {path} is {kind}, not a regular file" in err
        assert "does not exist" not in err


def test_check_attrs_refuses_values_outside_the_field_type():
    spec = PluginCreatorSpec("Acme_TRT", "1", "", (
        PluginFieldSpec("i32", "INT32", 1), PluginFieldSpec("i8", "INT8", 1), PluginFieldSpec("i16", "INT16", 2),
        PluginFieldSpec("f32", "FLOAT32", 1), PluginFieldSpec("f16", "FLOAT16", 1), PluginFieldSpec("flag", "INT32", 1),
        PluginFieldSpec("neg", "INT32", 1), PluginFieldSpec("nan", "FLOAT64", 1), PluginFieldSpec("fb", "FLOAT32", 1)))
    found = dict(check_attrs({"i32": 99999999999999, "i8": 128, "i16": [1, -40000], "f32": 1e39, "f16": 70000.0,
                              "flag": True, "neg": -1, "nan": float("inf"), "fb": False}, spec)[0])
    assert "outside the INT32 range -2147483648 to 2147483647" in found["i32"]
    assert "got 128, outside the INT8 range -128 to 127" in found["i8"]
    assert "got -40000, outside the INT16 range" in found["i16"]
    assert "outside the FLOAT32 range" in found["f32"] and "outside the FLOAT16 range" in found["f16"]
    assert "got True (bool)" in found["flag"] and "got False (bool)" in found["fb"]
    assert "finite numbers only" in found["nan"]
    assert "neg" not in found  # negative values are the type's: ranges only
    assert not check_attrs({"i32": 2**31 - 1, "i8": -128, "i16": [0, 32767], "f16": 65504.0}, spec)[0]


def test_pass_refuses_an_int32_overflow_and_a_bool():
    for value, says in ((99999999999999, "outside the INT32 range"), (True, "got True (bool)")):
        bad = {**ROI_PARAMS, "attrs": {**ROI_ATTRS, "output_height": value}}
        with pytest.raises(RecipeError, match="attrs.output_height: ") as err:
            run_passes(roi_model(), [("plugin", bad)])
        assert err.value.exit_code == 3 and says in str(err.value)


def test_check_reports_the_attribute_line(tmp_path, run_cli):
    onnx.save(roi_model(), tmp_path / "roi.onnx")
    recipe = write_recipe(tmp_path / "r.yaml", """\
name: roi
source: {onnx: roi.onnx}
passes:
  - pass: plugin
    params:
      op: ROIAlign_TRT
      version: '2'
      nodes: [crop/roi]
      inputs: [feat, rois, {tensor: bidx, steps: [{op: cast, to: int32}]}]
      attrs:
        output_height: 99999999999999
        output_width: 2
        sampling_ratio: -1
        mode: 1
        coordinate_transformation_mode: 1
        spatial_scale: 1.0
validate: {enabled: false}
output: {dir: out}
""")
    code, _, err = run_cli("check", recipe)
    assert code == errors.EXIT_RECIPE and f"{recipe}:11:9:" in err
    assert "output_height" in err and "outside the INT32 range" in err and "sampling_ratio" not in err
