"""The error corpus: every bad input gets a located, actionable message, a documented exit code,
and no plan is published."""

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import make_conv_model, write_recipe
from trtpipe import errors

HEADER = "# yaml-language-server: $schema=../schemas/recipe.schema.json\n"


def recipe(tmp_path, body, model="tiny.onnx"):
    if model and not (tmp_path / model).exists():
        make_conv_model(tmp_path / model)
    return write_recipe(tmp_path / "r.yaml", HEADER + body)


def no_plan(tmp_path):
    plans = list(pathlib.Path(tmp_path).rglob("*.plan"))
    staged = list(pathlib.Path(tmp_path).rglob(".trtpipe-staging-*"))
    return not plans and not staged


BASE = """\
name: t
source:
  onnx: tiny.onnx
output:
  dir: out
"""

CASES = {
    "yaml_syntax": (BASE + "passes:\n  - pass: cleanup\n   params: {}\n", errors.EXIT_RECIPE,
                    ["r.yaml:9:4", "YAML syntax error", "indentation"]),
    "unknown_key": (BASE + "buld:\n  workspace: 1GiB\n", errors.EXIT_RECIPE,
                    ["r.yaml:7:1", "unknown key 'buld'", "did you mean 'build'"]),
    "wrong_type": (BASE + "build:\n  optimization_level: high\n", errors.EXIT_RECIPE,
                   ["r.yaml:8:3", "build.optimization_level", "expected integer", "'high'"]),
    "misspelled_pass": (BASE + "passes:\n  - pass: fold_constant\n", errors.EXIT_RECIPE,
                        ["r.yaml:8:5", "unknown pass 'fold_constant'", "did you mean 'fold_constants'"]),
    "bad_pass_param": (BASE + "passes:\n  - pass: fold_constants\n    params:\n      max_rounds: 0\n",
                       errors.EXIT_RECIPE, ["r.yaml:10:7", "passes[0].params.max_rounds", "minimum"]),
    "bad_pass_param_key": (BASE + "passes:\n  - pass: cleanup\n    params: {toposrt: false}\n",
                           errors.EXIT_RECIPE, ["passes[0].params.toposrt", "did you mean 'toposort'"]),
    "bad_workspace_unit": (BASE + "build:\n  workspace: 2 gigs\n", errors.EXIT_RECIPE,
                           ["r.yaml:8:3", "build.workspace", "2GiB", "'2 gigs'"]),
    "zero_workspace": (BASE + "build:\n  workspace: 0GiB\n", errors.EXIT_RECIPE,
                       ["r.yaml:8:3", "build.workspace", "'0GiB' is 0 bytes", "at least 1 byte"]),
    "precision_option_of_another_mode": (BASE + "precision: {mode: fp16, method: entropy}\n", errors.EXIT_RECIPE,
                                         ["r.yaml:7:", "precision.method applies to int8 and fp8, not to mode fp16"]),
    "nan_overflow_threshold": (BASE + "precision: {mode: fp16, overflow_threshold: .nan}\n", errors.EXIT_RECIPE,
                               ["r.yaml:7:", "precision.overflow_threshold", "not a finite number"]),
    "workspace_beyond_64_bits": (BASE + "build:\n  workspace: 99999999999999999999TiB\n", errors.EXIT_RECIPE,
                                 ["r.yaml:8:3", "build.workspace", "more than the builder can be given"]),
    "yaml12_exponent_float": (BASE + "validate: {atol: 1e-3, rtol: -1e-3}\n", errors.EXIT_RECIPE,
                              ["validate.rtol", "minimum"]),
    "reversed_data_range": (BASE + "validate:\n  data:\n    inputs:\n      x: {range: [1, 0]}\n", errors.EXIT_RECIPE,
                            ["r.yaml:10:", "validate.data.inputs.x.range: [1, 0] is empty", "write [0, 1]"]),
    "infinite_build_timeout": (BASE + "build:\n  timeout: .inf\n", errors.EXIT_RECIPE,
                               ["r.yaml:8:3", "build.timeout", "not a finite number"]),
    "int8_distribution": (BASE + "precision: {mode: int8, method: distribution}\n", errors.EXIT_RECIPE,
                          ["r.yaml:7:", "'distribution' is ONNX Runtime's float8 calibrator"]),
    "profile_min_gt_max": (BASE + "build:\n  profiles:\n    - name: p\n      inputs:\n"
                           "        x: {min: [4, 3, 8, 8], opt: [2, 3, 8, 8], max: [1, 3, 8, 8]}\n",
                           errors.EXIT_RECIPE, ["r.yaml:11:9", "min <= opt <= max", "dimension 0"]),
    "duplicate_profile_names": (BASE + "build:\n  profiles:\n"
                                "    - {name: p, inputs: {x: {min: [1,3,8,8], opt: [1,3,8,8], max: [1,3,8,8]}}}\n"
                                "    - {name: p, inputs: {x: {min: [1,3,8,8], opt: [1,3,8,8], max: [1,3,8,8]}}}\n",
                                errors.EXIT_RECIPE, ["duplicate profile name 'p'", "r.yaml:10:"]),
    "duplicate_yaml_key": (BASE + "precision: fp32\nprecision: fp16\n", errors.EXIT_RECIPE,
                           ["r.yaml:8:1", "duplicate key 'precision'", "r.yaml:7:1"]),
    "missing_model": (BASE.replace("tiny.onnx", "tiyn.onnx"), errors.EXIT_SOURCE,
                      ["tiyn.onnx", "r.yaml:4:", "did you mean 'tiny.onnx'"]),
    "unwritable_output": (BASE.replace("dir: out", "dir: tiny.onnx/out"), errors.EXIT_OUTPUT,
                          ["output directory", "not writable"]),
    "profile_unknown_input": (BASE + "build:\n  profiles:\n    - name: p\n      inputs:\n"
                              "        z: {min: [1, 3, 8, 8], opt: [1, 3, 8, 8], max: [1, 3, 8, 8]}\n",
                              errors.EXIT_RECIPE, ["r.yaml:11:9", "'z'", "did you mean 'x'"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_corpus(case, tmp_path, run_cli):
    body, code, needles = CASES[case]
    path = recipe(tmp_path, body)
    got, out, err = run_cli(path)
    assert got == code, (got, err)
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    assert "Traceback" not in err + out
    assert no_plan(tmp_path)


def test_corrupt_onnx(tmp_path, run_cli):
    (tmp_path / "tiny.onnx").write_bytes(b"this is not a protobuf \x00\xff" * 10)
    got, _, err = run_cli(recipe(tmp_path, BASE))
    assert got == errors.EXIT_SOURCE
    assert "not a valid ONNX model" in err and "tiny.onnx" in err
    assert no_plan(tmp_path)


def _single_node_model(path, node, inputs, outputs, domain_opsets=()):
    graph = helper.make_graph([node], "g", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), *[helper.make_opsetid(d, v) for d, v in domain_opsets]]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), str(path))


def test_parser_rejects_op_names_node(tmp_path, run_cli):
    f = TensorProto.FLOAT
    _single_node_model(
        tmp_path / "tiny.onnx",
        helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upsample_crop", mode="linear",
                         coordinate_transformation_mode="tf_crop_and_resize"),
        [helper.make_tensor_value_info("x", f, [1, 1, 4, 4]), helper.make_tensor_value_info("scales", f, [4])],
        [helper.make_tensor_value_info("y", f, None)])
    got, _, err = run_cli(recipe(tmp_path, BASE), "--no-validate")
    assert got == errors.EXIT_BUILD
    assert "upsample_crop" in err and "Resize" in err and "transformation mode" in err
    assert no_plan(tmp_path)


def test_plugin_missing_names_plugin_and_backend(tmp_path, run_cli):
    f = TensorProto.FLOAT
    node = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                            ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
                            name="nms", domain="", plugin_version="1", max_output_boxes=10,
                            score_threshold=0.1, iou_threshold=0.5, background_class=-1, score_activation=0,
                            box_coding=0)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("boxes", f, [1, 20, 4]),
                      helper.make_tensor_value_info("scores", f, [1, 20, 3])],
        [helper.make_tensor_value_info("num_detections", TensorProto.INT32, [1, 1]),
         helper.make_tensor_value_info("detection_boxes", f, [1, 10, 4]),
         helper.make_tensor_value_info("detection_scores", f, [1, 10]),
         helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [1, 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, str(tmp_path / "tiny.onnx"))
    got, _, err = run_cli(recipe(tmp_path, BASE), "--no-validate")
    assert got == errors.EXIT_BUILD
    assert "EfficientNMS_TRT" in err and "tensorrt_rtx" in err and "'nms'" in err
    assert no_plan(tmp_path)


def test_nms_has_no_runner_on_rtx(tmp_path, run_cli):
    i64, f = TensorProto.INT64, TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["sel"], name="the_nms")],
        "g", [helper.make_tensor_value_info("boxes", f, [1, 20, 4]),
              helper.make_tensor_value_info("scores", f, [1, 3, 20])],
        [helper.make_tensor_value_info("sel", i64, None)],
        [onnx.numpy_helper.from_array(np.array([5], np.int64), "k")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(tmp_path / "tiny.onnx"))
    got, _, err = run_cli(recipe(tmp_path, BASE), "--no-validate")
    assert got == errors.EXIT_BUILD
    assert "NonMaxSuppression" in err and "the_nms" in err
    assert no_plan(tmp_path)


def test_empty_passes_list_builds(tmp_path, run_cli):
    got, out, err = run_cli(recipe(tmp_path, BASE + "passes: []\n"), "--no-validate")
    assert got == 0, err
    plan = tmp_path / "out" / "t.plan"
    assert plan.stat().st_size > 1000
    assert not list((tmp_path / "out").glob(".trtpipe-staging-*"))


def test_debug_shows_traceback(tmp_path, run_cli):
    got, _, err = run_cli(recipe(tmp_path, BASE.replace("tiny.onnx", "nope.onnx")), "--debug")
    assert got == errors.EXIT_SOURCE and "Traceback" in err


def test_savedmodel_with_unconverted_tf_ops(tmp_path, run_cli):
    import tensorflow as tf

    class BitTricks(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="x")])
        def serve(self, x):
            bits = tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 0x7FFFFFFF)  # |x| by bit masking
            return {"y": tf.bitcast(bits, tf.float32)}

    module = BitTricks()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    body = BASE.replace("onnx: tiny.onnx", "saved_model: sm\n  opset: 17")
    got, _, err = run_cli(recipe(tmp_path, body, model=None))
    assert got == errors.EXIT_SOURCE
    assert "Bitcast" in err and "BitwiseAnd" in err and "opset 17" in err
    assert no_plan(tmp_path)


@pytest.mark.parametrize("output, needle", [
    ("{plan: sub/a.plan}", "expected a plain file name"),
    ("{plan: '..'}", "expected a plain file name"),
    ("{onnx: report.json}", "'report.json' is already the name of the report"),
    ("{onnx: t.plan}", "'t.plan' is already the name of output.plan"),
])
def test_output_file_names_are_plain_and_distinct(output, needle, tmp_path, run_cli):
    got, _, err = run_cli(recipe(tmp_path, BASE.replace("output:\n  dir: out\n", f"output: {output}\n")))
    assert got == errors.EXIT_RECIPE and needle in err and "r.yaml:" in err, err
    assert no_plan(tmp_path)


def test_blocked_destination_publishes_nothing(tmp_path, run_cli):
    (tmp_path / "out" / "t.plan").mkdir(parents=True)  # a directory where the plan goes
    got, _, err = run_cli(recipe(tmp_path, BASE), "--no-validate")
    assert got == errors.EXIT_OUTPUT and "t.plan" in err and "is a directory" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["t.plan"]  # nothing else moved in


def test_exponent_numbers_are_numbers(tmp_path, run_cli):
    """`1e-3` is a number (YAML 1.2, every editor's reading), not the string PyYAML's YAML 1.1 makes of it."""
    path = recipe(tmp_path, BASE + "validate: {atol: 1e-3, rtol: 2e-2}\n")
    code, out, err = run_cli("explain", path)
    assert code == 0, err
    assert "atol: 0.001\n" in out and "rtol: 0.02\n" in out
