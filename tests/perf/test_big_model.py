"""Models with weights in external data (the > 2 GiB path of issue 13, on a small model): the
weights stay references through source, passes, precision, validation and build; the stage cache
stores their data file (hard-linked from entry to entry, not copied) and never inlines them; the
published ONNX keeps them external. A tf2onnx `--large_model` zip is read as a source.
bench/big_model.py runs the same path at 2.25 GiB and measures memory."""

import importlib.util
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from trtpipe.cache import files as cache_files
from trtpipe.errors import EXIT_SOURCE

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = 3 * 4 * 256 * 256  # three 256 x 256 fp32 MatMul weights: 768 KiB


def _bench():
    spec = importlib.util.spec_from_file_location("big_model_bench", REPO / "bench" / "big_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def big(tmp_path, monkeypatch):
    """(bench module, model path, weight bytes, cache dir): a 3-layer MatMul model, external data."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRTPIPE_CACHE_DIR", str(cache))
    # the path models of at least KEEP_EXTERNAL_BYTES (1 GiB) take: weights stay references
    monkeypatch.setattr(cache_files, "KEEP_EXTERNAL_BYTES", 1)
    bench = _bench()
    path, weights = bench.make_model(tmp_path / "model", WEIGHTS, layers=3)
    assert weights == WEIGHTS and (tmp_path / "model" / "big.onnx.data").stat().st_size == WEIGHTS
    return bench, path, weights, cache


def _source_weights(path):
    model = onnx.load(str(path))  # onnx's own loader: external data read in full
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _entries(cache, kind):
    return sorted((cache / "entries" / kind).glob("*/*"))


def _assert_external(model_file, min_bytes):
    """A saved model whose weights are in `<name>.data` (or a content-named .data when published)."""
    assert model_file.stat().st_size < 16 * 1024, f"{model_file} holds its weights inline"
    m = onnx.load(str(model_file), load_external_data=False)
    big = [t for t in m.graph.initializer if np.prod(t.dims) * 2 >= 1024]
    assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big)
    data = {kv.value for t in big for kv in t.external_data if kv.key == "location"}
    assert len(data) == 1
    assert (model_file.parent / data.pop()).stat().st_size >= min_bytes


def test_fp32_weights_stay_external_through_every_stage(big, tmp_path, run_cli):
    bench, path, weights, cache = big
    recipe = bench.write_recipe(tmp_path, path, "fp32")
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, out + err
    out_dir = tmp_path / "out-fp32"
    rep = json.loads((out_dir / "report.json").read_text())
    assert rep["validation"]["status"] == "passed"
    plan = out_dir / "big-fp32.plan"
    assert plan.stat().st_size > weights  # the fp32 weights are in the plan
    # every cached model keeps its weights in its entry's data file, listed in the manifest
    inodes = set()
    # fp32 changes nothing: the precision entry records that instead of holding a second copy
    for entry in _entries(cache, "precision"):
        assert json.loads((entry / "manifest.json").read_text())["meta"]["same_as_input"] is True
        assert not (entry / "model.onnx").exists() and not (entry / "model.onnx.data").exists()
    for kind in ("source", "pass"):
        for entry in _entries(cache, kind):
            _assert_external(entry / "model.onnx", weights)
            manifest = json.loads((entry / "manifest.json").read_text())
            assert manifest["files"]["model.onnx.data"]["size"] == (entry / "model.onnx.data").stat().st_size
            inodes.add((entry / "model.onnx.data").stat().st_ino)
    assert len(_entries(cache, "pass")) == 3
    assert len(inodes) == 1  # the passes changed no weight: one data file, hard-linked, never copied
    # published: the final and source ONNX keep external weights, equal to the source's
    for name in ("big-fp32.onnx", "big-fp32.source.onnx"):
        _assert_external(out_dir / name, weights)
    final = _source_weights(out_dir / "big-fp32.onnx")
    for name, values in _source_weights(path).items():
        np.testing.assert_array_equal(final[name], values)
    # set_outputs cut the side branch
    assert [o.name for o in onnx.load(str(out_dir / "big-fp32.onnx"), load_external_data=False).graph.output] == ["y"]
    # a re-run takes everything from the cache
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, out + err
    rep = json.loads((out_dir / "report.json").read_text())
    assert set(rep["cache"]["summary"].values()) == {"cached"}


def test_fp16_streams_weights_into_the_entry(big, tmp_path, run_cli):
    bench, path, weights, cache = big
    recipe = bench.write_recipe(tmp_path, path, "fp16")
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, out + err
    out_dir = tmp_path / "out-fp16"
    rep = json.loads((out_dir / "report.json").read_text())
    assert rep["validation"]["status"] == "passed"
    (entry,) = _entries(cache, "precision")
    _assert_external(entry / "model.onnx", weights // 2)
    final = onnx.load(str(out_dir / "big-fp16.onnx"))
    low = {t.name: onnx.numpy_helper.to_array(t) for t in final.graph.initializer
           if t.data_type == onnx.TensorProto.FLOAT16}
    src = _source_weights(path)
    assert len(low) == len(src)
    for name, values in src.items():  # each weight converted once, rounded to nearest even
        np.testing.assert_array_equal(low[f"{name}_fp16"], values.astype(np.float16))
    assert (out_dir / "big-fp16.plan").stat().st_size > weights // 2


def _zip_like_tf2onnx(path, dest, members=None):
    """tf2onnx --large_model's layout: __MODEL_PROTO.onnx plus the external data files, flat."""
    with zipfile.ZipFile(dest, "w") as z:
        z.write(path, "__MODEL_PROTO.onnx")
        for name in members or [path.name + ".data"]:
            z.write(path.parent / (path.name + ".data"), name)
    return dest


def test_tf2onnx_large_model_zip_is_a_source(big, tmp_path, run_cli):
    bench, path, weights, cache = big
    archive = _zip_like_tf2onnx(path, tmp_path / "big.zip")
    shutil.rmtree(path.parent)  # only the zip is left
    recipe = bench.write_recipe(tmp_path, archive, "fp32")
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, out + err
    rep = json.loads((tmp_path / "out-fp32" / "report.json").read_text())
    assert rep["validation"]["status"] == "passed"
    assert rep["source"]["kind"] == "onnx"
    _assert_external(tmp_path / "out-fp32" / "big-fp32.source.onnx", weights)


def test_large_model_zip_with_a_path_member_is_refused(big, tmp_path, run_cli):
    bench, path, _, _ = big
    archive = _zip_like_tf2onnx(path, tmp_path / "evil.zip", members=["../big.onnx.data"])
    recipe = bench.write_recipe(tmp_path, archive, "fp32")
    code, out, err = run_cli(recipe, "-q")
    assert code == EXIT_SOURCE
    assert "'../big.onnx.data' is not a plain file name" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out-fp32" / "report.json").exists()


def test_small_external_data_is_loaded_and_folds(tmp_path, monkeypatch, run_cli):
    """Below KEEP_EXTERNAL_BYTES the weights are loaded as before: constant folding runs them in
    ONNX Runtime (which refuses references it did not load from a file)."""
    monkeypatch.setenv("TRTPIPE_CACHE_DIR", str(tmp_path / "cache"))
    from onnx import helper, numpy_helper
    w = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
                               helper.make_node("MatMul", ["x", "wt"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", 1, [1, 128])],
                              [helper.make_tensor_value_info("y", 1, [1, 128])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "model").mkdir()
    onnx.save_model(model, str(tmp_path / "model" / "big.onnx"), save_as_external_data=True,
                    location="big.onnx.data", size_threshold=0)
    recipe = _bench().write_recipe(tmp_path, tmp_path / "model" / "big.onnx", "fp32")
    code, out, err = run_cli(recipe, "-q")
    assert code == 0, out + err
    final = onnx.load(str(tmp_path / "out-fp32" / "big-fp32.onnx"))
    assert [n.op_type for n in final.graph.node] == ["MatMul"]  # the Transpose was folded
    (folded,) = final.graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(folded), w.T)


def test_external_data_reaching_past_its_file_is_a_source_error(big, tmp_path, run_cli):
    bench, path, weights, _ = big
    data = path.parent / "big.onnx.data"
    with open(data, "r+b") as f:
        f.truncate(weights - 100)
    recipe = bench.write_recipe(tmp_path, path, "fp32")
    code, out, err = run_cli(recipe, "-q")
    assert code == EXIT_SOURCE
    assert "could not load external data (big.onnx.data)" in err and "'w2'" in err
    assert "Traceback" not in err
