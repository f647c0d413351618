"""Files the run reads and writes, with real runs of the tiny recipe (real ONNX Runtime, Polygraphy
and TensorRT-RTX builder) in separate processes where a hang or a kill is part of the test:

* an output that is an input (the recipe, the source model, the .npz) is refused, the file unchanged;
* a FIFO, /dev/zero or a directory where a file is read ends at once with a message saying what
  it is, in `run` and in `check`; a timing cache of that kind is refused, never replaced;
* an output directory holding another recipe's artifacts is refused unless --take-over; two recipes
  into one directory at once never leave a mixed set;
* SIGKILL of the builder child is exit 7 naming the signal, nothing published, the graph kept;
* SIGKILL of the whole run while it publishes leaves the old set or the new one, each whole;
* a write that does not fit (RLIMIT_FSIZE: EFBIG) is exit 8 naming the file and the space needed.
"""

import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, TINY_RECIPE, make_conv_model, write_recipe
from trtpipe import cache, errors

PIPELINE = str(REPO / "pipeline.py")


def env_for(cache_dir, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    env[cache.ENV] = str(cache_dir)
    env.pop(cache.PAUSE_ENV, None)
    return env


def pipeline(*args, env, timeout=120, preexec_fn=None):
    """(exit code, stdout, stderr, seconds) of `python pipeline.py ARGS` in its own process."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, PIPELINE, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tiny(base, name="tiny", batch=1, out="out"):
    """The tests' tiny recipe (a conv model, two passes, a build) in `base`, named `name`."""
    base.mkdir(parents=True, exist_ok=True)
    make_conv_model(base / f"{name}.onnx", batch=batch)
    text = TINY_RECIPE.format(workspace="256MiB").replace("name: tiny", f"name: {name}") \
        .replace("onnx: tiny.onnx", f"onnx: {name}.onnx").replace("dir: out", f"dir: {out}")
    return write_recipe(base / f"{name}.yaml", text)


def consistent_set(out):
    """The published set in `out`: {name: sha256}; asserts report.json's sha256s match the files."""
    rep = json.loads((out / "report.json").read_text())
    got = {name: sha(out / name) for name in rep["artifacts"]}
    assert got == {name: a["sha256"] for name, a in rep["artifacts"].items()}, "report and files disagree"
    return rep["recipe"]["name"], got


def public_names(out):
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A stage cache holding the tiny recipe's stages (batch 1 and batch 2), so most runs here are quick."""
    base = tmp_path_factory.mktemp("warm")
    env = env_for(base / "cache")
    for name, batch in (("tiny", 1), ("other", 2)):
        code, out, err, _ = pipeline(tiny(base, name, batch, out=f"out-{name}"), "-q", env=env, timeout=300)
        assert code == 0, out + err
    return env


# --- rule 1: nothing the run reads is written ----------------------------------------------

@pytest.mark.parametrize("output, victim, names", [
    ("{dir: ., plan: r.yaml}", "r.yaml", "the recipe"),
    ("{dir: .}", "tiny.onnx", "the source model"),          # output.onnx defaults to <name>.onnx
    ("{dir: ., onnx: final.onnx, plan: data.npz}", "data.npz", "data file"),
])
def test_an_output_that_is_an_input_is_refused(output, victim, names, tmp_path, run_cli):
    import numpy as np
    make_conv_model(tmp_path / "tiny.onnx")
    np.savez(tmp_path / "data.npz", x=np.ones((1, 3, 8, 8), np.float32))
    recipe = write_recipe(tmp_path / "r.yaml", f"""
        name: tiny
        source: {{onnx: tiny.onnx}}
        validate: {{data: {{npz: data.npz}}}}
        output: {output}
        """)
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    code, _, err = run_cli(recipe, "--quiet")
    assert code == errors.EXIT_OUTPUT, err
    assert f"would be written to {tmp_path / victim}, which is {names}" in err
    assert "the run never overwrites a file it reads" in err and "Traceback" not in err
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before  # nothing written, nothing added
    code, _, err = run_cli("check", recipe)
    assert code == errors.EXIT_RECIPE and f"would be written to {tmp_path / victim}" in err


def test_an_output_directory_inside_the_savedmodel_is_refused(tmp_path, run_cli):
    (tmp_path / "sm" / "variables").mkdir(parents=True)
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"not read: refused before")
    recipe = write_recipe(tmp_path / "r.yaml", "name: t\nsource: {saved_model: sm}\noutput: {dir: sm/out}\n")
    code, _, err = run_cli(recipe, "--quiet")
    assert code == errors.EXIT_OUTPUT and f"inside the source SavedModel {tmp_path / 'sm'}" in err, err
    assert sorted(p.name for p in (tmp_path / "sm").iterdir()) == ["saved_model.pb", "variables"]


# --- rule 2: special files -------------------------------------------------------------------

SPECIAL = {  # case: (what to put where, recipe extra, expected exit, message fragment)
    "fifo_model": ("fifo:m.onnx", "", errors.EXIT_SOURCE, "source.onnx: {p} is a FIFO, not a regular file"),
    "dev_zero_model": ("/dev/zero", "", errors.EXIT_SOURCE, "source.onnx: /dev/zero is a character device"),
    "fifo_npz": ("fifo:d.npz", "validate: {{data: {{npz: {p}}}}}\n", errors.EXIT_RECIPE,
                 "validate.data.npz: {p} is a FIFO, not a regular file"),
    "dir_npz": ("dir:d.npz", "validate: {{data: {{npz: {p}}}}}\n", errors.EXIT_RECIPE,
                "validate.data.npz: {p} is a directory, not a regular file"),
    "missing_npz": ("none:d.npz", "validate: {{data: {{npz: {p}}}}}\n", errors.EXIT_RECIPE,
                    "validate.data.npz: cannot read {p}: [Errno 2] No such file or directory"),
    "fifo_image": ("fifo:imgs/a.png", "validate: {{data: {{images: {{dir: imgs}}}}}}\n", errors.EXIT_RECIPE,
                   "validate.data.images.dir: image {p} is a FIFO, not a regular file"),
    "fifo_timing_cache": ("fifo:t.cache", "build: {{timing_cache: {p}}}\n", errors.EXIT_RECIPE,
                          "build.timing_cache: {p} is a FIFO, not a regular file"),
    "dev_zero_timing_cache": ("/dev/zero", "build: {{timing_cache: {p}}}\n", errors.EXIT_RECIPE,
                              "build.timing_cache: /dev/zero is a character device, not a regular file"),
    "dir_timing_cache": ("dir:t.cache", "build: {{timing_cache: {p}}}\n", errors.EXIT_RECIPE,
                         "build.timing_cache: {p} is a directory, not a regular file"),
    "fifo_plugin": ("fifo:p.so", "build: {{plugins: [{p}]}}\n", errors.EXIT_RECIPE,
                    "build.plugins[0]: plugin library {p} is a FIFO, not a regular file"),
}


def _make_special(spec, base):
    if spec.startswith("/"):
        return Path(spec)
    kind, _, rel = spec.partition(":")
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(SPECIAL))
def test_special_files_end_at_once_with_what_they_are(case, tmp_path):
    spec, extra, code, fragment = SPECIAL[case]
    path = _make_special(spec, tmp_path)
    make_conv_model(tmp_path / "tiny.onnx")
    source = path if case.endswith("_model") else "tiny.onnx"
    recipe = write_recipe(tmp_path / "r.yaml", f"name: t\nsource: {{onnx: {source}}}\n"
                          + extra.format(p=path) + "output: {dir: out}\n")
    mode = path.lstat().st_mode if os.path.lexists(path) else None
    env = env_for(tmp_path / "cache")
    got, out, err, took = pipeline(recipe, "-q", env=env, timeout=10)  # a hang fails here (TimeoutExpired)
    assert got == code, out + err
    assert fragment.format(p=path) in err and "Traceback" not in err, err
    assert took < 10
    checked, out, err, _ = pipeline("check", recipe, env=env, timeout=10)  # `check` says the same, exit 3
    assert checked == errors.EXIT_RECIPE and fragment.format(p=path) in err, out + err
    if mode is not None:  # never replaced: still the FIFO, device or directory it was
        assert stat.S_IFMT(path.lstat().st_mode) == stat.S_IFMT(mode)
    assert not list(path.parent.glob(".timing-*.tmp"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.plan"))


# --- rule 3: one recipe per output directory, one run at a time -------------------------------

@pytest.mark.parametrize("flag", ["--take-over", "--force"])
def test_a_directory_of_another_recipe_is_refused_unless_taken_over(warm, tmp_path, flag):
    a, b = tiny(tmp_path, "tiny"), tiny(tmp_path, "other", batch=2)
    shared = tmp_path / "shared"
    assert pipeline(a, "-o", shared, "-q", env=warm)[0] == 0
    assert pipeline(b, "-o", tmp_path / "own", "-q", env=warm)[0] == 0  # b's stages now cached
    before = consistent_set(shared)
    code, out, err, _ = pipeline(b, "-o", shared, "-q", env=warm)
    assert code == errors.EXIT_OUTPUT, out + err
    assert (f"holds the artifacts of recipe 'tiny' ({a}); this run is recipe 'other' ({b})" in err
            and "--take-over" in err)
    assert consistent_set(shared) == before  # untouched
    code, out, err, _ = pipeline(b, "-o", shared, "-q", flag, env=warm)
    assert code == 0, out + err
    # --take-over only hands the directory over; --force also re-runs every stage
    assert ("all stages cached" in out) == (flag == "--take-over"), out
    name, files = consistent_set(shared)
    assert name == "other" and public_names(shared) == sorted(list(files) + ["report.json", "report.md"])
    assert json.loads((shared / ".trt-pipeline.json").read_text())["recipe"] == str(b)


def test_the_effdet_recipes_have_their_own_output_directories():
    from trtpipe.recipe.load import load_recipe
    dirs = {load_recipe(REPO / "recipes" / f"{n}.yaml").data["output"]["dir"] for n in ("effdet", "effdet-tensorrt")}
    assert len(dirs) == 2


@pytest.mark.parametrize("force", [False, True])
def test_two_recipes_into_one_directory_at_once_never_mix(force, warm, tmp_path):
    a, b = tiny(tmp_path, "tiny"), tiny(tmp_path, "other", batch=2)
    shared = tmp_path / "shared"
    flags = ["--force"] if force else []
    for _ in range(1 if force else 2):
        procs = [subprocess.Popen([sys.executable, PIPELINE, str(r), "-o", str(shared), *flags], env=warm,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (a, b)]
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in results)
        if force:  # serialized by the directory's lock: both publish, one after the other
            assert codes == [0, 0], results
        else:  # the one that comes second finds the other's artifacts
            assert codes == [0, errors.EXIT_OUTPUT], results
            assert all("holds the artifacts of recipe" in err for code, _, err in results if code)
        name, files = consistent_set(shared)
        assert all(n.startswith(name + ".") for n in files)  # one recipe's set, nothing of the other's
        assert public_names(shared) == sorted(list(files) + ["report.json", "report.md"])
    assert not list(shared.glob(".trtpipe-staging-*")) and not (shared / ".trt-pipeline.lock").exists()


# --- the builder child and publishing under SIGKILL --------------------------------------------

def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append((int(entry), cmd))
    return found


def test_sigkill_of_the_builder_child_is_a_build_error(warm, tmp_path):
    recipe = tiny(tmp_path)
    recipe.write_text(recipe.read_text().replace("workspace: 256MiB", "workspace: 200MiB"))  # not cached: builds
    proc = subprocess.Popen([sys.executable, PIPELINE, str(recipe), "-v"], env=warm, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, proc.kill)
    timer.start()
    killed = None
    try:
        for line in proc.stdout:  # the child reports each step over its pipe; kill it once it parses
            if "parsing tiny.onnx" in line:
                # the build worker: forked (same command line) or spawned; not multiprocessing's tracker
                children = [pid for pid, cmd in _children(proc.pid) if "resource_tracker" not in cmd]
                assert len(children) == 1, _children(proc.pid)
                os.kill(children[0], signal.SIGKILL)
                killed = children[0]
                break
        _, err = proc.communicate()
    finally:
        timer.cancel()
    assert killed and proc.returncode == errors.EXIT_BUILD, err
    assert "the TensorRT parser/builder crashed (signal SIGKILL)" in err and "Traceback" not in err
    out = tmp_path / "out"
    kept = out / "failed" / "build.onnx"
    assert f"the model given to the builder is kept at {kept}" in err
    import onnx
    onnx.checker.check_model(onnx.load(str(kept)))
    assert not (out / "tiny.plan").exists() and not (out / "report.json").exists() and not (out / ".runs").exists()
    assert not list(out.glob(".trtpipe-staging-*"))


def _kill_at(label, recipe, out, env):
    proc = subprocess.Popen([sys.executable, PIPELINE, str(recipe), "-o", str(out), "-q"],
                            env=dict(env, **{cache.PAUSE_ENV: label}), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(f"TRTPIPE_TEST_PAUSED {label}"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        timer.cancel()
    assert proc.returncode == -signal.SIGKILL, "".join(lines)


def test_sigkill_while_publishing_leaves_one_whole_set(warm, tmp_path):
    recipe = tiny(tmp_path)
    out = tmp_path / "out"
    assert pipeline(recipe, "-q", env=warm)[0] == 0
    old = consistent_set(out)
    make_conv_model(tmp_path / "tiny.onnx", batch=2)  # the next run's set differs in every artifact

    _kill_at("publish-switch", recipe, out, warm)  # new set complete, links ready, not switched
    assert consistent_set(out) == old

    _kill_at("publish-cleanup", recipe, out, warm)  # switched, old set not yet removed
    new = consistent_set(out)
    assert all(new[1][n] != old[1][n] for n in old[1])

    assert pipeline(recipe, "-q", env=warm)[0] == 0  # the next run cleans up what the kills left
    assert consistent_set(out) == new
    assert len([d for d in (out / ".runs").iterdir() if d.name != "current"]) == 1
    assert not list(out.glob(".trtpipe-staging-*")) and not list(out.glob(".*.link-*"))
    plans = [p for p in out.rglob("*.plan")]
    assert {p.resolve() for p in plans} == {(out / "tiny.plan").resolve()}  # no other plan anywhere


def test_an_output_directory_of_plain_files_is_taken_over_whole(warm, tmp_path):
    """An output directory as an earlier trt-pipeline left it (plain files) switches to the new set."""
    recipe = tiny(tmp_path)
    out = tmp_path / "out"
    assert pipeline(recipe, "-q", env=warm)[0] == 0
    plain = tmp_path / "plain"
    plain.mkdir()
    for p in out.iterdir():
        if not p.name.startswith("."):
            plain.joinpath(p.name).write_bytes(p.read_bytes())
    (plain / "tiny.postprocess.onnx").write_bytes(b"an artifact the new set no longer has")
    rep = json.loads((plain / "report.json").read_text())
    rep["artifacts"]["tiny.postprocess.onnx"] = {"size": 0, "sha256": "0"}
    (plain / "report.json").write_text(json.dumps(rep))
    make_conv_model(tmp_path / "tiny.onnx", batch=2)
    assert pipeline(recipe, "-o", plain, "-q", env=warm)[0] == 0
    name, files = consistent_set(plain)
    assert public_names(plain) == sorted(list(files) + ["report.json", "report.md"])  # the stale one is gone


# --- rule 5: a write that does not fit --------------------------------------------------------

def _file_size_limit(limit):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_full_disk_while_staging_is_an_output_error(warm, tmp_path):
    recipe = tiny(tmp_path)
    out = tmp_path / "out"
    assert pipeline(recipe, "-q", env=warm)[0] == 0
    before = consistent_set(out)
    plan_size = (out / "tiny.plan").stat().st_size
    code, _, err, _ = pipeline(recipe, "-q", env=warm, preexec_fn=_file_size_limit(100_000))  # all cached
    assert code == errors.EXIT_OUTPUT, err
    assert f"cannot write {out / 'tiny.plan'}: the file size limit of this process (97.7 KiB" in err
    assert f"it needs {plan_size / 1024:.1f} KiB" in err and "Traceback" not in err
    assert consistent_set(out) == before  # the published set is untouched
    assert not list(out.glob(".trtpipe-staging-*")) and len(list((out / ".runs").iterdir())) == 2


def test_a_full_disk_in_the_cache_is_an_output_error(tmp_path):
    recipe = tiny(tmp_path)
    cache_dir = tmp_path / "cache"
    code, _, err, _ = pipeline(recipe, "-q", env=env_for(cache_dir), preexec_fn=_file_size_limit(100_000),
                               timeout=300)
    assert code == errors.EXIT_OUTPUT, err
    # the plan streams to staging as it is built (then into the cache): it is what does not fit
    assert f"cannot write the plan {tmp_path / 'out'}/.trtpipe-staging-" in err, err
    assert ": the file size limit" in err
    assert "it needs more than the 97.7 KiB written before it failed" in err and "Traceback" not in err
    assert not list((cache_dir / "tmp").iterdir())  # the half-written entry is gone
    assert not list((cache_dir / "entries").glob("build/*/*"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.plan"))


# --- rule 6: rejected graphs are kept ----------------------------------------------------------

def test_a_graph_the_parser_rejects_is_kept_apart(tmp_path, run_cli):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper
    f = TensorProto.FLOAT
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="upsample_crop", mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", f, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", f, [1, 1, 8, 8])],
                              [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(tmp_path / "m.onnx"))
    recipe = write_recipe(tmp_path / "r.yaml", "name: t\nsource: {onnx: m.onnx}\noutput: {dir: out}\n")
    code, _, err = run_cli(recipe, "--no-validate", "--quiet")
    kept = tmp_path / "out" / "failed" / "build.onnx"
    assert code == errors.EXIT_BUILD and f"the ONNX parser rejected {kept}" in err, err
    assert ".trtpipe-staging-" not in err and "upsample_crop" in err
    assert [n.op_type for n in onnx.load(str(kept)).graph.node] == ["Resize"]
    assert not list((tmp_path / "out").rglob("*.plan")) and not (tmp_path / "out" / ".runs").exists()


def test_a_source_among_the_weights_publishing_manages_is_refused(tmp_path):
    """A model and content-named weights (as an earlier run published them) used as the source,
    with output.dir their own folder: publishing would remove the weights as stray. Refused, and
    the weights are still there."""
    import onnx
    recipe = tiny(tmp_path, out=".")
    model = onnx.load(str(tmp_path / "tiny.onnx"))
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.0123456789abcdef.data", size_threshold=0)
    recipe.write_text(recipe.read_text().replace("onnx: tiny.onnx", "onnx: m.onnx"))
    weights = tmp_path / "m.onnx.0123456789abcdef.data"
    before = weights.read_bytes()
    code, _, err, _ = pipeline(recipe, "-q", env=env_for(tmp_path / "cache"))
    assert code == errors.EXIT_OUTPUT, err
    assert "publishing replaces or removes" in err and weights.name in err
    assert weights.read_bytes() == before
