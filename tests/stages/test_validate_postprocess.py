"""Validation of a final model with a post-processing model (`nms: split`, `split_postprocess`):
compared at every profile corner, against the right reference, and never a crash; and parameter
values a profile allows but validation never fed make it inconclusive, not passed."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from tests.helpers import run_passes
from trtpipe import registry
from trtpipe.errors import ValidationError
from trtpipe.stages.passes.runner import initial_input_contract
from trtpipe.stages.validate.compare import validate_models

V = helper.make_tensor_value_info


def _model(nodes, inputs, outputs, inits):
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _split(tmp_path, model, passes):
    ctx = registry.PassContext(name="r", stage_dir=tmp_path, input_contract=initial_input_contract(model))
    final, ctx = run_passes(model, passes, ctx)
    onnx.save(model, str(tmp_path / "s.onnx"))
    onnx.save(final, str(tmp_path / "f.onnx"))
    return final, ctx


def _validate(tmp_path, ctx, cfg, profiles=None):
    return validate_models(tmp_path / "s.onnx", tmp_path / "f.onnx", cfg, precision="fp32",
                           input_contract=ctx.input_contract, output_map=ctx.output_map,
                           postprocess=ctx.postprocess, profiles=profiles)


def test_the_post_processing_is_compared_at_every_profile_corner(tmp_path):
    """dynamic_batch, then split_postprocess: a map_fn-style Loop with its trip count fixed at 1
    moves into the post-processing model, which at batch 4 returns one image's result."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["s", "i"], ["row"], axis=0), helper.make_node("TopK", ["row", "k"], ["tv", "ti"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [V("i", TensorProto.INT64, []), V("cond_in", TensorProto.BOOL, [])],
        [V("cond_out", TensorProto.BOOL, []), V("tv", TensorProto.FLOAT, [5])],
        [helper.make_tensor("k", TensorProto.INT64, [1], [5])])
    w = nh.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["c"], ["y"]), helper.make_node("Reshape", ["y", "shp"], ["s"]),
                    helper.make_node("Loop", ["trip", "cond"], ["top"], body=body)],
                   [V("x", TensorProto.FLOAT, [1, 3, 8, 8])], [V("top", TensorProto.FLOAT, [1, 5])],
                   [w, nh.from_array(np.array([1, 256], np.int64), "shp"), nh.from_array(np.array(1, np.int64), "trip"),
                    nh.from_array(np.array(True), "cond")])
    _, ctx = _split(tmp_path, model, [("dynamic_batch", {}), ("split_postprocess", {})])
    assert ctx.postprocess and ctx.postprocess["kind"] == "outputs"
    profiles = [{"name": "b", "inputs": {"x": {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}}}]
    with pytest.raises(ValidationError) as err:
        _validate(tmp_path, ctx, {"data": {"seed": 3, "iterations": 2}}, profiles)
    assert "at profile b max: output 'top': shape [1, 5] differs from the reference's [4, 5]" in err.value.message


def test_parameter_values_never_fed_make_it_inconclusive(tmp_path):
    """A TopK whose K the profile lets range over 1..16, fed 4 only: a final model wrong for K > 4
    must not be reported as passed."""
    def topk(extra, out):
        return _model([helper.make_node("TopK", ["x", "K"], ["vt" if extra else "v", "i"], axis=1)] + extra,
                      [V("x", TensorProto.FLOAT, [1, 16]), V("K", TensorProto.INT64, [1])],
                      [V(out, TensorProto.FLOAT, [1, None])], [])
    onnx.save(topk([], "v"), str(tmp_path / "s.onnx"))
    final = topk([helper.make_node("Shape", ["vt"], ["vs"]), helper.make_node("Gather", ["vs", "ax1"], ["e"], axis=0),
                  helper.make_node("Slice", ["m", "z", "e", "one"], ["mk"]),
                  helper.make_node("Mul", ["vt", "mk"], ["v"])], "v")
    final.graph.initializer.extend([helper.make_tensor("m", TensorProto.FLOAT, [1, 16], [1.0] * 4 + [0.0] * 12),
                                    helper.make_tensor("z", TensorProto.INT64, [1], [0]),
                                    helper.make_tensor("one", TensorProto.INT64, [1], [1]),
                                    helper.make_tensor("ax1", TensorProto.INT64, [1], [1])])
    onnx.save(final, str(tmp_path / "f.onnx"))
    res = validate_models(tmp_path / "s.onnx", tmp_path / "f.onnx",
                          {"data": {"seed": 3, "iterations": 2, "inputs": {"K": {"value": [4]}}}}, precision="fp32",
                          input_contract=initial_input_contract(topk([], "v")), output_map=None, postprocess=None,
                          profiles=[{"name": "k", "inputs": {"K": {"min": [1], "opt": [4], "max": [16]}}}])
    assert res["status"] == "inconclusive", res["reason"]
    assert "parameter input 'K' is compared at its given value only" in res["reason"]


def _nms_model(extra_nodes=(), extra_inputs=(), outputs=("selected_indices",), threshold=0.3):
    nodes = [helper.make_node("Relu", ["bx"], ["boxes"], name="roi"), helper.make_node("Sigmoid", ["sx"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "maxk", "iou", "st"], ["selected_indices"],
                              name="nms"), *extra_nodes]
    inits = [nh.from_array(np.array([5], np.int64), "maxk"), nh.from_array(np.array([0.5], np.float32), "iou"),
             nh.from_array(np.array([threshold], np.float32), "st"), nh.from_array(np.array([2], np.int64), "two"),
             nh.from_array(np.array([1], np.int64), "one"), nh.from_array(np.array([0], np.int64), "zero")]
    return _model(nodes, [V("bx", TensorProto.FLOAT, [1, 8, 4]), V("sx", TensorProto.FLOAT, [1, 1, 8]), *extra_inputs],
                  [V(o, TensorProto.FLOAT if o != "selected_indices" else TensorProto.INT64, None) for o in outputs],
                  inits)


@pytest.mark.parametrize("value, changed", [(0.3, {}), (0.5, {"score_threshold": 0.5})])
def test_restating_the_sources_threshold_changes_no_setting(tmp_path, value, changed):
    """0.3 in the recipe is the float32 0.3 of the source: the source's own outputs stay the reference."""
    _, ctx = _split(tmp_path, _nms_model(), [("nms", {"mode": "split", "score_threshold": value,
                                                      "iou_threshold": 0.5})])
    assert ctx.postprocess["settings"] == changed


def test_changed_settings_with_a_graph_input_in_the_post_processing(tmp_path):
    """The post-processing also reads a graph input (`scale`): the reference run on the source side
    takes it from the source's feed (it crashed with KeyError 'scale__passthrough')."""
    extra = [helper.make_node("Gather", ["selected_indices", "two"], ["idx2"], axis=1),
             helper.make_node("Squeeze", ["idx2", "one"], ["idx"]),
             helper.make_node("Squeeze", ["boxes", "zero"], ["b8"]),
             helper.make_node("Gather", ["b8", "idx"], ["picked"], axis=0),
             helper.make_node("Div", ["picked", "scale"], ["detection_boxes"])]
    model = _nms_model(extra, [V("scale", TensorProto.FLOAT, [1])], ("detection_boxes",), threshold=0.2)
    _, ctx = _split(tmp_path, model, [("nms", {"mode": "split", "score_threshold": 0.5})])
    assert ctx.postprocess["settings"] == {"score_threshold": 0.5}
    # the reference ran; what stops it is this toy's missing scores output, a recipe-level message
    with pytest.raises(ValidationError, match="cannot tell which post-processing output holds the scores"):
        _validate(tmp_path, ctx, {"data": {"seed": 3, "iterations": 2, "inputs": {"scale": {"range": [1, 2]}}}})


def test_a_post_processing_reading_plugin_outputs_is_inconclusive(tmp_path):
    """A plugin before the split NMS (ROIAlign -> box head -> NMS): ONNX Runtime cannot compute what
    the post-processing reads, so its detections are not evidence (it crashed with KeyError)."""
    final, ctx = _split(tmp_path, _nms_model(threshold=0.2), [("nms", {"mode": "split"})])
    for node in final.graph.node:  # what the `plugin` pass leaves: the op replaced by a TensorRT plugin node
        if node.name == "roi":
            node.op_type, node.domain = "ROIAlign_TRT", "trt.plugins"
    final.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    onnx.save(final, str(tmp_path / "f.onnx"))
    res = _validate(tmp_path, ctx, {"data": {"seed": 3, "iterations": 2}})
    assert res["status"] == "inconclusive", res["reason"]
