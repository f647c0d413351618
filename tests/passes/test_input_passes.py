"""Input-side passes (set_input, replace_preprocessing, fix_resize) on real tf2onnx output.

The models are TF-OD-style SavedModels from tests/tfmodels.py (128x128, uint8 input, tf.map_fn
preprocessing Loop) converted in-process, plus one tiny tf.Module whose map_fn also returns a
per-image shape the rest of the graph reads. Every pass result goes through onnx.checker +
strict shape inference (as the runner does) and ONNX Runtime; numerics are compared with ONNX
Runtime on the source model fed the same uint8 image. The last tests hand the result to the real
TensorRT-RTX parser and builder (SM 8.9, on CPU).
"""


import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from tests import tfmodels
from tests.helpers import ops, ort_run, run_passes
from trtpipe import registry
from trtpipe.errors import PassError
from trtpipe.recipe.schema import fill_defaults, schema_errors

pytestmark = pytest.mark.slow  # every test here converts a TensorFlow model

SIZE = tfmodels.SMALL["image_size"]
RAW = ["raw_detection_boxes", "raw_detection_scores"]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # what the demo uses
TO_FLOAT = ("set_input", {"dtype": "float32", "shape": [1, SIZE, SIZE, 3]})
VARIANTS = ["demo", "multi_output_map_fn", "input_shape_consumer"]


# -- helpers ------------------------------------------------------------------------------------
def image_loop_output(model):
    """(index, name) of the source Loop output the first Conv reads."""
    graph = gs.import_onnx(model)
    loop = next(n for n in graph.nodes if n.op == "Loop")
    for i, out in enumerate(loop.outputs):
        if any(c.op == "Conv" for c in out.outputs):
            return i, out.name
    raise AssertionError("no Loop output feeds a Conv")


def assert_raw_close(source_out, final_out, atol=1e-5):
    for name in RAW:
        np.testing.assert_allclose(final_out[name], source_out[name], rtol=0, atol=atol, err_msg=name)


def cut(model, names):
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    graph.outputs = [tensors[n] for n in names]
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


# -- models ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """variant name -> converted source ModelProto, converted on first use."""
    root, cache = tmp_path_factory.mktemp("tfmodels"), {}

    def get(name):
        if name not in cache:
            builder = tfmodels.VARIANTS[name] if name in tfmodels.VARIANTS else _true_shape_model
            cache[name] = tfmodels.convert(builder(root / name))
        return cache[name]
    return get


@pytest.fixture(scope="module")
def image():
    return tfmodels.sample_image(SIZE, SIZE)


@pytest.fixture(scope="module")
def source_out(models, image):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ort_run(models(name), {"input_tensor": image})
        return cache[name]
    return get


def _true_shape_model(dest):
    """map_fn returns (shape, image) and the shape is read downstream (TF-OD's true_image_shapes
    feeding postprocessing): that Loop output must survive the Loop's removal as a constant."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(0).normal(0, 0.1, (3, 3, 3, 8)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, "input_tensor")])
        def serve(self, input_tensor):
            def pre(im):
                x = tf.image.resize(tf.cast(im, tf.float32), [32, 32]) / 255.0
                return tf.shape(x), x
            shapes, x = tf.map_fn(pre, input_tensor, fn_output_signature=(
                tf.TensorSpec([3], tf.int32), tf.TensorSpec([32, 32, 3], tf.float32)))
            y = tf.nn.conv2d(x, self.w, 1, "SAME")
            return {"features": y,
                    "scaled": tf.reduce_mean(y, [1, 2, 3]) * tf.cast(shapes[:, 0], tf.float32)}

    model = Model()
    tf.saved_model.save(model, str(dest), signatures={"serving_default": model.serve.get_concrete_function()})
    return dest


# -- set_input + replace_preprocessing on the TF-OD variants -------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_replace_preprocessing_matches_source(variant, models, source_out, image):
    source = models(variant)
    index, _ = image_loop_output(source)
    if variant == "multi_output_map_fn":  # the premise: several scan outputs, image not output 0
        loop = next(n for n in source.graph.node if n.op_type == "Loop")
        assert index != 0 and len(loop.output) >= 3
    model, ctx = run_passes(source, [TO_FLOAT, ("replace_preprocessing", IMAGENET), ("cleanup", {})])

    assert "Loop" not in ops(model)
    (inp,) = model.graph.input
    assert inp.name == "input_tensor" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, SIZE, SIZE, 3]
    # normalization in the graph: the contract only has the dtype change
    entry = ctx.input_contract["input_tensor"]
    assert entry["steps"] == [{"op": "cast", "to": "float32"}] and entry["shape"] == [1, SIZE, SIZE, 3]
    assert entry["source_dtype"] == "uint8"
    readers = [n.op_type for n in model.graph.node if "input_tensor" in n.input]
    assert readers == ["Mul"]  # a Shape reader (input_shape_consumer) became a constant
    if variant == "multi_output_map_fn":  # its true_image_shape output clips the NMS boxes
        assert "1 Loop output(s)" in ctx.notes[1]
    out = ort_run(model, {"input_tensor": image.astype(np.float32)})
    assert_raw_close(source_out(variant), out)
    # the NMS downstream sees the same boxes (and the same true image shape)
    np.testing.assert_array_equal(out["num_detections"], source_out(variant)["num_detections"])
    np.testing.assert_allclose(out["detection_boxes"], source_out(variant)["detection_boxes"], atol=1e-5)


def test_folded_normalization_and_named_attach(models, source_out, image):
    source = models("multi_output_map_fn")
    _, attach = image_loop_output(source)
    model, _ = run_passes(source, [TO_FLOAT, ("replace_preprocessing", dict(IMAGENET, fold=True, attach_to=attach))])
    first = [n.op_type for n in model.graph.node if n.name.startswith("input_tensor/preprocess")]
    assert first == ["Mul", "Add", "Transpose"]
    assert any(attach in n.input and n.op_type == "Conv" for n in model.graph.node)  # name kept
    assert_raw_close(source_out("multi_output_map_fn"), ort_run(model, {"input_tensor": image.astype(np.float32)}))


def test_wrong_attach_to_suggests_loop_output(models):
    source = models("demo")
    _, attach = image_loop_output(source)
    typo = attach[:-1] + "l"  # ...while_loop:1 -> ...while_loop:l
    with pytest.raises(PassError) as err:
        run_passes(source, [TO_FLOAT, ("replace_preprocessing", dict(IMAGENET, attach_to=typo))])
    assert f"did you mean '{attach}'" in str(err.value) and typo in str(err.value)


def test_uint8_input_needs_float(models):
    with pytest.raises(PassError, match=r"uint8.*set_input.*input_dtype"):
        run_passes(models("demo"), [("set_input", {"shape": [1, SIZE, SIZE, 3]}), ("replace_preprocessing", IMAGENET)])


def test_input_dtype_parameter_casts_the_input(models, source_out, image):
    model, ctx = run_passes(models("input_shape_consumer"), [
        ("set_input", {"shape": [1, SIZE, SIZE, 3]}),
        ("replace_preprocessing", dict(IMAGENET, input_dtype="float32"))])
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert ctx.input_contract["input_tensor"]["steps"] == [{"op": "cast", "to": "float32"}]
    assert "Loop" not in ops(model)
    assert_raw_close(source_out("input_shape_consumer"), ort_run(model, {"input_tensor": image.astype(np.float32)}))


def test_size_mismatch_fails_or_inserts_resize(models, image):
    source, small = models("demo"), tfmodels.sample_image(96, 96)
    steps = [("set_input", {"dtype": "float32", "shape": [1, 96, 96, 3]})]
    with pytest.raises(PassError, match=r"resized images to \[128, 128\].*set_input.*resize"):
        run_passes(source, steps + [("replace_preprocessing", IMAGENET)])
    # TF1-style resize = ONNX asymmetric: same values as the source's in-Loop resize
    resize = {"size": [SIZE, SIZE], "coordinate_transformation_mode": "asymmetric"}
    model, ctx = run_passes(source, steps + [("replace_preprocessing", dict(IMAGENET, resize=resize)),
                                             ("fix_resize", {}), ("cleanup", {})])
    assert "Loop" not in ops(model) and ops(model).count("Resize") == 3
    assert any("computed sizes -> constant scales" in note for note in ctx.notes)  # by fix_resize
    assert_raw_close(ort_run(source, {"input_tensor": small}),
                     ort_run(model, {"input_tensor": small.astype(np.float32)}), atol=1e-4)


def test_layout_change_and_rename(models, source_out, image):
    steps = [("set_input", {"dtype": "float32", "layout": "NHWC->NCHW", "rename": "images",
                            "shape": [1, 3, SIZE, SIZE]})]
    model, ctx = run_passes(models("input_shape_consumer"), steps)
    assert list(ctx.input_contract) == ["images"]
    entry = ctx.input_contract["images"]
    assert entry["source_input"] == "input_tensor" and entry["source_dtype"] == "uint8"
    assert entry["shape"] == [1, SIZE, SIZE, 3]  # the source's layout: data is made, then transposed
    assert entry["steps"] == [{"op": "cast", "to": "float32"}, {"op": "transpose", "perm": [0, 3, 1, 2]}]
    nchw = image.astype(np.float32).transpose(0, 3, 1, 2)
    assert_raw_close(source_out("input_shape_consumer"), ort_run(model, {"images": nchw}), atol=0)
    # the backbone reads NCHW already: auto layout needs no Transpose; the adapters go with the Loop
    model, _ = run_passes(model, [("replace_preprocessing", IMAGENET), ("cleanup", {})])
    assert [n.op_type for n in model.graph.node if "images" in n.input] == ["Mul"]
    assert "Loop" not in ops(model)
    assert_raw_close(source_out("input_shape_consumer"), ort_run(model, {"images": nchw}))


def test_set_input_unknown_name(models):
    with pytest.raises(PassError, match=r"no graph input named 'input_tensr' \(did you mean 'input_tensor'\?\)"):
        run_passes(models("demo"), [("set_input", {"name": "input_tensr", "dtype": "float32"})])


def test_symbolic_batch(models, source_out, image):
    model, ctx = run_passes(models("demo"), [
        ("set_input", {"dtype": "float32", "shape": ["batch", SIZE, SIZE, 3]}),
        ("replace_preprocessing", IMAGENET)])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    assert ctx.input_contract["input_tensor"]["shape"] == ["batch", SIZE, SIZE, 3]
    assert_raw_close(source_out("demo"), ort_run(model, {"input_tensor": image.astype(np.float32)}))


def test_other_loop_output_becomes_constant(models):
    source = models("true_shape")
    img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    model, ctx = run_passes(source, [("set_input", {"dtype": "float32", "shape": [1, 32, 32, 3]}),
                                     ("replace_preprocessing", {}), ("cleanup", {})])
    assert "Loop" not in ops(model) and "1 Loop output(s)" in ctx.notes[-2]
    want, got = ort_run(source, {"input_tensor": img}), ort_run(model, {"input_tensor": img.astype(np.float32)})
    for name in ("features", "scaled"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    # with a dynamic batch that output cannot be computed once
    with pytest.raises(PassError, match=r"while_loop:\d come from the removed preprocessing.*static shape"):
        run_passes(source, [("set_input", {"dtype": "float32", "shape": ["n", 32, 32, 3]}),
                            ("replace_preprocessing", {})])


# -- fix_resize ---------------------------------------------------------------------------------------
def test_fix_resize_in_loop_body(models, source_out, image):
    params = {"coordinate_transformation_mode": {"linear": {"asymmetric": "half_pixel"},
                                                 "nearest": {"tf_half_pixel_for_nn": "half_pixel"}}}
    model, ctx = run_passes(models("demo"), [("fix_resize", params)])
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    (inner,) = [n for n in loop.attribute[0].g.node if n.op_type == "Resize"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in inner.attribute}
    assert attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert any("asymmetric -> half_pixel (changes values" in n for n in ctx.notes)
    modes = {onnx.helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "Resize"
             for a in n.attribute if a.name in ("coordinate_transformation_mode", "nearest_mode")}
    assert modes == {b"half_pixel", b"round_prefer_ceil"}
    # 128 -> 128 makes the linear change a no-op here and the nearest change is exact
    assert_raw_close(source_out("demo"), ort_run(model, {"input_tensor": image}), atol=0)


def test_fix_resize_unknown_node(models):
    with pytest.raises(PassError, match=r"no Resize node named 'Resize_12'.*did you mean"):
        run_passes(models("demo"), [("fix_resize", {"nodes": ["Resize_12"]})])


# -- TensorRT-RTX accepts the result -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt(rtx):
    return rtx.trt


def parse_and_build(trt, model):
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString())
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not ok:
        return errors, None
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    return errors, builder.build_serialized_network(network, config)


def test_source_is_rejected_by_tensorrt_rtx(trt, models):
    errors, _ = parse_and_build(trt, cut(models("demo"), RAW))
    assert errors and "UINT8" in " ".join(errors)  # the problem these passes solve


@pytest.mark.parametrize("variant", VARIANTS)
def test_tensorrt_rtx_builds_after_passes(trt, variant, models):
    model, _ = run_passes(models(variant), [TO_FLOAT, ("replace_preprocessing", IMAGENET), ("fix_resize", {}),
                                            ("cleanup", {})])
    model, _ = run_passes(cut(model, RAW), [("fold_constants", {}), ("cleanup", {})])
    errors, plan = parse_and_build(trt, model)
    assert not errors
    assert plan is not None and plan.nbytes > 0


# -- schemas -----------------------------------------------------------------------------------------
BAD_PARAMS = {
    "set_input": ({"dtype": "float23"}, "did you mean 'float32'"),
    "replace_preprocessing": ({"atach_to": "x"}, "did you mean 'attach_to'"),
    "fix_resize": ({"coordinate_transformation_mode": {"linear": {"asymetric": "half_pixel"}}},
                   "did you mean 'asymmetric'"),
}


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_schema_is_strict_and_defaults_validate(name):
    import jsonschema
    schema = registry.get(name).schema
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert all("description" in p for p in schema["properties"].values())
    assert not list(schema_errors(fill_defaults({}, schema), schema))
    bad, hint = BAD_PARAMS[name]
    ((_, message),) = schema_errors(bad, schema)
    assert hint in message
