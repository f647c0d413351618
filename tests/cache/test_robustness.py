"""Crashes and concurrency, with real processes: SIGKILL at each stage leaves no partial plan or
cache entry and the next run completes; 4 concurrent runs of one recipe give identical outputs
and an intact cache; two cold effdet runs in separate processes (different PYTHONHASHSEED, separate
empty caches) give byte-identical ONNX and plan.

The kills use the test-only hook TRTPIPE_TEST_PAUSE_AT=<stage>: the run prints
`TRTPIPE_TEST_PAUSED <stage>` and sleeps once that stage's output is complete but not committed.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.helpers import REPO, TINY_RECIPE, make_conv_model, write_recipe
from trtpipe import cache

PIPELINE = str(REPO / "pipeline.py")


def env_for(cache_dir, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env[cache.ENV] = str(cache_dir)
    env.pop(cache.PAUSE_ENV, None)
    return env


def run(recipe, out, env):
    proc = subprocess.run([sys.executable, PIPELINE, str(recipe), "-o", str(out), "-q"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "report.json").read_text())


def kill_at(stage, recipe, out, env):
    """Start a run that pauses at `stage`, SIGKILL it there; returns what it printed on stderr."""
    proc = subprocess.Popen([sys.executable, PIPELINE, str(recipe), "-o", str(out), "-q"],
                            env=dict(env, **{cache.PAUSE_ENV: stage}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, proc.kill)  # never hang the suite
    timer.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(f"TRTPIPE_TEST_PAUSED {stage}"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        timer.cancel()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)
    return "".join(lines)


def committed(cache_dir, kind):
    return list((cache_dir / "entries" / kind).glob("*/*"))


def published_bytes(out, names):
    return {n: (out / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    make_conv_model(base / "tiny.onnx")
    return write_recipe(base / "tiny.yaml", TINY_RECIPE.format(workspace="256MiB"))


@pytest.fixture(scope="module")
def tiny_reference(tiny_recipe, tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-ref")
    run(tiny_recipe, base / "out", env_for(base / "cache"))
    return published_bytes(base / "out", ["tiny.source.onnx", "tiny.onnx", "tiny.plan"])


STAGE_KIND = {"passes[1]": "pass", "validate": "validate", "build": "build"}


@pytest.mark.parametrize("stage", ["passes[1]", "validate", "build"])
def test_sigkill_during_a_stage_leaves_nothing_partial(stage, tiny_recipe, tiny_reference, tmp_path):
    cache_dir, out = tmp_path / "cache", tmp_path / "out"
    env = env_for(cache_dir)
    kill_at(stage, tiny_recipe, out, env)
    kind = STAGE_KIND[stage]
    pass_entries = len(committed(cache_dir, "pass"))
    assert not committed(cache_dir, kind) or (kind == "pass" and pass_entries == 1)  # passes[0] was done
    assert list((cache_dir / "tmp").iterdir())  # the killed stage's uncommitted entry ...
    assert not list(out.glob("*.plan")) and not list(out.glob("*.onnx"))  # ... and nothing published
    assert list(out.glob(".trtpipe-staging-*"))

    rep = run(tiny_recipe, out, env)  # the next run completes normally and cleans up
    assert rep["cache"]["stages"][stage]["status"] == "ran"
    assert published_bytes(out, tiny_reference) == tiny_reference
    assert not list((cache_dir / "tmp").iterdir()) and not list(out.glob(".trtpipe-staging-*"))
    assert cache.Cache(cache_dir).verify_all() == []
    # no plan anywhere but the published one (output.dir/tiny.plan links into .runs/<version>/)
    assert {p.resolve() for p in out.rglob("*.plan")} == {(out / "tiny.plan").resolve()}


def test_four_concurrent_runs(tiny_recipe, tiny_reference, tmp_path):
    cache_dir = tmp_path / "cache"
    env = env_for(cache_dir)
    procs = [subprocess.Popen([sys.executable, PIPELINE, str(tiny_recipe), "-o", str(tmp_path / f"out{i}"), "-q"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, stdout, stderr in results:
        assert code == 0, stdout + stderr
    for i in range(4):
        assert published_bytes(tmp_path / f"out{i}", tiny_reference) == tiny_reference
    # one run did the work; the per-recipe lock made the others wait and reuse it
    cached = sum("all stages cached" in stdout for _, stdout, _ in results)
    assert cached == 3, [r[1][-400:] for r in results]
    assert cache.Cache(cache_dir).verify_all() == []
    for kind, n in (("source", 1), ("pass", 2), ("precision", 1), ("validate", 1), ("build", 1)):
        assert len(committed(cache_dir, kind)) == n
    assert not list((cache_dir / "tmp").iterdir())


@pytest.mark.slow
def test_effdet_cold_runs_are_byte_identical_and_survive_a_kill_in_conversion(tmp_path):
    """Two cold runs in separate processes with different PYTHONHASHSEED and separate empty caches
    give the same ONNX and plan bytes; the first is SIGKILLed during conversion, then re-run."""
    text = (REPO / "recipes" / "effdet.yaml").read_text().replace(
        "../models/effdet_demo/saved_model", str(REPO / "models" / "effdet_demo" / "saved_model"))
    recipe = tmp_path / "effdet.yaml"
    recipe.write_text(text)
    a_env = env_for(tmp_path / "cache-a", PYTHONHASHSEED="1")
    b_env = env_for(tmp_path / "cache-b", PYTHONHASHSEED="2")

    kill_at("source", recipe, tmp_path / "a", a_env)
    assert not committed(tmp_path / "cache-a", "source") and not list((tmp_path / "a").glob("*.onnx"))
    rep_a = run(recipe, tmp_path / "a", a_env)
    assert rep_a["cache"]["stages"]["source"]["status"] == "ran"
    rep_b = run(recipe, tmp_path / "b", b_env)

    names = ["effdet.source.onnx", "effdet.onnx", "effdet.postprocess.onnx", "effdet.plan"]
    a, b = published_bytes(tmp_path / "a", names), published_bytes(tmp_path / "b", names)
    for name in names:
        assert a[name] == b[name], f"{name} differs between two cold runs"
    assert rep_a["artifacts"] == rep_b["artifacts"]
    assert {k: v["key"] for k, v in rep_a["cache"]["stages"].items()} == \
        {k: v["key"] for k, v in rep_b["cache"]["stages"].items()}
    assert not list((tmp_path / "cache-a" / "tmp").iterdir())
