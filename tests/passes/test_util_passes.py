"""Utility graph-surgery passes: set_outputs, rename, remove_nodes, reshape_helpers, dynamic_batch,
sanitize.

Models: real tf2onnx output (a small batch-1 detector written as a tf.function, and the
TF-OD-style demo from tests/tfmodels.py) and the onnx wheel's light model-zoo graphs. Every pass
result goes through onnx.checker + strict shape inference (what the runner does after each pass)
and ONNX Runtime, compared with the model before the pass on the same data. The dynamic_batch
result is also built with TensorRT-RTX (SM 8.9, ahead of time) with a batch 1..4 profile.
"""

import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import REPO, convert_function, ort_run, run_passes
from trtpipe import registry
from trtpipe.errors import PassError
from trtpipe.recipe.schema import load_schema

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ort.set_default_logger_severity(3)
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
PASSES = ["set_outputs", "rename", "remove_nodes", "reshape_helpers", "dynamic_batch", "sanitize"]


# -- helpers -------------------------------------------------------------------------------------

def run_pass(name, model, params=None, ctx=None):
    """One pass as a recipe runs it (tests.helpers.run_passes); returns (model, ctx)."""
    return run_passes(model, [(name, params or {})], ctx)


def light(name):
    model = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    # IR 3 wants every initializer listed as a graph input; graphsurgeon drops those entries.
    model.ir_version = max(model.ir_version, 4)
    return model


def data_input(model):
    """The first graph input that is not an initializer (IR 3 lists weights as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def ops(model):
    return [n.op_type for n in model.graph.node]


def tensor_shape(model, name):
    vi = {v.name: v for v in list(model.graph.output) + list(model.graph.value_info)
          + list(model.graph.input)}[name]
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in vi.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def tf():
    import tensorflow
    return tensorflow


@pytest.fixture(scope="module")
def detector(tf, tmp_path_factory):
    """A batch-1 detection head as tf2onnx converts it: Reshapes with the batch baked in
    ([1, -1, 4] and [1, 192, 3]), a constant [1, 192, 1] concatenated on axis 2, and an Identity
    that tf2onnx keeps because one tensor is returned under two names."""
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((3, 3, 3, 8)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((3, 3, 8, 8)) * 0.2).astype(np.float32)
    wb = (rng.standard_normal((3, 3, 8, 12)) * 0.2).astype(np.float32)
    wc = (rng.standard_normal((3, 3, 8, 9)) * 0.2).astype(np.float32)
    anchors = rng.random((192, 4)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32, "images")])
    def head(images):
        x = tf.nn.relu(tf.nn.conv2d(images, w1, 2, "SAME"))
        feat = tf.nn.relu(tf.nn.conv2d(x, w2, 2, "SAME"))                      # [1, 8, 8, 8]
        boxes = tf.reshape(tf.nn.conv2d(feat, wb, 1, "SAME"), [1, -1, 4]) * 0.1 + anchors
        scores = tf.sigmoid(tf.reshape(tf.nn.conv2d(feat, wc, 1, "SAME"), [1, 192, 3]))
        padded = tf.concat([boxes, tf.ones([1, 192, 1])], axis=2)
        gated = scores * tf.reduce_max(scores, -1, keepdims=True)               # two data inputs
        return {"raw_boxes": boxes, "raw_scores": scores, "padded_boxes": padded,
                "gated_scores": gated, "features": feat, "features_copy": feat}

    return convert_function(head, tmp_path_factory.mktemp("detector") / "saved_model")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, 32, 32, 3), np.float32)


@pytest.fixture(scope="module")
def tfod(tf, tmp_path_factory):
    """The TF-OD-style demo (preprocessing Loop, combined NMS) converted with tf2onnx."""
    from tests import tfmodels
    path = tfmodels.demo(tmp_path_factory.mktemp("tfod") / "saved_model")
    return tfmodels.convert(path), {"input_tensor": tfmodels.sample_image(128, 128)}


# -- schemas -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PASSES)
def test_schema_strict_and_documented(name):
    import jsonschema
    schema = load_schema(f"passes/{name}.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema") and schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        assert prop.get("description"), f"{name}.{key} has no description"
    assert registry.get(name).schema == schema
    assert len(registry.get(name).doc.splitlines()) > 3  # what `pipeline.py passes` shows


# -- set_outputs ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_set_outputs_cuts_tfod_at_raw_tensors(tfod):
    model, feeds = tfod
    raw = ["raw_detection_boxes", "raw_detection_scores"]
    out, ctx = run_pass("set_outputs", model, {"outputs": raw})
    assert [o.name for o in out.graph.output] == raw
    assert not {"NonMaxSuppression", "TopK", "ScatterND", "GatherND"} & set(ops(out))
    assert len(out.graph.node) < len(model.graph.node)
    assert ctx.output_map == {n: n for n in raw}
    assert list(ctx.input_contract) == ["input_tensor"]
    before, after = ort_run(model, feeds), ort_run(out, feeds)
    for name in raw:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.fixture(scope="module")
def tfod_network(tfod):
    """set_outputs with inputs: the TF-OD network between the preprocessing Loop's image and the
    raw outputs (what the seed's surgery feeds TensorRT). Returns (model, ctx, image name, ref)."""
    model, feeds = tfod
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    loop = next(n for n in graph.nodes if n.op == "Loop")
    image = next(t for t in loop.outputs if t.outputs)  # the scan output the backbone reads
    shape = [1] + list(image.shape[1:])  # the trip count (batch) is symbolic; pin it
    out, ctx = run_pass("set_outputs", model, {
        "outputs": ["raw_detection_boxes", "raw_detection_scores"],
        "inputs": [{"name": image.name, "shape": shape}]})
    ref = ort_run(model, feeds, outputs=[image.name, "raw_detection_boxes", "raw_detection_scores"])
    return out, ctx, image.name, ref


def test_set_outputs_extracts_subgraph_after_preprocessing_loop(tfod_network):
    out, ctx, image, ref = tfod_network
    assert [i.name for i in out.graph.input] == [image]
    assert "Loop" not in ops(out)
    shape = tensor_shape(out, image)
    assert shape[0] == 1 and ctx.input_contract[image]["shape"] == shape
    assert ctx.input_contract[image]["source_tensor"] == image
    assert "input_tensor" not in ctx.input_contract
    got = ort_run(out, {image: ref[image]})
    for name in ("raw_detection_boxes", "raw_detection_scores"):
        np.testing.assert_allclose(got[name], ref[name], atol=1e-6)


def test_set_outputs_extracts_light_resnet50_middle():
    model = light("resnet50")
    graph = gs.import_onnx(model)
    start = next(n for n in graph.nodes if n.op == "MaxPool").outputs[0].name
    end = next(n for n in graph.nodes if n.op == "AveragePool").outputs[0].name
    out, ctx = run_pass("set_outputs", model, {"outputs": [end], "inputs": [start]})
    assert [i.name for i in out.graph.input] == [start] and [o.name for o in out.graph.output] == [end]
    assert tensor_shape(out, start) == [1, 64, 56, 56]  # derived by shape inference
    x = np.random.default_rng(0).random((1, 3, 224, 224), np.float32)
    ref = ort_run(model, {"gpu_0/data_0": x}, outputs=[start, end])
    got = ort_run(out, {start: ref[start]})
    np.testing.assert_allclose(got[end], ref[end], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_set_outputs_errors(detector):
    with pytest.raises(PassError, match="did you mean 'raw_boxes'"):
        run_pass("set_outputs", detector, {"outputs": ["raw_boxs"]})
    with pytest.raises(PassError, match="float32 in the graph, but the recipe says int32"):
        run_pass("set_outputs", detector, {"outputs": [{"name": "raw_boxes", "dtype": "int32"}]})
    with pytest.raises(PassError, match="'images' .* add them to `inputs`"):
        run_pass("set_outputs", detector, {"outputs": ["padded_boxes", "raw_scores"],
                                           "inputs": ["raw_boxes"]})


# -- rename --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_rename_updates_contract_and_output_map(detector, images):
    node = next(n.name for n in detector.graph.node if n.op_type == "Sigmoid")
    out, ctx = run_pass("rename", detector, {
        "tensors": {"images": "image", "raw_boxes": "boxes", "raw_scores": "scores"},
        "nodes": {node: "score_sigmoid"}})
    assert [i.name for i in out.graph.input] == ["image"]
    assert ctx.input_contract["image"]["source_input"] == "images" and "images" not in ctx.input_contract
    assert ctx.output_map["boxes"] == "raw_boxes" and ctx.output_map["scores"] == "raw_scores"
    assert "score_sigmoid" in [n.name for n in out.graph.node]
    cut, ctx = run_pass("set_outputs", out, {"outputs": ["boxes"]}, ctx)  # the map follows
    assert ctx.output_map == {"boxes": "raw_boxes"}
    before = ort_run(detector, {"images": images[:1]})
    after = ort_run(out, {"image": images[:1]})
    np.testing.assert_array_equal(after["boxes"], before["raw_boxes"])
    np.testing.assert_array_equal(after["scores"], before["raw_scores"])


@pytest.mark.slow
def test_rename_swap_and_collisions(detector, images):
    out, ctx = run_pass("rename", detector, {"tensors": {"raw_boxes": "raw_scores",
                                                         "raw_scores": "raw_boxes"}})
    before, after = ort_run(detector, {"images": images[:1]}), ort_run(out, {"images": images[:1]})
    np.testing.assert_array_equal(after["raw_scores"], before["raw_boxes"])
    assert ctx.output_map["raw_scores"] == "raw_boxes"
    with pytest.raises(PassError, match="already exists"):
        run_pass("rename", detector, {"tensors": {"raw_boxes": "raw_scores"}})
    with pytest.raises(PassError, match="would both be renamed"):
        run_pass("rename", detector, {"tensors": {"raw_boxes": "x", "raw_scores": "x"}})
    with pytest.raises(PassError, match="did you mean 'images'"):
        run_pass("rename", detector, {"tensors": {"image": "x"}})


# -- remove_nodes --------------------------------------------------------------------------------

@pytest.mark.slow
def test_remove_identity_after_cut_keeps_numerics(detector, images):
    """tf2onnx keeps an Identity to return one tensor under two names; once the cut drops one
    name the Identity is dead weight that remove_nodes bypasses, keeping the output's name."""
    ident = next(n for n in detector.graph.node if n.op_type == "Identity")
    keep = [ident.output[0], "raw_boxes"]
    cut, ctx = run_pass("set_outputs", detector, {"outputs": keep})
    assert "Identity" in ops(cut)
    out, ctx = run_pass("remove_nodes", cut, {"ops": ["Identity"]}, ctx)
    assert "Identity" not in ops(out)
    assert [o.name for o in out.graph.output] == keep
    assert "removed 1 node(s) (Identity x1)" in ctx.notes[-1]
    before, after = ort_run(detector, {"images": images[:1]}), ort_run(out, {"images": images[:1]})
    for name in keep:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.slow
def test_remove_identity_that_copies_an_output_is_refused(detector):
    with pytest.raises(PassError, match="drop one of the outputs first"):
        run_pass("remove_nodes", detector, {"ops": ["Identity"]})


def test_remove_dropout_from_light_squeezenet():
    model = light("squeezenet")
    out, ctx = run_pass("remove_nodes", model, {"ops": ["Dropout"]})
    assert "Dropout" not in ops(out) and len(out.graph.node) == len(model.graph.node) - 1
    feeds = {data_input(model): np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}
    name = model.graph.output[0].name
    np.testing.assert_allclose(ort_run(out, feeds)[name], ort_run(model, feeds)[name], rtol=1e-6)


@pytest.mark.slow
def test_remove_nodes_refuses_to_break_graph_unless_replaced(detector, images):
    mul = next(n for n in detector.graph.node if n.op_type == "Mul" and "gated_scores" in n.output)
    with pytest.raises(PassError, match="2 non-constant input.*`replacements`"):
        run_pass("remove_nodes", detector, {"names": [mul.name]})
    concat = next(n for n in detector.graph.node if n.op_type == "Concat")  # [1,192,4] -> [1,192,5]
    with pytest.raises(PassError, match="not Identity-like"):
        run_pass("remove_nodes", detector, {"names": [concat.name]})
    with pytest.raises(PassError, match="would break the graph"):
        run_pass("remove_nodes", detector, {"names": [mul.name], "bypass": False})
    # With an explicit replacement the output is served by an existing tensor of the same type.
    logits = next(n.input[0] for n in detector.graph.node if n.op_type == "Sigmoid")
    out, ctx = run_pass("remove_nodes", detector, {
        "names": [mul.name], "bypass": False, "replacements": {"gated_scores": logits}})
    assert not {"Mul", "ReduceMax"} & {n.op_type for n in out.graph.node if "gated" in n.name}
    assert len(out.graph.node) == len(detector.graph.node) - 2  # the Mul and its ReduceMax
    assert ctx.output_map[logits] == "gated_scores" and logits in [o.name for o in out.graph.output]
    with pytest.raises(PassError, match="did you mean"):
        run_pass("remove_nodes", detector, {"names": [mul.name + "x"]})
    with pytest.raises(PassError, match="did you mean 'Identity'"):
        run_pass("remove_nodes", detector, {"ops": ["Identiti"]})


# -- reshape_helpers -----------------------------------------------------------------------------

@pytest.mark.slow
def test_unsqueeze_tfod_boxes_for_nms_plugin(tfod):
    """[B, N, 4] -> [B, N, 1, 4], what BatchedNMS/EfficientNMS plugins read."""
    model, feeds = tfod
    raw = ["raw_detection_boxes", "raw_detection_scores"]
    cut, ctx = run_pass("set_outputs", model, {"outputs": raw})
    out, ctx = run_pass("reshape_helpers", cut, {"tensor": "raw_detection_boxes", "op": "unsqueeze",
                                                 "axes": [2]}, ctx)
    new = "raw_detection_boxes_unsqueeze"
    assert [o.name for o in out.graph.output] == [new, "raw_detection_scores"]
    assert ctx.output_map[new] == "raw_detection_boxes"
    n = tensor_shape(cut, "raw_detection_boxes")[1]
    assert tensor_shape(out, new) == [1, n, 1, 4]
    before, after = ort_run(cut, feeds), ort_run(out, feeds)
    assert after[new].shape == (1, n, 1, 4)
    np.testing.assert_array_equal(after[new][:, :, 0], before["raw_detection_boxes"])


@pytest.mark.slow
def test_reshape_helpers_named_consumers_and_round_trip(detector, images):
    """Only the listed consumer reads the new tensor; an unsqueeze + squeeze round trip on a
    graph output replaces the output and keeps its values."""
    concat = next(n.name for n in detector.graph.node if n.op_type == "Concat")
    out, ctx = run_pass("reshape_helpers", detector, {"tensor": "raw_boxes", "op": "reshape",
                                                      "shape": [0, -1, 4], "consumers": [concat]})
    node = next(n for n in out.graph.node if n.op_type == "Concat")
    assert "raw_boxes_reshape" in node.input and "raw_boxes" in [o.name for o in out.graph.output]
    out, ctx = run_pass("reshape_helpers", out, {"tensor": "padded_boxes", "op": "unsqueeze",
                                                 "axes": [2]}, ctx)
    assert tensor_shape(out, "padded_boxes_unsqueeze") == [1, 192, 1, 5]
    out, ctx = run_pass("reshape_helpers", out, {"tensor": "padded_boxes_unsqueeze", "op": "squeeze",
                                                 "axes": [-2], "output_name": "padded"}, ctx)
    assert ctx.output_map["padded"] == "padded_boxes"
    before, after = ort_run(detector, {"images": images[:1]}), ort_run(out, {"images": images[:1]})
    for name, value in before.items():
        np.testing.assert_array_equal(after["padded" if name == "padded_boxes" else name], value)


@pytest.mark.slow
def test_reshape_helpers_errors(detector):
    with pytest.raises(PassError, match=r"dimension\(s\) 1 \(size 192\) are not 1"):
        run_pass("reshape_helpers", detector, {"tensor": "raw_boxes", "op": "squeeze", "axes": [1]})
    with pytest.raises(PassError, match="768 elements"):
        run_pass("reshape_helpers", detector, {"tensor": "raw_boxes", "op": "reshape", "shape": [1, 5]})
    with pytest.raises(PassError, match="out of range"):
        run_pass("reshape_helpers", detector, {"tensor": "raw_boxes", "op": "unsqueeze", "axes": [5]})
    with pytest.raises(PassError, match="does not read"):
        run_pass("reshape_helpers", detector, {"tensor": "raw_boxes", "op": "unsqueeze", "axes": [2],
                                               "consumers": ["nope"]})


# -- dynamic_batch -------------------------------------------------------------------------------

def build_rtx(model, name, lo, opt, hi):
    """TensorRT-RTX plan (SM 8.9, ahead of time on CPU) with one optimization profile."""
    from trtpipe.backend import resolve_backend
    trt = resolve_backend("tensorrt_rtx").trt  # imports the EP package first, which preloads the libraries
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.SerializeToString()), \
        [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None and plan.nbytes > 0
    return plan


@pytest.mark.slow
def test_dynamic_batch_tf2onnx_detector(detector, images):
    out, ctx = run_pass("dynamic_batch", detector)
    assert tensor_shape(out, "images") == ["batch", 32, 32, 3]
    log = "\n".join(ctx.notes)
    assert "could not" not in log
    assert log.count("Reshape '") == 2 and "Concat '" in log
    for name in ("raw_boxes", "raw_scores", "padded_boxes", "features"):
        assert tensor_shape(out, name)[0] == "batch"
    # Renaming the input's dim 0 alone is not enough: the baked Reshapes break batch 3.
    naive = onnx.ModelProto()
    naive.CopyFrom(detector)
    naive.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(Exception):
        ort_run(naive, {"images": images})
    per_sample = [ort_run(detector, {"images": images[i:i + 1]}) for i in range(3)]
    for n in (1, 3):
        got = ort_run(out, {"images": images[:n]})
        for name, value in got.items():
            assert value.shape[0] == n
            np.testing.assert_allclose(value, np.concatenate([s[name] for s in per_sample[:n]]),
                                       rtol=1e-5, atol=1e-6)
    build_rtx(out, "images", (1, 32, 32, 3), (2, 32, 32, 3), (4, 32, 32, 3))


@pytest.mark.slow
def test_dynamic_batch_tfod(tfod, tfod_network):
    """TF-OD export at batch 1: the heads' Reshapes are [1, -1, 4] constants and the map_fn Loop
    runs a constant 1 iteration. With the Loop in place the pass reports it; on the network
    behind the Loop the Reshapes get 0 and batch 3 matches three batch-1 runs."""
    model, _ = tfod
    cut, ctx = run_pass("set_outputs", model, {"outputs": ["raw_detection_boxes"]})
    with pytest.raises(PassError, match="Loop .* iterates a constant 1 time"):
        run_pass("dynamic_batch", cut, {"strict": True}, ctx)
    net, ctx, image, _ = tfod_network
    out, ctx = run_pass("dynamic_batch", net, {}, ctx)
    log = "\n".join(ctx.notes)
    assert "could not" not in log and log.count("[1, -1, 4] -> [0, -1, 4]") == 6
    x = np.random.default_rng(0).random([3] + tensor_shape(net, image)[1:], np.float32)
    got = ort_run(out, {image: x})
    per_sample = [ort_run(net, {image: x[i:i + 1]}) for i in range(3)]
    for name, value in got.items():
        np.testing.assert_allclose(value, np.concatenate([s[name] for s in per_sample]),
                                   rtol=1e-5, atol=1e-5)


def test_dynamic_batch_light_shufflenet_channel_shuffles():
    """33 Reshapes [1, groups, C/groups, H, W] (channel shuffle) all get the batch from dim 0."""
    model = light("shufflenet")
    out, ctx = run_pass("dynamic_batch", model)
    assert "rewrote 33" in ctx.notes[0] and "could not" not in "\n".join(ctx.notes)
    x = np.random.default_rng(0).random((2, 3, 224, 224), np.float32)
    name = model.graph.output[0].name
    ref = np.concatenate([ort_run(model, {"gpu_0/data_0": x[i:i + 1]})[name] for i in range(2)])
    np.testing.assert_allclose(ort_run(out, {"gpu_0/data_0": x})[name], ref, rtol=1e-5, atol=1e-7)


def test_dynamic_batch_expand_tile_constantofshape():
    """Shape constants that folding left holding batch 1 and that meet the batch in a Concat."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)
    nodes = [
        helper.make_node("Expand", ["row", "s_expand"], ["e"], name="expand"),      # [1, 4, 1]
        helper.make_node("Tile", ["row", "s_tile"], ["t"], name="tile"),            # [1, 4, 1]
        helper.make_node("ConstantOfShape", ["s_cos"], ["z"], name="zeros",
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Concat", ["x", "e", "t", "z"], ["y"], name="concat", axis=2)]
    init = [c("row", np.arange(4, dtype=np.float32).reshape(1, 4, 1)),
            c("s_expand", np.array([1, 4, 1], np.int64)), c("s_tile", np.array([1, 1, 1], np.int64)),
            c("s_cos", np.array([1, 4, 1], np.int64))]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], init), ir_version=10,
                              opset_imports=[helper.make_opsetid("", 17)])
    out, ctx = run_pass("dynamic_batch", model)
    log = "\n".join(ctx.notes)
    assert all(f"{op} '{n}'" in log for op, n in
               [("Expand", "expand"), ("Tile", "tile"), ("ConstantOfShape", "zeros")])
    data = np.random.default_rng(0).random((3, 4, 2), np.float32)
    got = ort_run(out, {"x": data})["y"]
    assert got.shape == (3, 4, 5)
    for i in range(3):
        np.testing.assert_array_equal(got[i:i + 1], ort_run(model, {"x": data[i:i + 1]})["y"])


@pytest.mark.slow
def test_dynamic_batch_reports_what_it_cannot_rewrite(tf, tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([1, 8, 3], tf.float32, "x")])
    def per_image(x):
        return {"flat": tf.reshape(x * 2.0, [8, 3])}  # batch folded into dim 0: batch-1 only

    model = convert_function(per_image, tmp_path / "saved_model")
    out, ctx = run_pass("dynamic_batch", model)
    log = "\n".join(ctx.notes)
    assert "could not rewrite" in log and "puts the batch elsewhere" in log
    assert "output 'flat'" in log
    with pytest.raises(PassError, match="left the old batch baked in"):
        run_pass("dynamic_batch", model, {"strict": True})
    with pytest.raises(PassError, match="did you mean 'x'"):
        run_pass("dynamic_batch", model, {"inputs": ["xx"]})


# -- sanitize ------------------------------------------------------------------------------------

def test_sanitize_light_squeezenet_folds_and_types_everything():
    model = light("squeezenet")  # weights are made in-graph by ConstantOfShape nodes
    out, ctx = run_pass("sanitize", model)
    assert "ConstantOfShape" not in ops(out)
    assert "tensors without dtype/shape" not in ctx.notes[-1]
    assert {v.name for v in out.graph.value_info} >= {n.output[0] for n in out.graph.node[:-1]}
    feeds = {data_input(model): np.random.default_rng(0).random((1, 3, 224, 224), np.float32)}
    name = model.graph.output[0].name
    np.testing.assert_allclose(ort_run(out, feeds)[name], ort_run(model, feeds)[name], rtol=1e-5)


def test_sanitize_tfod_network(tfod_network):
    cut, ctx, image, ref = tfod_network
    out, ctx = run_pass("sanitize", cut, ctx=ctx)
    assert len(out.graph.node) <= len(cut.graph.node)
    from passes.sanitize import incomplete_tensors
    assert incomplete_tensors(gs.import_onnx(out)) == []
    got = ort_run(out, {image: ref[image]})
    for name in ("raw_detection_boxes", "raw_detection_scores"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sanitize_tfod_cut_with_preprocessing_loop(tfod):
    model, feeds = tfod
    cut, ctx = run_pass("set_outputs", model, {"outputs": ["raw_detection_boxes",
                                                           "raw_detection_scores"]})
    out, ctx = run_pass("sanitize", cut, ctx=ctx)
    before, after = ort_run(cut, feeds), ort_run(out, feeds)
    for name, value in before.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-6)


def test_every_builtin_pass_schema_passes_the_registration_check():
    """Third-party schemas are checked when registered; the shipped ones here, not at every start-up."""
    from trtpipe.registry import check_pass_schema
    builtin = [info for info in registry.all_passes() if info.origin.startswith("passes.")]
    shipped = [f for f in (REPO / "passes").glob("*.py") if not f.name.startswith("_")]
    assert len(builtin) == len(shipped)  # one registered pass per passes/*.py file
    for info in builtin:
        check_pass_schema(info.name, info.schema, info.func)  # raises RuntimeError naming the pass
