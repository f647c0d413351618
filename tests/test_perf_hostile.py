"""Hostile regression tests for issue 13's speed-ups (lazy backend, fp32 precision without a model
copy, wire-format external-data scan, the exit path), with real runs of the tiny recipe (real
ONNX Runtime, Polygraphy and the TensorRT-RTX builder) in their own processes:

* a pass entry whose model.onnx is damaged is discarded and rebuilt, never published (the fp32
  precision entry now points at the last pass entry's model instead of holding a copy);
* a backend that is installed but fails to import is named as such by `check` and by a run,
  never as a parser/builder crash (the backend is imported lazily, in the build worker);
* external data of a model-local function's tensors is part of the source's cache key (onnx
  loads it: onnx.external_data_helper walks ModelProto.functions);
* malformed external-data locations and closed/full stdout end with a message, no traceback.
"""

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import REPO, TINY_RECIPE, make_conv_model, write_recipe

PIPELINE = str(REPO / "pipeline.py")


def _env(cache_dir, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", TRTPIPE_CACHE_DIR=str(cache_dir), **extra)
    env.pop("TRTPIPE_TEST_PAUSE_AT", None)
    return env


def _run(*args, env, cwd=None, timeout=180, **kw):
    return subprocess.run([sys.executable, PIPELINE, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, **kw)


def _tiny(base):
    base.mkdir(parents=True, exist_ok=True)
    make_conv_model(base / "tiny.onnx")
    return write_recipe(base / "tiny.yaml", TINY_RECIPE.format(workspace="256MiB"))


def _bias(path):
    model = onnx.load(str(path))
    return [numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "b"][0]


# --------------------------------------------------------------- fp32 precision without a copy

def test_a_tampered_pass_entry_model_is_not_published(tmp_path):
    """The fp32 precision entry (same_as_input) hands on the last pass entry's model: that model
    must be verified like the copy the precision entry held before (README: "Entries are verified
    when read: a corrupt one is discarded with a warning and rebuilt"), not published as it is."""
    recipe, env = _tiny(tmp_path), _env(tmp_path / "cache")
    first = _run(recipe, "-q", env=env)
    assert first.returncode == 0, first.stderr
    good = (tmp_path / "out" / "tiny.onnx").read_bytes()
    tampered = sorted((tmp_path / "cache" / "entries" / "pass").rglob("model.onnx"))
    assert tampered
    for path in tampered:  # a valid ONNX model with other weights (bit rot, a bad disk, an edit)
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.name == "b":
                init.CopyFrom(numpy_helper.from_array(np.full(4, 42.0, np.float32), "b"))
        onnx.save(model, str(path))
    second = _run(recipe, "-q", env=env)
    assert second.returncode == 0, second.stderr
    assert not np.any(_bias(tmp_path / "out" / "tiny.onnx") == 42.0), "a corrupt cache entry was published"
    assert (tmp_path / "out" / "tiny.onnx").read_bytes() == good


def test_a_pass_entry_missing_its_model_is_rebuilt(tmp_path):
    recipe, env = _tiny(tmp_path), _env(tmp_path / "cache")
    assert _run(recipe, "-q", env=env).returncode == 0
    for path in (tmp_path / "cache" / "entries" / "pass").rglob("model.onnx"):
        path.unlink()
    proc = _run(recipe, "-q", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# --------------------------------------------------------------- a backend that fails to import

def _broken_rtx_preload(tmp_path):
    """A site directory whose `onnxruntime_ep_nv_tensorrt_rtx` fails to import, as a broken or
    half-uninstalled ONNX Runtime EP wheel does: the bindings then cannot find libtensorrt_rtx.so,
    while their dist-info (and so the backend's version) is still there."""
    site = tmp_path / "site"
    (site / "onnxruntime_ep_nv_tensorrt_rtx").mkdir(parents=True)
    (site / "onnxruntime_ep_nv_tensorrt_rtx" / "__init__.py").write_text("raise ImportError('EP wheel broken')\n")
    return str(site)


def _broken_env(tmp_path):
    env = _env(tmp_path / "cache", PYTHONPATH=_broken_rtx_preload(tmp_path))
    # importing the EP wheel (an earlier test in this process did) appends its library directory
    # to LD_LIBRARY_PATH, which children inherit: without it, as in a fresh shell
    env.pop("LD_LIBRARY_PATH", None)
    return env


def test_check_names_a_backend_that_cannot_be_imported(tmp_path):
    recipe = _tiny(tmp_path)
    proc = _run("check", recipe, env=_broken_env(tmp_path))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot be imported" in proc.stdout + proc.stderr


def test_a_run_names_a_backend_that_cannot_be_imported(tmp_path):
    """Not "the TensorRT parser/builder crashed (exit code 0) ... the graph is likely one it
    cannot parse": the worker's error reply is in the pipe when the parent's request fails."""
    recipe = _tiny(tmp_path)
    proc = _run(recipe, "-q", env=_broken_env(tmp_path))
    assert proc.returncode == 7, proc.stderr
    assert "backend tensorrt_rtx cannot be imported" in proc.stderr, proc.stderr
    assert "crashed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# --------------------------------------------------------------- external data found in the wire format

def _function_model(base, value):
    """x[1,4] -> local function Bias (Constant k + Add) -> z; k's bytes in func.bin (external)."""
    from onnx.external_data_helper import convert_model_to_external_data
    k = numpy_helper.from_array(np.full((1, 4), value, np.float32), "k")
    fn = helper.make_function("local", "Bias", ["a"], ["y"],
                              [helper.make_node("Constant", [], ["k"], value=k),
                               helper.make_node("Add", ["a", "k"], ["y"])], [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Bias", ["x"], ["z"], domain="local", name="bias")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[fn], ir_version=10)
    (base / "func.bin").unlink(missing_ok=True)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        convert_model_to_external_data(model, location="func.bin", size_threshold=0, convert_attribute=True)
        onnx.save(model, "f.onnx")
    finally:
        os.chdir(cwd)
    return base / "f.onnx"


def test_external_locations_match_what_onnx_loads(tmp_path):
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    from trtpipe.review.model_names import external_locations
    path = _function_model(tmp_path, 1.0)
    model = onnx.load(str(path), load_external_data=False)
    loaded_by_onnx = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    assert loaded_by_onnx == ["func.bin"]
    assert external_locations(path) == loaded_by_onnx


def test_new_weights_of_a_local_function_are_not_served_from_the_cache(tmp_path):
    _function_model(tmp_path, 1.0)
    recipe = write_recipe(tmp_path / "f.yaml", """
        name: f
        source:
          onnx: f.onnx
        passes:
          - pass: cleanup
        precision: fp32
        validate:
          data: {seed: 3, iterations: 1}
        build:
          workspace: 256MiB
        output:
          dir: out
        """)
    env = _env(tmp_path / "cache")
    assert _run(recipe, "-q", env=env).returncode == 0
    before = (tmp_path / "f.onnx").read_bytes()
    _function_model(tmp_path, 5.0)  # same graph file, new weights in func.bin
    assert (tmp_path / "f.onnx").read_bytes() == before
    proc = _run(recipe, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    published = onnx.load(str(tmp_path / "out" / "f.source.onnx"))
    consts = [numpy_helper.to_array(n.attribute[0].t) for f in published.functions for n in f.node
              if n.op_type == "Constant"]
    assert consts and np.all(consts[0] == 5.0), f"stale source model published: {consts}"


def test_a_location_with_a_nul_byte_is_a_source_error(tmp_path):
    make_conv_model(tmp_path / "base.onnx")
    model = onnx.load(str(tmp_path / "base.onnx"))
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "a\x00b.bin"
    (tmp_path / "tiny.onnx").write_bytes(model.SerializeToString())
    recipe = write_recipe(tmp_path / "tiny.yaml", TINY_RECIPE.format(workspace="256MiB"))
    # `check` exits 3 for any problem it lists (as for a missing source); a run with the source's code
    for args, code in ((("check", recipe), 3), ((recipe, "-q"), 4)):
        proc = _run(*args, env=_env(tmp_path / "cache"))
        assert proc.returncode == code and "Traceback" not in proc.stderr, (args, proc.stderr[-1500:])
        assert "NUL byte" in proc.stderr, proc.stderr[-1500:]


# --------------------------------------------------------------- the exit path

def test_a_run_into_a_closed_pipe_prints_no_traceback(tmp_path):
    """`python pipeline.py RECIPE | head -1`."""
    recipe, env = _tiny(tmp_path), _env(tmp_path / "cache")
    assert _run(recipe, "-q", env=env).returncode == 0  # warm: the rerun prints its table at once
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, PIPELINE, str(recipe)], env=env, stdout=write,
                            stderr=subprocess.PIPE, text=True)
    os.close(write)
    with os.fdopen(read) as head:
        head.readline()
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err[-2000:]


def test_a_run_whose_stdout_is_full_says_so_without_a_traceback(tmp_path):
    recipe, env = _tiny(tmp_path), _env(tmp_path / "cache")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, PIPELINE, str(recipe)], env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=180)
    # not 0 (nothing could be said), not 1 (README: "internal error (a bug)"): a full disk
    assert proc.returncode not in (0, 1) and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr[-2000:])
