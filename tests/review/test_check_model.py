"""`check` knows the model: names in passes, profiles and validation settings are checked against
the source model's inputs, outputs, tensors and nodes, read without weights (ONNX) and without
TensorFlow (SavedModel); results print as text, JSON or GitHub annotations.

Recipes are copies of the shipped ones with one name broken, written into tmp_path; the models
are the committed demo SavedModel and ONNX models this file builds.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtpipe import registry
from trtpipe.review.model_check import PASS_NAMES
from trtpipe.review.model_names import ModelReadError, read_onnx, read_saved_model

REPO = pathlib.Path(__file__).resolve().parents[2]
SAVED_MODEL = REPO / "models" / "effdet_demo" / "saved_model"


def _recipe(tmp_path, name, edit=lambda t: t, file=None):
    """A copy of recipes/NAME.yaml in tmp_path (paths made absolute), edited by `edit`."""
    text = (REPO / "recipes" / f"{name}.yaml").read_text().replace("../", str(REPO) + "/")
    path = tmp_path / (file or f"{name}.yaml")
    path.write_text(edit(text))
    return path


def _boxes_typo(text):
    return text.replace("boxes: raw_detection_boxes", "boxes: raw_detection_boxez")


def _line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _big_model(path, weights_mb=24, external=False):
    """Conv -> Relu -> Identity(named) with a `weights_mb` MB initializer, optionally external."""
    w = np.random.default_rng(0).standard_normal((weights_mb * 2**18,)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "big_weight"),
             numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "conv_w")]
    nodes = [helper.make_node("Conv", ["image", "conv_w"], ["conv_out"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu0"),
             helper.make_node("ReduceSum", ["big_weight"], ["wsum"], name="sum0", keepdims=0),
             helper.make_node("Add", ["relu_out", "wsum"], ["scores"], name="add0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, path)
    return path


# ------------------------------------------------------------------------------ reading names

def test_read_onnx_names_match_onnx_and_skip_the_weights(tmp_path):
    path = _big_model(tmp_path / "big.onnx")
    assert path.stat().st_size > 24 * 2**20
    tracemalloc.start()
    names = read_onnx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20, f"read_onnx held {peak} bytes: it read the weights"  # 24 MB of weights on disk
    model = onnx.load(path)
    g = model.graph
    tensors = {i.name for i in g.initializer} | {t for n in g.node for t in [*n.input, *n.output]}
    assert names.tensors == tensors | {"image", "scores"}
    assert names.nodes == {"conv0", "relu0", "sum0", "add0"}
    assert names.initializers == {"big_weight", "conv_w"}
    assert list(names.inputs) == ["image"] and names.inputs["image"].dtype == "float32"
    assert names.inputs["image"].shape == ("n", 3, 8, 8)
    assert list(names.outputs) == ["scores"]


def test_read_onnx_never_opens_external_data(tmp_path):
    path = _big_model(tmp_path / "ext.onnx", weights_mb=1, external=True)
    (tmp_path / "ext.onnx.data").unlink()  # gone: reading names must not need it
    names = read_onnx(path)
    assert "big_weight" in names.tensors and list(names.inputs) == ["image"]
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(ModelReadError, match="junk.onnx: not a readable ONNX model"):
        read_onnx(tmp_path / "junk.onnx")


def test_read_saved_model_signature_without_tensorflow():
    """saved_model.pb is decoded field by field; TensorFlow (which takes seconds to import) stays out."""
    code = ("import sys, json\n"
            "for m in ('tensorflow', 'tf2onnx', 'keras'): sys.modules[m] = None\n"
            "from trtpipe.review.model_names import read_saved_model\n"
            f"n = read_saved_model({str(SAVED_MODEL)!r})\n"
            "print(json.dumps({'inputs': {k: [v.dtype, v.shape] for k, v in n.inputs.items()},"
            " 'outputs': {k: [v.dtype, v.shape] for k, v in n.outputs.items()}, 'aliases': n.aliases,"
            " 'signatures': n.signatures}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["signatures"] == ["serving_default"]
    assert got["inputs"] == {"input_tensor": ["uint8", [1, None, None, 3]]}
    assert got["outputs"]["raw_detection_boxes"] == ["float32", [1, 12096, 4]]
    assert got["outputs"]["raw_detection_scores"] == ["float32", [1, 12096, 6]]
    assert sorted(got["outputs"]) == ["detection_boxes", "detection_classes", "detection_scores",
                                      "num_detections", "raw_detection_boxes", "raw_detection_scores"]
    assert got["aliases"]["serving_default_input_tensor:0"] == "input_tensor"


def test_read_saved_model_lists_what_exists():
    with pytest.raises(ModelReadError, match=r"no MetaGraph with tag set 'gpu' .* available: 'serve'"):
        read_saved_model(SAVED_MODEL, tags="gpu")
    with pytest.raises(ModelReadError, match=r"signature 'serving' not in .*available: serving_default"):
        read_saved_model(SAVED_MODEL, signature="serving")


def test_every_builtin_pass_declares_the_names_it_reads():
    """A new pass must say which parameters name tensors/inputs/nodes (model_check.PASS_NAMES),
    and every declared parameter exists in its schema."""
    registry.load_all()
    builtin = {i.name: i for i in registry.all_passes() if i.origin.startswith("passes.")}
    assert sorted(set(builtin) - set(PASS_NAMES)) == []
    for name, refs in PASS_NAMES.items():
        if name not in builtin:
            continue
        schema = builtin[name].schema
        for path, _ in refs:
            node = schema
            for part in path:
                if part in ("[]", "{}", "{}="):
                    continue
                props = node.get("properties") or {}
                if part not in props:  # plugin's inputs[] items are oneOf string / {tensor}
                    props = {k: v for alt in (node.get("items") or {}).get("oneOf", [])
                             for k, v in (alt.get("properties") or {}).items()}
                assert part in props, f"{name}: {path} not in its schema"
                node = props[part]


# ------------------------------------------------------------------------------ check

def test_check_finds_misspelled_tensor_names_before_conversion(run_cli, tmp_path):
    path = _recipe(tmp_path, "effdet", _boxes_typo)
    code, _, err = run_cli("check", path)
    assert code == 3
    line = _line_of(path, "raw_detection_boxez")
    assert (f"{path}:{line}:7: passes[3] nms: boxes: no tensor 'raw_detection_boxez' (did you mean "
            f"'raw_detection_boxes'?): it is not in the SavedModel's signature 'serving_default'") in err
    assert "Traceback" not in err

    # a name in the source graph (ONNX): tensors and nodes come from the file itself
    path = _recipe(tmp_path, "zoo-resnet50", lambda t: t.replace(
        "  - pass: cleanup", "  - pass: set_outputs\n    params: {outputs: [gpu_0/res5_2_branch2c_bnn]}\n"
                             "  - pass: remove_nodes\n    params: {names: [no_such_node]}\n  - pass: cleanup"))
    code, _, err = run_cli("check", path)
    assert code == 3
    assert "set_outputs: outputs[0]: no tensor 'gpu_0/res5_2_branch2c_bnn' (did you mean " in err
    assert "in the source model light_resnet50.onnx" in err
    assert re.search(r"remove_nodes: names\[0\]: no node 'no_such_node'", err)


def test_check_follows_renames_and_inputs(run_cli, tmp_path):
    def edit(text):
        return (text.replace("      name: input_tensor\n", "      name: input_tensor\n      rename: image\n")
                .replace("  - pass: replace_preprocessing\n    params:\n",
                         "  - pass: replace_preprocessing\n    params:\n      input: input_tensor\n")
                .replace('  compute_capabilities: ["8.9"]\n', '  compute_capabilities: ["8.9"]\n  profiles:\n'
                         '    - name: one\n      inputs:\n        input_tensor: {min: [1, 256, 256, 3], '
                         'opt: [1, 256, 256, 3], max: [1, 256, 256, 3]}\n'
                         '    - name: two\n      inputs:\n        image: {min: [1, 256, 256, 3], '
                         'opt: [2, 256, 256, 3], max: [2, 256, 256, 3]}\n')
                .replace("    seed: 7\n", "    seed: 7\n    inputs:\n      imagee: {range: [0, 255]}\n"))
    path = _recipe(tmp_path, "effdet", edit)
    code, _, err = run_cli("check", path)
    assert code == 3
    assert ("passes[1] replace_preprocessing: input: no graph input 'input_tensor' here (an earlier pass "
            "renamed it to 'image'); inputs: image") in err
    assert ("build.profiles[0].inputs.input_tensor: profile 'one' names input 'input_tensor', which the final "
            "model does not have (an earlier pass renamed it to 'image'); its inputs after the passes: image") in err
    assert ("build.profiles[1].inputs.image.opt: profile 'two': axis 0 of input 'image' is static (1) but opt "
            "gives 2") in err
    assert "validate.data.inputs.imagee: no input 'imagee' (did you mean 'image'?)" in err


def test_check_saved_model_signature_and_tags(run_cli, tmp_path):
    path = _recipe(tmp_path, "effdet", lambda t: t.replace("  opset: 17\n", "  opset: 17\n  tag: serve,gpu\n"))
    code, _, err = run_cli("check", path)
    assert code == 3 and "source.tag: no MetaGraph with tag set 'gpu,serve'" in err and "available: 'serve'" in err
    path = _recipe(tmp_path, "effdet", lambda t: t.replace(
        "  opset: 17\n", "  opset: 17\n  outputs: [raw_detection_boxes, raw_detecton_scores]\n"))
    code, _, err = run_cli("check", path)
    assert code == 3
    assert ("source.outputs[1]: 'raw_detecton_scores' (did you mean 'raw_detection_scores'?) is not in the "
            "signature 'serving_default'") in err
    # names only conversion can confirm (TensorFlow scopes, tf2onnx's generated names) are left to the run
    path = _recipe(tmp_path, "effdet", lambda t: t.replace(
        "  - pass: fold_constants\n", "  - pass: set_outputs\n    params: {outputs: [raw_detection_boxes, "
        "'StatefulPartitionedCall/EfficientDet-Demo/model/fpn/out_p5/Conv2D:0']}\n  - pass: fold_constants\n"))
    code, out, err = run_cli("check", path)
    assert code == 0, err


def test_check_shipped_recipes_are_clean_and_fast(run_cli):
    code, out, err = run_cli("check", REPO / "recipes")
    assert code == 0, err
    assert "error" not in err


def test_check_github_annotations_fast_and_without_tensorflow(tmp_path):
    """The CI path: a broken recipe gives an inline annotation at its line, in under 5 s, with
    TensorFlow never imported (python -X importtime lists every module imported)."""
    broken = _recipe(tmp_path, "effdet", _boxes_typo)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "pipeline.py"), "check", "--format",
                           "github", str(broken), str(REPO / "recipes" / "effdet-tensorrt.yaml"),
                           str(REPO / "recipes" / "effdet.yaml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    took = time.perf_counter() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert took < 5, f"check took {took:.1f} s"
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert "onnx" in imported  # -X importtime did list the imports
    assert not imported & {"tensorflow", "tf2onnx", "keras"}
    line = _line_of(broken, "raw_detection_boxez")
    annotations = [ln for ln in proc.stdout.splitlines() if ln.startswith("::error ")]
    assert len(annotations) == 1
    head = f"::error file={broken},line={line},col=7,title=trt-pipeline check::passes[3] nms: boxes: no tensor"
    assert annotations[0].startswith(head), annotations
    assert "\n" not in annotations[0] and "%0A" not in annotations[0]
    assert "::warning file=" in proc.stdout and "EfficientNMS_TRT is deprecated" in proc.stdout
    assert "ok " + str(REPO / "recipes" / "effdet.yaml") in proc.stdout


def test_check_json_and_format_usage(run_cli, tmp_path):
    broken = _recipe(tmp_path, "effdet", lambda t: t.replace("name: input_tensor", "name: input_tensr"))
    code, out, _ = run_cli("check", "--format", "json", broken, REPO / "recipes" / "zoo-resnet50.yaml")
    assert code == 3
    data = json.loads(out)
    assert (data["exit_code"], data["checked"], data["ok"], data["with_problems"]) == (3, 2, 1, 1)
    bad = data["recipes"][0]
    assert bad["ok"] is False and bad["path"] == str(broken)
    assert bad["errors"] == [{"severity": "error", "file": str(broken), "line": _line_of(broken, "input_tensr"),
                              "col": 7, "message": "passes[0] set_input: name: no graph input 'input_tensr' (did "
                                                   "you mean 'input_tensor'?) here; inputs: input_tensor"}]
    assert data["recipes"][1]["ok"] is True and data["recipes"][1]["errors"] == []
    # a recipe that does not load: each of its errors located
    code, out, _ = run_cli("check", "--format", "json", REPO / "tests" / "fixtures" / "recipes" / "bad_schema.yaml")
    errors = json.loads(out)["recipes"][0]["errors"]
    assert [(e["line"], e["col"]) for e in errors] == [(14, 1), (17, 3)]
    assert errors[0]["message"].startswith("buld: unknown key 'buld' (did you mean 'build'?)")
    with pytest.raises(SystemExit) as exc:
        run_cli("check", "--format", "recipes/")
    assert exc.value.code == 2


def test_check_deprecated_plugin_and_missing_backend(run_cli, tmp_path):
    from trtpipe.backend import installed_backends
    trt = REPO / "recipes" / "effdet-tensorrt.yaml"
    code, out, err = run_cli("check", trt)
    assert code == 0, err
    line = _line_of(trt, "mode: efficient_nms")
    assert (f"warning: {trt}:{line}:7: passes[3] nms: mode: EfficientNMS_TRT is deprecated in TensorRT, with no "
            "replacement plugin planned; `nms: {mode: native}` keeps ONNX NonMaxSuppression, which TensorRT "
            "imports as its built-in INMSLayer") in err
    if "tensorrt" in installed_backends():
        pytest.skip("TensorRT is installed: its backend checks run")
    assert f"warning: {trt}: skipped: backend checks (tensorrt is not installed here" in err
    code, _, err = run_cli("check", "--strict-backend", trt)
    assert code == 3
    assert f"{trt}:{_line_of(trt, 'backend: tensorrt')}:3: build.backend: backend checks need tensorrt" in err


def test_diff_formats(run_cli, tmp_path):
    old = _recipe(tmp_path, "effdet", file="old.yaml")
    new = _recipe(tmp_path, "effdet", lambda t: t.replace("workspace: 2GiB", "workspace: 4GiB")
                  .replace("  - pass: fix_resize\n", ""), file="new.yaml")
    code, out, _ = run_cli("diff", "--format", "json", old, new)
    assert code == 0
    (record,) = json.loads(out)
    by_key = {c["key"]: c for c in record["changes"]}
    assert by_key["build.workspace"]["detail"] == "2GiB -> 4GiB"
    assert by_key["build.workspace"]["reruns"] == ["build", "publish"]
    removed = next(c for c in record["changes"] if c["kind"] == "removed")
    assert removed["subject"] == "passes[2] fix_resize"
    code, out, _ = run_cli("diff", "--format", "github", old, new)
    notices = [ln for ln in out.splitlines() if ln.startswith("::notice ")]
    line = _line_of(new, "workspace: 4GiB")
    assert (f"::notice file={new},line={line},col=3,title=recipe diff%3A re-runs build%2C publish::changed "
            "build.workspace: 2GiB -> 4GiB") in notices
    assert "stages that re-run:" in out  # the text diff follows, for the log


@pytest.mark.parametrize("name", ["effdet", "roialign", "zoo-resnet50"])
def test_check_model_matches_what_the_source_really_has(name):
    """ONNX sources: the inputs and outputs are exactly what onnx reads (initializers are not
    inputs); SavedModels: the signature's keys, which tf2onnx gives the converted graph's inputs
    and outputs (never TF tensor names like `x:0`)."""
    from trtpipe.recipe.load import load_recipe
    from trtpipe.review.model_names import read_source
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml")
    names = read_source(recipe.data["source"])
    if names.kind == "onnx":
        model = onnx.load(recipe.data["source"]["onnx"], load_external_data=False)
        assert list(names.inputs) == [i.name for i in model.graph.input
                                      if i.name not in {t.name for t in model.graph.initializer}]
        assert list(names.outputs) == [o.name for o in model.graph.output]
    else:
        assert names.inputs and names.outputs
        assert all(":" not in n for n in [*names.inputs, *names.outputs])


def test_reading_names_is_quick_for_large_models(tmp_path):
    path = _big_model(tmp_path / "big.onnx", weights_mb=64)
    start = time.perf_counter()
    read_onnx(path)
    assert time.perf_counter() - start < 0.5
    os.remove(path)


def test_readme_github_actions_workflow_annotates_and_summarizes(tmp_path):
    """The README's reusable workflow, its review job's steps run with bash in a git repository
    where one recipe was broken and one changed: annotations on stdout, the diff in the summary."""
    import shutil

    import yaml
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "name: recipes" in b)
    workflow = yaml.safe_load(block)
    steps = {s.get("name"): s for s in workflow["jobs"]["review"]["steps"]}
    git = shutil.which("git")
    if not git:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    for name in ("effdet", "zoo-resnet50"):
        (repo / "recipes" / f"{name}.yaml").write_text(
            (REPO / "recipes" / f"{name}.yaml").read_text().replace("../", str(REPO) + "/"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": str(REPO), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    for cmd in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "recipes"]):
        subprocess.run([git, *cmd], cwd=repo, check=True, env=env)
    subprocess.run([git, "update-ref", "refs/remotes/origin/main", "HEAD"], cwd=repo, check=True, env=env)
    broken = repo / "recipes" / "effdet.yaml"
    broken.write_text(_boxes_typo(broken.read_text()))
    zoo = repo / "recipes" / "zoo-resnet50.yaml"
    zoo.write_text(zoo.read_text().replace("workspace: 1GiB", "workspace: 2GiB"))

    def step(name):
        script = steps[name]["run"].replace("${{ github.base_ref }}", "main").replace(
            "python pipeline.py", f"{sys.executable} {REPO / 'pipeline.py'}")
        return subprocess.run(["bash", "-e", "-c", script], cwd=repo, capture_output=True, text=True, env=env,
                              timeout=120)
    check = step("check (annotations on the diff)")
    assert check.returncode != 0  # the job fails on the broken recipe
    line = _line_of(broken, "raw_detection_boxez")
    assert f"::error file=recipes/effdet.yaml,line={line},col=7,title=trt-pipeline check::passes[3] nms: boxes" \
        in check.stdout
    diff = step("diff (job summary)")
    assert diff.returncode == 0, diff.stderr
    assert "::notice file=recipes/zoo-resnet50.yaml," in diff.stdout and "build.workspace: 1GiB -> 2GiB" in diff.stdout
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("### Recipe changes\n~~~text\n") and "changed  build.workspace: 1GiB -> 2GiB" in summary
    assert "::notice" not in summary


def test_build_caches_the_backend_does_not_use(run_cli, tmp_path, rtx):
    """TensorRT-RTX has no timing cache (check warns, the run ignores it); build.runtime_cache is
    its replacement, resolved against the recipe and used only where a GPU runs the plan."""
    path = _recipe(tmp_path, "zoo-resnet50", lambda t: t.replace(
        "  backend: auto", "  backend: tensorrt_rtx\n  timing_cache: t.cache\n  runtime_cache: kernels.rtxcache"))
    text = path.read_text()
    assert "timing_cache: t.cache" in text, text
    code, _, err = run_cli("check", path)
    assert code == 0, err
    assert (f"warning: {path}:{_line_of(path, 'timing_cache')}:3: build.timing_cache: not used with TensorRT-RTX"
            in err)
    code, out, _ = run_cli("explain", path)
    assert f"runtime_cache: {tmp_path / 'kernels.rtxcache'}   # derived: `kernels.rtxcache`, relative to" in out
    assert "not used by tensorrt_rtx (it has no timing cache)" in out

    from trtpipe.stages.build.runtime_cache import engine_or_context
    marker = object()
    with engine_or_context(rtx, marker, None) as target:  # no runtime cache asked: the engine as it is
        assert target is marker
    fifo = tmp_path / "fifo.rtxcache"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="is a FIFO"), engine_or_context(rtx, marker, str(fifo)):
        pass  # refused from stat alone: never opened (it would block), nothing deserialized
