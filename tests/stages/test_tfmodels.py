"""The TF-OD-style test models: each variant converts with tf2onnx, ONNX Runtime runs it, and it
has the structure it exists for. Conversions are cached by tfmodels.onnx_model (see there)."""
import numpy as np
import onnx
import pytest

from tests import tfmodels
from tests.helpers import ort_run

pytestmark = pytest.mark.slow  # every test here converts a TensorFlow model

NUM_CLASSES = tfmodels.SMALL["num_classes"]


def _all_nodes(graph):
    """Nodes of graph and of every subgraph (Loop/If bodies), depth-first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)


@pytest.fixture(scope="module")
def models():
    return {name: tfmodels.onnx_model(name) for name in tfmodels.VARIANTS}


@pytest.fixture(scope="module")
def outputs(models):
    image = tfmodels.sample_image(100, 150)  # not the network size: the Loop resizes it
    result = {}
    for name, model in models.items():
        result[name] = ort_run(model, {"input_tensor": image})
    return result


@pytest.mark.parametrize("name", list(tfmodels.VARIANTS))
def test_variant_converts_and_runs(models, outputs, name):
    model = models[name]
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    assert inp.name == "input_tensor"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    out = outputs[name]
    n = out["raw_detection_boxes"].shape[1]
    assert out["raw_detection_boxes"].shape == (1, n, 4)
    assert out["raw_detection_scores"].shape == (1, n, NUM_CLASSES)
    assert out["detection_boxes"].shape == (1, 100, 4)
    assert out["detection_scores"].shape == out["detection_classes"].shape == (1, 100)
    assert 0 < out["num_detections"][0] < 100  # not degenerate, not saturated


def test_demo_has_loop_and_nms(models):
    ops = {n.op_type for n in models["demo"].graph.node}
    assert {"Loop", "NonMaxSuppression", "Resize"} <= ops


def test_variant_structures(models):
    """Each variant shows the structure it was made for."""
    def top(name, op):
        return [n for n in models[name].graph.node if n.op_type == op]

    conv = lambda name: top(name, "Conv")[0]
    # image scan output is Loop output 1 with batch 1, 2 with a dynamic batch
    for name, n_out, image_idx in (("demo", 2, 1), ("multi_output_map_fn", 3, 1),
                                   ("input_shape_consumer", 3, 2)):
        (loop,) = top(name, "Loop")
        assert len(loop.output) == n_out
        assert conv(name).input[0] == loop.output[image_idx]
    readers = [n.op_type for n in models["input_shape_consumer"].graph.node
               if "input_tensor" in n.input]
    assert readers == ["Shape"]
    assert len(top("per_class_nms", "NonMaxSuppression")) == NUM_CLASSES
    assert not top("per_class_nms_loop", "NonMaxSuppression")
    assert any(n.op_type == "NonMaxSuppression"
               for n in _all_nodes(models["per_class_nms_loop"].graph))
    assert len(top("topk_before_nms", "TopK")) == 2  # the pre-NMS one plus the final sort


def test_demo_matches_tensorflow(outputs):
    """ONNX Runtime agrees with TensorFlow on the converted demo (same small build)."""
    import tempfile

    import tensorflow as tf
    with tempfile.TemporaryDirectory() as tmp:
        fn = tf.saved_model.load(str(tfmodels.demo(tmp + "/m"))).signatures["serving_default"]
        ref = fn(input_tensor=tf.constant(tfmodels.sample_image(100, 150)))
    for key, value in ref.items():
        np.testing.assert_allclose(outputs["demo"][key], value.numpy(), atol=1e-4, err_msg=key)


def test_committed_demo_is_reproducible(tmp_path):
    """models/effdet_demo/saved_model holds the weights the script writes (and is < 5 MB).
    Only the weights are compared: saved_model.pb embeds TF function ids that depend on what
    the process traced before (a fresh `python models/make_effdet_demo.py` is byte-identical)."""
    saved = tfmodels.DEMO_SAVED_MODEL
    files = sorted(p.relative_to(saved) for p in saved.rglob("*") if p.is_file())
    assert sum((saved / f).stat().st_size for f in files) < 5e6
    demo = tfmodels._demo_module()
    fresh = demo.build(tmp_path / "m")
    assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    for f in files:
        if f.parts[0] == "variables":
            assert (saved / f).read_bytes() == (fresh / f).read_bytes(), f
