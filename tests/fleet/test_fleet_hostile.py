"""build-all and `cache info|prune` against hostile input: absurd --jobs, a report directory that
cannot be written, targets that name nothing, --emit-matrix on a recipe that does not load, and
`cache` pointed at a directory that is not a stage cache. Each: exit code, message, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, make_conv_model, write_recipe
from trtpipe import errors
from trtpipe.fleet import command as fleet_command
from trtpipe.fleet import local


@pytest.fixture
def usage(capsys):
    """Run `python pipeline.py ARGS` in-process where argparse exits; returns (exit code, stdout, stderr)."""
    from trtpipe.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def tiny_recipe(tmp_path):
    make_conv_model(tmp_path / "tiny.onnx")
    return write_recipe(tmp_path / "t.yaml", "name: t\nsource: {onnx: tiny.onnx}\nvalidate: {enabled: false}\n"
                                             "output: {dir: out}\n")


@pytest.mark.parametrize("jobs", ["99999999999999999999", "10000000", "0", "-3", "two"])
def test_absurd_jobs_is_a_usage_error(tmp_path, usage, jobs):
    code, _, err = usage("build-all", tiny_recipe(tmp_path), "--jobs", jobs, "--emit-matrix")
    assert code == errors.EXIT_USAGE and "--jobs" in err and "Traceback" not in err


def test_pool_is_no_larger_than_the_tasks(monkeypatch):
    seen = {}

    class Pool:
        def __init__(self, max_workers, **kw):
            seen["workers"] = max_workers

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False
    monkeypatch.setattr(local, "ThreadPoolExecutor", Pool)
    local.run_local([], {}, fleet_command.MAX_JOBS, progress=None, results={})
    assert seen["workers"] == 1


@pytest.mark.parametrize("kind", ["proc", "file", "under-file"])
def test_report_dir_that_cannot_be_written_is_exit_8_before_any_task(tmp_path, run_cli, kind):
    recipe = tiny_recipe(tmp_path)
    (tmp_path / "afile").write_text("x")
    where = {"proc": "/proc/self", "file": tmp_path / "afile", "under-file": tmp_path / "afile" / "sub"}[kind]
    code, out, err = run_cli("build-all", recipe, "--targets", "8.9", "--report-dir", where)
    assert code == errors.EXIT_OUTPUT and f"--report-dir {where}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # no task ran
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("targets, says", [
    ("nan", "neither a compute capability"), ("", "an empty target"), ("8.6,,8.9", "an empty target"),
    ("gpu", "neither a compute capability"), ("8.7", "did you mean"),
    ("sm89", "did you mean '8.9'"), ("Lfour", "neither")])
def test_bad_targets_are_usage_errors(tmp_path, usage, targets, says):
    code, out, err = usage("build-all", tiny_recipe(tmp_path), "--targets", targets, "--emit-matrix")
    assert code == errors.EXIT_USAGE and says in err and out == ""


def test_gpu_kinds_with_a_digit_are_targets(tmp_path, run_cli):
    code, out, _ = run_cli("build-all", tiny_recipe(tmp_path), "--targets", "8.9,A100,L4", "--emit-matrix")
    assert code == 0 and '"target":"A100"' in out and '"target":"L4"' in out


def test_emit_matrix_on_a_recipe_that_does_not_load_is_exit_3(tmp_path, run_cli):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    code, out, err = run_cli("build-all", fifo, "--emit-matrix")
    assert code == errors.EXIT_RECIPE and str(fifo) in err and "FIFO" in err and out == ""
    bad = write_recipe(tmp_path / "bad.yaml", "name: bad\nsource: {onnx: x.onnx}\nbogus: 1\n")
    code, out, err = run_cli("build-all", bad, "--targets", "8.9", "--emit-matrix")
    assert code == errors.EXIT_RECIPE and "bad.yaml" in err and out == ""


def test_no_traceback_from_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "build-all", str(tiny_recipe(tmp_path)),
                           "--jobs", "99999999999999999999"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "OverflowError" not in proc.stderr


def test_cache_commands_refuse_a_directory_that_is_not_a_cache(tmp_path, run_cli):
    d = tmp_path / "notacache"
    thesis = d / "entries" / "source" / "d" / "thesis.txt"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("years of work")
    for action in (["prune", "--all"], ["info"], ["prune", "--older-than", "1s"]):
        code, out, err = run_cli("cache", *action, "--cache-dir", d)
        assert code == errors.EXIT_OUTPUT and f"{d} is not a trt-pipeline cache" in err and "Traceback" not in err
    assert thesis.read_text() == "years of work" and sorted(p.name for p in d.iterdir()) == ["entries"]
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli("cache", "prune", "--all", "--cache-dir", tmp_path / "afile")
    assert code == errors.EXIT_OUTPUT and "is a regular file, not a directory" in err
    code, out, _ = run_cli("cache", "prune", "--all", "--cache-dir", tmp_path / "missing")
    assert code == 0 and "is empty" in out


def test_prune_of_a_real_cache_without_trash_touches_only_its_own_entries(tmp_path, run_cli, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TRTPIPE_CACHE_DIR", str(cache_dir))
    assert run_cli(tiny_recipe(tmp_path), "-q")[0] == 0
    assert (cache_dir / "trt-pipeline-cache.json").is_file()  # the marker every run writes
    stray = cache_dir / "entries" / "source" / "d" / "thesis.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("mine")
    import shutil
    shutil.rmtree(cache_dir / "trash")
    entries = list(cache_dir.glob("entries/*/??/*/manifest.json"))
    code, out, err = run_cli("cache", "prune", "--all")
    assert code == 0 and f"removed {len(entries)} entries" in out and "Traceback" not in err
    assert not list(cache_dir.glob("entries/*/??/*/manifest.json")) and stray.read_text() == "mine"


def test_plugins_hostile_usage_is_exit_2(usage):
    code, _, err = usage("plugins", "--backend", "foo")
    assert code == errors.EXIT_USAGE and "invalid choice: 'foo'" in err
