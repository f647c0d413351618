"""Finding the guilty pass (trtpipe/stages/validate/bisect.py): a deliberately wrong third-party pass
sits between correct ones; the failed run and `python pipeline.py bisect` both name it, with its
recipe line and the node it added; without it every pass agrees."""

import json

import numpy as np
import pytest

from tests.helpers import write_recipe
from trtpipe import registry
from trtpipe.recipe.load import load_recipe

WRONG = "scale_output_wrongly"

RECIPE = """
    name: guilty
    source:
      onnx: tiny.onnx
    passes:
      - pass: cleanup
      - pass: scale_output_wrongly
      - pass: fold_constants
      - pass: cleanup
    {validate}
    output:
      dir: out
    """


@pytest.fixture
def wrong_pass():
    """A test-only pass with a bug: it multiplies the graph's first output by 1.5 (a Mul node)."""
    @registry.register_pass(WRONG, schema={"type": "object", "additionalProperties": False, "properties": {}})
    def scale_output_wrongly(graph, params, ctx):
        """Scale the first output by 1.5 (a bug a pass could have)."""
        import onnx_graphsurgeon as gs
        out = graph.outputs[0]
        producer = out.inputs[0]
        unscaled = gs.Variable(out.name + "_unscaled", dtype=out.dtype, shape=out.shape)
        producer.outputs[0] = unscaled
        graph.nodes.append(gs.Node("Mul", name="wrong_scale", outputs=[out],
                                   inputs=[unscaled, gs.Constant("wrong_k", np.array(1.5, dtype=np.float32))]))
        return graph
    yield WRONG
    registry._PASSES.pop(WRONG, None)


def _recipe(tmp_path, validate="", wrong=True):
    body = RECIPE.replace("{validate}", validate)
    if not wrong:
        body = body.replace(f"      - pass: {WRONG}\n", "")
    return write_recipe(tmp_path / "r.yaml", body)


def test_failed_run_and_bisect_name_the_wrong_pass(tmp_path, run_cli, wrong_pass, tiny_onnx):
    recipe = _recipe(tmp_path)
    where = load_recipe(recipe).locate(("passes", 1))
    assert where.endswith("r.yaml:6:5"), where  # the wrong pass's line in the recipe

    code, out, err = run_cli(recipe)
    assert code == 6, err
    assert f"first diverging pass: passes[1] {WRONG} ({where}): output 'y' max abs error" in err, err
    assert "nodes changed: added Mul 'wrong_scale'" in err, err
    assert "passes[0] cleanup" not in err.split("first diverging pass:")[1]  # the correct pass before is not blamed
    assert not (tmp_path / "out" / "report.json").exists()

    # On demand: source and passes come from the stage cache the failed run filled.
    code, out, err = run_cli("bisect", recipe)
    assert code == 6, err
    assert "(cached)" in out and "passes[3] cleanup (cached)" in out
    assert f"bisect: first diverging pass: passes[1] {WRONG} ({where}): output 'y'" in out, out
    assert f"first diverging pass: passes[1] {WRONG} ({where}): output 'y'" in err
    assert "added Mul 'wrong_scale'" in err
    rows = {line.split("│")[1].strip().split(" ")[0]: line for line in out.splitlines()
            if line.startswith("│") and "passes[" in line}
    assert "passed" in rows["passes[0]"] and "failed" in rows["passes[1]"], out
    assert "failed" in rows["passes[2]"] and "failed" in rows["passes[3]"], out  # all passes are compared


def test_bisect_without_the_wrong_pass_agrees(tmp_path, run_cli, tiny_onnx):
    recipe = _recipe(tmp_path, wrong=False)
    code, out, err = run_cli("bisect", recipe)
    assert code == 0, err
    assert "every pass agrees with the source model (3 pass(es)" in out, out
    assert "first diverging pass" not in out + err


def test_bisect_never_and_size_threshold(tmp_path, run_cli, wrong_pass, tiny_onnx, monkeypatch):
    recipe = _recipe(tmp_path, validate="validate: {bisect: never}")
    code, _, err = run_cli(recipe)
    assert code == 6 and "output 'y'" in err, err
    assert "first diverging pass" not in err  # validation still fails; no bisect

    from trtpipe.stages.validate import bisect
    monkeypatch.setattr(bisect, "MAX_MODEL_BYTES", 100)  # the tiny model is over this
    recipe = _recipe(tmp_path)
    code, _, err = run_cli(recipe)
    assert code == 6 and "output 'y'" in err, err
    assert "first diverging pass" not in err
    monkeypatch.setattr(bisect, "MAX_MODEL_BYTES", 64 * 2**20)
    code, _, err = run_cli(recipe)  # validation is not cached when it fails: bisect runs now
    assert code == 6 and f"first diverging pass: passes[1] {WRONG}" in err, err


def test_bisect_always_is_recorded_in_the_report(tmp_path, run_cli, tiny_onnx):
    recipe = _recipe(tmp_path, validate="validate: {bisect: always}", wrong=False)
    code, _, err = run_cli(recipe, "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    result = report["validation"]["bisect"]
    assert result["status"] == "agreed" and result["first"] is None
    assert [r["label"] for r in result["passes"]] == ["passes[0]", "passes[1]", "passes[2]"]
    assert all(r["status"] == "passed" and r["outputs"][0]["output"] == "y" for r in result["passes"])
    assert all(r["outputs"][0]["max_abs"] <= 1e-4 for r in result["passes"])


def test_node_changes_lists_added_removed_and_changed(tmp_path):
    import onnx
    from onnx import helper

    from tests.helpers import make_conv_model
    from trtpipe.stages.validate.bisect import describe_changes, node_changes
    before = make_conv_model(tmp_path / "a.onnx")
    model = onnx.load(str(before))
    relu = model.graph.node[1]
    model.graph.node.remove(relu)
    model.graph.node.append(helper.make_node("Sigmoid", ["c"], ["y"], name="sig"))
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(np.ones(4, np.float32), "b"))
    after = tmp_path / "b.onnx"
    onnx.save(model, str(after))
    changes = node_changes(before, after)
    assert changes == {"added": ["Sigmoid 'sig'"], "removed": ["Relu 'relu'"],
                       "changed": ["Conv 'conv' (values of 'b')"], "initializers": ["b"]}
    text = describe_changes(changes)
    assert text == "added Sigmoid 'sig'; removed Relu 'relu'; changed Conv 'conv' (values of 'b')"


def test_the_recipes_output_map_applies_to_the_final_model_only(tmp_path, run_cli):
    """validate.output_map names FINAL outputs: an earlier pass's model may have an output of the same
    name that is something else (here the source's own `Y`, before the cut and rename)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        [helper.make_node("Neg", ["X"], ["n"], name="neg"), helper.make_node("Add", ["n", "three"], ["r"]),
         helper.make_node("Sin", ["r"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.float32(3.0), "three")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10),
              str(tmp_path / "m.onnx"))
    body = """
        name: t
        source: {{onnx: m.onnx}}
        passes:
          - pass: cleanup
          - {{pass: set_outputs, params: {{outputs: [r]}}}}
          - {{pass: rename, params: {{tensors: {{r: Y}}}}}}
        {extra}
        validate: {{output_map: {{Y: r}}, bisect: always}}
        output: {{dir: out}}
        """
    path = write_recipe(tmp_path / "r.yaml", body.format(extra=""))
    code, out, err = run_cli(path)
    assert code == 0, err
    code, out, err = run_cli("bisect", path)
    assert code == 0 and "every pass agrees" in out, out + err
    # a wrong pass after the rename is the one named, not the first pass
    path = write_recipe(tmp_path / "r.yaml", body.format(extra="  - {pass: remove_nodes, params: {names: [neg]}}"))
    code, out, err = run_cli(path)
    assert code == 6 and "first diverging pass: passes[3] remove_nodes" in err, err
