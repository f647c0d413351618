"""Cache keys from declarations: a stage's or pass's key covers exactly the project modules it
imports (computed from import statements, not listed by hand), and recipe values are hashed as
the resolved recipe holds them."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO, make_conv_model, write_recipe
from trtpipe.cache.code import code_digest, import_closure
from trtpipe.cache.keys import STAGE_CODE


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from trtpipe import cache
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


def statuses(out_dir):
    rep = json.loads((out_dir / "report.json").read_text())
    return {stage: v["status"] for stage, v in rep["cache"]["stages"].items()}


# -- the closure itself ---------------------------------------------------------------------------

def test_builtin_pass_closure_follows_its_imports_only():
    closure = import_closure(["passes.nms"])
    # what nms.py imports, directly and through the graph toolkit
    for name in ("passes.nms", "trtpipe.graph.nms_match", "trtpipe.graph.nms_postprocess", "trtpipe.graph.shapes",
                 "trtpipe.registry", "trtpipe.errors"):
        assert name in closure, name
    # other passes and unrelated stages are not dependencies of nms
    for name in ("passes.set_input", "passes.sanitize", "trtpipe.review.fmt", "trtpipe.stages.validate.compare",
                 "trtpipe.stages.passes.runner", "trtpipe.cache.store"):
        assert name not in closure, name


def test_stage_closures_cover_helpers_that_hand_lists_missed():
    # the fp32 twin validation runs on lives in the cached wrapper; the input contract in the runner
    assert "trtpipe.stages.validate.cached" in import_closure(STAGE_CODE["validate"])
    assert "trtpipe.stages.passes.runner" in import_closure(STAGE_CODE["source"])
    assert "trtpipe.stages.precision.quantize" in import_closure(STAGE_CODE["precision"])
    build = import_closure(STAGE_CODE["build"])
    assert "trtpipe.stages.build.plugins" in build and "trtpipe.stages.validate.compare" not in build


def test_unknown_root_is_an_error():
    with pytest.raises(ModuleNotFoundError):
        code_digest(["trtpipe.no_such_module"])


# -- editing code re-runs exactly what depends on it -----------------------------------------------

PASS_MODULE = '''
"""Scale the graph output by a factor from a helper module."""
import numpy as np
import onnx_graphsurgeon as gs

from trtpipe import PassContext, register_pass
from {pkg}.factor import FACTOR


@register_pass("{name}", schema={{"type": "object", "additionalProperties": False, "properties": {{}}}})
def scale(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
    out = graph.outputs[0]
    scaled = gs.Variable(out.name + "_scaled", dtype=out.dtype, shape=out.shape)
    graph.nodes.append(gs.Node("Mul", inputs=[out, gs.Constant(out.name + "_k", np.array(FACTOR, np.float32))],
                               outputs=[scaled]))
    graph.outputs = [scaled]
    return graph
'''


@pytest.fixture
def plugin_pass(tmp_path):
    """A third-party pass package, registered through its entry point: scale.py imports factor.py;
    unrelated.py is imported by nothing. Returns (package dir, site dir)."""
    pkg = "acme_closure_passes"
    site = tmp_path / "site"
    root = site / pkg
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "scale.py").write_text(PASS_MODULE.format(pkg=pkg, name="acme_scale"))
    (root / "factor.py").write_text("FACTOR = 1.0\n")
    (root / "unrelated.py").write_text("VALUE = 1\n")
    info = site / "acme_closure_passes-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-closure-passes\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[trt_pipeline.passes]\nacme_scale = {pkg}.scale\n")
    return root, site


def run_process(recipe, site, cache_dir):
    """A run in its own process, as users run it: code edits between runs take effect."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "TRTPIPE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), str(recipe), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return statuses(recipe.parent / "out")


def test_editing_an_imported_module_reruns_that_pass_only(tmp_path, plugin_pass, cache_dir):
    package, site = plugin_pass
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = write_recipe(tmp_path / "tiny.yaml", """
        name: tiny
        source: {onnx: tiny.onnx}
        passes:
          - pass: fold_constants
          - pass: acme_scale
          - pass: cleanup
        validate: {enabled: false}
        output: {dir: out}
        """)
    assert set(run_process(recipe, site, cache_dir).values()) == {"ran"}

    # an unrelated module of the same package: nothing re-runs
    (package / "unrelated.py").write_text("VALUE = 2\n")
    assert set(run_process(recipe, site, cache_dir).values()) == {"cached"}

    # the helper the pass imports: the pass re-runs; the graph it makes is the same (comment only),
    # so the passes after it and the later stages find their entries
    (package / "factor.py").write_text("FACTOR = 1.0  # the same value\n")
    st = run_process(recipe, site, cache_dir)
    assert st.pop("passes[1]") == "ran"
    assert set(st.values()) == {"cached"}

    # a real change in the helper changes the graph: everything after it re-runs
    (package / "factor.py").write_text("FACTOR = 2.0\n")
    st = run_process(recipe, site, cache_dir)
    assert [st[s] for s in ("source", "passes[0]")] == ["cached", "cached"]
    assert [st[s] for s in ("passes[1]", "passes[2]", "precision", "validate", "build")] == ["ran"] * 5


def test_precision_spelled_two_ways_is_one_key(tmp_path, run_cli, cache_dir):
    make_conv_model(tmp_path / "tiny.onnx")
    body = textwrap.dedent("""
        name: tiny
        source: {{onnx: tiny.onnx}}
        passes: []
        precision: {precision}
        validate: {{data: {{seed: 1, iterations: 1}}}}
        output: {{dir: out}}
        """)
    recipe = write_recipe(tmp_path / "tiny.yaml", body.format(precision="fp16"))
    assert run_cli(recipe, "--quiet")[0] == 0
    write_recipe(tmp_path / "tiny.yaml", body.format(precision="{mode: fp16, keep_io_types: true}"))
    code, _, err = run_cli(recipe, "--quiet")
    assert code == 0, err
    assert set(statuses(tmp_path / "out").values()) == {"cached"}
    # a real change of the precision options re-runs precision and what follows
    write_recipe(tmp_path / "tiny.yaml", body.format(precision="{mode: fp16, keep_io_types: false}"))
    code, _, err = run_cli(recipe, "--quiet")
    assert code == 0, err
    st = statuses(tmp_path / "out")
    assert st["source"] == "cached" and st["precision"] == "ran" and st["build"] == "ran"


def test_type_only_imports_are_not_dependencies(tmp_path, monkeypatch):
    pkg = tmp_path / "acme_typing_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "work.py").write_text("from typing import TYPE_CHECKING\n\nfrom acme_typing_pkg import used\n\n"
                                 "if TYPE_CHECKING:\n    from acme_typing_pkg import annotations_only\n"
                                 "else:\n    from acme_typing_pkg import fallback\n")
    for name in ("used", "annotations_only", "fallback"):
        (pkg / f"{name}.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    closure = import_closure(["acme_typing_pkg.work"])
    assert sorted(closure) == ["acme_typing_pkg", "acme_typing_pkg.fallback", "acme_typing_pkg.used",
                               "acme_typing_pkg.work"]


def test_a_pass_package_importing_its_own_top_level_helper(tmp_path, monkeypatch):
    """A pass package that imports a separate top-level module on the user's path: that module is
    code the pass depends on (no library version in the key stands for it)."""
    (tmp_path / "acme_pass_pkg").mkdir()
    (tmp_path / "acme_pass_pkg" / "__init__.py").write_text("")
    (tmp_path / "acme_pass_pkg" / "scale.py").write_text("import json\n\nimport acme_side_helper\n")
    (tmp_path / "acme_side_helper.py").write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    closure = import_closure(["acme_pass_pkg.scale"])
    assert "acme_side_helper" in closure and "json" not in closure  # the stdlib is not project code
    before = code_digest(["acme_pass_pkg.scale"])
    (tmp_path / "acme_side_helper.py").write_text("SCALE = 2.0\n")
    assert code_digest(["acme_pass_pkg.scale"]) != before


def test_profiles_are_part_of_validation_and_build_keys(tmp_path, run_cli, cache_dir):
    """Validation compares at every profile corner, so a profile edit re-runs it (and the build), and
    `diff` says so."""
    make_conv_model(tmp_path / "tiny.onnx", dynamic_batch=True)
    body = textwrap.dedent("""
        name: tiny
        source: {{onnx: tiny.onnx}}
        passes: []
        build:
          profiles:
            - {{name: p, inputs: {{x: {{min: [1, 3, 8, 8], opt: [2, 3, 8, 8], max: [{hi}, 3, 8, 8]}}}}}}
        output: {{dir: out}}
        """)
    old = write_recipe(tmp_path / "old.yaml", body.format(hi=3))
    recipe = write_recipe(tmp_path / "tiny.yaml", body.format(hi=3))
    assert run_cli(recipe, "--quiet")[0] == 0
    write_recipe(tmp_path / "tiny.yaml", body.format(hi=6))
    code, _, err = run_cli(recipe, "--quiet")
    assert code == 0, err
    st = statuses(tmp_path / "out")
    assert (st["source"], st["precision"], st["validate"], st["build"]) == ("cached", "cached", "ran", "ran")
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any(c["name"].endswith("at profile p max") and c["shapes"] == {"x": [6, 3, 8, 8]}
               for c in rep["validation"]["comparisons"])
    code, out, _ = run_cli("diff", old, recipe)
    assert code == 0 and "build.profiles changed -> re-runs validate, build, publish" in out


def test_image_folder_content_is_in_the_validation_and_precision_keys(tmp_path, rtx):
    """`images: {dir: imgs}` has no "/" or "." in its name: its files must still be hashed, or a cached
    "passed" would be reused for other images."""
    from trtpipe.cache.hashing import Hasher
    from trtpipe.cache.keys import Keys
    from trtpipe.recipe.load import load_recipe
    make_conv_model(tmp_path / "tiny.onnx")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"first image")
    path = write_recipe(tmp_path / "r.yaml", """
        name: t
        source: {onnx: tiny.onnx}
        precision: fp16
        validate: {data: {images: {dir: imgs}}}
        output: {dir: out}
        """)
    keys = Keys(load_recipe(path), rtx, Hasher())
    before = (keys.validate("s", "f", {}), keys.precision("i", "s", {}))
    (tmp_path / "imgs" / "a.png").write_bytes(b"another image")
    keys = Keys(load_recipe(path), rtx, Hasher())
    after = (keys.validate("s", "f", {}), keys.precision("i", "s", {}))
    assert before[0] != after[0] and before[1] != after[1]
