"""End-to-end runs of real recipes: ONNX model-zoo graphs and a Keras SavedModel, plus the pass
registry's entry points and the CLI's listing."""

import json
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import REPO, write_recipe
from trtpipe import registry


@pytest.mark.parametrize("model", ["resnet50", "inception_v2", "densenet121"])
def test_zoo_recipes_build(model, tmp_path, run_cli):
    code, out, err = run_cli(REPO / "recipes" / f"zoo-{model}.yaml", "--output-dir", tmp_path, "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["backend"]["name"] == "tensorrt_rtx"
    # The onnx wheel's "light" zoo graphs compute the same output for every input (their weights
    # are placeholders): the comparison proves nothing, and the run says so instead of "passed".
    assert report["validation"]["status"] == "inconclusive"
    assert "constant: all 2000 values are" in report["validation"]["reason"]
    assert "validation inconclusive" in out
    plan = tmp_path / f"zoo-{model}.plan"
    assert plan.stat().st_size > 500_000
    assert report["artifacts"][plan.name]["sha256"] and "done" in out


@pytest.fixture(scope="module")
def keras_savedmodel(tmp_path_factory):
    import tensorflow as tf
    tf.keras.utils.set_random_seed(3)
    model = tf.keras.Sequential([
        tf.keras.Input((32, 32, 3), batch_size=1, name="image"),
        tf.keras.layers.Conv2D(8, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(5, activation="softmax", name="probs"),
    ])
    path = tmp_path_factory.mktemp("keras") / "sm"
    model.export(str(path), verbose=False)
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    return path, x, model(x).numpy()


@pytest.mark.slow
def test_keras_savedmodel_converts_and_builds(keras_savedmodel, tmp_path, run_cli):
    path, _, _ = keras_savedmodel
    recipe = write_recipe(tmp_path / "keras.yaml", f"""
        name: keras-small
        source:
          saved_model: {path}
          opset: 17
        passes:
          - pass: set_input        # keras exports a dynamic batch; pin it
            params: {{name: image, shape: [1, 32, 32, 3]}}
          - pass: sanitize
        build:
          workspace: 512MiB
        output:
          dir: out
        """)
    code, out, err = run_cli(recipe)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source"]["kind"] == "saved_model"
    assert report["validation"]["status"] == "passed"
    assert (tmp_path / "out" / "keras-small.plan").stat().st_size > 10_000


def test_passes_command_lists_every_pass(run_cli):
    code, out, _ = run_cli("passes")
    assert code == 0
    for name in ["fold_constants", "cleanup", "set_input", "replace_preprocessing", "fix_resize", "nms",
                 "set_outputs", "rename", "remove_nodes", "reshape_helpers", "dynamic_batch", "sanitize"]:
        assert name in out
    code, out, _ = run_cli("passes", "nms")
    assert code == 0 and "efficient_nms" in out and "split" in out
    code, _, err = run_cli("passes", "nmss")
    assert code == 2 and "did you mean 'nms'" in err


def test_help_lists_commands_and_exit_codes(capsys):
    from trtpipe.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "7  build error" in text and "check RECIPE" in text


def test_third_party_pass_through_entry_point(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "acme_passes-1.0.dist-info").mkdir(parents=True)
    (site / "acme_passes-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-passes\nVersion: 1.0\n")
    (site / "acme_passes-1.0.dist-info" / "entry_points.txt").write_text(
        "[trt_pipeline.passes]\nacme_noop = acme_passes\n")
    (site / "acme_passes.py").write_text(textwrap.dedent('''
        """Acme's pass package."""
        from trtpipe import register_pass

        @register_pass("acme_noop", schema={"type": "object", "additionalProperties": False,
                                            "properties": {"level": {"type": "integer", "default": 1}}})
        def acme_noop(graph, params, ctx):
            """Do nothing, loudly."""
            ctx.log(f"acme level {params['level']}")
            return graph
        '''))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    info = registry.get("acme_noop")
    assert info is not None and info.summary == "Do nothing, loudly."
    assert info.schema["properties"]["level"]["default"] == 1
    sys.modules.pop("acme_passes", None)


@pytest.fixture
def perturbing_pass(monkeypatch):
    """A deliberately wrong pass (test-only): scales one Conv weight of the graph by 1.5."""
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))

    @registry.register_pass("perturb_weight", schema={"type": "object", "additionalProperties": False,
                                                      "properties": {"node": {"type": "string"}}})
    def perturb_weight(graph, params, ctx):
        """Scale a Conv's weights (a bug a pass could have)."""
        import onnx_graphsurgeon as gs
        conv = next(n for n in graph.nodes if n.name == params["node"])
        weight = conv.inputs[1]
        conv.inputs[1] = gs.Constant(weight.name + "_perturbed", weight.values * 1.5)
        return graph
    return perturb_weight


def test_wrong_pass_is_caught_by_validation(tmp_path, run_cli, perturbing_pass, tiny_onnx):
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: wrong
        source:
          onnx: tiny.onnx
        passes:
          - pass: perturb_weight
            params: {node: conv}
        output:
          dir: out
        """)
    code, out, err = run_cli(recipe)
    assert code == 6, err
    assert "output 'y'" in err and "atol" in err  # the failing output and its tolerance are named
    assert not list(tmp_path.rglob("*.plan")) and not (tmp_path / "out" / "report.json").exists()


def test_no_validate_is_recorded(tmp_path, run_cli, tiny_onnx):
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: novalidate
        source:
          onnx: tiny.onnx
        output:
          dir: out
        """)
    code, _, err = run_cli(recipe, "--no-validate")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["options"]["validate"] is False
    assert report["validation"]["status"] == "skipped" and "--no-validate" in report["validation"]["reason"]
    assert "--no-validate" in (tmp_path / "out" / "report.md").read_text()
