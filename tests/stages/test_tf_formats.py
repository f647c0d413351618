"""TF1 frozen graphs (`source.frozen_graph`) and TFLite files (`source.tflite`) as recipe sources:
converted by tf2onnx's own loaders, run through the CLI to a validated plan (real TensorFlow,
tf2onnx, ONNX Runtime and TensorRT-RTX builder; no mocks)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.helpers import REPO, ort_run, write_recipe
from trtpipe import cache
from trtpipe.errors import EXIT_RECIPE, EXIT_SOURCE, SourceError
from trtpipe.stages.source.load import load_source

pytestmark = pytest.mark.slow  # builds and converts TensorFlow models

BATCH = 1


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory):
    """A Conv + Dense tf.function, frozen to a GraphDef and converted to TFLite; and TF's own output
    for one input. Built once: importing TensorFlow costs seconds."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    root = tmp_path_factory.mktemp("tf_files")
    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.standard_normal((3, 3, 3, 4)).astype(np.float32) * 0.5)
    dense = tf.Variable(rng.standard_normal((4, 5)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([BATCH, 8, 8, 3], tf.float32, name="x")])
    def model(x):
        y = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"))
        return tf.matmul(tf.reduce_mean(y, axis=[1, 2]), dense)

    concrete = model.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    (root / "model.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    (root / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([concrete], model).convert())
    image = rng.standard_normal((BATCH, 8, 8, 3)).astype(np.float32)
    return {"dir": root, "frozen_inputs": [t.name for t in frozen.inputs],
            "frozen_outputs": [t.name for t in frozen.outputs], "image": image, "expected": model(image).numpy()}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


def _source(kind, files, **override):
    if kind == "frozen_graph":
        lines = {"frozen_graph": str(files["dir"] / "model.pb"), "inputs": files["frozen_inputs"],
                 "outputs": files["frozen_outputs"]}
    else:
        lines = {"tflite": str(files["dir"] / "model.tflite")}
    lines.update(override)
    return "\n".join(f"  {k}: {json.dumps(v)}" for k, v in lines.items() if v is not None)


def _recipe(tmp_path, kind, files, **override):
    return write_recipe(tmp_path / f"{kind}.yaml", f"name: {kind}\nsource:\n{_source(kind, files, **override)}\n"
                        "precision: fp32\nvalidate:\n  data: {seed: 3, iterations: 1}\n"
                        "build:\n  workspace: 256MiB\noutput:\n  dir: out\n")


def _statuses(tmp_path):
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    return rep, {stage: v["status"] for stage, v in rep["cache"]["stages"].items()}


@pytest.mark.parametrize("kind", ["frozen_graph", "tflite"])
def test_recipe_to_validated_plan(kind, tf_files, tmp_path, run_cli, cache_dir):
    recipe = _recipe(tmp_path, kind, tf_files)
    code, _, err = run_cli(recipe, "--quiet")
    assert code == 0, err
    out = tmp_path / "out"
    assert (out / f"{kind}.plan").stat().st_size > 0
    final = onnx.load(str(out / f"{kind}.onnx"))
    (got,) = ort_run(final, {final.graph.input[0].name: tf_files["image"]}).values()
    np.testing.assert_allclose(got, tf_files["expected"], atol=1e-5, rtol=1e-5)   # fp32: TF's own numbers
    rep, stages = _statuses(tmp_path)
    assert rep["source"]["kind"] == kind
    assert rep["source"]["path"].endswith("model.pb" if kind == "frozen_graph" else "model.tflite")
    assert rep["validation"]["status"] == "passed"
    assert stages["source"] == "ran"
    assert "tensorflow" in rep["source"]["versions"] and "tf2onnx" in rep["source"]["versions"]
    code, _, err = run_cli(recipe, "--quiet")    # the same file: every stage from the cache
    assert code == 0, err
    assert set(_statuses(tmp_path)[1].values()) == {"cached"}


def test_conversion_is_byte_identical_across_processes(tf_files):
    """This process and another one (its own hash seed, addresses) convert each file to the same bytes."""
    configs = [{"frozen_graph": str(tf_files["dir"] / "model.pb"), "inputs": tf_files["frozen_inputs"],
                "outputs": tf_files["frozen_outputs"]}, {"tflite": str(tf_files["dir"] / "model.tflite")}]
    code = ("import hashlib; from trtpipe.stages.source.load import load_source; "
            f"print(*[hashlib.sha256(load_source(c).model.SerializeToString()).hexdigest() for c in {configs!r}])")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "1"}).stdout.split()
    here = [hashlib.sha256(load_source(c).model.SerializeToString()).hexdigest() for c in configs]
    assert here == other


def test_frozen_graph_needs_inputs_and_outputs(tf_files, tmp_path, run_cli, cache_dir):
    recipe = _recipe(tmp_path, "frozen_graph", tf_files, outputs=None)
    code, _, err = run_cli(recipe, "--quiet")
    assert code == EXIT_RECIPE
    assert "source: missing required key 'outputs'" in err and "Traceback" not in err
    code, _, err = run_cli("check", recipe)
    assert code == EXIT_RECIPE and "missing required key 'outputs'" in err


@pytest.mark.parametrize("kind, key, wrong, right", [
    ("frozen_graph", "outputs", "Identty:0", "Identity:0"),
    ("frozen_graph", "inputs", "X:0", "x:0"),
    ("tflite", "outputs", "Identty", "Identity"),
])
def test_unknown_tensor_name_suggests(kind, key, wrong, right, tf_files, tmp_path, run_cli, cache_dir):
    recipe = _recipe(tmp_path, kind, tf_files, **{key: [wrong]})
    code, _, err = run_cli(recipe, "--quiet")
    assert code == EXIT_SOURCE, err
    assert f"source.{key}: {wrong!r} is not a tensor of" in err
    assert f"did you mean {right!r}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / f"{kind}.plan").exists()


@pytest.mark.parametrize("kind", ["frozen_graph", "tflite"])
def test_missing_file_same_message_in_check_and_run(kind, tf_files, tmp_path, run_cli, cache_dir):
    name = "model.pb" if kind == "frozen_graph" else "model.tflite"
    recipe = _recipe(tmp_path, kind, tf_files, **{kind: str(tmp_path / name.replace("model", "modle"))})
    (tmp_path / name).write_bytes(b"")     # the did-you-mean finds it
    run_code, _, run_err = run_cli(recipe, "--quiet")
    check_code, _, check_err = run_cli("check", recipe)
    assert run_code == EXIT_SOURCE and check_code == EXIT_RECIPE
    message = next(line for line in run_err.splitlines() if "not found" in line)
    assert f"source.{kind}: not found" in message and name in run_err
    assert message.split("): ", 1)[1] in check_err


def test_unconverted_tf_ops_are_listed(tmp_path):
    """TF ops tf2onnx cannot convert fail the source stage (as for a SavedModel), not a later one."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([2, 4], tf.float32, name="x")])
    def bits(x):      # neither op has a tf2onnx handler at opset 17
        return tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 255)

    frozen = convert_variables_to_constants_v2(bits.get_concrete_function())
    (tmp_path / "bits.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    with pytest.raises(SourceError) as exc:
        load_source({"frozen_graph": str(tmp_path / "bits.pb"), "inputs": ["x:0"],
                     "outputs": [frozen.outputs[0].name], "opset": 17})
    msg = str(exc.value)
    assert "Bitcast  x1" in msg and "BitwiseAnd  x1" in msg and "higher `source.opset`" in msg
    assert exc.value.exit_code == EXIT_SOURCE
