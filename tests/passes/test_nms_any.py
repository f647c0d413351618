"""`nms` split mode on NMS of any form, and `split_postprocess`, on look-alikes of current TF
detector exports (tests/tfmodels_detectors.py): Model Garden per-class while-loop NMS reading
image_info from the preprocessing Loop, keras-hub's argsort TopK over 4096 anchors + suppression
loop, YOLO-style single-image NMS on [N, 4] boxes. Engine + post-processing model are run with
ONNX Runtime and compared with the source exactly; changed NMS settings are compared with the same
network exported by TensorFlow with those settings.
"""

import numpy as np
import onnx
import pytest

from tests import tfmodels_detectors as det
from tests.helpers import ops, ort_run, run_passes, write_recipe
from trtpipe import registry
from trtpipe.errors import PassError, RecipeError

pytestmark = pytest.mark.slow  # TensorFlow + tf2onnx conversions (cached on disk)

SIZES = {"model_garden": (1, 64, 64, 3), "keras_hub": (1, 128, 128, 3), "yolo": (1, 64, 64, 3)}


@pytest.fixture(scope="module")
def source():
    cache = {}

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = det.onnx_model(name, **options)
        return cache[key]
    return get


def image(name, batch=1, seed=5):
    """What validation feeds: uniform pixels 0..255, uint8 for Model Garden's input, else float32."""
    shape = (batch,) + SIZES[name][1:]
    x = np.random.default_rng(seed).integers(0, 256, shape)
    return x.astype(np.uint8 if name == "model_garden" else np.float32)


def split(model, tmp_path, **params):
    ctx = registry.PassContext(name="det", stage_dir=tmp_path)
    return run_passes(model, [("nms", {"mode": "split", **params})], ctx)


def chain(engine, ctx, tmp_path, feeds):
    """engine -> post-processing model, as validation and predict run them."""
    pp = ctx.postprocess
    raw = ort_run(engine, feeds)
    out = ort_run(onnx.load(str(tmp_path / pp["file"])), {i: raw[o] for i, o in pp["inputs"].items()})
    return {pp["outputs"][k]: v for k, v in out.items()}


@pytest.mark.parametrize("name, starts_at, engine_ends, extra", [
    ("model_garden", "TopK", ["StatefulPartitionedCall/Sigmoid:0", "StatefulPartitionedCall/concat:0", "image_info"],
     ["image_info"]),
    ("keras_hub", "TopK", ["StatefulPartitionedCall/ArgMax:0", "StatefulPartitionedCall/Max:0",
                           "StatefulPartitionedCall/concat:0"], []),
    ("yolo", "NonMaxSuppression", ["StatefulPartitionedCall/ArgMax:0", "StatefulPartitionedCall/Max:0",
                                   "StatefulPartitionedCall/concat:0"], []),
])
def test_split_any_nms_reproduces_the_source(name, starts_at, engine_ends, extra, source, tmp_path):
    model = source(name)
    engine, ctx = split(model, tmp_path)
    pp = ctx.postprocess
    # found by structure: where the post-processing starts, what the engine ends at, what it reads from before
    assert any(f"post-processing starts at {starts_at}" in n for n in ctx.notes), ctx.notes
    assert sorted(pp["inputs"].values()) == sorted(engine_ends)
    assert pp["extra_inputs"] == extra and pp["settings"] == {}
    assert [o.name for o in engine.graph.output] == list(pp["inputs"].values())
    assert sorted(pp["outputs"]) == sorted(o.name for o in model.graph.output if o.name != "image_info")
    # nothing TensorRT-RTX cannot build is left in the engine: no NMS, no TopK (keras-hub's K = 4096), no NMS Loop
    assert not {"NonMaxSuppression", "TopK"} & set(ops(engine))
    assert ops(engine).count("Loop") == (1 if name == "model_garden" else 0)  # only the map_fn preprocessing
    feeds = {model.graph.input[0].name: image(name)}
    ref, got = ort_run(model, feeds), chain(engine, ctx, tmp_path, feeds)
    assert int(np.sum(ref[{"model_garden": "num_detections", "keras_hub": "num_detections"}.get(name, "scores")]
                      > 0)) >= 1
    for out, value in got.items():
        np.testing.assert_array_equal(value, ref[out], err_msg=out)


@pytest.mark.parametrize("name", ["keras_hub", "yolo", "model_garden"])
def test_changed_settings_equal_the_source_exported_with_them(name, source, tmp_path):
    """score_threshold / iou_threshold / max_detections land where each NMS form keeps them: the
    NonMaxSuppression's inputs (YOLO), the comparisons in the suppression loops and the last TopK's K
    (keras-hub, Model Garden's nested per-class loops)."""
    settings = {"score_threshold": 0.34, "iou_threshold": 0.4, "max_detections": 8}
    engine, ctx = split(source(name), tmp_path, **settings)
    assert ctx.postprocess["settings"] == settings
    assert sum("->" in n and any(k in n for k in settings) for n in ctx.notes) == 3
    reference = source(name, **settings)  # the same seeded network, exported with these settings
    feeds = {reference.graph.input[0].name: image(name, seed=9)}
    ref, got = ort_run(reference, feeds), chain(engine, ctx, tmp_path, feeds)
    for out, value in got.items():
        np.testing.assert_array_equal(value, ref[out], err_msg=out)
    default = ort_run(source(name), feeds)
    assert any(value.shape != default[out].shape or not np.array_equal(value, default[out])
               for out, value in got.items())  # the settings changed the detections


def test_dynamic_batch_either_order_post_processing_follows(source, tmp_path):
    model = source("keras_hub")  # exported at batch 1: tf2onnx bakes 1 into the post-processing's shapes
    x = image("keras_hub", batch=3)
    for order in (["nms", "dynamic_batch"], ["dynamic_batch", "nms"]):
        steps = [(p, {"mode": "split"} if p == "nms" else {}) for p in order]
        out_dir = tmp_path / "_".join(order)
        out_dir.mkdir()
        engine, ctx = run_passes(model, steps, registry.PassContext(name="det", stage_dir=out_dir))
        post = onnx.load(str(out_dir / ctx.postprocess["file"]))
        assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in post.graph.input), order
        got = chain(engine, ctx, out_dir, {"images": x})
        for b in range(3):  # each image as the batch-1 source sees it
            ref = ort_run(model, {"images": x[b:b + 1]})
            for out, value in ref.items():
                np.testing.assert_allclose(got[out][b:b + 1], value, atol=1e-5, err_msg=f"{order} {out}[{b}]")


def test_dynamic_batch_after_a_batch_1_post_processing_is_a_recipe_error(source, tmp_path):
    model = source("model_garden")  # its post-processing indexes image 0: cannot follow a batch
    steps = [("set_input", {"dtype": "float32", "shape": [1, 64, 64, 3]}),
             ("replace_preprocessing", {"layout": "NHWC", "scale": 1.0}), ("nms", {"mode": "split"}),
             ("dynamic_batch", {})]
    with pytest.raises(RecipeError) as err:
        run_passes(model, steps, registry.PassContext(name="det", stage_dir=tmp_path))
    assert "dynamic_batch runs after `nms` (mode: split)" in err.value.message
    assert "detection_boxes" in err.value.message and "put dynamic_batch before `nms`" in err.value.hint


def test_max_detections_beyond_what_the_graph_picks_from_is_refused(source, tmp_path):
    with pytest.raises(PassError, match=r"cannot apply max_detections 5000: TopK .* picks the detections from "
                                        r"4096 candidates") as err:
        split(source("keras_hub"), tmp_path, max_detections=5000)  # one per anchor
    assert err.value.key_path == ("params", "max_detections")


def test_split_postprocess_moves_a_topk_over_3840(source, tmp_path):
    model = source("topk")
    ctx = registry.PassContext(name="top", stage_dir=tmp_path)
    engine, ctx = run_passes(model, [("split_postprocess", {})], ctx)
    assert "TopK" not in ops(engine) and ctx.postprocess["kind"] == "outputs"
    feeds = {"pixels": np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3)).astype(np.uint8)}
    got, ref = chain(engine, ctx, tmp_path, feeds), ort_run(model, feeds)
    assert got["top_scores"].shape == (1, 5000)
    for out in ("top_scores", "top_indices"):
        np.testing.assert_array_equal(got[out], ref[out])
    with pytest.raises(PassError, match="the graph has no TopK with K > 6000"):
        run_passes(model, [("split_postprocess", {"topk_limit": 6000})],
                   registry.PassContext(name="top", stage_dir=tmp_path / "x"))


def test_setting_the_graph_cannot_hold_points_at_its_key(tmp_path, run_cli):
    """A TopK-only post-processing (no NMS, no IoU comparison): iou_threshold cannot apply, and the
    error names the key's line, not the pass's."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Relu", ["x"], ["scores"]),
             helper.make_node("TopK", ["scores", "k"], ["top", "idx"], axis=1),
             helper.make_node("Gather", ["boxes", "idx"], ["picked"], axis=0)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("top", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("picked", TensorProto.FLOAT, [1, 4, 4])],
        [helper.make_tensor("k", TensorProto.INT64, [1], [4]),
         helper.make_tensor("boxes", TensorProto.FLOAT, [16, 4], np.arange(64, dtype=np.float32))])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(tmp_path / "m.onnx"))
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: r
        source: {onnx: m.onnx}
        passes:
          - pass: nms
            params:
              mode: split
              iou_threshold: 0.6
        output: {dir: out}
        """)
    code, _, err = run_cli(recipe, "--no-validate")
    assert code == 5, err
    assert f"{recipe}:7:7: passes[0] nms: cannot apply iou_threshold" in err, err
    assert "Comparison of an IoU".lower() in err.lower()
    assert not (tmp_path / "out" / "r.plan").exists()


def test_split_settings_are_schema_keys_and_unknown_ones_point_at_their_line(tmp_path, run_cli):
    (tmp_path / "m.onnx").write_bytes(b"")  # check reads the schema only
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: r
        source: {onnx: m.onnx}
        passes:
          - pass: nms
            params:
              mode: split
              score_threshold: 0.2
              max_detections: 50
              keep_other_outputs: true
        output: {dir: out}
        """)
    code, out, err = run_cli("check", recipe)
    assert code == 3
    text = out + err
    assert f"{recipe}:9:7: passes[0].params.keep_other_outputs: expected a parameter of mode split" in text, text
    assert "score_threshold" not in text.split("got")[-1]


def test_constant_only_walk_survives_a_deep_backbone():
    """The cut's 'computed from constants alone' walk is iterative: a 5,000-node chain from the
    graph input (deeper than Python's recursion limit) is answered, not a RecursionError."""
    import onnx_graphsurgeon as gs

    from trtpipe.graph import postprocess_cut
    x = gs.Variable("x", np.float32, [1])
    t = x
    for i in range(5000):
        out = gs.Variable(f"t{i}", np.float32, [1])
        gs.Node("Relu", f"r{i}", inputs=[t], outputs=[out])
        t = out
    const = gs.Constant("c", np.ones(1, np.float32))
    folded = gs.Variable("f", np.float32, [1])
    gs.Node("Neg", "n", inputs=[const], outputs=[folded])
    assert postprocess_cut._constant_only(t, {}) is False
    assert postprocess_cut._constant_only(folded, {}) is True
