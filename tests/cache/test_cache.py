"""Stage cache: what a re-run reuses, what an edit re-runs, corrupt and failed entries, --force /
--from, `cache info|prune`, stage_status for explain, models with external data."""

import hashlib
import json

import onnx
import pytest

from tests.helpers import TINY_RECIPE, make_conv_model, write_recipe
from trtpipe import cache, errors
from trtpipe.cache import files as cache_files


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(path))
    return path


RECIPE = TINY_RECIPE


@pytest.fixture
def tiny(tmp_path, cache_dir):
    make_conv_model(tmp_path / "tiny.onnx")

    def recipe(workspace="256MiB", body=RECIPE):
        return write_recipe(tmp_path / "tiny.yaml", body.format(workspace=workspace))
    return recipe


def conv_model(filters):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((filters, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, filters, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def report(tmp_path, out="out"):
    return json.loads((tmp_path / out / "report.json").read_text())


def statuses(rep):
    return {stage: v["status"] for stage, v in rep["cache"]["stages"].items()}


def forbid(monkeypatch, *targets):
    """Make stage work raise: a cached stage must not call it."""
    for module, name in targets:
        def boom(*a, _name=name, **k):
            raise AssertionError(f"{_name} ran although it was cached")
        monkeypatch.setattr(module, name, boom)


def stage_work():
    import trtpipe.stages.build.plan
    import trtpipe.stages.passes.runner
    import trtpipe.stages.precision.mixed
    import trtpipe.stages.source.load
    import trtpipe.stages.validate.compare
    return [(trtpipe.stages.source.load, "load_source"), (trtpipe.stages.passes.runner, "run_passes"),
            (trtpipe.stages.precision.mixed, "apply_precision"), (trtpipe.stages.validate.compare, "validate_models"),
            (trtpipe.stages.build.plan, "build_plan")]


def test_noop_rerun_does_no_stage_work(tiny, tmp_path, run_cli, monkeypatch, cache_dir):
    code, out, err = run_cli(tiny(), "--quiet")
    assert code == 0, err
    first = report(tmp_path)
    assert set(statuses(first).values()) == {"ran"}
    assert first["cache"]["dir"] == str(cache_dir)
    forbid(monkeypatch, *stage_work())
    code, out, err = run_cli(tiny(), "--quiet")
    assert code == 0, err
    second = report(tmp_path)
    assert set(statuses(second).values()) == {"cached"}
    assert "all stages cached" in out and "cached" in (tmp_path / "out" / "report.md").read_text()
    assert second["artifacts"] == first["artifacts"]  # same bytes, sha256 recorded for each
    assert second["validation"] == first["validation"] and second["passes"] == first["passes"]
    assert set(first["artifacts"]) == {"tiny.source.onnx", "tiny.onnx", "tiny.plan", "tiny.errors.png"}


def test_build_settings_edit_runs_only_the_build(tiny, tmp_path, run_cli, monkeypatch):
    assert run_cli(tiny(), "--quiet")[0] == 0
    forbid(monkeypatch, *[t for t in stage_work() if t[1] != "build_plan"])
    code, _, err = run_cli(tiny(workspace="128MiB"), "--quiet")
    assert code == 0, err
    st = statuses(report(tmp_path))
    assert st.pop("build") == "ran" and set(st.values()) == {"cached"}
    published = (tmp_path / "out" / "tiny.plan").read_bytes()
    assert report(tmp_path)["artifacts"]["tiny.plan"]["sha256"] == hashlib.sha256(published).hexdigest()


def test_pass_parameter_edit_reruns_that_pass(tiny, tmp_path, run_cli):
    assert run_cli(tiny(), "--quiet")[0] == 0
    edited = RECIPE.replace("- pass: cleanup", "- pass: cleanup\n        params: {{toposort: false}}")
    code, _, err = run_cli(tiny(body=edited), "--quiet")
    assert code == 0, err
    st = statuses(report(tmp_path))
    assert st["source"] == "cached" and st["passes[0]"] == "cached" and st["passes[1]"] == "ran"
    # the stages after it are keyed by the model's content: an identical output is still cached
    assert st["precision"] == st["validate"] == st["build"] == "cached"


def test_corrupt_entries_are_discarded_and_rebuilt(tiny, tmp_path, run_cli, cache_dir):
    assert run_cli(tiny(), "--quiet")[0] == 0
    plan_entry = next((cache_dir / "entries" / "build").glob("*/*"))
    (plan_entry / "plan").write_bytes(b"\0" * (plan_entry / "plan").stat().st_size)
    manifest = next((cache_dir / "entries" / "source").glob("*/*")) / cache.MANIFEST
    manifest.write_text(manifest.read_text().replace('"kind"', '"kynd"', 1))
    code, _, err = run_cli(tiny(), "--quiet")
    assert code == 0, err
    assert "discarded, it will be rebuilt" in err and "plan does not match its sha256" in err
    st = statuses(report(tmp_path))
    assert st["build"] == "ran" and st["source"] == "ran"
    assert cache.Cache(cache_dir).verify_all() == []
    assert run_cli(tiny(), "--quiet")[0] == 0 and set(statuses(report(tmp_path)).values()) == {"cached"}


def test_a_corrupt_intermediate_model_restarts_the_run(tiny, tmp_path, run_cli, cache_dir):
    """Pass outputs are verified when loaded; a bad one makes the run start over without it."""
    assert run_cli(tiny(), "--quiet")[0] == 0
    edited = RECIPE.replace("- pass: cleanup", "- pass: cleanup\n        params: {{toposort: false}}")
    key_dirs = sorted((cache_dir / "entries" / "pass").glob("*/*"), key=lambda d: d.stat().st_mtime)
    fold = next(d for d in key_dirs if json.loads((d / cache.MANIFEST).read_text())["meta"]["stats"]["pass"]
                == "fold_constants")
    (fold / cache.MODEL).write_bytes(b"\0" * (fold / cache.MODEL).stat().st_size)
    code, _, err = run_cli(tiny(body=edited), "--quiet")
    assert code == 0, err
    assert "starting the run over" in err
    assert statuses(report(tmp_path))["passes[0]"] == "ran"


def test_failed_stages_are_never_cached(tiny, tmp_path, run_cli, cache_dir):
    bad_validation = RECIPE.replace("precision: fp32", "precision: fp16").replace(
        "data: {{seed: 3, iterations: 1}}", "data: {{seed: 3, iterations: 1}}\n      atol: 0.0\n      rtol: 0.0")
    code, _, err = run_cli(tiny(body=bad_validation), "--quiet")
    assert code == errors.EXIT_VALIDATION, err
    assert not list((cache_dir / "entries" / "validate").glob("*/*"))
    assert list((cache_dir / "entries" / "precision").glob("*/*"))  # the stages before it are
    bad_build = RECIPE.replace("workspace: {workspace}", "workspace: {workspace}\n      profiles:\n        - name: p\n"
                               "          inputs: {{nope: {{min: [1], opt: [1], max: [1]}}}}")
    code, _, err = run_cli(tiny(body=bad_build), "--quiet")
    assert code == errors.EXIT_RECIPE and "nope" in err
    assert not list((cache_dir / "entries" / "build").glob("*/*"))
    assert not list((cache_dir / "tmp").iterdir())
    assert not list((tmp_path / "out").glob("*.plan"))


def test_force_and_from(tiny, tmp_path, run_cli):
    assert run_cli(tiny(), "--quiet")[0] == 0
    assert run_cli(tiny(), "--quiet", "--force")[0] == 0
    assert set(statuses(report(tmp_path)).values()) == {"forced"}
    assert run_cli(tiny(), "--quiet", "--from", "build")[0] == 0
    st = statuses(report(tmp_path))
    assert st.pop("build") == "forced" and set(st.values()) == {"cached"}
    assert run_cli(tiny(), "--quiet", "--from", "cleanup")[0] == 0
    st = statuses(report(tmp_path))
    assert (st["passes[0]"], st["passes[1]"], st["precision"], st["build"]) == ("cached", "forced", "forced", "forced")
    code, _, err = run_cli(tiny(), "--from", "buidl")
    assert code == errors.EXIT_USAGE and "did you mean 'build'" in err


def test_cache_dir_flag_env_and_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cache.ENV, raising=False)
    assert cache.resolve_dir() == (tmp_path / "xdg" / "trt-pipeline", "default (XDG cache directory)")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "env"))
    assert cache.resolve_dir()[0] == tmp_path / "env"
    assert cache.resolve_dir(str(tmp_path / "flag")) == (tmp_path / "flag", "--cache-dir")


def test_cache_dir_flag_is_used(tiny, tmp_path, run_cli, cache_dir):
    code, _, err = run_cli(tiny(), "--quiet", "--cache-dir", tmp_path / "elsewhere")
    assert code == 0, err
    assert report(tmp_path)["cache"]["dir"] == str(tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere" / "entries" / "build").glob("*/*")) and not cache_dir.exists()


def test_cache_info_and_prune(tiny, tmp_path, run_cli, cache_dir):
    assert run_cli(tiny(), "--quiet")[0] == 0
    code, out, _ = run_cli("cache", "info", "--verify")
    assert code == 0
    assert str(cache_dir) in out and "TRTPIPE_CACHE_DIR" in out and "all entries intact" in out
    for stage in ("source", "pass", "precision", "validate", "build"):
        assert stage in out
    assert "timing cache" not in out  # TensorRT-RTX builds keep none (stages/build/plan.py)
    code, out, _ = run_cli("cache", "prune", "--older-than", "1d")
    assert code == 0 and "removed 0 entries" in out
    code, out, _ = run_cli("cache", "prune", "--dry-run")
    assert code == 0 and "would remove 7 entries" in out  # 5 stages + 1 pass + the report's pictures
    code, out, err = run_cli("cache", "prune")  # not a terminal: nothing asked, nothing removed
    assert code == errors.EXIT_USAGE and "say `--all`" in err and "removed" not in out
    code, out, _ = run_cli("cache", "prune", "--all")
    assert code == 0 and "removed 7 entries" in out
    assert not list((cache_dir / "entries").glob("*/*/*"))
    code, _, err = run_cli("cache", "prune", "--older-than", "soon")
    assert code == errors.EXIT_USAGE and "30d" in err
    assert cache.parse_age("12h") == 43200 and cache.parse_age("2w") == 14 * 86400


def test_stage_status_for_explain(tiny, tmp_path, run_cli, cache_dir):
    recipe = tiny()
    labels = ["source", "passes[0]", "passes[1]", "precision", "validate", "build", "publish"]
    assert cache.stage_status(recipe) == {label: "would run" for label in labels}
    assert run_cli(recipe, "--quiet")[0] == 0
    assert cache.stage_status(recipe) == {**{label: "cached" for label in labels}, "publish": "would run"}
    edited = tiny(workspace="128MiB")
    st = cache.stage_status(edited)
    assert st["build"] == "would run" and st["validate"] == "cached" and st["passes[1]"] == "cached"
    assert cache.stage_status(edited, cache_dir=tmp_path / "empty")["source"] == "would run"


def test_stage_status_does_not_import_tensorflow(tmp_path):
    """A SavedModel recipe's status is computed from file hashes and versions, not by converting."""
    import subprocess
    import sys

    from tests.helpers import REPO
    recipe = write_recipe(tmp_path / "sm.yaml", f"""
        name: sm
        source:
          saved_model: {REPO / 'models' / 'effdet_demo' / 'saved_model'}
        output:
          dir: out
        """)
    code = ("import sys; from trtpipe.cache import stage_status; "
            f"print(stage_status({str(recipe)!r}, cache_dir={str(tmp_path / 'c')!r})['source']); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == ["would", "run", "False"]


def test_external_data_models_are_cached_as_files(tmp_path, run_cli, cache_dir, monkeypatch):
    """Large models keep their weights in `.data` files, in the cache and in the output."""
    monkeypatch.setattr(cache_files, "EXTERNAL_DATA_BYTES", 1)
    model = conv_model(filters=32)  # weights over the 1 KiB that go to a .data file
    onnx.save_model(model, str(tmp_path / "big.onnx"), save_as_external_data=True, location="big.weights",
                    size_threshold=0)
    recipe = write_recipe(tmp_path / "big.yaml", RECIPE.format(workspace="256MiB").replace("tiny.onnx", "big.onnx"))
    assert run_cli(recipe, "--quiet")[0] == 0
    out = tmp_path / "out"
    # weights files are published under their content's name (regular files: onnx refuses linked ones)
    data = sorted(p.name for p in out.glob("*.data"))
    assert [n.split(".onnx.")[0] for n in data] == ["tiny", "tiny.source"]
    assert all(len(n.split(".")[-2]) == 16 for n in data)
    final = onnx.load(str(out / "tiny.onnx"))  # loads its weights from the renamed .data file
    assert final.graph.initializer and all(report(tmp_path)["artifacts"][n]["size"] > 0 for n in data)
    entries = list((cache_dir / "entries" / "source").glob("*/*"))
    assert (entries[0] / (cache.MODEL + ".data")).exists()
    assert run_cli(recipe, "--quiet")[0] == 0 and set(statuses(report(tmp_path)).values()) == {"cached"}
    (tmp_path / "big.weights").write_bytes(b"\1" * (tmp_path / "big.weights").stat().st_size)
    code, _, err = run_cli(recipe, "--quiet")  # new weights in the external file: a new source key
    assert code == 0, err
    assert statuses(report(tmp_path))["source"] == "ran"


def test_no_timing_cache_on_tensorrt_rtx(tiny, tmp_path, run_cli, cache_dir):
    """NVIDIA's TensorRT-RTX docs ("Timing Cache Migration"): timing-cache calls do not change the
    plan and force a GPU query during ahead-of-time builds. So a TensorRT-RTX build keeps none in
    the stage cache, and a recipe's build.timing_cache is left untouched, with a note saying why."""
    assert run_cli(tiny(), "--quiet")[0] == 0
    assert not list(cache_dir.glob("timing/*"))
    assert not any("timing cache" in w for w in report(tmp_path)["build"]["warnings"])
    timing = tmp_path / "mine.timing"
    body = RECIPE.replace("workspace: {workspace}", "workspace: {workspace}\n      timing_cache: mine.timing")
    code, _, err = run_cli(tiny(workspace="128MiB", body=body), "--quiet")
    assert code == 0, err
    assert not timing.exists() and not list(cache_dir.glob("timing/*"))
    warnings = report(tmp_path)["build"]["warnings"]
    assert any("build.timing_cache mine.timing is not used with tensorrt_rtx" in w for w in warnings), warnings



def test_weights_beside_a_small_inline_bias_are_hard_linked_between_entries(tmp_path, monkeypatch):
    """A pass that changes no weight stores its entry's data file as a hard link of the one before,
    also when the model holds a small tensor load_model read inline (a 1000-element bias)."""
    import os

    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    monkeypatch.setattr(cache_files, "KEEP_EXTERNAL_BYTES", 1 << 20)  # 4 MB of weights: kept as references
    weight = numpy_helper.from_array(np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024), "W")
    bias = numpy_helper.from_array(np.arange(1000, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Slice", ["m", "s", "e"], ["y0"]),
         helper.make_node("Add", ["y0", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])],
        [weight, bias, numpy_helper.from_array(np.array([0], np.int64), "s"),
         numpy_helper.from_array(np.array([1000], np.int64), "e")])
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(helper.make_model(graph), str(src), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    store = cache.Cache(tmp_path / "cache").open()
    model = cache_files.load_model(src)
    entries = []
    for key in ("a" * 64, "b" * 64):
        with store.writer("pass", key) as w:
            w.save_model(model)
            entries.append(w.commit())
    first, second = (os.stat(e.path("model.onnx.data")) for e in entries)
    assert first.st_ino == second.st_ino  # one inode, no copy
    for entry in entries:  # and both read back whole, the bias from the protobuf
        again = cache_files.load_model(entry.path("model.onnx"))
        values = {t.name: (cache_files.read_tensor(t) if cache_files.is_external(t) else numpy_helper.to_array(t))
                  for t in cache_files.all_tensors(again)}
        assert np.array_equal(values["W"], numpy_helper.to_array(weight))
        assert np.array_equal(values["b"], numpy_helper.to_array(bias))
