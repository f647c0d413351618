"""Hostile recipe text (issue 12, part A): every command that reads a recipe (`run`, `check`, `fmt`,
`explain`, `diff`) ends a bomb within seconds and bounded memory, refuses YAML a recipe may not
use with exit 3 and `file:line:col`, never prints a traceback, never reads user text as rich
markup, and `fmt` never writes an invisible character raw.

The bombs run as real `python pipeline.py` processes under an address-space limit (RLIMIT_AS,
2 GiB), so that a regression fails the test instead of taking the machine; everything else runs
the CLI in-process (`run_cli`), under an alarm so that a FIFO that blocks fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from tests.helpers import REPO, make_conv_model
from trtpipe.errors import EXIT_OK, EXIT_RECIPE, EXIT_SOURCE
from trtpipe.recipe.yamlmarks import MAX_ALIAS_NODES, MAX_DEPTH, MAX_NODES, MAX_RECIPE_BYTES, load_yaml_with_marks

BASE = "name: t\nsource:\n  onnx: tiny.onnx\noutput:\n  dir: out\n"
MEMORY = 2 << 30     # RLIMIT_AS of the bomb processes
SECONDS = 20.0       # per process, start-up (about 1 s for check, 3 s for run here) included


def _laughs() -> str:
    """~300 bytes that expand to 10^9 list items (the "billion laughs")."""
    text = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for prev, name in zip("abcdefgh", "bcdefghi"):
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 10)}]\n"
    return BASE + text


def _flood() -> str:
    """Just under the size limit, all of it keys: more than MAX_NODES nodes."""
    lines, size, i = [BASE], len(BASE), 0
    while size < MAX_RECIPE_BYTES - 64:
        line = f"k{i}: {i}\n"
        lines.append(line)
        size, i = size + len(line), i + 1
    return "".join(lines)


BOMBS = {  # name -> (text, message fragment)
    "billion_laughs": (_laughs(), "aliases expand to more than"),
    "lines_400k": (BASE + "".join(f"k{i}: {i}\n" for i in range(400_000)), "recipe is too large"),
    "one_line_3mb": (BASE + "description: " + "x" * 3_000_000 + "\n", "recipe is too large"),
    "nesting_20000": (BASE + "description: " + "[" * 20_000 + "]" * 20_000 + "\n", "nesting deeper than 64"),
    "nested_maps_5000": (BASE + "d: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n", "nesting deeper than 64"),
    "node_flood": (_flood(), f"more than {MAX_NODES} keys, values and list items"),
}


def _cap_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def _pipeline(cwd: Path, *args: str) -> tuple[int, str, float]:
    """(exit code, stdout + stderr, wall seconds) of `python pipeline.py ARGS` under the memory cap."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, preexec_fn=_cap_memory, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


@contextlib.contextmanager
def _within(seconds: float):
    """Fail with TimeoutError instead of hanging (a blocking open of a FIFO is interrupted too)."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def folder(tmp_path):
    make_conv_model(tmp_path / "tiny.onnx")
    return tmp_path


def _all_commands(run_cli, path: Path, seconds: float = 10.0) -> dict:
    """{command: (code, output)} of run, check, fmt --check, fmt, explain and diff on `path`."""
    results = {}
    argvs = {"run": [path], "check": ["check", path], "fmt --check": ["fmt", "--check", path],
             "fmt": ["fmt", path], "explain": ["explain", path], "diff": ["diff", path, path]}
    for name, argv in argvs.items():
        with _within(seconds):
            code, out, err = run_cli(*argv)
        results[name] = (code, out + err)
    return results


# -- limits: size, nesting, aliases, node count --------------------------------------------------------------

@pytest.mark.parametrize("name", BOMBS)
def test_bomb_loader_refuses_fast(name):
    """The loader itself refuses each bomb in well under a second's work (no process start-up here)."""
    text, fragment = BOMBS[name]
    start = time.process_time()
    with pytest.raises(Exception) as err:
        load_yaml_with_marks(text, "r.yaml")
    assert type(err.value).__name__ == "RecipeError"
    assert fragment in str(err.value)
    assert time.process_time() - start < 3.0


@pytest.mark.parametrize("name", ["billion_laughs", "lines_400k", "nesting_20000", "node_flood"])
def test_bomb_run_ends_in_seconds_and_bounded_memory(folder, name):
    text, fragment = BOMBS[name]
    (folder / "r.yaml").write_text(text)
    code, out, seconds = _pipeline(folder, "r.yaml")
    assert code == EXIT_RECIPE, out[-2000:]
    assert fragment in out and "Traceback" not in out
    assert seconds < SECONDS
    assert not (folder / "out").exists()


@pytest.mark.parametrize("command", [["check"], ["fmt", "--check"], ["fmt"], ["explain"]],
                         ids=["check", "fmt-check", "fmt", "explain"])
def test_bombs_in_review_commands_end_in_seconds(folder, command):
    """Every bomb in one `check` / `fmt` process (explain takes one recipe: the worst, the node flood)."""
    names = ["node_flood"] if command == ["explain"] else list(BOMBS)
    for name in names:
        (folder / f"{name}.yaml").write_text(BOMBS[name][0])
    before = {n: (folder / f"{n}.yaml").read_bytes() for n in names}
    code, out, seconds = _pipeline(folder, *command, *[f"{n}.yaml" for n in names])
    assert code == EXIT_RECIPE, out[-2000:]
    assert "Traceback" not in out
    for name in names:
        assert f"{name}.yaml" in out and BOMBS[name][1] in out
        assert (folder / f"{name}.yaml").read_bytes() == before[name]  # fmt wrote nothing
    assert seconds < SECONDS * (2 if len(names) > 1 else 1)


def test_alias_limits(folder, run_cli):
    """Aliases are fine within the limit; a cycle and an alias nesting past MAX_DEPTH are refused."""
    ok = BASE + "build:\n  profiles:\n    - name: a\n      inputs: &in {x: {min: [1, 3, 8, 8], opt: [1, 3, 8, 8], " \
                "max: [1, 3, 8, 8]}}\n    - name: b\n      inputs: *in\n"
    data, _ = load_yaml_with_marks(ok, "r.yaml")
    assert data["build"]["profiles"][1]["inputs"] == data["build"]["profiles"][0]["inputs"]
    cases = {
        "cycle": (BASE + "description: &a [1, *a]\n", "r.yaml:6:21: alias *a is used inside its own anchor &a"),
        "deep_alias": (BASE + "x: &a " + "[" * (MAX_DEPTH - 4) + "]" * (MAX_DEPTH - 4) + "\n"
                       + "y: [[[[[*a]]]]]\n", "alias *a nests its value deeper than 64 levels"),
        "just_over": (BASE + f"a: &a [{', '.join(['1'] * 100)}]\n"
                      + f"b: [{', '.join(['*a'] * (MAX_ALIAS_NODES // 101 + 1))}]\n",
                      f"aliases expand to more than {MAX_ALIAS_NODES} nodes"),
    }
    for name, (text, fragment) in cases.items():
        path = folder / f"{name}.yaml"
        path.write_text(text)
        for command, (code, out) in _all_commands(run_cli, path).items():
            assert code == EXIT_RECIPE, (name, command, out)
            assert fragment.replace("r.yaml", str(path)) in out, (name, command, out)
            assert "Traceback" not in out


# -- files that are not regular files ------------------------------------------------------------------------

def test_special_files_are_refused_without_reading(folder, run_cli):
    os.mkfifo(folder / "fifo.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    (folder / "dir.yaml").mkdir()
    expected = {"fifo.yaml": "FIFO", "zero.yaml": "character device", "dir.yaml": "directory"}
    for name, fragment in expected.items():
        results = _all_commands(run_cli, folder / name, seconds=5.0)
        for command, (code, out) in results.items():
            if name == "dir.yaml" and command in ("check", "fmt", "fmt --check"):
                continue  # a folder is a folder of recipes to these: its *.yaml files (none here)
            assert code == EXIT_RECIPE, (name, command, out)
            assert "Traceback" not in out
            assert str(folder / name) in out and fragment in out, (name, command, out)
            if name != "dir.yaml":
                assert "regular file" in out, (name, command, out)
    assert (folder / "fifo.yaml").is_fifo() and (folder / "zero.yaml").is_symlink()


def test_not_utf8_and_control_characters_point_at_the_byte(folder, run_cli):
    cases = {"latin1.yaml": (BASE.encode() + b"description: caf\xe9\n", ":6:17: not UTF-8 text: byte 0xe9"),
             "nul.yaml": (BASE.encode() + b"description: a\x00b\n", ":6:15: YAML syntax error: character U+0000"),
             "bidi.yaml": (BASE.encode() + "description: a\u202eb\n".encode(),
                           ":6:15: raw bidirectional control character U+202E (RIGHT-TO-LEFT OVERRIDE)")}
    for name, (data, fragment) in cases.items():
        (folder / name).write_bytes(data)
        for command, (code, out) in _all_commands(run_cli, folder / name).items():
            assert code == EXIT_RECIPE, (name, command, out)
            assert f"{folder / name}{fragment}" in out, (name, command, out)
            assert "Traceback" not in out
        assert (folder / name).read_bytes() == data


# -- YAML a recipe may not use ---------------------------------------------------------------------------------

YAML_CASES = {  # name -> (text after BASE, expected r.yaml:line:col message)
    "python_name": ("description: !!python/name:os.system\n",
                    "r.yaml:6:14: YAML tag '!!python/name:os.system' is not allowed in a recipe"),
    "python_object": ("description: !!python/object/apply:os.system [echo hi]\n",
                      "r.yaml:6:14: YAML tag '!!python/object/apply:os.system' is not allowed"),
    "unknown_tag": ("description: !foo bar\n", "r.yaml:6:14: YAML tag '!foo' is not allowed"),
    "binary_tag": ("description: !!binary aGVsbG8=\n", "r.yaml:6:14: YAML tag '!!binary' is not allowed"),
    "set_tag": ("passes: !!set {a, b}\n", "r.yaml:6:9: YAML tag '!!set' is not allowed"),
    "tag_of_other_kind": ("build: !!map 3\n", "r.yaml:6:8: YAML tag '!!map' cannot tag a plain value"),
    "bad_int": ("build: {optimization_level: !!int three}\n", "r.yaml:6:29: 'three' is not a valid !!int"),
    "bad_bool": ("validate: {bisect: !!bool maybe}\n", "r.yaml:6:20: 'maybe' is not a valid !!bool"),
    "5000_digits": ("build: {optimization_level: " + "9" * 5000 + "}\n",
                    "r.yaml:6:29: '9999999999999999999999999999999999999999...' is not a valid !!int: more than"),
    "merge_key": ("defaults: &d {workspace: 1GiB}\nbuild:\n  <<: *d\n",
                  "r.yaml:8:3: merge keys (`<<`) are not supported in recipes"),
    "list_key": ("? [a, b]\n: 1\n", "r.yaml:6:3: a key must be a plain name, not a list"),
    "map_key": ("build:\n  ? {a: 1}\n  : 2\n", "r.yaml:7:5: a key must be a plain name, not a mapping"),
    "duplicate_key": ("precision: fp32\nprecision: fp16\n",
                      "r.yaml:7:1: duplicate key 'precision' (first defined at r.yaml:6:1)"),
    "two_documents": ("---\nname: u\n", "r.yaml:6:1: a second YAML document starts here; a recipe is one document"),
}


@pytest.mark.parametrize("name", YAML_CASES)
def test_yaml_features_beyond_data_are_recipe_errors(folder, run_cli, name):
    text, message = YAML_CASES[name]
    path = folder / "r.yaml"
    path.write_text(BASE + text)
    for command, (code, out) in _all_commands(run_cli, path).items():
        assert code == EXIT_RECIPE, (command, out)
        assert message.replace("r.yaml", str(path)) in out, (command, out)
        assert "Traceback" not in out
    assert path.read_text() == BASE + text
    assert not (folder / "out").exists()


def test_yaml_12_scalars(folder):
    """`=` (YAML 1.1's value type: a traceback before) and dates are plain strings, as in YAML 1.2;
    explicit core tags are fine where they fit."""
    data, _ = load_yaml_with_marks(BASE + "description: =\nnote: 2024-01-01\nx: !!str 12\ny: !!float 1\n", "r.yaml")
    assert (data["description"], data["note"], data["x"], data["y"]) == ("=", "2024-01-01", "12", 1.0)
    keys, _ = load_yaml_with_marks("1: a\ntrue: b\n7: c\n", "r.yaml")  # keys are names, as written
    assert keys == {"1": "a", "true": "b", "7": "c"}


def test_recipe_errors_are_capped(folder, run_cli):
    path = folder / "r.yaml"
    path.write_text(BASE + "".join(f"unknown{i}: {i}\n" for i in range(120)))
    code, _, err = run_cli("check", path)
    assert code == EXIT_RECIPE
    assert f"{path}: 120 recipe errors:" in err
    assert err.count("unknown key 'unknown") == 50
    assert f"{path}:55:1: unknown49: unknown key" in err  # the first 50 by line
    assert "unknown50:" not in err
    assert "... and 70 more" in err


# -- values -----------------------------------------------------------------------------------------------------

VALUE_CASES = {  # name -> (replace in BASE or append, fragment)
    "name_trailing_newline": ({"name: t": 'name: "t\\n"'}, "r.yaml:1:1: name: expected a name of letters, digits"),
    "name_newline": ({"name: t": 'name: "a\\nb"'}, "got 'a\\nb'"),
    "name_control": ({"name: t": 'name: "a\\x01"'}, "r.yaml:1:1: name: expected a name"),
    "name_markup": ({"name: t": 'name: "[bold]x[/]"'}, "got '[bold]x[/]'"),
    "plan_newline": ({"dir: out": 'dir: out\n  plan: "x.plan\\n"'}, "output.plan: expected a plain file name"),
    "plan_control": ({"dir: out": 'dir: out\n  onnx: "a\\tb.onnx"'}, "output.onnx: expected a plain file name"),
    "quantile_nan": ("validate: {statistic: quantile, quantile: .nan}\n",
                     "r.yaml:6:33: validate.quantile: nan is not a finite number; a quantile is a finite number"),
    "pass_param_nan": ("passes:\n  - pass: replace_preprocessing\n    params: {scale: .nan}\n",
                       "r.yaml:8:14: passes[0].params.scale: nan is not a finite number"),
    "pass_param_inf": ("passes:\n  - pass: nms\n    params: {iou_threshold: -.inf}\n",
                       "passes[0].params.iou_threshold"),
    "workspace_float": ("build: {workspace: 1e99}\n",
                        "r.yaml:6:9: build.workspace: expected a size such as 2GiB, 512MiB, 1.5GB or a whole number "
                        "of bytes (e.g. 2147483648), got the YAML float 1e+99"),
    "workspace_float_whole": ("build: {workspace: 2.0}\n", "got the YAML float 2.0"),
    "workspace_fraction": ("build: {workspace: 1.5}\n", "build.workspace: expected a size"),
    "workspace_bool": ("build: {workspace: true}\n", "build.workspace: expected a size"),
    "workspace_nan": ("build: {workspace: .nan}\n", "build.workspace: expected a size"),
    "workspace_2_70": (f"build: {{workspace: {2 ** 70}}}\n", "more than the builder can be given"),
    "workspace_9999999TiB": ("build: {workspace: 9999999TiB}\n", "more than the builder can be given"),
    "workspace_half_byte": ("build: {workspace: 0.5B}\n", "'0.5B' is 0 bytes"),
}


@pytest.mark.parametrize("name", VALUE_CASES)
def test_bad_values_are_recipe_errors_in_run_and_check(folder, run_cli, name):
    change, fragment = VALUE_CASES[name]
    text = BASE
    if isinstance(change, dict):
        for old, new in change.items():
            text = text.replace(old, new)
    else:
        text += change
    path = folder / "r.yaml"
    path.write_text(text)
    for argv in ([path], ["check", path], ["explain", path]):
        code, out, err = run_cli(*argv)
        assert code == EXIT_RECIPE, (argv, out + err)
        assert fragment.replace("r.yaml", str(path)) in err, (argv, err)
        assert "Traceback" not in out + err
    assert not (folder / "out").exists()


# -- the console never reads user text as markup -----------------------------------------------------------------

def test_markup_in_paths_prints_literally(tmp_path, run_cli):
    folder = tmp_path / "a[/]b[bold]"  # a folder `a[` holding `]b[bold]`
    folder.mkdir(parents=True)
    recipe = folder / "r[/]x[bold].yaml"
    recipe.parent.mkdir()
    make_conv_model(recipe.parent / "m[b].onnx")
    recipe.write_text(BASE.replace("tiny.onnx", "missing[/].onnx"))
    code, out, err = run_cli(recipe)
    assert code == EXIT_SOURCE, err
    assert f"▶ recipe {recipe}" in out  # the stage line, literally
    assert "missing[/].onnx" in err and "Traceback" not in out + err
    code, out, err = run_cli("check", recipe)
    assert code == EXIT_RECIPE and "missing[/].onnx" in err
    recipe.write_text(BASE.replace("tiny.onnx", "m[b].onnx"))
    code, out, err = run_cli("check", recipe)
    assert code == EXIT_OK, err
    assert f"ok {recipe} (" in out
    code, out, err = run_cli("explain", recipe)
    assert code == EXIT_OK and "m[b].onnx" in out


def test_markup_in_paths_through_a_whole_run(tmp_path, run_cli):
    """Stage lines, the summary table (artifact names) and its caption (output folder) print user
    text literally: `[b]` is not swallowed as bold, `[/]` does not end the run with a MarkupError."""
    folder = tmp_path / "w[/]x"
    folder.mkdir(parents=True)
    make_conv_model(folder / "m[b].onnx")
    recipe = folder / "r[bold].yaml"
    recipe.write_text(BASE.replace("tiny.onnx", "m[b].onnx").replace("dir: out", "dir: out[/]z\n  plan: p[b].plan"))
    code, out, err = run_cli(recipe, "--no-validate")
    assert code == EXIT_OK, err
    flat = " ".join(out.split())
    assert f"▶ recipe {recipe}\n" in out and f" {folder / 'm[b].onnx'}\n" in out  # stage lines
    assert "p[b].plan" in flat
    assert str(folder / "out[/]z") in flat
    assert (folder / "out[/]z" / "p[b].plan").is_file()


def test_markup_in_validation_names_prints_literally():
    """Tensor names come from the model: the validation table prints them as they are."""
    import io

    from trtpipe.console import UI
    from trtpipe.stages.validate.table import print_table
    stream = io.StringIO()
    ui = UI(stream=stream)
    result = {"status": "failed", "comparisons": [
        {"name": "source vs final [p]", "status": "failed", "outputs": [
            {"output": "y[/]", "statistic": "max", "value": 1.0, "value_rel": 1.0, "atol": 0.1, "rtol": 0.1,
             "status": "failed", "reason": "see [bold]x[/]"}]}]}
    print_table(result, ui.out)
    text = stream.getvalue()
    assert "y[/]" in text and "see [bold]x[/]" in text and "source vs final [p]" in text


# -- fmt keeps invisible characters escaped ------------------------------------------------------------------------

INVISIBLE = "\u202e\u200b\u2066\u00a0\u00ad\u2028\u2029\ufeff\u0085\x07\ue000\U000e0041"


def test_fmt_keeps_invisible_characters_escaped(folder, run_cli):
    escaped = "".join(f"\\U{ord(c):08x}" if ord(c) > 0xFFFF else f"\\u{ord(c):04x}" for c in INVISIBLE)
    text = ("output:\n  dir: out\n" + BASE.split("output:")[0]
            + f'description: "all{escaped}end"\n'
            + 'passes:\n  - pass: cleanup\n    note: "zero\\u200bwidth"\n'
            + "validate:\n  outputs:\n    \"y\\u2067\": {atol: 1}\n"
            + "# a comment stays\n")
    path = folder / "r.yaml"
    path.write_text(text, encoding="utf-8")
    code, _, err = run_cli("fmt", path)
    assert code == EXIT_OK, err
    written = path.read_text(encoding="utf-8")
    raw = sorted({f"U+{ord(c):04X}" for c in written if c not in "\n" and unicodedata.category(c)[0] in "CZ"
                  and c != " "})
    assert raw == [], f"raw invisible characters in the formatted file: {raw}\n{written}"
    assert written.startswith("name: t\n")  # it did reorder
    assert "# a comment stays" in written
    before, _ = load_yaml_with_marks(text, "before")
    after, _ = load_yaml_with_marks(written, "after")
    assert after == before and INVISIBLE in after["description"]
    assert run_cli("fmt", "--check", path)[0] == EXIT_OK  # idempotent


def test_fmt_escapes_raw_invisible_characters_and_keeps_other_unicode(folder, run_cli):
    path = folder / "r.yaml"
    path.write_text(BASE + "description: caf\u00e9 \u6f22\u5b57 zero\u200bwidth\n", encoding="utf-8")
    code, _, err = run_cli("fmt", path)
    assert code == EXIT_OK, err
    written = path.read_text(encoding="utf-8")
    assert 'description: "caf\u00e9 \u6f22\u5b57 zero\\u200Bwidth"' in written


def test_fmt_refuses_what_is_not_a_recipe_document(folder, run_cli):
    for name, text, fragment in (("empty.yaml", "", ":1:1: recipe is empty"),
                                 ("list.yaml", "- a\n", ":1:1: a recipe must be a YAML mapping"),
                                 ("scalar.yaml", "just text\n", ":1:1: a recipe must be a YAML mapping")):
        path = folder / name
        path.write_text(text)
        for argv in (["fmt", path], ["fmt", "--check", path], ["check", path], [path]):
            code, out, err = run_cli(*argv)
            assert code == EXIT_RECIPE, (argv, err)
            assert f"{path}{fragment}" in err
        assert path.read_text() == text
