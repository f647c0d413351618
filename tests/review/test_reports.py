"""Reports and console output people read: report.md (relative paths, fp32-kept nodes, plan I/O
and profiles, versions, reasons once, exact counts for integer outputs, pictures), the summary
tables, `passes NAME` at the terminal's width, progress and third-party output, cache commands.

One real run (ONNX Runtime, the TensorRT-RTX builder) of a small detector built here: uint8 NHWC
image with a dynamic batch -> boxes, scores, classes, count, and an integer class id (ArgMax).
"""

import json
import os
import re
import stat
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from tests.helpers import REPO, make_conv_model, write_recipe
from trtpipe.stages.report_md import to_markdown

K = 3  # detections the model always gives


def make_detector(path):
    """image uint8 [N,64,64,3] -> features -> detection_boxes [N,3,4] (normalized y1,x1,y2,x2),
    detection_scores [N,3], detection_classes [N,3], num_detections [N], class_id (int64 ArgMax)."""
    rng = np.random.default_rng(3)
    init = [numpy_helper.from_array(a, n) for n, a in [
        ("conv_w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.01),
        ("w_scores", rng.standard_normal((4, K)).astype(np.float32)),
        ("w_boxes", rng.standard_normal((4, K * 4)).astype(np.float32) * 0.1),
        ("w_scale", rng.standard_normal((4, 1)).astype(np.float32) * 0.01),
        ("anchors", np.array([[0.1, 0.1, 0.5, 0.4], [0.3, 0.5, 0.9, 0.9], [0.6, 0.1, 0.8, 0.3]], np.float32)),
        ("box_shape", np.array([-1, K, 4], np.int64)), ("small", np.array(0.05, np.float32)),
        ("classes", np.array([[1.0, 2.0, 3.0]], np.float32)), ("count", np.array([3.0], np.float32)),
        ("zero", np.array(0.0, np.float32)), ("flat", np.array([-1], np.int64)),
        ("col", np.array([-1, 1, 1], np.int64))]]
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["feat"]),
        helper.make_node("MatMul", ["feat", "w_scores"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["detection_scores"], name="scores"),
        helper.make_node("ArgMax", ["logits"], ["class_id"], axis=1, keepdims=0),
        helper.make_node("MatMul", ["feat", "w_scale"], ["s"]),
        helper.make_node("Exp", ["s"], ["scale2"], name="scale_exp"),  # kept fp32 (precision keep_op_types)
        helper.make_node("Reshape", ["scale2", "col"], ["scale"]),  # [N, 1, 1]
        helper.make_node("MatMul", ["feat", "w_boxes"], ["deltas"]),
        helper.make_node("Tanh", ["deltas"], ["t"]),
        helper.make_node("Reshape", ["t", "box_shape"], ["t3"]),
        helper.make_node("Mul", ["t3", "small"], ["moves"]),
        helper.make_node("Mul", ["moves", "scale"], ["moved"]),
        helper.make_node("Add", ["anchors", "moved"], ["detection_boxes"]),
        helper.make_node("Mul", ["s", "zero"], ["s0"]),  # [N,1] zeros: classes and count get the batch
        helper.make_node("Add", ["classes", "s0"], ["detection_classes"]),
        helper.make_node("Reshape", ["s0", "flat"], ["s0f"]),
        helper.make_node("Add", ["count", "s0f"], ["num_detections"]),
    ]
    out = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "det", [out("image", TensorProto.UINT8, ["N", 64, 64, 3])],
                              [out("detection_boxes", TensorProto.FLOAT, ["N", K, 4]),
                               out("detection_scores", TensorProto.FLOAT, ["N", K]),
                               out("detection_classes", TensorProto.FLOAT, ["N", K]),
                               out("num_detections", TensorProto.FLOAT, ["N"]),
                               out("class_id", TensorProto.INT64, ["N"])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


DETECTOR = """
    name: det
    source:
      onnx: det.onnx
    precision: fp16
    validate:
      data:
        seed: 5
        iterations: 1
        inputs: {image: {range: [0, 255], shape: [1, 64, 64, 3]}}
      detections: {classes: detection_classes}  # class_id would be a candidate too
    build:
      workspace: 256MiB
      profiles:
        - name: up_to_two
          inputs:
            image: {min: [1, 64, 64, 3], opt: [1, 64, 64, 3], max: [2, 64, 64, 3]}
    output:
      dir: out
    """


@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    """The detector recipe run twice with the CLI (the second run: everything cached)."""
    folder = tmp_path_factory.mktemp("report")
    make_detector(folder / "det.onnx")
    recipe = write_recipe(folder / "det.yaml", DETECTOR)
    env = {**os.environ, "TRTPIPE_CACHE_DIR": str(folder / "cache"), "COLUMNS": "200"}
    runs = [subprocess.run([sys.executable, str(REPO / "pipeline.py"), str(recipe)], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    return folder, runs


def test_report_md_is_complete_and_relative(detector_run):
    folder, _ = detector_run
    out = folder / "out"
    md, rep = (out / "report.md").read_text(), json.loads((out / "report.json").read_text())
    assert str(folder) not in md and "/tmp/" not in md  # nothing of this machine's layout
    assert "- recipe: `det.yaml` (sha256" in md
    assert "- source: onnx `det.onnx`, " in md
    assert f"- tools: trt-pipeline {rep['tools']['trt-pipeline']}, " in md and f"onnx {onnx.__version__}" in md
    assert re.search(r"- backend: tensorrt_rtx [\d.]+ \(tensorrt-rtx-cu13-bindings [\d.]+", md)
    # the plan's inputs and outputs, and its profile
    assert "| `image` | input | float32 | [?, 64, 64, 3] |" in md or "| `image` | input | uint8 | [?, 64, 64, 3] |" \
        in md, md
    assert "| `detection_boxes` | output | float32 | [?, 3, 4] |" in md
    assert "| `up_to_two` | `image` | [1, 64, 64, 3] | [1, 64, 64, 3] | [2, 64, 64, 3] |" in md
    # the nodes kept in fp32, with why
    assert rep["precision"]["kept_fp32"] == {"scale_exp": "keep_op_types"}
    assert "| `scale_exp` | its op type is in precision.keep_op_types (numerically sensitive) |" in md
    # integer outputs: exact-match counts, never nan
    rows = [line for line in md.splitlines() if line.startswith("| `class_id` | exact |")]
    assert rows[0].startswith("| `class_id` | exact | 1 of 1 equal | | 0 / 0 | all equal |"), rows
    assert rows[1].startswith("| `class_id` | exact | 2 of 2 equal |")  # at the profile's max shape
    assert md.count("Rule: an output passes") == 1  # said once, not under every table
    assert "nan" not in md.lower().replace("nonmaxsuppression", "")


def test_report_pictures(detector_run):
    folder, _ = detector_run
    out = folder / "out"
    md, rep = (out / "report.md").read_text(), json.loads((out / "report.json").read_text())
    assert rep["pictures"]["status"] == "made", rep["pictures"]
    files = rep["pictures"]["files"]
    assert files == {"detections": "det.detections.png", "errors": "det.errors.png"}
    for name in files.values():
        assert f"]({name})" in md  # linked relatively, next to report.md
        assert rep["artifacts"][name]["size"] == (out / name).stat().st_size  # published with a sha256
    from trtpipe.deploy.drawing import PALETTE
    with Image.open(out / "det.detections.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    half = pixels.shape[1] // 2
    for side in (pixels[:, :half], pixels[:, half:]):  # boxes of the 3 classes on both sides
        colors = {tuple(c) for c in side.reshape(-1, 3)}
        assert sum(PALETTE[c % len(PALETTE)] in colors for c in (1, 2, 3)) == 3
    with Image.open(out / "det.errors.png") as im:
        assert im.width == 640 and im.height > 150 * 4  # one panel per compared output (5)


def test_report_files_are_readable_like_the_artifacts(detector_run):
    folder, _ = detector_run
    current = folder / "out" / ".runs" / "current"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in current.iterdir() if not p.name.startswith(".")}
    assert modes["report.json"] == modes["report.md"] == modes["det.plan"] == modes["det.errors.png"], modes


def test_cached_run_restores_pictures_and_splits_the_summary(detector_run):
    folder, runs = detector_run
    second = runs[1].stdout
    assert "all stages cached" in second
    rep = json.loads((folder / "out" / "report.json").read_text())
    assert rep["pictures"]["status"] == "made" and (folder / "out" / "det.detections.png").exists()
    # stages and artifacts in tables of their own: no stage row names an artifact
    stage_rows = [line for line in second.splitlines() if re.match(r"[│|]\s*(source|passes|build)\s*[│|]", line)]
    assert stage_rows and not any(".onnx" in line or ".plan" in line for line in stage_rows)
    assert re.search(r"[│|]\s*det\.plan\s*[│|]", second)
    # per-pass lines carry their node change (no passes here: the summary says so in the caption)
    assert "nodes" not in second.split("artifacts")[0] or "->" in second


def test_markdown_writes_a_shared_reason_once():
    reason = "produced by the post-processing model after `nms: split` (see detections)"
    rows = [{"output": f"detection_{k}", "status": "skipped", "reason": reason} for k in "abcd"]
    rows.append({"output": "raw", "status": "passed", "statistic": "max", "atol": 0.01, "rtol": 0.01,
                 "value": 0.001, "value_rel": 0.2, "bound": "abs", "reason": None})
    rep = {"recipe": {"name": "m", "path": "/nowhere/recipes/m.yaml", "sha256": "0" * 64},
           "backend": {"name": "tensorrt_rtx", "version": "1.7.1.116", "compute_capabilities": ["8.9"]},
           "source": {"kind": "onnx", "nodes": 3, "opset": 17, "path": "/nowhere/models/m.onnx"},
           "build": {"memory": None, "num_layers": 3, "warnings": []}, "passes": [],
           "validation": {"status": "passed", "comparisons": [{"name": "source-ort vs final-ort", "status": "passed",
                                                               "outputs": rows}]},
           "timings_s": {}, "artifacts": {}, "tools": {}}
    md = to_markdown(rep)
    assert md.count(reason.split(" (")[0]) == 1
    assert md.count("skipped (note 1)") == 4 and "1. produced by the post-processing model" in md
    assert "- source: onnx `../models/m.onnx`" in md and "/nowhere" not in md


def test_passes_help_is_complete_and_wrapped():
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "passes", "nms"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    long = [line for line in text.splitlines() if len(line) > 80 and " " in line.strip()]
    assert not long, long  # wrapped at the terminal's width (a single over-long word may stand alone)
    from trtpipe import registry
    registry.load_all()
    info = registry.get("nms")
    words = lambda s: re.findall(r"[A-Za-z_][A-Za-z0-9_./-]*", s)  # noqa: E731
    missing = set(words(info.doc)) - set(words(text))
    assert not missing, f"docstring words lost: {sorted(missing)[:10]}"
    for name in info.schema["properties"]:
        assert re.search(rf"^  {re.escape(name)}( \*)?  ", text, re.M), name
    assert not re.search(r"\w…|\.\.\.$", text.split("Parameters")[1])  # no cut cells
    assert all(len(w) < 60 for line in text.splitlines() for w in line.split())  # no word split or glued


def test_spinner_and_third_party_output(tmp_path, capsys):
    import io
    import warnings

    from trtpipe.console import UI, UIConsole
    buf = io.StringIO()
    ui = UI(stream=buf)
    ui.out = UIConsole(file=buf, force_terminal=True, width=100)
    with ui.working("converting with tf2onnx"):
        time.sleep(0.3)
    assert "converting with tf2onnx" in buf.getvalue() and "0:00:00" in buf.getvalue()
    quiet = UI(stream=io.StringIO())
    quiet.out = UIConsole(file=io.StringIO(), force_terminal=False)
    with quiet.working("x"):
        pass
    assert quiet.out.file.getvalue() == ""  # CI logs: no spinner frames

    for verbose in (False, True):
        out = io.StringIO()
        ui = UI(stream=out, verbose=verbose)
        with ui.third_party_to_log():
            print("[W] 'colored' module is not installed, will not use colors when logging.")
            with warnings.catch_warnings():  # each iteration shows it (not once per location)
                warnings.simplefilter("always")
                np.array([0.0]) / np.array([0.0])
        shown = out.getvalue()
        assert "colored" not in capsys.readouterr().out  # never on the console itself
        if verbose:
            assert "library output: [W] 'colored' module is not installed" in shown
            assert "RuntimeWarning" in shown and "invalid value encountered in divide" in shown, shown
        else:
            assert shown == ""


def test_cache_verify_keeps_use_times_and_prune_asks(tmp_path, run_cli, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TRTPIPE_CACHE_DIR", str(cache_dir))
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = write_recipe(tmp_path / "t.yaml", "name: t\nsource: {onnx: tiny.onnx}\nvalidate: {enabled: false}\n"
                                               "output: {dir: out}\n")
    assert run_cli(recipe, "-q")[0] == 0
    manifests = sorted(cache_dir.glob("entries/*/*/*/manifest.json"))
    assert manifests
    old = time.time() - 40 * 86400
    for m in manifests:
        os.utime(m, (old, old))
    code, out, _ = run_cli("cache", "info", "--verify")
    assert code == 0 and "all entries intact (last-use times unchanged)" in out
    assert all(abs(m.stat().st_mtime - old) < 1 for m in manifests)  # checking is not using
    code, out, _ = run_cli("explain", recipe)
    assert code == 0 and "cached" in out
    assert all(abs(m.stat().st_mtime - old) < 1 for m in manifests)  # nor is explain's look at the cache
    code, out, err = run_cli("cache", "prune")
    assert code == 2 and "say `--all`" in err and all(m.exists() for m in manifests)
    code, out, _ = run_cli("cache", "prune", "--older-than", "30d")
    assert code == 0 and f"removed {len(manifests)} entries unused for 30d" in out


def test_fmt_and_docs_check_say_what_they_checked(run_cli, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = run_cli("fmt", "--check", "recipes/effdet.yaml", "recipes/zoo-resnet50.yaml")
    assert code == 0 and "fmt --check: 2 recipe(s) checked, 2 canonically formatted" in out
    code, out, err = run_cli("docs", "--check")
    assert code == 0, err
    assert "docs --check: up to date: docs/passes.md, docs/recipe.md, schemas/recipe.editor.schema.json" in out


def test_explain_shows_only_the_modes_parameters(run_cli):
    code, out, _ = run_cli("explain", REPO / "recipes" / "effdet.yaml")
    assert code == 0
    nms = out[out.index("- pass: nms"):out.index("- pass: fold_constants")]
    assert "mode: split" in nms
    for other in ("class_offset", "plugin_domain", "max_candidates", "top_k", "score_bits"):
        assert other not in nms, other


def test_documentation_references_resolve():
    """Every docs/*.md a document names exists (setup.cfg, README.md, docs/), and the README
    documents the `trt-pipeline` console script setup.cfg installs."""
    texts = {p: p.read_text() for p in [REPO / "README.md", REPO / "setup.cfg", *sorted((REPO / "docs").glob("*.md"))]}
    for path, text in texts.items():
        for name in re.findall(r"\bdocs/([\w.-]+\.md)\b", text):
            assert (REPO / "docs" / name).is_file(), f"{path.name} names docs/{name}"
        for link in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", text):  # markdown links
            assert (path.parent / link).is_file(), f"{path.name} links {link}"
    assert "trt-pipeline = trtpipe.cli:entry" in texts[REPO / "setup.cfg"]
    assert "console script `trt-pipeline`" in texts[REPO / "README.md"]
