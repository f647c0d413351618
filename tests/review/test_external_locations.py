"""review/model_names.external_locations reads the external data files a model names from the wire
format (no onnx import: the run's input check on a fully cached run); it must name exactly what
onnx's own reading of the model names."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from trtpipe.cache.files import all_tensors
from trtpipe.review.model_names import external_locations


def _with_every_tensor_kind():
    """Initializer, sparse initializer, Constant attribute tensor and an If subgraph's initializer."""
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "W")
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((64, 64), np.float32), "cv"))
    then = helper.make_graph([helper.make_node("Identity", ["S"], ["o1"])], "then", [],
                             [helper.make_tensor_value_info("o1", TensorProto.FLOAT, [64, 64])],
                             [numpy_helper.from_array(np.full((64, 64), 2, np.float32), "S")])
    other = helper.make_graph([helper.make_node("Identity", ["W"], ["o2"])], "else", [],
                              [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [64, 64])])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.arange(1, 257, dtype=np.float32), "sp"),
                                       numpy_helper.from_array(np.arange(0, 4096, 16, dtype=np.int64), "sp_idx"),
                                       [64, 64])
    nodes = [const, helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
             helper.make_node("Add", ["y", "c"], ["s"]), helper.make_node("Add", ["s", "sp"], ["z"])]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [64, 64])],
                              [w, numpy_helper.from_array(np.array(True), "cond")], sparse_initializer=[sparse])
    return helper.make_model(graph)


def _onnx_reading(path):
    model = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in all_tensors(model) if uses_external_data(t)})


@pytest.mark.parametrize("one_file", [True, False], ids=["one-data-file", "file-per-tensor"])
def test_names_what_onnx_names(tmp_path, one_file):
    path = tmp_path / "m.onnx"
    model = _with_every_tensor_kind()
    onnx.external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=one_file,
                                                              location="m.onnx.data" if one_file else None,
                                                              size_threshold=0, convert_attribute=True)
    onnx.save_model(model, str(path))
    expected = _onnx_reading(path)
    # one shared file, or one per tensor: the main graph's, the subgraph's and the attribute's among them
    assert expected == ["m.onnx.data"] if one_file else {"W", "S", "cv"} <= set(expected)
    assert external_locations(path) == expected


def test_inline_weights_and_unreadable_files_name_nothing(tmp_path):
    inline = tmp_path / "inline.onnx"
    onnx.save_model(_with_every_tensor_kind(), str(inline))
    assert external_locations(inline) == [] == _onnx_reading(inline)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    assert external_locations(garbage) == []
