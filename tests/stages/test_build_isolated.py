"""The parser and builder run in a child process: a crash or a timeout there is a build error
(exit 7) with a message, nothing is published, and a normal build gives the same plan as in-process."""

import hashlib

import pytest

from tests.helpers import convert_function, make_conv_model, write_recipe
from trtpipe import errors

RECIPE = """
    name: t
    source: {{onnx: {model}}}
    passes: []
    validate: {{enabled: false}}
    build: {{timeout: {timeout}}}
    output: {{dir: out}}
    """


def leftovers(out):
    return sorted(p.name for p in out.glob(".trtpipe-staging-*")) if out.exists() else []


def test_plan_from_the_child_equals_the_in_process_plan(tmp_path, run_cli, monkeypatch):
    make_conv_model(tmp_path / "m.onnx")
    path = write_recipe(tmp_path / "r.yaml", RECIPE.format(model="m.onnx", timeout=600))
    assert run_cli(path, "--quiet", "--cache-dir", tmp_path / "c1")[0] == 0
    child = hashlib.sha256((tmp_path / "out" / "t.plan").read_bytes()).hexdigest()
    monkeypatch.setenv("TRTPIPE_BUILD_IN_PROCESS", "1")
    assert run_cli(path, "--quiet", "--cache-dir", tmp_path / "c2")[0] == 0
    assert hashlib.sha256((tmp_path / "out" / "t.plan").read_bytes()).hexdigest() == child


def test_a_build_over_its_timeout_is_stopped(tmp_path, run_cli):
    make_conv_model(tmp_path / "m.onnx")
    path = write_recipe(tmp_path / "r.yaml", RECIPE.format(model="m.onnx", timeout=0.001))
    # its own cache: a build cached by another test would not run at all (a timeout is no input of the plan)
    code, out, err = run_cli(path, "--quiet", "--cache-dir", tmp_path / "cache")
    assert code == errors.EXIT_BUILD, err
    assert "the build took longer than build.timeout (0.001 s) and was stopped" in err
    assert not (tmp_path / "out" / "t.plan").exists() and leftovers(tmp_path / "out") == []


@pytest.mark.slow
def test_a_parser_crash_is_a_build_error(tmp_path, run_cli):
    """tf.image.crop_and_resize as tf2onnx converts it (a Loop): the TensorRT-RTX 1.7.1 parser
    segfaults on it. The run survives, says so, and publishes nothing."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32, "image")])
    def crops(image):
        boxes = tf.constant([[0.1, 0.1, 0.6, 0.6], [0.3, 0.2, 0.9, 0.8]], tf.float32)
        return {"crops": tf.image.crop_and_resize(image, boxes, tf.zeros([2], tf.int32), [4, 4])}

    import onnx
    onnx.save(convert_function(crops, tmp_path / "sm"), str(tmp_path / "m.onnx"))
    path = write_recipe(tmp_path / "r.yaml", RECIPE.format(model="m.onnx", timeout=600))
    code, out, err = run_cli(path, "--quiet", "--cache-dir", tmp_path / "cache")
    assert code == errors.EXIT_BUILD, err
    assert "crashed (signal SIGSEGV); last message before the crash: parsing t.onnx" in err
    assert not (tmp_path / "out" / "t.plan").exists() and leftovers(tmp_path / "out") == []
