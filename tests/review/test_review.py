"""Reviewing recipes without building: check, explain, diff, fmt, docs.

Everything runs on the real recipes in recipes/ and on broken copies of them
(tests/fixtures/recipes/, each stating the messages it must produce in `# expect:` lines, and
copies edited in tmp_path). Nothing here converts a model or builds a plan.
"""

import json
import os
import pathlib
import random
import re
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from trtpipe.errors import RecipeError
from trtpipe.review import commands as review
from trtpipe.review import diff as recipe_diff
from trtpipe.review import explain as explain_mod
from trtpipe.review.fmt import format_text

REPO = pathlib.Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FIXTURES = REPO / "tests" / "fixtures" / "recipes"
FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def _rtx_only():
    """True when `backend: auto` resolves to TensorRT-RTX here (no real TensorRT installed)."""
    from trtpipe.backend import resolve_backend  # a broken backend must fail the tests, not skip them
    return resolve_backend("auto").name == "tensorrt_rtx"


def _expectations(path):
    text = path.read_text()
    return ([m.group(1).strip() for m in re.finditer(r"^# expect: (.*)$", text, re.M)],
            [m.group(1).strip() for m in re.finditer(r"^# expect-format: (.*)$", text, re.M)])


def _message(err):
    """The message of `error (exit N): MESSAGE` output, without the exit-code prefix."""
    return re.sub(r"^error \(exit \d+\): ", "", err.strip())


def _rel(path):
    return os.path.relpath(path, REPO)


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


# ------------------------------------------------------------------------------------------- check

@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda p: p.stem)
def test_check_fixture_corpus(fixture, run_cli, in_repo):
    """Every broken fixture fails with exit 3 and exactly the located messages it declares."""
    expected, expected_format = _expectations(fixture)
    assert expected, f"{fixture.name} declares no `# expect:` line"
    code, out, err = run_cli("check", _rel(fixture))
    if expected == ["ok"]:
        assert code == 0, err
        assert f"ok {_rel(fixture)}" in out
    else:
        assert code == 3, (out, err)
        for needle in expected:
            assert needle in err, f"{needle!r} not in:\n{err}"
        assert "Traceback" not in err
    code, _, err = run_cli("check", "--fmt", _rel(fixture))
    if expected_format:
        assert code == 3
        for needle in expected_format:
            assert needle in err
    elif expected == ["ok"]:
        assert code == 0, err


# The broken fixtures a run refuses quickly (before a conversion or build): the run's message must
# be the one check prints, only the exit code differs (check reports every problem with exit 3).
SAME_AS_RUN = ["bad_schema", "misspelled_pass", "bad_pass_params", "profile_min_gt_max", "duplicate_profiles",
               "yaml_syntax", "missing_source", "missing_saved_model", "efficient_nms_on_rtx",
               "native_nms_on_rtx", "bf16_on_turing", "missing_validation_data"]


@pytest.mark.parametrize("name", SAME_AS_RUN)
def test_check_messages_are_the_runs(name, run_cli, in_repo, tmp_path):
    path = _rel(FIXTURES / f"{name}.yaml")
    if name in ("efficient_nms_on_rtx", "native_nms_on_rtx") and not _rtx_only():
        pytest.skip("needs TensorRT-RTX as the backend")
    run_code, _, run_err = run_cli(path, "-o", tmp_path / "out", "-q")
    check_code, _, check_err = run_cli("check", path)
    assert run_code != 0 and check_code == 3
    assert _message(run_err) in check_err, f"run:\n{run_err}\ncheck:\n{check_err}"
    assert re.search(rf"{re.escape(path)}:\d+:\d+: ", run_err)  # file:line:col
    assert not list((tmp_path / "out").glob("*.plan"))


def test_check_real_recipes(run_cli, in_repo):
    """The shipped recipes are all fine. effdet-tensorrt names `backend: tensorrt`: where TensorRT
    is not installed its backend checks are skipped with a warning (not an error), and it is
    warned about EfficientNMS_TRT's deprecation everywhere."""
    code, out, err = run_cli("check", "--fmt", "recipes")
    assert code == 0, err
    for path in RECIPES:
        assert f"ok recipes/{path.name}" in out
    assert "recipes/effdet-tensorrt.yaml:36:7: passes[3] nms: mode: EfficientNMS_TRT is deprecated" in err
    from trtpipe.backend import installed_backends
    if "tensorrt" not in installed_backends():
        assert ("warning: recipes/effdet-tensorrt.yaml: skipped: backend checks (tensorrt is not installed "
                "here") in err
        code, _, err = run_cli("check", "--strict-backend", "recipes/effdet-tensorrt.yaml")
        assert code == 3 and "build.backend: backend checks need tensorrt (--strict-backend)" in err
    assert f"checked {len(RECIPES)} recipe(s): {len(RECIPES)} ok, 0 with problems" in out
    code, _, _ = run_cli("check", "recipes/effdet.yaml", "recipes/zoo-resnet50.yaml")
    assert code == 0


def test_check_reports_every_recipe_and_every_problem(run_cli, in_repo, tmp_path):
    """One bad recipe does not hide the next; one recipe's independent problems are all listed."""
    text = (REPO / "recipes" / "zoo-resnet50.yaml").read_text()
    text = text.replace("light_resnet50.onnx", "light_resnet5O.onnx").replace(
        "  compute_capabilities: [\"8.9\"]", "  compute_capabilities: [\"8.9\"]\n  plugins: [libnms.so]")
    broken = tmp_path / "two-problems.yaml"
    broken.write_text(text)
    code, out, err = run_cli("check", broken, "recipes/zoo-resnet50.yaml", FIXTURES / "misspelled_pass.yaml")
    assert code == 3
    assert "source.onnx: not found:" in err and "did you mean 'light_resnet50.onnx'" in err
    assert "build.plugins[0]: plugin library" in err and "libnms.so does not exist" in err
    assert "unknown pass 'fold_constant'" in err
    assert "ok recipes/zoo-resnet50.yaml" in out
    assert "checked 3 recipe(s): 1 ok, 2 with problems" in err


def test_check_warn_backend_only_softens_machine_dependent_problems(run_cli, in_repo, tmp_path):
    if not _rtx_only():
        pytest.skip("needs TensorRT-RTX as the only backend")
    # effdet-tensorrt with `backend: auto`: auto resolves to TensorRT-RTX here, which lacks the plugin
    auto = tmp_path / "effdet-auto.yaml"
    auto.write_text((REPO / "recipes" / "effdet-tensorrt.yaml").read_text().replace("../", str(REPO) + "/")
                    .replace("backend: tensorrt ", "backend: auto "))
    code, _, err = run_cli("check", auto)
    assert code == 3 and f"{auto}:34:5: passes[3] nms: mode efficient_nms needs the EfficientNMS_TRT plugin" in err
    assert "`auto` resolves to tensorrt_rtx" in err
    code, out, err = run_cli("check", "--warn-backend", auto)
    assert code == 0, err
    assert f"warning (--warn-backend): {auto}:34:5: passes[3] nms" in err
    assert f"ok {auto} (tensorrt_rtx 1.7.1; 1 backend warning(s); 1 warning(s))" in out
    # a recipe pinned to tensorrt_rtx fails everywhere TensorRT-RTX is what it names: still an error
    code, _, err = run_cli("check", "--warn-backend", _rel(FIXTURES / "efficient_nms_on_rtx.yaml"))
    assert code == 3 and "error (exit 3)" in err


def test_check_is_fast_and_never_imports_tensorflow():
    code = ("import json, sys, time\n"
            "t = time.perf_counter()\n"
            "from trtpipe.cli import main\n"
            "rc = main(['check', '--fmt', 'recipes', 'tests/fixtures/recipes'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf2onnx', 'keras'))\n"
            "print(json.dumps({'rc': rc, 'heavy': heavy, 's': time.perf_counter() - t}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result
    assert result["rc"] == 3  # the fixtures are broken
    assert result["s"] < 20, f"check of {len(RECIPES) + len(FIXTURE_FILES)} recipes took {result['s']:.1f}s"


def test_check_help_documents_exit_codes(capsys):
    from trtpipe.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["check", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "exit codes:" in text and "0  every recipe is fine" in text and "3  at least one recipe" in text
    assert "FILE:LINE:COL: key.path: message" in text


def test_check_usage_errors(run_cli, tmp_path):
    code, _, err = run_cli("check", tmp_path)  # an empty folder
    assert code == 2 and "no recipe files" in err
    code, _, err = run_cli("check", tmp_path / "nope.yaml")
    assert code == 3 and "recipe file not found" in err


# ------------------------------------------------------------------------------------------- fmt

def _shuffled(text, seed):
    """The same recipe with its top-level sections (but the first) in another order, every pass
    item's `params` before its `pass`, and block params reversed. Comments move with the key below them."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if re.match(r"[A-Za-z_]", line))
    header, blocks, current, pending = lines[:first], [], [], []
    for line in lines[first:]:
        if re.match(r"[A-Za-z_]", line):
            if current:
                blocks.append(current)
            current, pending = pending + [line], []
        elif line.startswith("#"):
            pending.append(line)
        else:
            current += pending + [line]
            pending = []
    blocks.append(current + pending)
    # comments above the first key are the file header (fmt keeps them on top): keep that key first
    rest = blocks[1:]
    random.Random(seed).shuffle(rest)
    blocks = blocks[:1] + rest
    body = "".join(line for block in blocks for line in block)

    def swap(m):
        head, rest = m.group(1), m.group(2).splitlines(keepends=True)
        if not rest or not rest[0].startswith("    params:"):
            return m.group(0)
        params = rest[1:]
        if all(p.startswith("      ") and not p.startswith("       ") for p in params):
            params = params[::-1]
        return "  - " + rest[0][4:] + "".join(params) + "    " + head + "\n"
    return "".join(header) + re.sub(r"  - (pass: \w+)\n((?:    .*\n)*)", swap, body)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_fmt_real_recipes_are_canonical_and_restored_from_shuffles(path):
    text = path.read_text()
    assert format_text(text) == text, "the shipped recipe is not canonically formatted"
    for seed in range(3):
        shuffled = _shuffled(text, seed)
        assert yaml.safe_load(shuffled) == yaml.safe_load(text)
        if seed == 0:
            assert shuffled != text
        assert format_text(shuffled) == text, f"seed {seed}:\n{shuffled}"


def _comments(text):
    return sorted(line.split("#", 1)[1].strip() for line in text.splitlines() if "#" in line
                  and not re.search(r"['\"][^'\"]*#", line))


def test_fmt_keeps_every_comment_next_to_its_key_and_is_idempotent():
    text = (FIXTURES / "unformatted.yaml").read_text()
    out = format_text(text)
    assert out != text
    assert format_text(out) == out
    assert yaml.safe_load(out) == yaml.safe_load(text)
    assert _comments(out) == _comments(text)
    lines = out.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=../../../schemas/recipe.schema.json"
    assert [line for line in lines if re.match(r"\w", line)] == [
        "name: unformatted", "source:", "passes:", "build:", "output:"]
    # a comment stays right above the key it introduces, end-of-line comments on their key's line
    assert lines[lines.index("source:") - 1] == "# the model"
    assert lines[lines.index("  - pass: fold_constants") - 1] == "  # fold first"
    assert "  backend: auto   # tensorrt where installed" in lines
    assert "  dir: ../../../build/unformatted   # where the artifacts go" in lines
    # pass items: pass, params, enabled, note; params in the pass schema's order (flow style kept)
    assert "    params: {fold_shapes: true, max_rounds: 5}" in lines
    i = lines.index("  - pass: cleanup")
    assert lines[i + 1:i + 5] == ["    params:", "      remove_unused_inputs: false", "      toposort: true",
                                  "    note: drop dead nodes"]


def test_fmt_fuzz_random_comments_keep_data_comments_and_idempotence():
    """Comments and blank lines at random places and indentations in real and fixture recipes:
    fmt keeps the data and every comment (format_text checks both itself) and is idempotent."""
    files = [p for p in RECIPES + FIXTURE_FILES if p.name != "yaml_syntax.yaml"]
    for trial in range(80):
        rnd = random.Random(trial)
        lines = rnd.choice(files).read_text().splitlines()
        for _ in range(rnd.randint(1, 6)):
            i = rnd.randrange(len(lines) + 1)
            what = rnd.random()
            if what < 0.5:
                lines.insert(i, " " * rnd.choice([0, 2, 4, 6, 8]) + f"# c{trial}.{i}")
            elif what < 0.7:
                lines.insert(i, "")
            elif i < len(lines) and lines[i].strip() and "#" not in lines[i]:
                lines[i] += f"  # e{trial}.{i}"
        text = "\n".join(lines) + "\n"
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            continue  # a comment line inside a flow collection or block scalar can break the YAML
        out = format_text(text)
        assert yaml.safe_load(out) == data
        assert _comments(out) == _comments(text), f"trial {trial}"
        assert format_text(out) == out, f"trial {trial}:\n{text}"


def test_fmt_tricky_comments_and_values():
    text = ("# header\n"
            "build:   # builder settings\n"
            "  workspace: 1GiB\n"
            "  profiles:\n"
            "    - inputs:\n"
            "        x: {max: [4, 3], opt: [2, 3], min: [1, 3]}\n"
            "      name: p\n"
            "    # - name: q   (commented-out last entry stays at the end of its list)\n"
            "description: |\n"
            "  # not a comment: block scalar text\n"
            "  second line\n"
            "source: {onnx: \"a#b.onnx\"}   # the model\n"
            "name: 'x'\n"
            "precision: {keep_io_types: false, mode: fp16}\n"
            "passes:\n"
            "- pass: nms\n"
            "  params: {scores: s, mode: split, boxes: b}\n")
    out = format_text(text)
    assert out == ("# header\n"
                   "name: 'x'\n"
                   "description: |\n"
                   "  # not a comment: block scalar text\n"
                   "  second line\n"
                   "source: {onnx: \"a#b.onnx\"}   # the model\n"
                   "passes:\n"
                   "  - pass: nms\n"
                   "    params: {mode: split, boxes: b, scores: s}\n"
                   "precision: {mode: fp16, keep_io_types: false}\n"
                   "build:   # builder settings\n"
                   "  workspace: 1GiB\n"
                   "  profiles:\n"
                   "    - name: p\n"
                   "      inputs:\n"
                   "        x: {min: [1, 3], opt: [2, 3], max: [4, 3]}\n"
                   "    # - name: q   (commented-out last entry stays at the end of its list)\n")
    assert format_text(out) == out


def test_fmt_cli_check_mode_atomic_write_and_permissions(run_cli, tmp_path):
    path = tmp_path / "r.yaml"
    shutil.copy(FIXTURES / "unformatted.yaml", path)
    os.chmod(path, 0o640)
    before = path.read_text()
    code, _, err = run_cli("fmt", "--check", path)
    assert code == 3 and f"{path}:5:1: not canonically formatted" in err
    assert path.read_text() == before
    code, out, _ = run_cli("fmt", path)
    assert code == 0 and f"formatted {path}" in out
    assert path.read_text() == format_text(before)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # no temp file left behind
    assert run_cli("fmt", "--check", path)[0] == 0
    assert run_cli("check", "--fmt", path)[0] == 0
    code, out, _ = run_cli("fmt", path)  # idempotent: nothing to write
    assert code == 0 and "formatted" not in out


def test_fmt_refuses_broken_yaml_with_the_runs_message(run_cli, in_repo, tmp_path):
    path = _rel(FIXTURES / "yaml_syntax.yaml")
    before = (FIXTURES / "yaml_syntax.yaml").read_text()
    code, _, err = run_cli("fmt", path)
    assert code == 3 and f"{path}:10:4: YAML syntax error" in err and "Traceback" not in err
    assert (FIXTURES / "yaml_syntax.yaml").read_text() == before
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: a\nname: b\n")
    with pytest.raises(RecipeError, match=r"dup.yaml:2:1: duplicate key 'name'"):
        format_text(dup.read_text(), dup)


# ------------------------------------------------------------------------------------------- diff

EFFDET = REPO / "recipes" / "effdet.yaml"


def _diff(run_cli, old_text, new_text, tmp_path):
    (tmp_path / "old").mkdir(exist_ok=True)
    (tmp_path / "new").mkdir(exist_ok=True)
    old, new = tmp_path / "old" / "r.yaml", tmp_path / "new" / "r.yaml"
    old.write_text(old_text)
    new.write_text(new_text)
    code, out, err = run_cli("diff", old, new)
    assert code == 0, err
    return out


def test_diff_ignores_comments_key_order_formatting_and_explicit_defaults(run_cli, tmp_path):
    text = EFFDET.read_text()
    same = _shuffled(text, 1).replace("# ", "# (reworded) ")
    same = same.replace("  opset: 17\n", "  opset: 17\n  tag: serve   # the default, written out\n")
    same = same.replace("  - pass: cleanup\n", "  - pass: cleanup\n    params: {toposort: true}\n    enabled: true\n")
    same = same.replace("  workspace: 2GiB", "  workspace: 2048MiB\n  optimization_level: 3")
    same = same.replace("saved_model: ../models/effdet_demo", "saved_model: ../models/./effdet_demo")
    same = same.replace("precision: fp16", "precision: {mode: fp16, keep_io_types: true}")
    out = _diff(run_cli, text, same, tmp_path)
    assert "no semantic changes" in out and "nothing re-runs" in out, out


def test_diff_moved_pass_param_change_and_build(run_cli, tmp_path):
    text = EFFDET.read_text()
    new = text.replace("  - pass: fold_constants\n", "")
    new = new.replace("  - pass: fix_resize\n",
                      "  - pass: fix_resize\n  - pass: fold_constants\n    params: {max_rounds: 10}\n")
    new = new.replace("      mode: split\n", "      mode: split\n      background_class: 0\n")
    new = new.replace("workspace: 2GiB", "workspace: 4GiB")
    out = _diff(run_cli, text, new, tmp_path)
    lines = out.splitlines()
    assert "  moved    passes[3] fold_constants: from passes[4], now between fix_resize and nms" in lines
    assert "  changed  passes[4] nms: params.background_class: -1 (default) -> 0" in lines
    assert "  changed  build.workspace: 2GiB -> 4GiB" in lines
    assert "max_rounds" not in out  # written-out default: no change
    assert ("  passes[3] fold_constants moved -> re-runs passes[3..5], precision, validate, build, publish"
            in lines)
    assert "  build.workspace changed -> re-runs build, publish" in lines
    assert "stages that re-run: passes[3..5], precision, validate, build, publish" in lines
    assert "stages reused (unchanged inputs): source, passes[0..2]" in lines
    assert "removed" not in out and "added" not in out


def test_diff_pass_moved_later_reruns_from_where_it_was(run_cli, tmp_path):
    text = EFFDET.read_text()
    new = text.replace("  - pass: fold_constants\n  - pass: cleanup\n", "  - pass: cleanup\n  - pass: fold_constants\n")
    out = _diff(run_cli, text, new, tmp_path)
    assert "stages that re-run: passes[4..5], precision, validate, build, publish" in out
    assert "stages reused (unchanged inputs): source, passes[0..3]" in out


def test_diff_added_removed_disabled_and_documentation_only(run_cli, tmp_path):
    text = EFFDET.read_text()
    new = text.replace("  - pass: cleanup\n", "")
    new = new.replace("  - pass: fix_resize\n", "  - pass: fix_resize\n    enabled: false\n")
    new = new.replace("  - pass: set_input\n", "  - pass: sanitize\n    params: {max_rounds: 3}\n  - pass: set_input\n")
    out = _diff(run_cli, text, new, tmp_path)
    lines = out.splitlines()
    assert "  added    passes[0] sanitize: now first, before set_input, params {max_rounds: 3}" in lines
    assert "  disabled passes[3] fix_resize: enabled: true -> false" in lines
    assert "  removed  passes[5] cleanup: was last, after fold_constants" in lines
    assert "stages that re-run: passes[0..5], precision, validate, build, publish" in lines
    assert "stages reused (unchanged inputs): source" in lines

    # notes and passes disabled on both sides are documentation: only the report is rewritten
    doc = text.replace("  - pass: fix_resize\n", "  - pass: fix_resize\n    note: TF nearest resizes\n")
    out = _diff(run_cli, text, doc, tmp_path)
    assert "note: (unset) -> TF nearest resizes (documentation only)" in out
    assert "stages that re-run: publish" in out


def test_diff_source_precision_validate_and_output(run_cli, tmp_path):
    text = EFFDET.read_text()
    new = text.replace("opset: 17", "opset: 16")
    new = new.replace("precision: fp16", "precision: {mode: int8, method: percentile}")
    new = new.replace("    seed: 7", "    seed: 8").replace("name: effdet\n", "name: effdet2\n")
    out = _diff(run_cli, text, new, tmp_path)
    lines = out.splitlines()
    assert "  changed  source.opset: 17 -> 16" in lines
    assert "  changed  precision: fp16 -> int8 with {method: percentile}" in lines
    # int8 calibrates on the validation data: a new seed changes the quantized graph too
    assert "  changed  validate.data.seed: 7 -> 8 (precision int8 uses the validation data)" in lines
    assert "  changed  output.plan: effdet.plan (default) -> effdet2.plan (default)" in lines
    assert "  source.opset changed -> re-runs source, passes[0..5], precision, validate, build, publish" in lines
    assert "stages reused (unchanged inputs): none" in lines

    only_validate = text.replace("    iterations: 2", "    iterations: 3").replace("precision: fp16", "precision: fp32")
    out = _diff(run_cli, text.replace("precision: fp16", "precision: fp32"), only_validate, tmp_path)
    assert "stages that re-run: validate, publish" in out


def test_diff_git_revision(run_cli, tmp_path):
    git = shutil.which("git")
    if not git:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    recipe = repo / "recipes" / "effdet.yaml"
    recipe.write_text(EFFDET.read_text())
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "recipe"]):
        subprocess.run([git, *cmd], cwd=repo, check=True, env=env)
    recipe.write_text(_shuffled(EFFDET.read_text(), 2))
    code, out, _ = run_cli("diff", "--git", "HEAD", recipe)
    assert code == 0 and "no semantic changes" in out and f"{recipe}@HEAD -> {recipe}" in out
    recipe.write_text(EFFDET.read_text().replace("scores: raw_detection_scores", "scores: raw_detection_scores\n"
                                                 "      class_agnostic: true"))
    code, out, _ = run_cli("diff", "--git", "HEAD", recipe)
    assert code == 0
    assert "  changed  passes[3] nms: params.class_agnostic: false (default) -> true" in out
    assert "stages that re-run: passes[3..5], precision, validate, build, publish" in out
    # a recipe the revision does not have, several recipes at once
    added = repo / "recipes" / "zoo.yaml"
    added.write_text((REPO / "recipes" / "zoo-resnet50.yaml").read_text())
    code, out, _ = run_cli("diff", "--git", "HEAD", recipe, added)
    assert code == 0 and "new recipe (not in HEAD): every stage runs" in out and "class_agnostic" in out
    code, _, err = run_cli("diff", "--git", "no-such-rev", recipe)
    assert code == 3 and "--git no-such-rev: not a git revision" in err
    code, _, err = run_cli("diff", "--git", "HEAD", tmp_path / "elsewhere.yaml")
    assert code == 3 and "not inside a git work tree" in err


def test_diff_usage_and_read_errors(run_cli, tmp_path):
    assert run_cli("diff", EFFDET)[0] == 2
    code, _, err = run_cli("diff", EFFDET, tmp_path / "missing.yaml")
    assert code == 3 and "missing.yaml: recipe file not found" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n  source: y\n")
    code, _, err = run_cli("diff", EFFDET, bad)
    assert code == 3 and "bad.yaml:2:" in err and "YAML syntax error" in err
    # a recipe that parses but does not validate is still diffed, with a warning
    typo = tmp_path / "typo.yaml"
    typo.write_text(EFFDET.read_text().replace("pass: cleanup", "pass: claenup"))
    code, out, _ = run_cli("diff", EFFDET, typo)
    assert code == 0
    assert "warning: new recipe has 1 recipe error(s), e.g. passes[5].pass: unknown pass 'claenup'" in out
    assert "  removed  passes[5] cleanup: was last, after fold_constants" in out
    assert "  added    passes[5] claenup: now last, after fold_constants, default params" in out


def test_diff_api_stage_plan():
    text = EFFDET.read_text()
    old, new = yaml.safe_load(text), yaml.safe_load(text.replace("fp16", "bf16"))
    d = recipe_diff.diff_recipes(old, new)
    assert [c.subject for c in d.changes] == ["precision"]
    assert d.reruns == ["precision", "validate", "build", "publish"]
    assert d.reused == ["source"] + [f"passes[{i}]" for i in range(6)]
    assert recipe_diff.compress(["source", "passes[0]", "passes[1]", "passes[3]"]) == ["source", "passes[0..1]",
                                                                                     "passes[3]"]


# ------------------------------------------------------------------------------------------- explain

def test_explain_effdet_marks_defaults_and_derived_values(run_cli, in_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("TRTPIPE_CACHE_DIR", str(tmp_path / "empty-cache"))  # other tests fill the shared one
    code, out, err = run_cli("explain", "recipes/effdet.yaml")
    assert code == 0, err
    lines = out.splitlines()
    assert f"  saved_model: {REPO / 'models/effdet_demo/saved_model'}   # derived: " \
           f"`../models/effdet_demo/saved_model`, relative to the recipe" in lines
    assert "  tag: serve   # default" in lines
    assert "  opset: 17" in lines  # written in the recipe: no mark
    assert "      shape: [1, 256, 256, 3]" in lines
    assert "      cast_back: true   # default" in lines
    assert "    enabled: true   # default" in lines
    assert "  mode: fp16" in lines and "  keep_io_types: true   # default" in lines
    assert "  atol: 0.01   # derived: the default for precision fp16" in lines
    assert "    iou_threshold: 0.9   # derived: the default for precision fp16" in lines
    assert "  workspace: 2GiB   # derived: 2147483648 bytes" in lines
    assert f"  dir: {REPO / 'build/effdet'}   # derived: `../build/effdet`, relative to the recipe" in lines
    assert "  plan: effdet.plan   # derived: default `<name>.plan`, <name> expanded" in lines
    if _rtx_only():
        assert any(line.startswith("  backend: auto   # derived: resolves to tensorrt_rtx") for line in lines)
    # canonical key order, as fmt writes it
    top = [line.split(":")[0] for line in lines[:lines.index("")] if re.match(r"\w", line)]
    assert top == ["name", "description", "source", "passes", "precision", "validate", "build", "output"]
    # the stage plan: every stage, no cache yet
    assert "stage plan (stage cache: `cached` stages are reused, the others run)" in lines
    plan = [line for line in lines if re.match(r"\s*\d+\. ", line)]
    assert [line.split()[1] for line in plan] == ["source"] + [f"passes[{i}]" for i in range(6)] + [
        "precision", "validate", "build", "publish"]
    assert all(line.split()[2:4] == ["would", "run"] for line in plan)  # the tests' cache starts empty
    assert "imports TensorFlow" in plan[0] and "nms: Make the NMS" in plan[4]
    assert "effdet.postprocess.onnx" in plan[-1]
    assert "problems" not in out


def test_explain_cache_status_hook(run_cli, in_repo, monkeypatch):
    from trtpipe.recipe.load import load_recipe
    status = explain_mod.cache_status(load_recipe("recipes/zoo-resnet50.yaml"))
    assert list(status) == ["source", "passes[0]", "passes[1]", "precision", "validate", "build", "publish"]
    assert set(status.values()) <= {"cached", "would run"} and status["publish"] == "would run"
    monkeypatch.setattr(explain_mod, "cache_status", lambda recipe: {"source": "cached", "passes[0]": "cached"})
    code, out, _ = run_cli("explain", "recipes/zoo-resnet50.yaml")
    assert code == 0
    plan = {line.split()[1]: line.split()[2] for line in out.splitlines() if re.match(r"\s*\d+\. ", line)}
    assert plan == {"source": "cached", "passes[0]": "cached", "passes[1]": "runs", "precision": "runs",
                    "validate": "runs", "build": "runs", "publish": "runs"}


def test_explain_disabled_pass_and_problems(run_cli, in_repo, tmp_path):
    text = (REPO / "recipes" / "effdet-tensorrt.yaml").read_text().replace("../", str(REPO) + "/")
    text = text.replace("  - pass: fix_resize\n", "  - pass: fix_resize\n    enabled: false\n")
    text = text.replace("backend: tensorrt ", "backend: tensorrt_rtx ")  # whose missing plugin explain lists
    path = tmp_path / "r.yaml"
    path.write_text(text)
    code, out, _ = run_cli("explain", path)
    assert code == 0
    assert re.search(r"passes\[2\]\s+skipped\s+fix_resize: .*\[disabled: skipped\]", out)
    if _rtx_only():
        assert "problems (`python pipeline.py check` reports them; a run stops at them):" in out
        assert f"{path}:35:5: passes[3] nms: mode efficient_nms needs the EfficientNMS_TRT plugin" in out


def test_explain_broken_recipe_gives_the_runs_message(run_cli, in_repo):
    path = _rel(FIXTURES / "misspelled_pass.yaml")
    code, _, err = run_cli("explain", path)
    assert code == 3 and f"{path}:8:5: passes[0].pass: unknown pass 'fold_constant'" in err


# ------------------------------------------------------------------------------------------- docs

def test_generated_docs_are_up_to_date():
    """docs/passes.md and docs/recipe.md are generated from the schemas; regenerate with
    `python pipeline.py docs` after changing a schema or a pass docstring."""
    for path, text in review.generated_docs().items():
        assert path.exists(), f"{path} missing: run `python pipeline.py docs`"
        assert path.read_text() == text, f"{path} is stale: run `python pipeline.py docs`"


def test_docs_content_and_stale_detection(run_cli, monkeypatch):
    docs = {p.name: t for p, t in review.generated_docs().items()}
    recipe_md, passes_md = docs["recipe.md"], docs["passes.md"]
    for key in ("`passes[].params`", "`precision.keep_io_types`", "`build.profiles[].inputs.<name>.min` (required)",
                "`validate.outputs.<name>.atol`", "`source.saved_model`", "`output.dir`"):
        assert key in recipe_md
    from trtpipe import registry
    for info in registry.all_passes():
        if info.origin.startswith("passes."):
            assert f"### `{info.name}`" in passes_md
            for name in info.schema.get("properties", {}):
                assert f"| `{name}`" in passes_md
    assert "Checked before any conversion" in passes_md  # nms precheck
    assert all(line.count("|") - line.count("\\|") == 5 for line in recipe_md.splitlines() if line.startswith("| `"))
    assert run_cli("docs", "--check")[0] == 0
    real = review.generated_docs
    monkeypatch.setattr(review, "generated_docs",
                        lambda docs_dir=None: {p: t + "\nnew schema text\n" if p.name == "passes.md" else t
                                 for p, t in real().items()})
    code, _, err = run_cli("docs", "--check")
    assert code == 3 and "docs/passes.md is stale" in err


# ------------------------------------------------------------------------------------------- CI

def test_pre_commit_hooks_and_ci_snippet(tmp_path):
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert hooks["trt-pipeline-check"]["entry"] == "trt-pipeline check --fmt"
    assert hooks["trt-pipeline-fmt"]["entry"] == "trt-pipeline fmt"
    assert "trt-pipeline = trtpipe.cli:entry" in (REPO / "setup.cfg").read_text()
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Reviewing recipes"):]
    snippet = next(line for line in section.splitlines() if "xargs -r python pipeline.py check --fmt" in line)

    # the CI snippet in a repository where one recipe changed (fine) and one was added broken
    git = shutil.which("git")
    if not git:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    (repo / "recipes").mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "zoo-resnet50.yaml", repo / "recipes" / "a.yaml")
    shutil.copy(REPO / "recipes" / "zoo-densenet121.yaml", repo / "recipes" / "b.yaml")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONPATH": str(REPO)}
    for cmd in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "recipes"]):
        subprocess.run([git, *cmd], cwd=repo, check=True, env=env)
    subprocess.run([git, "update-ref", "refs/remotes/origin/main", "HEAD"], cwd=repo, check=True, env=env)
    a = repo / "recipes" / "a.yaml"
    a.write_text(a.read_text().replace("workspace: 1GiB", "workspace: 2GiB"))
    (repo / "recipes" / "b.yaml").unlink()  # deleted recipes are not checked
    cmd = snippet.replace("python pipeline.py", f"{sys.executable} {REPO / 'pipeline.py'}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok recipes/a.yaml" in proc.stdout and "b.yaml" not in proc.stdout + proc.stderr
    shutil.copy(FIXTURES / "misspelled_pass.yaml", repo / "recipes" / "c.yaml")
    subprocess.run([git, "add", "recipes/c.yaml"], cwd=repo, check=True, env=env)
    proc = subprocess.run(["bash", "-c", cmd], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "recipes/c.yaml:8:5: passes[0].pass: unknown pass" in proc.stderr
