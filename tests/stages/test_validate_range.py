"""Validation over the range a plan accepts (every profile corner) and over cuts (final outputs
that are tensors inside the source): models built here, the pipeline run for real."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import make_conv_model, write_recipe
from trtpipe import errors


def loop_over_batch_model(path):
    """What tf2onnx makes of `tf.map_fn(f, images)` exported at batch 1: a Loop whose trip count is
    the constant 1, scanning x[i] * 2. Right at batch 1; at batch N it still returns one row."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["row"], axis=0),
         helper.make_node("Mul", ["row", "two"], ["scaled"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.float32(2.0), "two")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond"], ["y"], name="map/while_loop", body=body)],
        "mapfn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(1, np.int64), "trips"), numpy_helper.from_array(np.array(True), "cond")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


PROFILE = """
build:
  profiles:
    - name: b1to4
      inputs:
        {input}: {{min: {lo}, opt: {opt}, max: {hi}}}
"""


def recipe(tmp_path, model, passes, profile=None):
    body = f"name: t\nsource: {{onnx: {model}}}\npasses:\n" + "".join(f"  - {p}\n" for p in passes)
    body += "validate: {data: {seed: 3}}\noutput: {dir: out}\n" + (profile or "")
    return write_recipe(tmp_path / "r.yaml", body)


def report(tmp_path):
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_map_fn_over_batch_fails_at_the_profile_corners_it_gets_wrong(tmp_path, run_cli):
    loop_over_batch_model(tmp_path / "m.onnx")
    path = recipe(tmp_path, "m.onnx", ["pass: dynamic_batch"],
                  PROFILE.format(input="x", lo=[1, 4], opt=[2, 4], hi=[4, 4]))
    code, out, err = run_cli(path)
    assert code == errors.EXIT_VALIDATION, err
    # the pass says what it could not do, by default (not only with -v)
    assert "warning: dynamic_batch: could not rewrite: Loop 'map/while_loop'" in err
    assert "at profile b1to4 opt: output 'y': shape [1, 4] differs from the reference's [2, 4]" in err
    assert "at profile b1to4 max: output 'y': shape [1, 4] differs from the reference's [4, 4]" in err
    assert not (tmp_path / "out" / "t.plan").exists()
    # narrowing the profile to the batch the graph is right at: validated, and the warning stays
    path = recipe(tmp_path, "m.onnx", ["pass: dynamic_batch"], PROFILE.format(input="x", lo=[1, 4], opt=[1, 4],
                                                                               hi=[1, 4]))
    code, out, err = run_cli(path)
    assert code == 0, err
    assert "could not rewrite" in err
    passes = report(tmp_path)["passes"]
    assert any("could not rewrite: Loop 'map/while_loop'" in w for p in passes for w in p.get("warnings", []))


def test_batch_generic_graph_is_compared_at_every_corner(tmp_path, run_cli):
    make_conv_model(tmp_path / "m.onnx", dynamic_batch=True)
    path = recipe(tmp_path, "m.onnx", ["pass: cleanup"],
                  PROFILE.format(input="x", lo=[1, 3, 8, 8], opt=[2, 3, 8, 8], hi=[5, 3, 8, 8]))
    code, out, err = run_cli(path)
    assert code == 0, err
    comps = {c["name"]: c for c in report(tmp_path)["validation"]["comparisons"]}
    # batch 1 is the main comparison's shape; opt and max are extra comparisons, each really run
    assert comps["source-ort vs final-ort at profile b1to4 opt"]["shapes"] == {"x": [2, 3, 8, 8]}
    assert comps["source-ort vs final-ort at profile b1to4 max"]["shapes"] == {"x": [5, 3, 8, 8]}
    for name in ("source-ort vs final-ort at profile b1to4 opt", "source-ort vs final-ort at profile b1to4 max"):
        (entry,) = comps[name]["outputs"]
        assert comps[name]["status"] == "passed" and entry["status"] == "passed" and entry["max_abs"] == 0.0
    assert "source-ort vs final-ort at profile b1to4 min" not in comps


def test_fixed_batch_source_runs_in_slices(tmp_path, run_cli):
    """Source exported at batch 1, made batch-generic by dynamic_batch: at batch 3 the final model
    is compared with three single-image source runs, concatenated."""
    make_conv_model(tmp_path / "m.onnx", batch=1)
    path = recipe(tmp_path, "m.onnx", ["pass: dynamic_batch"],
                  PROFILE.format(input="x", lo=[1, 3, 8, 8], opt=[1, 3, 8, 8], hi=[3, 3, 8, 8]))
    code, out, err = run_cli(path)
    assert code == 0, err
    comp = next(c for c in report(tmp_path)["validation"]["comparisons"] if c["name"].endswith("b1to4 max"))
    assert comp["status"] == "passed" and comp["shapes"] == {"x": [3, 3, 8, 8]}
    assert "ran 3 times" in comp["note"]


def chain_model(path):
    """x -> Relu -> a -> Mul(3) -> b -> Sigmoid -> y: `a` and `b` are tensors inside the graph."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Mul", ["a", "three"], ["b"]),
         helper.make_node("Sigmoid", ["b"], ["y"])],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.float32(3.0), "three")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def test_a_cut_at_inner_tensors_is_compared_against_them(tmp_path, run_cli):
    chain_model(tmp_path / "m.onnx")
    path = recipe(tmp_path, "m.onnx", ["{pass: set_outputs, params: {outputs: [b]}}"])
    code, out, err = run_cli(path)
    assert code == 0, err
    (main,) = [c for c in report(tmp_path)["validation"]["comparisons"] if c["name"] == "source-ort vs final-ort"]
    by_output = {e["output"]: e for e in main["outputs"]}
    assert by_output["b"]["source_output"] == "b" and by_output["b"]["status"] == "passed"
    assert by_output["b"]["max_abs"] == 0.0
    assert by_output["y"]["status"] == "skipped"  # the source's own output, cut away


@pytest.fixture
def perturbing_cut_pass():
    """A wrong pass after the cut: scales the graph output by 1.5."""
    import onnx_graphsurgeon as gs

    from trtpipe import PassContext, register_pass, registry

    @register_pass("test_scale_output", schema={"type": "object", "additionalProperties": False, "properties": {}})
    def scale(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph:
        out = graph.outputs[0]
        scaled = gs.Variable(out.name + "_x", dtype=out.dtype, shape=out.shape)
        k = gs.Constant("k15", np.array(1.5, np.float32))
        graph.nodes.append(gs.Node("Mul", inputs=[out, k], outputs=[scaled]))
        graph.outputs = [scaled]
        ctx.output_map[scaled.name] = ctx.output_map.pop(out.name, out.name)
        return graph
    yield
    registry._PASSES.pop("test_scale_output", None)


def test_a_wrong_graph_after_a_cut_fails(tmp_path, run_cli, perturbing_cut_pass):
    chain_model(tmp_path / "m.onnx")
    path = recipe(tmp_path, "m.onnx", ["{pass: set_outputs, params: {outputs: [b]}}", "pass: test_scale_output"])
    code, out, err = run_cli(path)
    assert code == errors.EXIT_VALIDATION, err
    assert "output 'b_x'" in err and "rel error" in err


def test_output_map_may_name_an_inner_tensor(tmp_path, run_cli):
    chain_model(tmp_path / "m.onnx")
    path = recipe(tmp_path, "m.onnx", ["{pass: set_outputs, params: {outputs: [b]}}", "{pass: rename, params: "
                                       "{tensors: {b: scores}}}"])
    text = path.read_text().replace("validate: {data: {seed: 3}}",
                                    "validate: {data: {seed: 3}, output_map: {scores: b}}")
    path.write_text(text)
    code, out, err = run_cli(path)
    assert code == 0, err
    (main,) = [c for c in report(tmp_path)["validation"]["comparisons"] if c["name"] == "source-ort vs final-ort"]
    entry = next(e for e in main["outputs"] if e["output"] == "scores")
    assert entry["source_output"] == "b" and entry["status"] == "passed"
    # a typo among the source's tensors gets a did-you-mean
    path.write_text(text.replace("output_map: {scores: b}", "output_map: {scores: bb}"))
    code, out, err = run_cli(path)
    assert code == errors.EXIT_RECIPE and "validate.output_map.scores: 'bb' is neither an output nor a tensor" in err


def save_model(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))
    return path


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_an_output_folded_to_a_constant_is_still_compared(tmp_path, run_cli):
    """Shape(X) as an output: fold_constants makes it the constant [1, 2]; at batch 4 the source
    says [4, 2]. The folded output must be compared (it used to be dropped as 'not an output')."""
    save_model(tmp_path / "m.onnx", [helper.make_node("Shape", ["X"], ["S"]), helper.make_node("Neg", ["X"], ["Y"])],
               [vi("X", ["b", 2])], [vi("S", [2], TensorProto.INT64), vi("Y", ["b", 2])])
    path = recipe(tmp_path, "m.onnx", ["{pass: set_input, params: {shape: [1, 2]}}", "pass: fold_constants",
                                       "pass: dynamic_batch"],
                  PROFILE.format(input="X", lo=[1, 2], opt=[2, 2], hi=[4, 2]))
    code, out, err = run_cli(path)
    assert code == errors.EXIT_VALIDATION, err
    assert "at profile b1to4 max: output 'S'" in err


def test_a_scalar_output_of_a_fixed_batch_source_is_not_guessed(tmp_path, run_cli):
    """ReduceSum over everything: the source's per-image scalars cannot be joined into a batch
    result; the corner says so (inconclusive), never a traceback or a made-up comparison."""
    save_model(tmp_path / "m.onnx", [helper.make_node("ReduceSum", ["X"], ["Y"], keepdims=0)],
               [vi("X", [1, 4])], [vi("Y", [])])
    path = recipe(tmp_path, "m.onnx", ["pass: dynamic_batch"], PROFILE.format(input="X", lo=[1, 4], opt=[1, 4],
                                                                               hi=[4, 4]))
    code, out, err = run_cli(path)
    assert code == 0, err
    rep = report(tmp_path)
    assert rep["validation"]["status"] == "inconclusive"
    (corner,) = [c for c in rep["validation"]["comparisons"] if c["name"].endswith("b1to4 max")]
    assert corner["status"] == "inconclusive" and corner["uncompared"] is True
    (entry,) = corner["outputs"]
    assert entry["status"] == "skipped" and "has no batch axis of size 1 first" in entry["reason"]


def test_integer_outputs_must_match_exactly(tmp_path, run_cli):
    """A wrong class index must fail even under a loose float tolerance meant for other outputs."""
    save_model(tmp_path / "m.onnx", [helper.make_node("Neg", ["X"], ["N"], name="neg"),
                                     helper.make_node("ArgMax", ["N"], ["A"], axis=1, keepdims=0),
                                     helper.make_node("Mul", ["X", "k"], ["F"])],
               [vi("X", [2, 6])], [vi("A", [2], TensorProto.INT64), vi("F", [2, 6])],
               [numpy_helper.from_array(np.float32(100), "k")])
    path = write_recipe(tmp_path / "r.yaml", """
        name: t
        source: {onnx: m.onnx}
        passes:
          - {pass: remove_nodes, params: {names: [neg]}}
        validate: {atol: 5}
        output: {dir: out}
        """)
    code, out, err = run_cli(path)
    assert code == errors.EXIT_VALIDATION, err
    assert "output 'A'" in err and "atol 0" in err and "output 'F'" not in err


def test_corner_data_keeps_a_range_declared_under_the_final_input_name():
    from trtpipe.stages.validate.corners import Corner, data_config
    corner = Corner("profile p max", {"xf": [2, 4]}, {"x": [1, 4]}, slices=2)
    cfg = data_config(corner, {"inputs": {"xf": {"range": [-1, 1]}}}, 5, {"xf": {"source_input": "x"}})
    assert cfg == {"seed": 5, "iterations": 2, "inputs": {"x": {"range": [-1, 1], "shape": [1, 4]}}}


def test_a_profile_of_the_wrong_rank_is_not_compared_as_if_it_fit():
    from trtpipe.stages.validate.corners import profile_corners
    contract = {"x": {"source_input": "x", "steps": [{"op": "transpose", "perm": [0, 3, 1, 2]}]}}
    (corner,) = profile_corners([{"name": "p", "inputs": {"x": {"min": [1, 3, 8], "opt": [1, 3, 8],
                                                                 "max": [1, 3, 8]}}}],
                                contract, {"x": (np.float32, [1, 8, 8, 3])}, {"x": (np.float32, [None, 3, 8, 8])})
    assert corner.problem == "the profile gives final input 'x' rank 3 [1, 3, 8], but it has rank 4"
    (corner,) = profile_corners([{"name": "p", "inputs": {"z": {"min": [1], "opt": [1], "max": [1]}}}],
                                contract, {"x": (np.float32, [1, 8, 8, 3])}, {"x": (np.float32, [None, 3, 8, 8])})
    assert corner.problem == "'z' is not an input of the final model ['x']"


def test_a_final_output_nothing_checks_makes_the_result_inconclusive(tmp_path):
    from trtpipe.stages.validate.compare import validate_models
    src = chain_model(tmp_path / "src.onnx")
    extra = onnx.load(str(src))
    extra.graph.node.append(helper.make_node("Neg", ["y"], ["z"]))
    extra.graph.output.append(vi("z", [2, 4]))
    onnx.save(extra, str(tmp_path / "fin.onnx"))
    from trtpipe.stages.passes.runner import initial_input_contract
    contract = initial_input_contract(onnx.load(str(src)))
    result = validate_models(src, tmp_path / "fin.onnx", {}, precision="fp32", input_contract=contract,
                             output_map=None, postprocess=None)
    assert result["status"] == "inconclusive"
    assert "final output 'z' corresponds to no source output or tensor, so nothing checked it" in result["reason"]
    # skipped with a reason, it is accepted
    result = validate_models(src, tmp_path / "fin.onnx", {"skip": {"z": "debug tensor"}}, precision="fp32",
                             input_contract=contract, output_map=None, postprocess=None)
    assert result["status"] == "passed"


@pytest.mark.parametrize("content, message", [
    (b"PK\x03\x04 broken zip", "cannot read"),
    ("object", "cannot read"),
    ("empty", "the arrays hold no iterations"),
])
def test_bad_npz_files_are_validation_data_errors(tmp_path, content, message):
    from trtpipe.errors import ValidationError
    from trtpipe.stages.validate.data import make_source_feeds
    path = tmp_path / "d.npz"
    if content == "object":
        np.savez(path, x=np.array([{"a": 1}], dtype=object))
    elif content == "empty":
        np.savez(path, x=np.zeros((0, 2, 4), np.float32))
    else:
        path.write_bytes(content)
    with pytest.raises(ValidationError, match=message):
        make_source_feeds({"npz": str(path)}, {"x": (np.dtype("float32"), [2, 4])}, {})
