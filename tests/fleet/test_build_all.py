"""build-all: recipes x targets with real runs (TensorRT-RTX builds), locally and on a real Ray
cluster of two nodes on 127.0.0.1, plus the stage cache's remote tier.

Tiny recipes (a conv model, two passes, validation, a build: a few seconds each) keep this under
a few minutes on 2 cores. Ray tests are marked `ray` (select with `-m ray`, skip with `-m "not ray"`).

Kills use the test-only hook TRTPIPE_FLEET_TEST_PAUSE_ONCE=<stage>:<marker>: the first attempt of
a task writes the marker (its worker's and run's pids, the run's log file) and pauses at <stage>
(TRTPIPE_TEST_PAUSE_AT), where the test kills it; the retry finds the marker and runs through.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_RECIPE, make_conv_model, write_recipe
from trtpipe import cache
from trtpipe.cache import remote
from trtpipe.fleet.runner import PAUSE_ONCE_ENV

PIPELINE = str(REPO / "pipeline.py")
TARGETS = "8.6,8.9"


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_recipes(base: Path) -> Path:
    """recipes/: tiny-a and tiny-b (different models), and bad (an unknown pass: exit 3)."""
    d = base / "recipes"
    d.mkdir(parents=True)
    make_conv_model(d / "tiny.onnx")
    make_conv_model(d / "tiny2.onnx", batch=2)
    body = TINY_RECIPE.format(workspace="256MiB")
    write_recipe(d / "tiny-a.yaml", body.replace("name: tiny", "name: tiny-a").replace("dir: out", "dir: out/tiny-a"))
    write_recipe(d / "tiny-b.yaml", body.replace("name: tiny", "name: tiny-b").replace("tiny.onnx", "tiny2.onnx")
                 .replace("dir: out", "dir: out/tiny-b"))
    write_recipe(d / "bad.yaml", body.replace("name: tiny", "name: bad").replace("pass: cleanup", "pass: cleanupp")
                 .replace("dir: out", "dir: out/bad"))
    return d


def build_all(*args, env=None, timeout=400):
    """`python pipeline.py build-all ARGS` in a subprocess; returns (exit code, output, build-all.json)."""
    proc = subprocess.run([sys.executable, PIPELINE, "build-all", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))
    report_dir = Path(args[list(args).index("--report-dir") + 1])
    doc = json.loads((report_dir / "build-all.json").read_text()) if (report_dir / "build-all.json").exists() else None
    return proc.returncode, proc.stdout + proc.stderr, doc


def by_id(doc) -> dict:
    return {t["id"]: t for t in doc["tasks"]}


def assert_no_partial_entries(cache_dir: Path) -> None:
    """Every committed entry verifies and nothing is left in the cache's temporary directory."""
    assert cache.Cache(cache_dir).verify_all() == []
    assert not [p for p in (cache_dir / "tmp").iterdir()], list((cache_dir / "tmp").iterdir())


def assert_remote_complete(remote_dir: Path) -> None:
    """Every manifest in the remote tier names blobs that are there, whole."""
    manifests = list((remote_dir / "entries").rglob("*.json"))
    assert manifests
    for m in manifests:
        for name, info in json.loads(m.read_text())["files"].items():
            blob = remote_dir / remote.blob_path(info["sha256"])
            assert blob.is_file() and sha256(blob) == info["sha256"], (m, name)


def check_tasks(doc, out: Path, serial: dict) -> None:
    """What every executor must give for recipes/ x 8.6,8.9 (see write_recipes)."""
    tasks = by_id(doc)
    assert set(tasks) == {f"{n}@{t}" for n in ("tiny-a", "tiny-b", "bad") for t in ("8.6", "8.9")}
    for target in ("8.6", "8.9"):  # the bad recipe fails alone, with the run's own message and code
        bad = tasks[f"bad@{target}"]
        assert bad["status"] == "failed" and bad["exit_code"] == 3, bad
        assert "cleanupp" in bad["error"] and "did you mean 'cleanup'" in bad["error"]
        assert bad["plan"] is None
    assert not (out / "bad").exists()
    for name in ("tiny-a", "tiny-b"):
        for target in ("8.6", "8.9"):
            t = tasks[f"{name}@{target}"]
            assert t["status"] == "succeeded" and t["exit_code"] == 0, t["error"]
            plan = out / name / f"sm{target.replace('.', '')}" / f"{name}.plan"
            assert t["plan"]["path"] == str(plan) and t["plan"]["sha256"] == sha256(plan)
            rep = json.loads((plan.parent / "report.json").read_text())
            assert rep["backend"]["compute_capabilities"] == [target]
            assert t["cache_hits"] == sum(s == "cached" for s in t["cache"].values())
        # one conversion per recipe: its first target ran the source and passes, the other reused them
        statuses = sorted(tasks[f"{name}@{t}"]["cache"]["source"] for t in ("8.6", "8.9"))
        assert statuses == ["cached", "ran"], statuses
        for t in ("8.6", "8.9"):
            if tasks[f"{name}@{t}"]["cache"]["source"] == "cached":
                assert tasks[f"{name}@{t}"]["cache"]["passes[1]"] == "cached"
                assert tasks[f"{name}@{t}"]["cache"]["build"] == "ran"  # the build depends on the target
        assert tasks[f"{name}@8.6"]["plan"]["sha256"] != tasks[f"{name}@8.9"]["plan"]["sha256"]
    for target, digest in serial.items():  # byte-identical to a plain serial run (static shapes)
        assert tasks[f"tiny-a@{target}"]["plan"]["sha256"] == digest, target


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> Path:
    return write_recipes(tmp_path_factory.mktemp("fleet"))


@pytest.fixture(scope="module")
def serial(recipes, tmp_path_factory) -> dict:
    """Plan sha256 of tiny-a per target from plain one-by-one runs (`pipeline.py RECIPE --compute-capabilities`)."""
    base = tmp_path_factory.mktemp("serial")
    out = {}
    for target in ("8.6", "8.9"):
        proc = subprocess.run([sys.executable, PIPELINE, str(recipes / "tiny-a.yaml"), "-q", "--compute-capabilities",
                               target, "-o", str(base / target), "--cache-dir", str(base / "cache")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out[target] = sha256(base / target / "tiny-a.plan")
    return out


# --------------------------------------------------------------------------------------------- local

def test_local_build_all(recipes, serial, tmp_path):
    out, rep, cache_dir, remote_dir = tmp_path / "out", tmp_path / "report", tmp_path / "cache", tmp_path / "remote"
    code, text, doc = build_all(recipes, "--targets", TARGETS, "--jobs", "2", "-o", out, "--report-dir", rep,
                                "--cache-dir", cache_dir, "--remote-cache", remote_dir)
    assert code == 11, text  # one or more tasks failed: the bad recipe's
    check_tasks(doc, out, serial)
    assert doc["summary"] == {"tasks": 6, "succeeded": 4, "failed": 2}
    assert all(t["worker"]["executor"] == "local" for t in doc["tasks"])
    assert all(t["attempts"] == 1 for t in doc["tasks"] if t["name"] != "bad")
    # every committed stage went to the remote tier, whole
    uploaded = [e for t in doc["tasks"] for e in t["remote"]["uploaded"]]
    assert any(e.startswith("source/") for e in uploaded) and any(e.startswith("build/") for e in uploaded)
    assert_remote_complete(remote_dir)
    assert_no_partial_entries(cache_dir)
    md = (rep / "build-all.md").read_text()
    assert "# build-all: 4/6 tasks succeeded" in md and "| tiny-a | 8.9 | succeeded | 0 |" in md
    assert "### bad@8.6 (failed, exit 3)" in md
    log = by_id(doc)["tiny-a@8.6"]["log"]
    assert log == "build-all-logs/tiny-a@8.6.log" and "tiny-a: done" in (rep / log).read_text()
    assert "FAILED bad@8.6 (exit 3)" in text


def test_local_killed_task_is_retried_without_partial_entries(recipes, serial, tmp_path):
    out, rep, cache_dir = tmp_path / "out", tmp_path / "report", tmp_path / "cache"
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, PIPELINE, "build-all", str(recipes / "tiny-a.yaml"), "--targets", "8.9",
                             "-o", str(out), "--report-dir", str(rep), "--cache-dir", str(cache_dir)],
                            env=dict(os.environ, **{PAUSE_ONCE_ENV: f"build:{marker}"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = wait_paused(marker)
        assert list((cache_dir / "tmp").iterdir())  # the build's complete but uncommitted entry
        os.kill(info["child_pid"], signal.SIGKILL)  # the local worker is the task's process
        text, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, text
    task = json.loads((rep / "build-all.json").read_text())["tasks"][0]
    assert task["attempts"] == 2 and task["status"] == "succeeded"
    assert "retry  tiny-a@8.9" in text
    assert task["plan"]["sha256"] == serial["8.9"]
    assert_no_partial_entries(cache_dir)
    assert len(list((cache_dir / "entries" / "build").glob("*/*"))) == 1
    assert not list((out / "tiny-a" / "sm89").glob(".trtpipe-staging-*"))


def wait_paused(marker: Path, timeout: float = 120) -> dict:
    """The marker a paused first attempt wrote, once its run says it paused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            info = json.loads(marker.read_text())
            if "TRTPIPE_TEST_PAUSED" in Path(info["log"]).read_text(errors="replace"):
                return info
        time.sleep(0.2)
    raise AssertionError("the task never paused")


def test_local_unsatisfiable_target_and_bad_targets_fail_fast(recipes, tmp_path, run_cli):
    twin = tmp_path / "twin" / "tiny-a.yaml"  # another recipe with tiny-a's name: the same output directory
    twin.parent.mkdir()
    twin.write_text((recipes / "tiny-a.yaml").read_text().replace("tiny.onnx", str(recipes / "tiny.onnx")))
    t0 = time.monotonic()
    code, text, doc = build_all(recipes / "tiny-a.yaml", twin, "--targets", "A100", "--report-dir", tmp_path,
                                "-o", tmp_path / "out", timeout=60)
    assert code == 11 and time.monotonic() - t0 < 30, text
    task, other = doc["tasks"]
    assert task["status"] == "unsatisfiable" and task["exit_code"] == 2 and task["seconds"] == 0
    assert "GPU kind" in task["error"] and "accelerator_type:A100" in task["error"]
    assert other["status"] == "failed" and other["exit_code"] == 8  # never run: tiny-a's directory
    assert f"is where {recipes / 'tiny-a.yaml'} publishes A100" in other["error"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as err:  # argparse: exit 2 with the message on stderr
        run_cli("build-all", recipes, "--targets", "8.6,7.0", "--emit-matrix")
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        run_cli(recipes / "tiny-a.yaml", "--compute-capabilities", "9.9")
    assert err.value.code == 2


def test_emit_matrix(recipes, run_cli, tmp_path):
    # a recipe that does not load has no matrix entry to give: the whole matrix is refused, naming it
    code, out, err = run_cli("build-all", recipes, "--targets", "8.6", "--emit-matrix", "-o", tmp_path / "o")
    assert code == 3 and "bad.yaml" in out + err and not out.lstrip().startswith("{")
    good = [recipes / "tiny-a.yaml", recipes / "tiny-b.yaml"]
    code, out, _ = run_cli("build-all", *good, "--targets", "8.6,8.9+12.0", "--emit-matrix", "-o", tmp_path / "o")
    assert code == 0
    include = json.loads(out)["include"]
    assert [(m["name"], m["target"]) for m in include] == [
        (n, t) for n in ("tiny-a", "tiny-b") for t in ("8.6", "8.9+12.0")]
    a = next(m for m in include if m["name"] == "tiny-a" and m["target"] == "8.9+12.0")
    assert a["recipe"].endswith("recipes/tiny-a.yaml") and a["output_dir"].endswith("o/tiny-a/sm89_sm120")
    assert not (tmp_path / "o").exists()  # nothing built


# --------------------------------------------------------------------------------------------- remote tier

@pytest.mark.parametrize("scheme", ["dir", "file://"])
def test_remote_tier_shares_entries_between_caches(tmp_path, monkeypatch, scheme):
    """Two machines' local caches (A, B) and one remote tier: what A commits, B fetches on a miss,
    verified; a remote entry whose blob is damaged is ignored, never half-imported."""
    shared = tmp_path / "remote"
    monkeypatch.setenv(remote.ENV, str(shared) if scheme == "dir" else f"file://{shared}")
    warnings = []
    a = cache.Cache(tmp_path / "a").open()
    b = cache.Cache(tmp_path / "b", warn=warnings.append).open()
    assert a.remote is not None and b.remote is not None
    key = "ab" * 32
    with a.writer("build", key) as w:
        (w.dir / "plan").write_bytes(b"plan bytes" * 1000)
        w.meta = {"plan_sha": "x", "summary": {"n": 1}}
        w.commit()
    assert_remote_complete(shared)
    got = b.get("build", key)
    assert got is not None and got.path("plan").read_bytes() == b"plan bytes" * 1000
    assert got.meta == {"plan_sha": "x", "summary": {"n": 1}}
    assert b.entry_dir("build", key).is_dir() and not list(b.tmp_dir.iterdir())
    # a second commit of the same key uploads nothing new (put-if-absent)
    mtime = (shared / remote.manifest_path("build", key)).stat().st_mtime_ns
    with cache.Cache(tmp_path / "c").open().writer("build", key) as w:
        (w.dir / "plan").write_bytes(b"plan bytes" * 1000)
        w.meta = {"plan_sha": "x", "summary": {"n": 1}}
        w.commit()
    assert (shared / remote.manifest_path("build", key)).stat().st_mtime_ns == mtime
    # a damaged blob: a miss with a warning, nothing committed locally, nothing left in tmp
    blob = shared / remote.blob_path(hashlib.sha256(b"plan bytes" * 1000).hexdigest())
    blob.write_bytes(b"damaged")
    d = cache.Cache(tmp_path / "d", warn=warnings.append).open()
    assert d.get("build", key) is None
    assert any("does not match its sha256" in w for w in warnings)
    assert not d.entry_dir("build", key).exists() and not list(d.tmp_dir.iterdir())
    # a manifest without its blob (an uploader that died before it): a miss, not an error
    other = "cd" * 32
    (shared / remote.manifest_path("build", other)).parent.mkdir(parents=True, exist_ok=True)
    m = json.loads((shared / remote.manifest_path("build", key)).read_text())
    m["key"] = other
    m.pop("checksum")
    m["checksum"] = cache.digest(m)
    (shared / remote.manifest_path("build", other)).write_text(json.dumps(m))
    assert d.get("build", other) is None and not list(d.tmp_dir.iterdir())
    # whoever can write to the shared tier can write anything: a manifest that is no mapping, or one
    # with a right checksum but no meta, is ignored with a warning, never a traceback
    m.pop("meta"), m.pop("checksum")
    m["checksum"] = cache.digest(m)
    for bad in ("[1, 2]", json.dumps(m)):
        (shared / remote.manifest_path("build", other)).write_text(bad)
        before = len(warnings)
        assert d.get("build", other) is None and not list(d.tmp_dir.iterdir())
        assert any("does not match its checksum" in w for w in warnings[before:]), warnings[before:]


# --------------------------------------------------------------------------------------------- ray

@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on 127.0.0.1: the head carries sm_86, the other sm_89 (one CPU each)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
    import ray
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"sm_86": 1},
                                                      "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, resources={"sm_89": 1})
        ray.init(address=c.address, logging_level="ERROR", log_to_driver=False)
        c.wait_for_nodes()
        nodes = [n for n in ray.nodes() if n["Alive"]]
        ray.shutdown()  # build-all connects as its own driver
        addresses = {n["NodeManagerAddress"] for n in nodes}
        assert addresses == {"127.0.0.1"}, f"Ray must listen on loopback only, its nodes are at {addresses}"
        assert c.address.startswith("127.0.0.1:")
        owner = {r: n["NodeID"] for n in nodes for r in n["Resources"] if r.startswith("sm_")}
        assert set(owner) == {"sm_86", "sm_89"} and owner["sm_86"] != owner["sm_89"]
        yield c, owner
    finally:
        c.shutdown()


@pytest.mark.ray
def test_ray_cluster_routes_tasks_shares_conversion_and_matches_serial_plans(recipes, serial, cluster, tmp_path):
    c, owner = cluster
    out, rep, remote_dir = tmp_path / "out", tmp_path / "report", tmp_path / "remote"
    cache_dir = tmp_path / "cache-{node}"  # each node its own local tier; the remote tier joins them
    code, text, doc = build_all(recipes, "--targets", TARGETS, "--executor", "ray", "--address", c.address,
                                "-o", out, "--report-dir", rep, "--cache-dir", cache_dir, "--remote-cache", remote_dir)
    assert code == 11, text
    check_tasks(doc, out, serial)
    assert {n["ip"] for n in doc["cluster"]["nodes"]} == {"127.0.0.1"}
    for t in doc["tasks"]:
        if t["name"] == "bad":
            continue
        assert t["worker"]["executor"] == "ray"
        assert t["worker"]["node_id"] == owner["sm_" + t["target"].replace(".", "")], t["id"]  # placement
        if t["cache"]["source"] == "cached":  # the other node's conversion, through the remote tier
            assert any(e.startswith("source/") for e in t["remote"]["fetched"]), t["remote"]
    assert len(list(tmp_path.glob("cache-*"))) == 2
    for d in tmp_path.glob("cache-*"):
        assert_no_partial_entries(d)
    assert_remote_complete(remote_dir)


@pytest.mark.ray
def test_ray_killed_worker_is_retried_without_partial_entries(recipes, serial, cluster, tmp_path):
    c, owner = cluster
    out, rep, cache_dir, remote_dir = tmp_path / "out", tmp_path / "report", tmp_path / "cache", tmp_path / "remote"
    marker = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, PIPELINE, "build-all", str(recipes / "tiny-a.yaml"), "--targets", "8.9",
                             "--executor", "ray", "--address", c.address, "-o", str(out), "--report-dir", str(rep),
                             "--cache-dir", str(cache_dir), "--remote-cache", str(remote_dir)],
                            env=dict(os.environ, **{PAUSE_ONCE_ENV: f"build:{marker}"}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        info = wait_paused(marker)
        os.kill(info["worker_pid"], signal.SIGKILL)  # the Ray worker; its run dies with it
        text, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, text
    task = json.loads((rep / "build-all.json").read_text())["tasks"][0]
    assert task["status"] == "succeeded" and task["worker"]["worker_pid"] != info["worker_pid"]  # a retry
    assert task["worker"]["node_id"] == owner["sm_89"]
    assert task["plan"]["sha256"] == serial["8.9"]
    with pytest.raises(ProcessLookupError):
        os.kill(info["child_pid"], 0)  # the killed worker's run is gone too
    assert_no_partial_entries(cache_dir)
    assert len(list((cache_dir / "entries" / "build").glob("*/*"))) == 1
    assert_remote_complete(remote_dir)


@pytest.mark.ray
def test_ray_unsatisfiable_target_fails_within_seconds(recipes, cluster, tmp_path):
    c, _ = cluster
    t0 = time.monotonic()
    code, text, doc = build_all(recipes / "tiny-a.yaml", "--targets", "12.0,A100", "--executor", "ray", "--address",
                                c.address, "-o", tmp_path / "out", "--report-dir", tmp_path, timeout=60)
    assert code == 11, text
    assert time.monotonic() - t0 < 30, "unsatisfiable targets must fail fast"
    tasks = by_id(doc)
    cc, gpu = tasks["tiny-a@12.0"], tasks["tiny-a@A100"]
    assert cc["status"] == gpu["status"] == "unsatisfiable"
    assert "sm_120" in cc["error"] and "sm_86" in cc["error"] and "sm_89" in cc["error"]
    assert "accelerator_type:A100" in gpu["error"] and "GPU" in gpu["error"]
    assert not (tmp_path / "out").exists()
    # nothing listening at --address: a usage error in seconds, not Ray's minutes of retries
    t0 = time.monotonic()
    code, text, _ = build_all(recipes / "tiny-a.yaml", "--targets", "8.9", "--address", "127.0.0.1:1",
                              "--report-dir", tmp_path / "unreachable", timeout=60)
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in text, text
    assert time.monotonic() - t0 < 20


@pytest.mark.ray
def test_ray_local_without_address(recipes, serial, tmp_path):
    """No --address: build-all starts its own Ray on 127.0.0.1, carrying every target's resource."""
    out, rep = tmp_path / "out", tmp_path / "report"
    code, text, doc = build_all(recipes / "tiny-a.yaml", "--targets", "8.9", "--executor", "ray", "--jobs", "1",
                                "-o", out, "--report-dir", rep, "--cache-dir", tmp_path / "cache")
    assert code == 0, text
    assert [n["ip"] for n in doc["cluster"]["nodes"]] == ["127.0.0.1"]
    assert doc["cluster"]["address"] == "local"
    task = doc["tasks"][0]
    assert task["worker"]["executor"] == "ray" and task["plan"]["sha256"] == serial["8.9"]


def test_recipes_of_one_name_get_distinct_task_ids(tmp_path):
    """Two recipe files that both say `name: tiny` (different folders and output.dir): their tasks,
    log files and rows in build-all.json must not be confused."""
    from trtpipe.fleet.tasks import expand, parse_target
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        make_conv_model(tmp_path / folder / "tiny.onnx")
        paths.append(write_recipe(tmp_path / folder / "tiny.yaml", TINY_RECIPE.format(workspace="256MiB")))
    tasks = expand(paths, [parse_target("8.9")], None)
    assert [t.name for t in tasks] == ["tiny", "tiny"]
    assert [t.id for t in tasks] == ["tiny@8.9", "tiny~2@8.9"]
    assert len({t.output_dir for t in tasks}) == 2 and all(t.error is None for t in tasks)
