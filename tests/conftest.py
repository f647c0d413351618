"""Shared fixtures: small real models and an in-process CLI runner."""

import os
import pathlib
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = pathlib.Path(__file__).resolve().parent.parent
LIGHT = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def make_conv_model(path, batch=1, dynamic_batch=False, extra_nodes=(), extra_outputs=(), opset=17):
    """x[N,3,8,8] -> Conv(4 filters) -> Relu -> y; deterministic weights."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    n = "N" if dynamic_batch else batch
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu"), *extra_nodes]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 4, 8, 8]), *extra_outputs], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.save(model, str(path))
    return path


def write_recipe(path, body):
    path = pathlib.Path(path)
    path.write_text(textwrap.dedent(body).lstrip())
    return path


@pytest.fixture(autouse=True, scope="session")
def _stage_cache(tmp_path_factory):
    """Runs in tests never touch the developer's stage cache (tests that need their own set it)."""
    # Assigned, not defaulted: an exported TRTPIPE_CACHE_DIR would let tests pass on stale entries.
    os.environ["TRTPIPE_CACHE_DIR"] = str(tmp_path_factory.mktemp("stage-cache"))


@pytest.fixture
def run_cli(capsys):
    """Run `python pipeline.py ARGS` in-process; returns (exit code, stdout, stderr)."""
    from trtpipe.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture(scope="session")
def rtx():
    """The TensorRT-RTX backend. Not skipped when missing: the suite exists to run it for real."""
    from trtpipe.backend import resolve_backend
    return resolve_backend("tensorrt_rtx")


@pytest.fixture
def tiny_onnx(tmp_path):
    return make_conv_model(tmp_path / "tiny.onnx")
