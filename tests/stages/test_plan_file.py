"""plan_file.build_to_file: small models are built as bytes and written, big ones streamed while
serialized (issue 13, P3). Both ways give the same plan, and a write that does not fit is an
OutputError naming the file on either way (TensorRT swallows the stream writer's error)."""

import subprocess
import sys

from tests.helpers import REPO, make_conv_model
from trtpipe.stages.build.plan_file import STREAM_FROM_BYTES, weight_bytes

BUILD = """
import sys
sys.path.insert(0, {repo!r})
from trtpipe.backend import resolve_backend
from trtpipe.stages.build.plan_file import build_to_file
trt = resolve_backend("tensorrt_rtx").trt
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
parser = trt.OnnxParser(network, logger)
assert parser.parse_from_file({model!r})
config = builder.create_builder_config()
config.num_compute_capabilities = 1
config.set_compute_capability(trt.ComputeCapability.SM89, 0)
if {limit}:
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
try:
    print(build_to_file(trt, builder, network, config, {plan!r}, {weights}))
except Exception as err:
    print(type(err).__name__, str(err).replace("\\n", " "))
"""


def _build(tmp_path, model, plan, weights, limit=0):
    code = BUILD.format(repo=str(REPO), model=str(model), plan=str(plan), weights=weights, limit=limit)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_streamed_and_written_plans_are_the_same(tmp_path):
    model = make_conv_model(tmp_path / "tiny.onnx")
    assert 0 < weight_bytes(model) < STREAM_FROM_BYTES
    written, streamed = tmp_path / "bytes.plan", tmp_path / "stream.plan"
    assert _build(tmp_path, model, written, weight_bytes(model)) == "True"
    assert _build(tmp_path, model, streamed, STREAM_FROM_BYTES) == "True"
    assert written.stat().st_size > 1000 and written.read_bytes() == streamed.read_bytes()


def test_a_plan_that_does_not_fit_is_an_output_error_either_way(tmp_path):
    model = make_conv_model(tmp_path / "tiny.onnx")
    for weights in (1, STREAM_FROM_BYTES):
        plan = tmp_path / f"plan-{weights}.plan"
        said = _build(tmp_path, model, plan, weights, limit=4096)
        assert said.startswith("OutputError") and str(plan) in said and "file size limit" in said, said
        assert not plan.exists()  # nothing truncated is kept


def test_weight_bytes_counts_external_data(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((256, 256), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [w])
    path = tmp_path / "m.onnx"
    onnx.save_model(helper.make_model(graph), str(path), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    assert weight_bytes(path) == path.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size
    assert weight_bytes(path) > 256 * 256 * 4
