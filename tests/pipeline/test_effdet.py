"""The flagship: the raw tf2onnx export of the TF-OD-style demo fails in the real TensorRT-RTX
parser/builder with the seed's errors; recipes/effdet.yaml repairs it, validates and builds."""

import json
import shutil

import jsonschema
import onnx
import pytest

from tests.helpers import REPO
from trtpipe import errors
from trtpipe.backend import resolve_backend
from trtpipe.recipe.load import load_recipe
from trtpipe.stages.build.plan import build_plan

pytestmark = pytest.mark.slow  # every test here converts a TensorFlow model

BUILD = {"backend": "auto", "workspace_bytes": 1 << 30, "compute_capabilities": ["8.9"],
         "optimization_level": 3, "profiles": [], "plugins": [], "timing_cache": None}


@pytest.fixture(scope="module")
def effdet_run(tmp_path_factory):
    """One real run of recipes/effdet.yaml (tf2onnx, passes, validation, build)."""
    from trtpipe.cli import main
    out = tmp_path_factory.mktemp("effdet")
    code = main([str(REPO / "recipes" / "effdet.yaml"), "--output-dir", str(out), "--quiet"])
    return code, out


def test_recipe_builds_and_validates(effdet_run):
    code, out = effdet_run
    assert code == 0
    plan = out / "effdet.plan"
    assert plan.stat().st_size > 100_000
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["status"] == "passed"
    raw = {o["output"]: o for o in report["validation"]["comparisons"][0]["outputs"]}
    assert raw["raw_detection_boxes"]["status"] == "passed"
    assert raw["raw_detection_boxes"]["atol"] == 1e-2  # fp16 default tolerance
    assert report["precision"]["mode"] == "fp16" and report["precision"]["initializers"]["fp16"] > 50
    dets = report["validation"]["detections"]
    assert dets["status"] == "passed" and dets["matched"] > 0
    engine = report["validation"]["comparisons"][-1]
    from trtpipe.backend import has_runtime_gpu
    can_run, why = has_runtime_gpu(resolve_backend("tensorrt_rtx"), ["8.9"])
    if can_run:  # a GPU that runs the plan: the comparison must have run, and passed
        assert engine["status"] == "passed", engine
    else:        # never a faked result: skipped, with the precise reason
        assert engine["status"] == "skipped" and engine["reason"] == why
    final = onnx.load(str(out / "effdet.onnx"))
    ops = {n.op_type for n in final.graph.node}
    assert "Loop" not in ops and "NonMaxSuppression" not in ops
    assert final.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    post = onnx.load(str(out / "effdet.postprocess.onnx"))
    assert "NonMaxSuppression" in {n.op_type for n in post.graph.node}
    assert report["artifacts"]["effdet.plan"]["size"] == plan.stat().st_size
    jsonschema.Draft202012Validator(json.loads((REPO / "schemas" / "report.schema.json").read_text())).validate(report)
    md = (out / "report.md").read_text()
    assert "| `raw_detection_boxes` | max |" in md and "engine vs final-ort*: skipped" in md
    assert "-Loop 1" in md and "-NonMaxSuppression 1" in md
    # the error histograms: the engine's raw outputs only; the split NMS's detections are matched
    # by IoU (their element-wise errors would contradict "passed"), drawn in the detections picture
    from PIL import Image
    with Image.open(out / "effdet.errors.png") as im:
        assert im.height == 28 + 2 * (150 + 8), im.size  # title + one panel each: raw boxes, raw scores


def _recipe_variant(tmp_path, edit):
    """recipes/effdet.yaml edited by `edit(text)`, next to a copy of models/ so paths resolve."""
    recipe = tmp_path / "recipes" / "effdet-variant.yaml"
    recipe.parent.mkdir()
    recipe.write_text(edit((REPO / "recipes" / "effdet.yaml").read_text()))
    shutil.copytree(REPO / "models", tmp_path / "models", ignore=shutil.ignore_patterns("*.py"))
    return recipe


def test_fp32_surgery_keeps_raw_outputs_within_1e5(tmp_path, run_cli):
    recipe = _recipe_variant(tmp_path, lambda t: t.replace("precision: fp16", "precision: fp32"))
    code, _, err = run_cli(recipe, "--output-dir", tmp_path / "out", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    raw = {o["output"]: o for o in report["validation"]["comparisons"][0]["outputs"]}
    assert raw["raw_detection_boxes"]["max_abs"] <= 1e-5
    assert raw["raw_detection_scores"]["max_abs"] <= 1e-5
    assert report["validation"]["detections"]["unmatched_source"] == 0


def test_raw_export_fails_with_the_seed_errors(effdet_run):
    """What users hit first: UINT8 inside the map_fn Loop."""
    _, out = effdet_run
    with pytest.raises(errors.BuildError) as err:
        build_plan(out / "effdet.source.onnx", BUILD, resolve_backend("tensorrt_rtx"))
    msg = str(err.value)
    assert "UINT8" in msg and "TensorListGetItem" in msg and "Gather" in msg


def test_without_nms_pass_the_build_has_no_nms_runner(tmp_path, run_cli):
    """With input and preprocessing fixed but NMS kept, TensorRT-RTX cannot build NMS."""
    def drop_nms(text):
        return text[:text.index("  # TensorRT-RTX has no NMS")] + text[text.index("  - pass: fold_constants"):]
    recipe = _recipe_variant(tmp_path, drop_nms)
    code, _, err = run_cli(recipe, "--no-validate", "--output-dir", tmp_path / "out")
    assert code == errors.EXIT_BUILD
    assert "NonMaxSuppression" in err and "no runners" in err
    assert not list((tmp_path / "out").glob("*.plan"))


def test_tensorrt_recipe_refused_before_conversion(tmp_path, run_cli):
    """effdet-tensorrt names `backend: tensorrt`: where TensorRT is not installed the run stops at
    once (exit 7), before any conversion; pinned to TensorRT-RTX (which has no EfficientNMS_TRT)
    it stops at the plugin, also before conversion (before any stage that is not cached)."""
    from trtpipe.backend import installed_backends
    recipe = load_recipe(REPO / "recipes" / "effdet-tensorrt.yaml")
    assert recipe.data["build"]["backend"] == "tensorrt"
    if "tensorrt" in installed_backends():
        pytest.skip("real TensorRT is installed: the plugin exists here")
    code, out, err = run_cli(REPO / "recipes" / "effdet-tensorrt.yaml", "--output-dir", tmp_path / "out")
    assert code == errors.EXIT_BUILD
    assert "backend tensorrt cannot be imported" in err
    assert "▶ source" not in out  # refused before any conversion
    rtx = tmp_path / "effdet-rtx.yaml"
    rtx.write_text((REPO / "recipes" / "effdet-tensorrt.yaml").read_text().replace("../", str(REPO) + "/")
                   .replace("backend: tensorrt ", "backend: tensorrt_rtx "))
    code, out, err = run_cli(rtx, "--output-dir", tmp_path / "out")
    assert code == errors.EXIT_BUILD
    assert "EfficientNMS_TRT" in err and "tensorrt_rtx" in err and "effdet-rtx.yaml:" in err
    # the passes' prechecks run at the first stage with work to do: stages before it may be cached
    # (an earlier test converted the same SavedModel), none ran
    done = [line for line in out.split("▶ source", 1)[-1].splitlines() if line.strip().startswith("✓")]
    assert all("cached" in line for line in done), out
    assert "converting with tf2onnx" not in out
    assert not list(tmp_path.rglob("*.plan"))
