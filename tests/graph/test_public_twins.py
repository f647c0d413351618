"""Where trt-pipeline once called a dependency's private API it now has a public-API twin; these
tests pin the twins' behaviour, and compare them with the private originals while those exist
(onnx 1.23 / onnx-graphsurgeon 0.6.1, as pinned)."""

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtpipe.cache.files import all_tensors
from trtpipe.graph.nms_match import node_inputs, outer_reads


def loop_reading_outer_tensor():
    """y = Loop(3 iterations) { acc + outer } where `outer` = x * 2 is computed outside the body."""
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "outer"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["outer"]),
         helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.float32([2, 2]), "two"),
         numpy_helper.from_array(np.float32([1, 1]), "unused_weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_outer_reads_names_the_captured_tensor():
    graph = gs.import_onnx(loop_reading_outer_tensor())
    loop = next(n for n in graph.nodes if n.op == "Loop")
    (body,) = loop.subgraphs()
    assert sorted(outer_reads(body)) == ["outer"]
    assert [t.name for t in node_inputs(loop)] == ["trips", "", "x", "outer"]


def test_all_tensors_includes_weights_and_attribute_tensors():
    model = loop_reading_outer_tensor()
    value = numpy_helper.from_array(np.float32([5]), "cv")
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=value))
    names = sorted(t.name for t in all_tensors(model))
    assert names == ["cv", "trips", "two", "unused_weight"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["demo", "per_class_nms_loop"])
def test_twins_match_the_private_originals(variant):
    """On tf2onnx exports with map_fn Loops (and NMS inside a Loop body)."""
    from onnx.external_data_helper import _get_all_tensors

    from tests import tfmodels
    if not hasattr(gs.Graph, "_foreign_tensors"):
        pytest.skip("onnx-graphsurgeon no longer has Graph._foreign_tensors to compare with")
    model = tfmodels.onnx_model(variant)
    assert sorted(t.name for t in all_tensors(model)) == sorted(t.name for t in _get_all_tensors(model))
    graph = gs.import_onnx(model)
    subs = [s for n in graph.nodes for s in n.subgraphs()]
    assert subs, "control-flow test models have bodies"
    for sub in subs:
        assert set(outer_reads(sub)) == set(sub._foreign_tensors())
