"""Packaging: the wheel ships every package and schema, a plain (non-editable) install works from
any directory, and the review commands run without TensorFlow, ONNX Runtime, Polygraphy or a
TensorRT backend (what `pip install .` and the pre-commit hooks get: the core only).

The wheel is built once per module (`pip wheel --no-build-isolation`, no network) from a copy of
the sources, so nothing is written into the checkout; the install goes into a venv with
--system-site-packages, so the core dependencies come from this environment, not from PyPI.
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Everything the [all] extra adds that a review command might import by mistake.
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnxruntime", "polygraphy", "PIL", "tensorrt", "tensorrt_rtx",
         "tensorrt_rtx_bindings", "tensorrt_rtx_libs", "onnxruntime_ep_nv_tensorrt_rtx")
# Runs trtpipe's command line with HEAVY unimportable (`import x` raises ImportError), as where
# they are not installed. argv: the command line after `trt-pipeline`.
BLOCKED = ("import sys\n"
           f"for name in {HEAVY!r}:\n"
           "    sys.modules[name] = None\n"
           "sys.argv = ['trt-pipeline', *sys.argv[1:]]\n"
           "from trtpipe.cli import entry\n"
           "entry()\n")
SKIPPED = "skipped: backend checks (no TensorRT or TensorRT-RTX installed: pip install 'trt-pipeline[all]')"
# recipes/effdet-tensorrt.yaml names `backend: tensorrt`: its backend checks are skipped wherever TensorRT is missing
SKIPPED_TRT = "skipped: backend checks (tensorrt is not installed here: pip install 'trt-pipeline[tensorrt]')"


def _skipped(name):
    """(the ok line's backend note, the skipped line) `check` prints for recipe `name` without any backend."""
    if name == "effdet-tensorrt.yaml":  # also warns that EfficientNMS_TRT is deprecated
        return "(tensorrt not installed: backend checks skipped; 1 warning(s))", SKIPPED_TRT
    return "(no backend installed: backend checks skipped)", SKIPPED
SUBPACKAGES = sorted(str(p.parent.relative_to(REPO)).replace(os.sep, ".")
                     for p in (REPO / "trtpipe").rglob("__init__.py"))
PASS_SCHEMAS = sorted(p.name for p in (REPO / "schemas" / "passes").glob("*.schema.json"))


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", NO_COLOR="1", COLUMNS="200", **extra)
    return env


def _run(cmd, cwd, timeout=120):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env())
    return proc.returncode, proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------ static facts

def test_readme_commands_and_ci():
    """README's first line installs everything and runs the flagship; .ci/run runs its second verbatim."""
    lines = (REPO / "README.md").read_text().split("```bash\n", 1)[1].splitlines()
    assert lines[0] == 'pip install -e ".[all]" && python pipeline.py recipes/effdet.yaml'
    assert lines[1].startswith('pip install -e ".[test]" && ') and "ruff check ." in lines[1]
    assert lines[1].endswith("python -m pytest -q")
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == lines[1], ".ci/run must run README's test command verbatim"


def test_extras_split_core_from_the_pipeline():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    names = lambda text: {re.split(r"[<>=!\[ ]", r.strip())[0].lower() for r in text.splitlines() if r.strip()}  # noqa: E731
    core = names(cfg["options"]["install_requires"])
    extras = {k: names(v) for k, v in cfg["options.extras_require"].items()}
    assert core == {"numpy", "onnx", "onnx-graphsurgeon", "pyyaml", "ruamel.yaml", "jsonschema", "rich"}
    assert {"tensorflow-cpu", "tf2onnx", "onnxruntime", "polygraphy", "pillow", "tensorrt-rtx-cu13-bindings",
            "onnxruntime-ep-nv-tensorrt-rtx-cu13"} <= extras["all"]
    assert not core & extras["all"]
    assert {"trt-pipeline", "pytest", "ruff"} <= extras["test"] and "tensorrt" in extras["tensorrt"]
    assert "trt-pipeline[all]" in cfg["options.extras_require"]["test"]


def test_pre_commit_hooks_show_skipped_checks():
    import yaml
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    check = hooks["trt-pipeline-check"]
    assert check["language"] == "python" and "additional_dependencies" not in check  # the core only
    assert check["verbose"] is True  # pre-commit shows a passing hook's output only when verbose


# ------------------------------------------------------------------------------------------- wheel

@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of the working tree, built from a copy of its sources (the checkout stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    src, dist = base / "src", base / "dist"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "pipeline.py", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for name in ("trtpipe", "passes", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    code, out, err = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", dist, src], cwd=base, timeout=300)
    assert code == 0, out + err
    wheels = list(dist.glob("trt_pipeline-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_ships_every_package_and_schema(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "schemas/__init__.py" in names and "schemas/recipe.schema.json" in names
    assert "schemas/report.schema.json" in names
    assert len(PASS_SCHEMAS) >= 10
    missing = [f"schemas/passes/{n}" for n in PASS_SCHEMAS if f"schemas/passes/{n}" not in names]
    assert not missing, missing
    assert {"trtpipe.review", "trtpipe.stages.build", "trtpipe.recipe", "trtpipe.cache"} <= set(SUBPACKAGES)
    missing = [p for p in SUBPACKAGES if p.replace(".", "/") + "/__init__.py" not in names]
    assert not missing, missing
    for module in (REPO / "trtpipe").rglob("*.py"):
        assert module.relative_to(REPO).as_posix() in names
    assert "passes/nms.py" in names and "pipeline.py" in names
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [line for line in requires if "extra ==" not in line]
    assert not [line for line in core if re.search(r"tensorflow|tf2onnx|onnxruntime|polygraphy|tensorrt", line)]
    assert any("tensorflow-cpu" in line and "extra == \"all\"" in line for line in requires), requires
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "trt-pipeline = trtpipe.cli:entry" in entry_points


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A venv with the wheel installed (not editable); dependencies from this environment."""
    path = tmp_path_factory.mktemp("venv") / "env"
    code, out, err = _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path],
                          cwd=path.parent)
    assert code == 0, out + err
    python = path / "bin" / "python"
    # --system-site-packages reaches the base interpreter's packages; when this environment is itself
    # a venv, its packages are elsewhere: name them in a .pth (plain paths: their own .pth files, such
    # as an editable trt-pipeline's finder, are not run)
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    parent = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    Path(own, "_test_parent_env.pth").write_text("".join(p + "\n" for p in parent))
    # this environment's pip, run by the venv's python, installs into the venv; --ignore-installed: an
    # editable trt-pipeline in this environment must not count as already installed
    code, out, err = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                           wheel], cwd=path.parent, timeout=300)
    assert code == 0, out + err
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory outside the repository with copies of recipes, the demo SavedModels and docs/."""
    root = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(REPO / "recipes", root / "recipes")
    for demo in sorted((REPO / "models").glob("*_demo")):  # every recipe's committed model
        shutil.copytree(demo, root / "models" / demo.name)
    shutil.copytree(REPO / "docs", root / "docs")
    return root


@pytest.mark.slow
def test_installed_wheel_runs_from_anywhere(venv, workdir):
    bin_dir = venv / "bin"
    # the venv's own copy is what runs, not this checkout (nor an editable install of it)
    code, out, err = _run([bin_dir / "python", "-c", "import json, passes, schemas, trtpipe.review.check; "
                           "print(json.dumps([passes.__file__, schemas.__file__, trtpipe.review.check.__file__]))"],
                          cwd=workdir)
    assert code == 0, err
    for path in json.loads(out):
        assert Path(path).resolve().is_relative_to(venv.resolve()), path

    code, out, err = _run([bin_dir / "trt-pipeline", "check", "--fmt", "recipes/effdet.yaml",
                           "recipes/zoo-resnet50.yaml"], cwd=workdir)
    assert code == 0, out + err
    assert re.search(r"^ok recipes/effdet\.yaml \(", out, re.M), out
    assert "checked 2 recipe(s): 2 ok, 0 with problems" in out

    # still fails on what is wrong, with the run's message: the recipe without its model
    broken = workdir / "recipes" / "no-model.yaml"
    broken.write_text((workdir / "recipes" / "effdet.yaml").read_text().replace("effdet_demo/saved_model",
                                                                                  "effdet_demo/saved_modle"))
    code, out, err = _run([bin_dir / "trt-pipeline", "check", "recipes/no-model.yaml"], cwd=workdir)
    assert code == 3, out + err
    assert re.search(r"recipes/no-model\.yaml:\d+:\d+: source\.saved_model: not found: .*saved_modle", err), err
    broken.unlink()

    code, out, err = _run([bin_dir / "trt-pipeline", "passes"], cwd=workdir)
    assert code == 0, err
    for name in PASS_SCHEMAS:
        assert name.removesuffix(".schema.json") in out, name
    code, out, err = _run([bin_dir / "trt-pipeline", "passes", "nms"], cwd=workdir)
    assert code == 0 and "efficient_nms" in out, out + err

    # a plain install has no checkout: `docs` works on ./docs
    code, out, err = _run([bin_dir / "trt-pipeline", "docs", "--check"], cwd=workdir)
    assert code == 0, out + err
    (workdir / "docs" / "passes.md").write_text("old\n")
    code, out, err = _run([bin_dir / "trt-pipeline", "docs", "--check"], cwd=workdir)
    assert code == 3 and "docs/passes.md is stale" in err, out + err
    # writing outside a checkout needs an explicit folder: nobody's docs/ is overwritten by accident
    code, out, err = _run([bin_dir / "trt-pipeline", "docs"], cwd=workdir)
    assert code == 2 and "docs --dir DIR" in err and (workdir / "docs" / "passes.md").read_text() == "old\n"
    code, out, err = _run([bin_dir / "trt-pipeline", "docs", "--dir", "generated"], cwd=workdir)
    assert code == 0 and (workdir / "generated" / "recipe.md").is_file(), out + err


@pytest.mark.slow
def test_installed_wheel_without_heavy_packages(venv, workdir):
    """The pre-commit situation: the installed package with only the core (everything HEAVY is
    unimportable): check passes, saying per recipe which checks it skipped."""
    code, out, err = _run([venv / "bin" / "python", "-c", BLOCKED, "check", "--fmt", "recipes/"], cwd=workdir)
    assert code == 0, out + err
    recipes = sorted(p.name for p in (workdir / "recipes").glob("*.yaml"))
    for name in recipes:
        ok_note, skipped = _skipped(name)
        assert f"ok recipes/{name} {ok_note}" in out, out
        assert f"recipes/{name}: {skipped}" in err, err
    assert err.count("skipped:") == len(recipes), err


# ------------------------------------------------------------------------ review commands, no heavy deps

def _blocked(*args):
    return _run([sys.executable, "-c", BLOCKED, *args], cwd=REPO)


@pytest.mark.slow
def test_check_without_backend_skips_only_backend_checks(tmp_path):
    code, out, err = _blocked("check", "--fmt", "recipes/")
    assert code == 0, out + err
    recipes = sorted(p.name for p in (REPO / "recipes").glob("*.yaml"))
    # effdet-tensorrt.yaml names TensorRT; here its backend checks are skipped, as every recipe's
    assert "effdet-tensorrt.yaml" in recipes
    for name in recipes:
        ok_note, skipped = _skipped(name)
        assert f"ok recipes/{name} {ok_note}" in out, out
        assert f"recipes/{name}: {skipped}" in err, err
    assert f"checked {len(recipes)} recipe(s): {len(recipes)} ok, 0 with problems" in out
    assert "error" not in err

    # everything that needs no backend still fails, with the run's messages
    fixtures = "tests/fixtures/recipes/"
    code, out, err = _blocked("check", "-q", fixtures + "missing_source.yaml", fixtures + "bf16_on_turing.yaml",
                              fixtures + "misspelled_pass.yaml", fixtures + "efficient_nms_on_rtx.yaml")
    assert code == 3, out + err
    assert re.search(r"missing_source\.yaml:\d+:\d+: source\.onnx: not found: .*model_that_is_not_here\.onnx", err)
    # bf16_on_turing names tensorrt_rtx: its compute capabilities apply without the backend installed
    assert re.search(r"bf16_on_turing\.yaml:\d+:\d+: precision bf16 needs BF16 .* includes 7\.5", err), err
    assert "unknown pass 'fold_constant' (did you mean 'fold_constants'?)" in err
    assert (f"{fixtures}efficient_nms_on_rtx.yaml: skipped: backend checks (tensorrt_rtx is not installed here: "
            "pip install 'trt-pipeline[all]')") in err  # its problem needs the backend it names
    assert "checked 4 recipe(s): 1 ok, 3 with problems" in err
    assert out == ""  # -q: only problems (and what was skipped, on stderr)

    # backend: auto leaves the compute capabilities' relevance to the backend: that check is skipped too
    auto = tmp_path / "bf16_auto.yaml"
    auto.write_text((REPO / fixtures / "bf16_on_turing.yaml").read_text().replace("backend: tensorrt_rtx",
                                                                                  "backend: auto"))
    code, out, err = _blocked("check", str(auto))
    assert code == 0, out + err
    assert (f"{auto}: skipped: backend checks, precision targets (no TensorRT or TensorRT-RTX installed: "
            "pip install 'trt-pipeline[all]')") in err


@pytest.mark.slow
def test_review_commands_without_heavy_packages():
    code, out, err = _blocked("fmt", "--check", "recipes/")
    n = len(list((REPO / "recipes").glob("*.yaml")))
    assert (code, out, err) == (0, f"fmt --check: {n} recipe(s) checked, {n} canonically formatted\n", "")
    code, out, err = _blocked("fmt", "--check", "tests/fixtures/recipes/unformatted.yaml")
    assert code == 3 and "not canonically formatted" in err, out + err

    code, out, err = _blocked("diff", "recipes/effdet.yaml", "recipes/effdet-tensorrt.yaml")
    assert code == 0, out + err
    assert re.search(r"changed\s+passes\[3\] nms: params\.mode: split -> efficient_nms", out), out
    assert "stages reused (unchanged inputs): source, passes[0..2]" in out

    code, out, err = _blocked("explain", "recipes/effdet.yaml")
    assert code == 0, out + err
    assert out.startswith("# explain ") and "  saved_model: " in out
    assert re.search(r"^\s*\d+\. build\s+would run\s+cannot build here: no TensorRT backend can be imported", out,
                     re.M), out
    assert "problems (" not in out  # nothing but the missing backend, which `check` skips

    code, out, err = _blocked("docs", "--check")
    assert (code, err) == (0, ""), out + err

    code, out, err = _blocked("passes", "fix_resize")
    assert code == 0 and "fix_resize" in out, out + err
