"""The `nms` pass on real tf2onnx exports of TF-OD-style detectors (tests/tfmodels.py).

Two sources: the demo (tf.image.combined_non_max_suppression -> one batched NonMaxSuppression
plus ScatterND/TopK emulation) and the per-class variant whose NonMaxSuppression sits inside a
Loop body (tf.map_fn over classes). Every result goes through onnx.checker + strict shape
inference as the runner does, and ONNX Runtime results are compared with the source's.
"""

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from tests import tfmodels
from tests.helpers import ort_run, run_passes
from trtpipe import registry
from trtpipe.errors import BuildError, PassError
from trtpipe.graph.check import check_rewritten as check_model
from trtpipe.recipe.schema import schema_errors
from trtpipe.stages.build.plugins import iter_nodes

# Fixed here (not the demo's default) so the expected NMS settings do not move with the demo; low
# enough that the sample image gives detections over several classes.
SCORE_THRESHOLD = 0.1
DETECTIONS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """name -> converted ModelProto, each variant built and converted once, on first use."""
    cache, root = {}, tmp_path_factory.mktemp("nms_models")

    def get(name):
        if name not in cache:
            saved = tfmodels.VARIANTS[name](root / name, score_threshold=SCORE_THRESHOLD)
            cache[name] = tfmodels.convert(saved)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def image():
    return tfmodels.sample_image(128, 128)


@pytest.fixture(scope="module")
def reference(source, image):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = ort_run(source(name), {"input_tensor": image})
        return cache[name]
    return get


def run_nms(model, params, tmp_path, **ctx_args):
    """The nms pass as a recipe runs it (schema, defaults, checks); returns (model, ctx)."""
    ctx = registry.PassContext(name="det", stage_dir=tmp_path, **ctx_args)
    return run_passes(model, [("nms", params)], ctx)


def ops(model):
    return [node.op_type for _, node in iter_nodes(model.graph)]


def for_rtx(model, path):
    """What the other passes do before a build (preprocessing Loop out, nearest Resize in a form
    TensorRT takes), done minimally here so that NMS is what the build is about."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    loop = next(n for n in graph.nodes if n.op == "Loop")  # the map_fn preprocessing
    image = next(t for t in loop.outputs if t.outputs and t.shape and len(t.shape) == 4)
    image.inputs.clear()
    image.dtype, image.shape = np.float32, [1, *image.shape[1:]]
    graph.inputs = [image]
    for node in graph.nodes:  # exact for the FPN's 2x nearest upsampling
        if node.attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
            node.attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    onnx.save(gs.export_onnx(graph), str(path))
    return path


def rtx_build(path):
    from trtpipe.backend import resolve_backend
    from trtpipe.stages.build.plan import build_plan
    return build_plan(path, {"compute_capabilities": ["8.9"]}, resolve_backend("tensorrt_rtx"))


# -- split ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["demo", "per_class_nms_loop"])
def test_split_reproduces_detections_and_builds_on_rtx(variant, source, reference, image, tmp_path):
    engine, ctx = run_nms(source(variant), {"mode": "split"}, tmp_path)
    assert "NonMaxSuppression" not in ops(engine)
    assert [o.name for o in engine.graph.output] == ["raw_detection_boxes", "raw_detection_scores"]
    assert any("boxes 'raw_detection_boxes'" in n for n in ctx.notes)  # what was found is reported

    pp = ctx.postprocess
    assert pp["file"] == "det.postprocess.onnx" and pp["kind"] == "detections"
    assert ctx.artifacts[pp["file"]] == tmp_path / pp["file"]
    assert sorted(pp["outputs"].values()) == sorted(DETECTIONS)
    post = onnx.load(str(tmp_path / pp["file"]))
    check_model(post, "post-processing model")

    raw = ort_run(engine, {"input_tensor": image})
    detections = ort_run(post, {pp_in: raw[out] for pp_in, out in pp["inputs"].items()})
    ref = reference(variant)
    assert ref["num_detections"][0] >= 1  # a comparison of empty detections would prove nothing
    for pp_out, src_out in pp["outputs"].items():
        np.testing.assert_array_equal(detections[pp_out], ref[src_out], err_msg=pp_out)

    result = rtx_build(for_rtx(engine, tmp_path / "engine.onnx"))
    assert len(result.plan) > 0 and result.compute_capabilities == ["8.9"]


# -- efficient_nms --------------------------------------------------------------------------------
@pytest.mark.slow
def test_efficient_nms_node_attributes_and_rtx_plugin_missing(source, tmp_path):
    params = {"mode": "efficient_nms", "score_threshold": 0.2, "iou_threshold": 0.45,
              "max_output_boxes": 50, "class_agnostic": True, "box_coding": "center_size"}
    model, ctx = run_nms(source("demo"), params, tmp_path)
    assert "NonMaxSuppression" not in ops(model)
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert node.domain == "trt.plugins"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs.pop("score_threshold") == pytest.approx(0.2)
    assert attrs.pop("iou_threshold") == pytest.approx(0.45)
    assert attrs == {"plugin_version": b"1", "background_class": -1, "max_output_boxes": 50,
                     "score_activation": 0, "class_agnostic": 1, "box_coding": 1}
    assert list(node.input) == ["raw_detection_boxes", "raw_detection_scores"]  # found by structure
    out = {o.name: (o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim])
           for o in model.graph.output}
    f32, i32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32
    assert out == {"num_detections": (i32, [1, 1]), "detection_boxes": (f32, [1, 50, 4]),
                   "detection_scores": (f32, [1, 50]), "detection_classes": (i32, [1, 50])}
    assert ctx.output_map["detection_boxes"] == "detection_boxes"

    with pytest.raises(BuildError, match="EfficientNMS_TRT"):
        rtx_build(for_rtx(model, tmp_path / "efficient.onnx"))


@pytest.mark.slow
def test_efficient_nms_defaults_come_from_the_source(source, tmp_path):
    model, _ = run_nms(source("per_class_nms_loop"), {"mode": "efficient_nms"}, tmp_path)
    (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["iou_threshold"] == pytest.approx(0.5)
    assert attrs["score_threshold"] == pytest.approx(SCORE_THRESHOLD)
    assert attrs["max_output_boxes"] == 100 and attrs["box_coding"] == 0
    assert "Loop" in ops(model)  # the preprocessing Loop stays; the NMS Loop is gone
    assert not any(n.op_type == "NonMaxSuppression" for _, n in iter_nodes(model.graph))


@pytest.mark.slow
def test_efficient_nms_anchors_names_and_class_offset(source, tmp_path):
    model = source("demo")
    n = [d.dim_value for o in model.graph.output if o.name == "raw_detection_boxes"
         for d in o.type.tensor_type.shape.dim][1]
    np.save(tmp_path / "anchors.npy", np.random.default_rng(0).random((n, 4), np.float32))
    params = {"mode": "efficient_nms", "anchors": "anchors.npy", "class_offset": 1,
              "outputs": {"detection_classes": "classes"}}
    out, _ = run_nms(model, params, tmp_path, recipe_dir=tmp_path)
    (node,) = [n for n in out.graph.node if n.op_type == "EfficientNMS_TRT"]
    anchors = {i.name: i for i in out.graph.initializer}[node.input[2]]
    assert list(anchors.dims) == [1, n, 4]
    assert [o.name for o in out.graph.output][3] == "classes"
    (add,) = [n for n in out.graph.node if n.op_type == "Add" and n.output[0] == "classes"]
    assert add.input[0] == node.output[3]

    np.save(tmp_path / "short.npy", np.zeros((n - 1, 4), np.float32))
    with pytest.raises(PassError, match="anchors must hold N\\*4 values"):
        run_nms(model, {"mode": "efficient_nms", "anchors": "short.npy"}, tmp_path, recipe_dir=tmp_path)


# -- native ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_native_refused_on_rtx(source, tmp_path):
    with pytest.raises(PassError, match="mode: split") as err:
        run_nms(source("demo"), {"mode": "native"}, tmp_path, backend="tensorrt_rtx")
    assert "TensorRT-RTX has no NMS implementation" in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["demo", "per_class_nms_loop"])
def test_native_bounds_nms_input_and_keeps_results(variant, source, reference, image, tmp_path):
    ref = reference(variant)
    candidates = int((ref["raw_detection_scores"].max(-1) >= SCORE_THRESHOLD).sum())
    k = candidates + 8  # far below N, yet above every box that can survive the threshold
    assert k < ref["raw_detection_boxes"].shape[1]
    model, _ = run_nms(source(variant), {"mode": "native", "max_candidates": k}, tmp_path,
                       backend="tensorrt", backend_version=(10, 8))
    nodes = [n for _, n in iter_nodes(model.graph)]
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for _, n in iter_nodes(model.graph):
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                consts.update({i.name: onnx.numpy_helper.to_array(i) for i in a.g.initializer})
    inserted = [n for n in nodes if n.op_type == "TopK" and "/topk/" in n.name]
    assert len(inserted) == ops(model).count("NonMaxSuppression") >= 1
    assert all(consts[n.input[1]].tolist() == [k] and k <= 3840 for n in inserted)
    out = ort_run(model, {"input_tensor": image})
    for name in ref:
        np.testing.assert_array_equal(out[name], ref[name], err_msg=name)


@pytest.mark.slow
def test_native_default_leaves_small_nms_alone(source, tmp_path):
    before = ops(source("demo")).count("TopK")
    model, ctx = run_nms(source("demo"), {"mode": "native"}, tmp_path, backend="tensorrt")
    assert ops(model).count("TopK") == before  # N = 3024 <= 3840
    assert any("already gets <= K boxes" in n for n in ctx.notes)


# -- batched_nms (legacy) -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backend, version", [("tensorrt", (11, 0)), ("tensorrt_rtx", (1, 7))])
def test_batched_nms_refused_where_removed(backend, version, source, tmp_path):
    with pytest.raises(PassError, match="removed in TensorRT 11") as err:
        run_nms(source("demo"), {"mode": "batched_nms"}, tmp_path, backend=backend,
                backend_version=version)
    assert "efficient_nms" in str(err.value)


@pytest.mark.slow
def test_batched_nms_on_tensorrt_10(source, tmp_path):
    model, _ = run_nms(source("demo"), {"mode": "batched_nms", "score_threshold": 1e-8}, tmp_path,
                       backend="tensorrt", backend_version=(10, 8))
    (node,) = [n for n in model.graph.node if n.op_type == "BatchedNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert {k: attrs[k] for k in ("shareLocation", "numClasses", "backgroundLabelId", "topK",
                                  "keepTopK", "isNormalized", "clipBoxes")} == {
        "shareLocation": 1, "numClasses": tfmodels.SMALL["num_classes"], "backgroundLabelId": -1,
        "topK": 3024, "keepTopK": 100, "isNormalized": 1, "clipBoxes": 0}
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.input]}
    assert shapes[node.input[0]] == [1, 3024, 1, 4]  # boxes shared by all classes
    assert [o.name for o in model.graph.output] == list(DETECTIONS[3:] + DETECTIONS[:3])


# -- errors and schema ----------------------------------------------------------------------------
@pytest.mark.slow
def test_missing_tensor_suggests_name(source, tmp_path):
    with pytest.raises(PassError, match="did you mean 'raw_detection_boxes'"):
        run_nms(source("demo"), {"mode": "split", "boxes": "raw_detection_boxs"}, tmp_path)
    with pytest.raises(PassError, match=r"boxes tensor 'input_tensor' is a graph input"):
        run_nms(source("demo"), {"mode": "split", "boxes": "input_tensor"}, tmp_path)
    with pytest.raises(PassError, match="same tensor"):
        run_nms(source("demo"), {"mode": "split", "boxes": "raw_detection_scores",
                                 "scores": "raw_detection_scores"}, tmp_path)


@pytest.mark.slow
def test_no_nms_in_graph(source, tmp_path):
    engine, _ = run_nms(source("demo"), {"mode": "split"}, tmp_path)
    with pytest.raises(PassError, match="found no NMS to split off: no TopK, NonMaxSuppression or Loop"):
        run_nms(engine, {"mode": "split"}, tmp_path)
    # with the tensors named, a plugin can still go on a graph that was already cut
    model, _ = run_nms(engine, {"mode": "efficient_nms", "boxes": "raw_detection_boxes",
                                "scores": "raw_detection_scores"}, tmp_path)
    assert ops(model).count("EfficientNMS_TRT") == 1


def test_schema_accepts_only_the_modes_parameters():
    schema = registry.get("nms").schema
    assert not list(schema_errors({"mode": "native", "max_candidates": 1000}, schema))
    (err,) = [m for _, m in schema_errors({"mode": "split", "max_candidates": 1000}, schema)]
    assert "mode split" in err and "max_candidates" in err
    (err,) = [m for _, m in schema_errors({"mode": "efficient_nms", "top_k": 10}, schema)]
    assert "top_k" in err
    assert "did you mean 'native'" in next(m for _, m in schema_errors({"mode": "nativ"}, schema))
    assert list(schema_errors({"mode": "native", "max_candidates": 5000}, schema))
