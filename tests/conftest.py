"""Shared fixtures: the tests' own stage cache, an in-process CLI runner, the TensorRT-RTX backend,
a tiny ONNX model. Helper functions live in tests/helpers.py."""

import os

import pytest

from tests.helpers import make_conv_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
