"""trtpipe.source: ONNX files and SavedModels (real tf2onnx, no mocks)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import ort_run
from trtpipe.errors import SourceError
from trtpipe.stages.source.load import load_source

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
REPO = str(pathlib.Path(__file__).resolve().parents[2])


def locate(path):
    return {("source", "onnx"): "recipe.yaml:3:9", ("source", "saved_model"): "recipe.yaml:3:16",
            ("source", "signature"): "recipe.yaml:4:14", ("source", "opset"): "recipe.yaml:5:10"}.get(path)


def run_ort(model, feeds):
    """The model's outputs in graph order."""
    return list(ort_run(model, feeds).values())


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Built once: importing TensorFlow and exporting cost seconds."""
    import tensorflow as tf
    root = tmp_path_factory.mktemp("saved_models")
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((16, 16, 3), name="image")
    x = tf.keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = tf.keras.layers.Flatten()(x)
    keras_model = tf.keras.Model(inp, tf.keras.layers.Dense(5)(x))
    keras_model.export(str(root / "keras"), verbose=False)

    class Untranslatable(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def bits(self, x):      # neither op has a tf2onnx handler at opset 17
            return {"y": tf.bitwise.bitwise_and(tf.bitcast(x, tf.int32), 255)}

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def arith(self, x):
            return {"double": x * 2.0, "plus_one": x + 1.0}

    module = Untranslatable()
    tf.saved_model.save(module, str(root / "bits"), signatures={"serving_default": module.bits,
                                                                "arith": module.arith})
    image = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    return {"keras": str(root / "keras"), "bits": str(root / "bits"), "image": image,
            "expected": keras_model(image).numpy()}


# ------------------------------------------------------------------------------------------- SavedModel

@pytest.mark.slow
def test_keras_saved_model_converts_and_matches_tf(saved_models, capfd):
    capfd.readouterr()
    res = load_source({"saved_model": saved_models["keras"], "opset": 17})
    assert (res.kind, res.opset) == ("saved_model", 17)
    assert [(i.name, i.dtype, i.shape[1:]) for i in res.inputs] == [("image", "float32", [16, 16, 3])]
    assert [(o.dtype, o.shape[1:]) for o in res.outputs] == [("float32", [5])]
    assert set(res.versions) >= {"tensorflow", "tf2onnx", "onnx"}
    got = run_ort(res.model, {"image": saved_models["image"]})[0]
    np.testing.assert_allclose(got, saved_models["expected"], atol=1e-5, rtol=1e-5)
    err = capfd.readouterr().err
    assert "WARNING:tensorflow" not in err and "I0000" not in err     # TF chatter silenced


@pytest.mark.slow
def test_large_model_nchw_and_shape_override(saved_models):
    cfg = {"saved_model": saved_models["keras"], "large_model": True,
           "tf2onnx": {"inputs_as_nchw": ["image"], "shape_override": {"image": [2, 16, 16, 3]}}}
    res = load_source(cfg)
    assert res.inputs[0].shape == [2, 3, 16, 16]
    got = run_ort(res.model, {"image": saved_models["image"].transpose(0, 3, 1, 2).copy()})[0]
    np.testing.assert_allclose(got, saved_models["expected"], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_unconvertible_tf_ops_are_listed(saved_models):
    with pytest.raises(SourceError) as exc:
        load_source({"saved_model": saved_models["bits"], "opset": 17}, locate=locate)
    msg = str(exc.value)
    assert msg.startswith("recipe.yaml:5:10: source.opset")
    assert "opset 17" in msg and "Bitcast  x1" in msg and "BitwiseAnd  x1" in msg
    assert "from opset 18" in msg and "higher `source.opset`" in msg
    assert exc.value.exit_code == 4


@pytest.mark.slow
def test_signature_and_output_subset(saved_models):
    res = load_source({"saved_model": saved_models["bits"], "signature": "arith", "outputs": ["plus_one"]})
    assert [o.name for o in res.outputs] == ["plus_one"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(run_ort(res.model, {"x": x})[0], x + 1)


@pytest.mark.slow
def test_unknown_signature_lists_available(saved_models):
    with pytest.raises(SourceError) as exc:
        load_source({"saved_model": saved_models["keras"], "signature": "serving_defualt"}, locate=locate)
    msg = str(exc.value)
    assert "recipe.yaml:4:14: source.signature" in msg and "'serving_defualt'" in msg
    assert "available: serve, serving_default" in msg and "did you mean 'serving_default'" in msg


@pytest.mark.slow
def test_unknown_tag_and_input_name(saved_models):
    with pytest.raises(SourceError, match=r"tag set 'gpu'.*available: 'serve'"):
        load_source({"saved_model": saved_models["keras"], "tag": "gpu"})
    with pytest.raises(SourceError, match=r"source.inputs: 'imag' .*available: image(.|\n)*'image'"):
        load_source({"saved_model": saved_models["keras"], "inputs": ["imag"]})


@pytest.mark.slow
def test_saved_model_dir_missing_or_not_a_saved_model(saved_models, tmp_path):
    with pytest.raises(SourceError) as exc:
        load_source({"saved_model": saved_models["keras"] + "x"}, locate=locate)
    assert "recipe.yaml:3:16: source.saved_model: not found" in str(exc.value)
    assert "did you mean 'keras'" in str(exc.value)
    with pytest.raises(SourceError, match="not a SavedModel directory"):
        load_source({"saved_model": str(tmp_path)})


# ---------------------------------------------------------------------------------------------- ONNX

@pytest.mark.parametrize("name", ["resnet50", "inception_v2", "densenet121"])
def test_onnx_light_models_load(name):
    res = load_source({"onnx": os.path.join(LIGHT, f"light_{name}.onnx")})
    assert res.kind == "onnx" and res.opset == 9 and res.versions == {"onnx": onnx.__version__}
    # IR 3: weights are graph inputs too; only the image is a real input.
    assert [(i.dtype, i.shape) for i in res.inputs] == [("float32", [1, 3, 224, 224])]


def test_onnx_does_not_import_tensorflow():
    code = ("import sys; from trtpipe.stages.source.load import load_source; "
            f"load_source({{'onnx': {os.path.join(LIGHT, 'light_resnet50.onnx')!r}}}); "
            "assert 'tensorflow' not in sys.modules and 'tf2onnx' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_missing_onnx_file_did_you_mean():
    with pytest.raises(SourceError) as exc:
        load_source({"onnx": os.path.join(LIGHT, "light_resnt50.onnx")}, locate=locate)
    msg = str(exc.value)
    assert msg.startswith("recipe.yaml:3:9: source.onnx: not found: ") and "light_resnt50.onnx" in msg
    assert "did you mean 'light_resnet50.onnx'" in msg


@pytest.mark.parametrize("content", [os.urandom(64) + b"\xff\xff", b""])
def test_corrupt_onnx_file(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(SourceError, match="not a valid ONNX model: "):
        load_source({"onnx": str(path)})


def small_model(op="MatMul", domain=""):
    weight = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "W")
    node = helper.make_node(op, ["x", "W"], ["y"], name="n0", domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight])
    # ir_version: onnx 1.23 defaults to IR 14, which onnxruntime 1.31 refuses (max 13).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_external_data_loads_and_runs(tmp_path):
    path = str(tmp_path / "m.onnx")
    onnx.save(small_model(), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    res = load_source({"onnx": path})
    x = np.ones((3, 4), np.float32)
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(run_ort(res.model, {"x": x})[0], x @ weight)
    assert res.inputs[0].shape == ["N", 4]
    os.remove(tmp_path / "m.data")
    with pytest.raises(SourceError, match=r"external data file\(s\) missing: m.data .*e.g. 'W'"):
        load_source({"onnx": path})


def test_unknown_onnx_op_and_trt_plugin(tmp_path):
    path = str(tmp_path / "bad.onnx")
    onnx.save(small_model("Bitcast"), path)
    with pytest.raises(SourceError, match=r"opset 17 does not define:\n    Bitcast  x1  \(e.g. node 'n0'\)"):
        load_source({"onnx": path})
    for op, domain in [("MyPlugin_TRT", ""), ("MyPlugin", "trt.plugins")]:   # left to the build stage
        model = small_model(op, domain)
        model.graph.output[0].type.tensor_type.ClearField("shape")     # unknown rank: valid ONNX
        onnx.save(model, path)
        res = load_source({"onnx": path})
        assert res.outputs[0].shape is None and len(res.model.opset_import) == 1    # relaxation undone
        assert (res.model.graph.node[0].op_type, res.model.graph.node[0].domain) == (op, domain)


def test_checker_failure_is_a_source_error(tmp_path):
    model = small_model()
    model.graph.node[0].input[1] = "nowhere"        # an input nothing produces
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    with pytest.raises(SourceError, match="onnx.checker rejected the model"):
        load_source({"onnx": path})


def test_unknown_op_inside_if_subgraph(tmp_path):
    def branch(op):
        return helper.make_graph([helper.make_node(op, ["x"], ["b"], name=f"in_{op}")], op, [],
                                 [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("Bitcast"),
                            else_branch=branch("Identity"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    path = str(tmp_path / "if.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    with pytest.raises(SourceError, match=r"1 op type\(s\).*\n    Bitcast  x1  \(e.g. node 'in_Bitcast'\)"):
        load_source({"onnx": path})
