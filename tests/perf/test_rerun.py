"""A fully cached re-run (issue 13, P2): every stage from the cache, no TensorFlow, Polygraphy,
ONNX Runtime, backend, onnx or numpy imported, no model read, and the code-key scans kept between
runs. bench/rerun.py measures the time; this checks the behaviour."""

import json
import os
import re
import subprocess
import sys

from tests.helpers import REPO, TINY_RECIPE, make_conv_model, write_recipe


def _run(recipe, cache, *extra):
    env = dict(os.environ, TRTPIPE_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, *extra, str(REPO / "pipeline.py"), str(recipe), "-q"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stderr


def _imported(importtime_stderr):
    return {m.group(1).split(".")[0] for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)",
                                                           importtime_stderr)}


def test_noop_rerun_imports_no_converter_or_validator(tmp_path):
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = write_recipe(tmp_path / "tiny.yaml", TINY_RECIPE.format(workspace="256MiB"))
    cache = tmp_path / "cache"
    cold = _imported(_run(recipe, cache, "-X", "importtime"))
    assert "polygraphy" in cold  # the cold run validates
    memo = cache / "codescan.json"
    scans = json.loads(memo.read_text())["scans"]
    assert any(k.split("|")[0].endswith("trtpipe/stages/build/plan.py") for k in scans)
    warm = _imported(_run(recipe, cache, "-X", "importtime"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["cache"]["summary"].values()) == {"cached"}
    # nothing heavy: no converter, validator or backend, and no model library (keys, not models)
    heavy = {"tensorflow", "tf2onnx", "polygraphy", "onnxruntime", "onnxruntime_ep_nv_tensorrt_rtx",
             "tensorrt_rtx_bindings", "tensorrt", "onnx", "numpy", "onnx_graphsurgeon", "PIL"}
    assert cold >= {"onnx", "numpy", "onnxruntime"}  # the names are right: the cold run has them
    assert not warm & heavy, warm & heavy
    assert set(report["peak_memory_bytes"]) >= {"recipe", "source", "passes", "precision", "build", "total"}
    assert all(v > 0 for v in report["peak_memory_bytes"].values())


def test_code_change_is_seen_through_the_scan_memo(tmp_path):
    """The memo is keyed by each file's size, mtime and inode: an edited module is scanned again
    and its stage re-runs (the memo must never hide a code change)."""
    from trtpipe.cache import code
    pkg = tmp_path / "memo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import memo_pkg.b\n")
    (pkg / "b.py").write_text("X = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        code.use_memo(tmp_path / "codescan.json")
        first = code.code_digest(["memo_pkg.a"])
        assert (tmp_path / "codescan.json").is_file()
        (pkg / "b.py").write_text("X = 2  # edited\n")
        assert code.code_digest(["memo_pkg.a"]) != first
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("memo_pkg", None)
