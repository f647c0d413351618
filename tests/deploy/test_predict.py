"""`predict` (and `bench`, `refit`) on what real runs published: the committed effdet demo (TF
SavedModel -> tf2onnx -> passes -> fp16 -> TensorRT-RTX plan) and a small classifier made here.

No GPU here, so the engine does not run: predict says why and runs the final ONNX model on ONNX
Runtime; the engine path is exercised where a GPU can run the plan and skipped with the reason
elsewhere. Reference results come from the *source* models: the SavedModel run by TensorFlow on
the same image, the classifier's ONNX source on a feed prepared by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.helpers import REPO, ort_run, write_recipe
from trtpipe import errors
from trtpipe.backend import has_runtime_gpu
from trtpipe.deploy.drawing import class_color
from trtpipe.stages.validate.detections import compare_detections

pytestmark = pytest.mark.slow  # the effdet run converts a TensorFlow SavedModel
DEMO = REPO / "models" / "demo.png"
ROLES = {"boxes": "detection_boxes", "scores": "detection_scores", "classes": "detection_classes",
         "num_detections": "num_detections"}


@pytest.fixture(scope="module")
def effdet_out(tmp_path_factory):
    """recipes/effdet.yaml run for real into a temporary output directory."""
    from trtpipe.cli import main
    out = tmp_path_factory.mktemp("effdet") / "out"
    assert main([str(REPO / "recipes" / "effdet.yaml"), "--output-dir", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def savedmodel_detections():
    """The source SavedModel's end-to-end outputs (its own preprocessing and NMS) on the demo image."""
    import tensorflow as tf
    image = np.asarray(Image.open(DEMO).convert("RGB"))[None]
    fn = tf.saved_model.load(str(REPO / "models" / "effdet_demo" / "saved_model")).signatures["serving_default"]
    return {k: v.numpy() for k, v in fn(input_tensor=tf.constant(image)).items()}


def _copy(out, dest):
    """A plain copy of a published output directory (its files, symbolic links resolved)."""
    shutil.copytree(out, dest, symlinks=False, ignore=shutil.ignore_patterns(".runs", ".trtpipe-*", ".trt-pipeline*"))
    return dest


def test_committed_demo_image_is_the_generators():
    sys.path.insert(0, str(REPO / "models"))
    from demo_image import sample_image
    assert np.array_equal(np.asarray(Image.open(DEMO).convert("RGB"))[None], sample_image())


def test_predict_effdet_equals_the_savedmodel(effdet_out, savedmodel_detections, run_cli, tmp_path, rtx):
    code, out, err = run_cli("predict", effdet_out, DEMO, "--out", tmp_path / "pred")
    assert code == 0, err
    gpu, reason = has_runtime_gpu(rtx, ["8.9"])
    result = json.loads((tmp_path / "pred" / "demo.json").read_text())
    if not gpu:
        banner = f"engine not run: {reason}; ran the final ONNX on ONNX Runtime"
        assert banner in out and result["engine_not_run"] == banner
        assert result["runtime"] == "onnxruntime (final ONNX)"
    assert result["kind"] == "detection" and result["image_size"] == [256, 256]
    dets = result["detections"]
    width, height = result["image_size"]
    ref = savedmodel_detections
    assert len(dets) == int(ref["num_detections"][0]) > 10
    # back to the model's own layout (normalized [y1, x1, y2, x2]) to match detection by detection
    capacity = ref["detection_boxes"].shape[1]
    boxes, scores, classes = np.zeros((1, capacity, 4)), np.zeros((1, capacity)), np.zeros((1, capacity))
    for i, d in enumerate(dets):
        x1, y1, x2, y2 = d["box"]
        boxes[0, i] = [y1 / height, x1 / width, y2 / height, x2 / width]
        scores[0, i], classes[0, i] = d["score"], d["class"]
    cand = {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": np.array([len(dets)], np.float32)}
    summary = compare_detections([ref], [cand], ROLES, {"iou_threshold": 0.9, "score_atol": 0.01})  # fp16 plan
    assert summary["status"] == "passed", summary
    assert summary["matched"] == len(dets) and summary["class_mismatches"] == 0
    # pixel coordinates of the original image, best first
    assert max(max(d["box"]) for d in dets) > 100
    assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)


def test_png_has_the_boxes_where_the_detections_are(effdet_out, run_cli, tmp_path):
    code, _, err = run_cli("predict", effdet_out, DEMO, "--out", tmp_path, "--min-score", "0.5", "-q")
    assert code == 0, err
    dets = json.loads((tmp_path / "demo.json").read_text())["detections"]
    assert dets and all(d["score"] > 0.5 for d in dets)
    drawn = np.asarray(Image.open(tmp_path / "demo.png").convert("RGB"))
    original = np.asarray(Image.open(DEMO).convert("RGB"))
    best = dets[0]  # drawn last: its outline is on top
    x1, y1, x2, y2 = (int(round(min(max(v, 0), 255))) for v in best["box"])  # outline at the rounded pixels
    color = class_color(best["class"])
    mid_x, mid_y = (x1 + x2) // 2, (y1 + y2) // 2
    for x, y in ((x1, mid_y), (x1 + 1, mid_y), (x2, mid_y), (x2 - 1, mid_y), (mid_x, y2), (mid_x, y2 - 1)):
        assert tuple(drawn[y, x]) == color, (x, y, best)
    # away from every box (and the label above it) the image is unchanged
    untouched = np.ones(original.shape[:2], bool)
    for d in dets:
        bx1, by1, bx2, by2 = d["box"]
        untouched[max(0, int(by1) - 16):int(by2) + 3, max(0, int(bx1) - 2):int(bx2) + 3] = False
    assert untouched.sum() > 1000
    assert np.array_equal(drawn[untouched], original[untouched])
    assert not np.array_equal(drawn, original)


def test_engine_runtime_where_a_gpu_runs_the_plan(effdet_out, run_cli, tmp_path, rtx):
    gpu, reason = has_runtime_gpu(rtx, ["8.9"])
    code, out, err = run_cli("predict", effdet_out, DEMO, "--out", tmp_path / "engine", "--runtime", "engine")
    if not gpu:
        assert code == errors.EXIT_DEPLOY
        assert f"--runtime engine: the engine cannot run here: {reason}" in err
        assert not (tmp_path / "engine").exists()
        pytest.skip(f"engine not run: {reason}")
    assert code == 0, err
    run_cli("predict", effdet_out, DEMO, "--out", tmp_path / "ort", "--runtime", "onnxruntime")
    engine = json.loads((tmp_path / "engine" / "demo.json").read_text())
    ort = json.loads((tmp_path / "ort" / "demo.json").read_text())
    assert engine["runtime"].startswith("engine (") and engine["engine_not_run"] is None
    assert len(engine["detections"]) == len(ort["detections"])


def test_bench_reports_ort_and_why_the_engine_was_skipped(effdet_out, run_cli, tmp_path, rtx):
    code, out, err = run_cli("bench", effdet_out, "--warmup", "1", "--iterations", "3", "--json", tmp_path / "b.json")
    assert code == 0, err
    result = json.loads((tmp_path / "b.json").read_text())
    (row,) = result["shapes"]
    assert row["profile"] == "static" and row["inputs"] == {"input_tensor": [1, 256, 256, 3]} and row["batch"] == 1
    ort = row["onnxruntime"]
    assert ort["status"] == "measured" and 0 < ort["min_ms"] <= ort["p50_ms"] <= ort["p99_ms"] <= ort["max_ms"]
    assert ort["throughput_per_s"] == pytest.approx(1e3 / ort["mean_ms"], rel=1e-3)
    assert row["postprocess_onnxruntime"]["status"] == "measured"
    gpu, reason = has_runtime_gpu(rtx, ["8.9"])
    if not gpu:
        assert row["engine"] == {"status": "skipped", "reason": f"engine not run: {reason}"}
        assert "skipped" in out and reason in out
    else:
        assert row["engine"]["status"] == "measured"


# --- bad inputs ----------------------------------------------------------------------------------

def test_directory_without_images(effdet_out, run_cli, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    code, _, err = run_cli("predict", effdet_out, tmp_path)
    assert code == errors.EXIT_DEPLOY
    assert f"{tmp_path}: the directory holds no images (.png, .jpg" in err and "Traceback" not in err


def test_corrupt_image_writes_nothing(effdet_out, run_cli, tmp_path):
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(DEMO, good)
    bad.write_bytes(DEMO.read_bytes()[:200])  # a truncated PNG
    code, _, err = run_cli("predict", effdet_out, tmp_path, "--out", tmp_path / "pred")
    assert code == errors.EXIT_DEPLOY
    assert f"{bad}: cannot decode the image" in err
    assert not (tmp_path / "pred").exists()  # every image is decoded before anything is written


def test_output_directory_of_an_older_run_without_the_contract(effdet_out, run_cli, tmp_path):
    old = _copy(effdet_out, tmp_path / "old")
    report = json.loads((old / "report.json").read_text())
    del report["deploy"]
    (old / "report.json").write_text(json.dumps(report))
    code, _, err = run_cli("predict", old, DEMO)
    assert code == errors.EXIT_DEPLOY
    assert "no input contract" in err and "older trt-pipeline" in err
    assert f"python pipeline.py {REPO / 'recipes' / 'effdet.yaml'}" in err  # how to get one
    code, _, err = run_cli("predict", tmp_path / "missing", DEMO)
    assert code == errors.EXIT_DEPLOY and "no such output directory" in err
    code, _, err = run_cli("predict", tmp_path, DEMO)
    assert code == errors.EXIT_DEPLOY and "no report.json: not the output directory of a run" in err


def test_changed_artifact_is_refused(effdet_out, run_cli, tmp_path):
    changed = _copy(effdet_out, tmp_path / "changed")
    model = onnx.load(str(changed / "effdet.onnx"))
    model.doc_string = "edited after the run"
    onnx.save(model, str(changed / "effdet.onnx"))
    code, _, err = run_cli("predict", changed, DEMO)
    assert code == errors.EXIT_DEPLOY and "effdet.onnx is not the file the run published" in err


def test_plan_for_another_backend(effdet_out, run_cli, tmp_path):
    """An output directory published on a machine with TensorRT: its plan cannot run on TensorRT-RTX.
    `--runtime engine` refuses and says why; `auto` says the same in its banner and runs ORT;
    `refit` refuses that plan too."""
    other = _copy(effdet_out, tmp_path / "other")
    plan = b"ftrt" + bytes(4096)  # TensorRT's plan header; this machine has no TensorRT to read the rest
    (other / "effdet.plan").write_bytes(plan)
    report = json.loads((other / "report.json").read_text())
    report["backend"] = {"name": "tensorrt", "version": "10.3.0", "compute_capabilities": None}
    import hashlib
    report["artifacts"]["effdet.plan"] = {"size": len(plan), "sha256": hashlib.sha256(plan).hexdigest()}
    (other / "report.json").write_text(json.dumps(report))
    code, _, err = run_cli("predict", other, DEMO, "--runtime", "engine")
    assert code == errors.EXIT_DEPLOY
    assert "the plan was built by tensorrt 10.3.0, which cannot be used here" in err
    code, out, err = run_cli("predict", other, DEMO, "--out", tmp_path / "pred")
    assert code == 0, err
    assert "engine not run: the plan was built by tensorrt 10.3.0" in out
    code, _, err = run_cli("refit", other / "effdet.plan", "--onnx", other / "effdet.onnx")
    assert code == errors.EXIT_DEPLOY and "was built by tensorrt, which cannot be used here" in err
    (tmp_path / "x.plan").write_bytes(b"\x00" * 64)
    code, _, err = run_cli("refit", tmp_path / "x.plan", "--onnx", other / "effdet.onnx")
    assert code == errors.EXIT_DEPLOY and "not a TensorRT or TensorRT-RTX plan" in err


def test_refit_needs_a_gpu_runtime(effdet_out, run_cli, tmp_path, rtx):
    gpu, reason = has_runtime_gpu(rtx)
    if gpu:
        pytest.skip("a GPU is present: refit of a refittable plan is checked by test_build_options")
    code, _, err = run_cli("refit", effdet_out / "effdet.plan", "--onnx", effdet_out / "effdet.onnx",
                           "-o", tmp_path / "r.plan")
    assert code == errors.EXIT_DEPLOY and "refit not run: tensorrt_rtx 1.7.1 refits a deserialized engine" in err
    assert reason in err and not (tmp_path / "r.plan").exists()
    code, _, err = run_cli("refit", effdet_out / "effdet.plan", "--onnx", effdet_out / "effdet.onnx",
                           "-o", effdet_out / "effdet.plan")
    assert code == errors.EXIT_DEPLOY and "refit never writes over its input" in err
    # nor over another published artifact, or an input reached through a hard link
    before = (effdet_out / "report.json").read_bytes()
    code, _, err = run_cli("refit", effdet_out / "effdet.plan", "--onnx", effdet_out / "effdet.onnx",
                           "-o", effdet_out / "report.json")
    assert code == errors.EXIT_DEPLOY and "refit never writes over a file a run published" in err, err
    assert (effdet_out / "report.json").read_bytes() == before
    link = tmp_path / "plan-link"
    os.link(os.path.realpath(effdet_out / "effdet.plan"), link)
    code, _, err = run_cli("refit", effdet_out / "effdet.plan", "--onnx", effdet_out / "effdet.onnx", "-o", link)
    assert code == errors.EXIT_DEPLOY and "refit never writes over its input" in err, err


# --- a classifier ----------------------------------------------------------------------------------

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _classifier(path):
    """image [1, 3, 32, 32] float (normalized) -> Conv 8 -> Relu -> GAP -> Gemm 10 -> Softmax -> probs."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 1.0, (10, 8)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1, name="gemm"),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax")]
    graph = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _image(path, seed, size=(48, 40)):
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = rng.integers(0, 256, 3)
    arr[rng.integers(0, 20):, : rng.integers(10, 40)] = rng.integers(0, 256, 3)
    Image.fromarray(arr).save(path)


def test_classifier_top1_equals_the_sources(tmp_path, run_cli):
    _classifier(tmp_path / "cls.onnx")
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        _image(tmp_path / "imgs" / f"img{i}.png", i)
    (tmp_path / "labels.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n")
    recipe = write_recipe(tmp_path / "cls.yaml", f"""
        name: cls
        source: {{onnx: cls.onnx}}
        passes:
          - pass: fold_constants
          - pass: cleanup
        precision: fp32
        validate:
          data:
            images: {{dir: imgs, scale: {1 / 255!r}, mean: {MEAN}, std: {STD}}}
        build:
          workspace: 64MiB
        output:
          dir: out
          labels: labels.txt
        """)
    assert run_cli(recipe, "-q")[0] == 0
    code, out, err = run_cli("predict", tmp_path / "out", tmp_path / "imgs", "--top-k", "3", "--out", tmp_path / "p")
    assert code == 0, err
    tops = []
    for i in range(4):
        res = json.loads((tmp_path / "p" / f"img{i}.json").read_text())
        assert res["kind"] == "classification" and res["image_size"] == [48, 40] and len(res["top_k"]) == 3
        # the source model on a feed made by hand: Pillow bilinear resize, /255, ImageNet mean/std, NCHW
        with Image.open(tmp_path / "imgs" / f"img{i}.png") as im:
            x = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
        x = ((x - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None].astype(np.float32)
        probs = ort_run(str(tmp_path / "cls.onnx"), {"image": x})["probs"][0]
        top = res["top_k"][0]
        assert top["class"] == int(np.argmax(probs)) and top["label"] == f"name{top['class']}"
        assert top["score"] == pytest.approx(float(probs.max()), abs=1e-5)
        assert res["scores_are"] == "probability (the model's output)"
        tops.append(top["class"])
        png = np.asarray(Image.open(tmp_path / "p" / f"img{i}.png").convert("RGB"))
        assert png.shape == (40, 48, 3)
        assert (png[2:12, 2:30] == 0).all(axis=-1).mean() > 0.4  # the labels' black box, top left
    assert len(set(tops)) > 1  # the images are told apart: top-1 is not a constant
    assert (tmp_path / "out" / "labels.txt").read_text().startswith("name0\n")


def test_predictions_never_overwrite_an_input_image(effdet_out, run_cli, tmp_path):
    shutil.copy(DEMO, tmp_path / "demo.png")
    code, _, err = run_cli("predict", effdet_out, tmp_path / "demo.png", "--out", tmp_path)
    assert code == errors.EXIT_OUTPUT  # README: an output that is an input of the run
    assert f"{tmp_path / 'demo.png'}: will not write here: it is an input of this command" in err
    assert (tmp_path / "demo.png").read_bytes() == DEMO.read_bytes()


def test_labels_files(tmp_path):
    from trtpipe.deploy.results import load_labels
    from trtpipe.errors import DeployError, RecipeError
    from trtpipe.recipe.load import load_recipe
    (tmp_path / "l.txt").write_text("background\nperson\n\ncar\n")
    assert load_labels(tmp_path / "l.txt") == {0: "background", 1: "person", 3: "car"}
    (tmp_path / "l.json").write_text('{"1": "person", "3": "car"}')
    assert load_labels(tmp_path / "l.json") == {1: "person", 3: "car"}
    (tmp_path / "bad.json").write_text('{"person": 1}')
    with pytest.raises(DeployError, match="expected a JSON list of names"):
        load_labels(tmp_path / "bad.json")
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(RecipeError, match=r"r.yaml:4:3: output.labels: .*nope.txt is not a file"):
        load_recipe(write_recipe(tmp_path / "r.yaml", "name: r\nsource: {onnx: m.onnx}\noutput:\n  labels: nope.txt\n"))
