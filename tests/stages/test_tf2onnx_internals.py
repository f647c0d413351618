"""The one module that uses tf2onnx internals: its version guard and the numpy shim it restores."""

import numpy as np
import pytest

from trtpipe.errors import SourceError
from trtpipe.stages.source import tf2onnx_internals


def test_installed_tf2onnx_is_a_tested_version():
    import tf2onnx
    tf2onnx_internals.check_version(tf2onnx.__version__)  # raises if setup.cfg's pin drifted


def test_untested_version_is_refused_with_the_fix():
    with pytest.raises(SourceError, match=r"tf2onnx 1\.16\.1 is installed.*verified with tf2onnx 1\.17\.x") as exc:
        tf2onnx_internals.check_version("1.16.1")
    assert "pip install 'tf2onnx==1.17.0'" in str(exc.value)


def test_numpy_shim_lives_only_inside_the_block():
    import tf2onnx.graph
    before = tf2onnx.graph.np
    with tf2onnx_internals.numpy_compat():
        assert tf2onnx.graph.np.product(np.array([2, 3])) == 6
        assert tf2onnx.graph.np.float32 is np.float32
    assert tf2onnx.graph.np is before
