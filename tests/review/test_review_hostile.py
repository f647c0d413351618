"""Hostile review inputs: integer build options past their binding's range, deployment options the
backend refuses statically, non-mapping recipes given to `diff`, and a byte-order mark under `fmt`."""
import subprocess

import pytest

from tests.helpers import make_conv_model
from trtpipe.errors import EXIT_RECIPE

BASE = ("name: m\nsource: {{onnx: m.onnx}}\nprecision: fp32\nbuild:\n  workspace: 256MiB\n  {extra}\n"
        "output:\n  dir: out\n")


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_conv_model(tmp_path / "m.onnx")

    def write(extra, name="r.yaml"):
        (tmp_path / name).write_text(BASE.format(extra=extra))
        return name
    return write


@pytest.mark.parametrize("extra, maximum", [
    ("max_aux_streams: 99999999999", "2147483647"),
    ("timeout: 1000000000", "2147483"),
    ("profiles: [{name: p, inputs: {x: {min: [1,3,8,8], opt: [1,3,8,8], max: [99999999999999999999,3,8,8]}}}]",
     "9223372036854775807"),
])
def test_build_numbers_past_the_bindings_range_are_refused_at_their_line(recipe, run_cli, extra, maximum):
    code, _, err = run_cli("check", recipe(extra))
    assert code == EXIT_RECIPE, err
    assert "r.yaml:6:" in err and f"greater than the maximum of {maximum}" in err
    code, _, err = run_cli(recipe(extra), "--quiet")
    assert code == EXIT_RECIPE and "Traceback" not in err and f"maximum of {maximum}" in err


@pytest.mark.parametrize("extra, key, text", [
    ("hardware_compatibility_level: ampere_plus", "hardware_compatibility_level", "not supported by TensorRT-RTX"),
    ("version_compatible: true", "version_compatible", "libnvinfer_lean"),
])
def test_options_tensorrt_rtx_refuses_fail_check_and_the_run_before_conversion(recipe, run_cli, tmp_path, extra,
                                                                               key, text):
    code, out, err = run_cli("check", recipe(extra))
    assert code == EXIT_RECIPE, out + err
    assert f"r.yaml:6:3: build.{key}:" in err and text in err
    code, _, err = run_cli(recipe(extra), "--quiet")
    assert code == EXIT_RECIPE and f"r.yaml:6:3: build.{key}:" in err
    assert not (tmp_path / "out" / "m.plan").exists()


def test_version_compatible_with_exclude_lean_runtime_still_checks_ok(recipe, run_cli):
    code, out, err = run_cli("check", recipe("version_compatible: true\n  exclude_lean_runtime: true"))
    assert code == 0, out + err


@pytest.mark.parametrize("text, what", [("", "recipe is empty"), ("- a\n- b\n", "got a list"),
                                        ("just a string\n", "got a single value")])
@pytest.mark.parametrize("side", ["old", "new"])
def test_diff_refuses_a_document_that_is_not_a_mapping(recipe, run_cli, tmp_path, text, what, side):
    good = recipe("optimization_level: 3")
    (tmp_path / "bad.yaml").write_text(text)
    code, out, err = run_cli("diff", *(["bad.yaml", good] if side == "old" else [good, "bad.yaml"]))
    assert code == EXIT_RECIPE, out + err
    assert "bad.yaml:1:1:" in err and what in err and "mapping" in err


def test_diff_git_refuses_a_symlink_held_by_the_revision(recipe, run_cli, tmp_path):
    good = recipe("optimization_level: 3")
    (tmp_path / "link.yaml").symlink_to(good)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "."], check=True)
    subprocess.run(["git", "add", good, "link.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (tmp_path / "link.yaml").unlink()
    (tmp_path / "link.yaml").write_text((tmp_path / good).read_text())
    code, out, err = run_cli("diff", "--git", "HEAD", "link.yaml")
    assert code == EXIT_RECIPE, out + err
    assert "symbolic link in HEAD" in err and "mapping" in err and "diff --git HEAD" in err


def test_fmt_names_a_byte_order_mark_escaped_and_drops_it(recipe, run_cli, tmp_path):
    name = recipe("optimization_level: 3")
    body = (tmp_path / name).read_text()
    (tmp_path / "bom.yaml").write_text("\ufeff" + body)
    code, out, err = run_cli("check", "bom.yaml")
    assert code == 0, out + err  # a BOM is accepted, as PyYAML and a run accept it
    code, out, err = run_cli("fmt", "--check", "bom.yaml")
    assert code == EXIT_RECIPE
    assert "\ufeff" not in out + err and "\\uFEFF" in err and "byte-order mark" in err and "fmt drops" in err
    code, _, _ = run_cli("fmt", "bom.yaml")
    assert code == 0 and (tmp_path / "bom.yaml").read_text() == body
