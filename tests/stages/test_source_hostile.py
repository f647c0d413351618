"""Hostile source files: a corrupt TFLite flatbuffer (which crashes TensorFlow Lite's native reader)
is reported as a source error naming the file and the signal, with nothing left behind; a model
whose user-named inputs/outputs are swapped is refused. Real TensorFlow, tf2onnx and CLI runs."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from trtpipe.errors import EXIT_SOURCE

pytestmark = pytest.mark.slow  # converts TensorFlow models


@pytest.fixture(scope="module")
def real_tflite(tmp_path_factory):
    """A small Conv + Dense model converted to TFLite, and the same frozen to a GraphDef."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    root = tmp_path_factory.mktemp("hostile_tf")
    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.standard_normal((3, 3, 3, 4)).astype(np.float32))
    dense = tf.Variable(rng.standard_normal((4, 5)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="x")])
    def model(x):
        return tf.matmul(tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")), axis=[1, 2]), dense)

    concrete = model.get_concrete_function()
    (root / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], model).convert())
    frozen = convert_variables_to_constants_v2(concrete)
    (root / "model.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    conv = next(op.name for op in frozen.graph.get_operations() if op.type == "Conv2D")
    return {"tflite": root / "model.tflite", "pb": root / "model.pb", "input": frozen.inputs[0].name,
            "output": frozen.outputs[0].name, "conv": f"{conv}:0"}


def _run(tmp_path, source_lines):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: h\nsource:\n{source_lines}\nprecision: fp32\nbuild:\n  workspace: 256MiB\n"
                      "output:\n  dir: out\n")
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), str(recipe), "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _left_behind(tmp_path):
    out = tmp_path / "out"
    return sorted(p for p in (os.listdir(out) if out.is_dir() else []) if p.startswith(".")) + \
        [p for p in os.listdir(tmp_path) if p.startswith(".trt")]


def _flipped(data: bytes, fraction: float, seed: int) -> bytes:
    """`data` with `fraction` of its bytes (past the 8-byte header) replaced by random ones."""
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    where = rng.choice(np.arange(8, len(buf)), size=int(len(buf) * fraction), replace=False)
    for i in where:
        buf[i] = (buf[i] + int(rng.integers(1, 256))) % 256
    return bytes(buf)


def test_random_bytes_after_tfl3_header_is_exit_4_naming_the_signal(tmp_path):
    """`b'\\x10\\0\\0\\0TFL3' + 2000 random bytes` segfaulted the run (exit 139, no message, staging left)."""
    (tmp_path / "h.tflite").write_bytes(b"\x10\0\0\0TFL3" + np.random.default_rng(1).bytes(2000))
    code, text = _run(tmp_path, "  tflite: h.tflite")
    assert code == EXIT_SOURCE, text
    assert "source.tflite" in text and "h.tflite" in text
    assert "crashed" in text and "signal SIG" in text, text
    assert "Traceback" not in text
    assert _left_behind(tmp_path) == []


def test_real_tflite_with_flipped_bytes_is_a_source_error(real_tflite, tmp_path):
    """5% of a real .tflite's bytes flipped: a crash (signal) or TFLite's own complaint, always exit 4."""
    data = real_tflite["tflite"].read_bytes()
    (tmp_path / "f.tflite").write_bytes(_flipped(data, 0.05, seed=5))
    code, text = _run(tmp_path, "  tflite: f.tflite")
    assert code == EXIT_SOURCE, text
    assert "source.tflite" in text and "f.tflite" in text
    assert "Traceback" not in text
    assert _left_behind(tmp_path) == []


def test_frozen_graph_with_inputs_and_outputs_swapped_is_refused(real_tflite, tmp_path):
    """`inputs: [Conv2D:0]`, `outputs: [x:0]` built a 0-node pass-through with a dead input and
    "validation passed": refused at the source stage, both tensors named, the swap suggested."""
    conv, x = real_tflite["conv"], real_tflite["input"]
    code, text = _run(tmp_path, f"  frozen_graph: {real_tflite['pb']}\n  inputs: ['{conv}']\n  outputs: ['{x}']")
    assert code == EXIT_SOURCE, text
    assert "source.inputs" in text and repr(conv) in text and "feed nothing" in text
    assert "swapped" in text and f"`inputs: ['{x}']`" in text
    assert "Traceback" not in text and "validation passed" not in text
    assert _left_behind(tmp_path) == []


def test_sources_named_the_right_way_round_still_convert(real_tflite):
    """The same frozen graph with inputs/outputs the right way round, and the intact .tflite
    (converted in tflite_guard's child process), convert to a [1,5] model of their input."""
    from trtpipe.stages.source.load import load_source
    frozen = load_source({"frozen_graph": str(real_tflite["pb"]), "inputs": [real_tflite["input"]],
                          "outputs": [real_tflite["output"]]})
    assert [i.name for i in frozen.inputs] == [real_tflite["input"]] and frozen.outputs[0].shape == [1, 5]
    lite = load_source({"tflite": str(real_tflite["tflite"])})
    assert len(lite.inputs) == 1 and lite.inputs[0].shape == [1, 8, 8, 3] and lite.outputs[0].shape == [1, 5]
