"""Validation that proves nothing is reported as such: uninformative outputs (constant, all zero,
input-independent) make the result "inconclusive", `validate.require_informative` makes that exit 6;
the table states its pass rule and the bound that held; detection counts add up; non-finite
tolerances are recipe errors; `--no-validate` is loud."""

import io
import json

import jsonschema
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from tests.helpers import REPO, make_conv_model, write_recipe
from trtpipe.errors import EXIT_RECIPE, EXIT_VALIDATION, ValidationError
from trtpipe.stages.passes.runner import initial_input_contract
from trtpipe.stages.validate import detections as det
from trtpipe.stages.validate import informative
from trtpipe.stages.validate.compare import print_table, validate_models
from trtpipe.stages.validate.data import make_source_feeds, model_io

F32 = TensorProto.FLOAT
RULE = ("rule: an output passes when, in every iteration, its error statistic is within atol (abs error) OR "
        "within rtol (rel error = |candidate - reference| / |reference|, the reference being the model named "
        "second); 'held' names the bound that held")


def save(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def vi(name, shape):
    return helper.make_tensor_value_info(name, F32, shape)


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def constant_softmax(path):
    """probs = Softmax(x * 0 + 0): 0.1 in each of 10 classes whatever x is."""
    return save(path, [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Softmax", ["z"], ["probs"])],
                [vi("x", [1, 10])], [vi("probs", [1, 10])], [const("zero", [0.0])])


def zeros_model(path):
    """y = Relu(-x - 1): x in [0, 1] makes every value 0."""
    return save(path, [helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Sub", ["n", "one"], ["s"]),
                       helper.make_node("Relu", ["s"], ["y"])],
                [vi("x", [1, 8])], [vi("y", [1, 8])], [const("one", [1.0])])


def offset(bias):
    """y = x * 0 + `bias` (an initializer): whatever x is."""
    return [helper.make_node("Mul", ["x", "zero"], ["z"]), helper.make_node("Add", ["z", bias], ["y"])]


def biased(path, bias, scale=1.0):
    """y = x * scale + bias on x [1, 8]."""
    return save(path, [helper.make_node("Mul", ["x", "k"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                [vi("x", [1, 8])], [vi("y", [1, 8])], [const("k", [scale]), const("b", bias)])


def run(src, fin, cfg=None, **kw):
    contract = initial_input_contract(onnx.load(str(src)))
    return validate_models(src, fin, cfg or {}, precision="fp32", input_contract=contract, output_map={},
                           postprocess=None, **kw)


def entry(result, output):
    return next(e for e in result["comparisons"][0]["outputs"] if e["output"] == output)


def table(result):
    out = io.StringIO()
    print_table(result, Console(file=out, width=400))
    return " ".join(out.getvalue().split())


# -- uninformative outputs ---------------------------------------------------------------------------

def test_constant_output_is_inconclusive(tmp_path):
    src = constant_softmax(tmp_path / "m.onnx")
    result = run(src, src)
    why = ("constant: all 20 values are 0.1 in source-ort (2 iteration(s)); a model that ignores its input "
           "would match it")
    probs = entry(result, "probs")
    assert (probs["status"], probs["informative"], probs["reason"]) == ("inconclusive", False, f"uninformative: {why}")
    assert probs["max_abs"] == 0.0 and probs["bound"] == "abs+rel"  # it did "pass", with max error 0
    assert result["comparisons"][0]["status"] == "inconclusive"
    assert result["status"] == "inconclusive"
    assert result["reason"] == f"source-ort vs final-ort: every compared output is uninformative: 'probs' {why}"
    text = table(result)
    assert f"validation: inconclusive ({result['reason']})" in text
    assert RULE in text and informative.EXPLAIN in text
    json.dumps(result, allow_nan=False)


def test_require_informative_fails(tmp_path):
    src = constant_softmax(tmp_path / "m.onnx")
    with pytest.raises(ValidationError) as exc:
        run(src, src, {"require_informative": True}, locate=lambda path: "r.yaml:7:3")
    assert exc.value.exit_code == EXIT_VALIDATION
    assert str(exc.value).splitlines()[:2] == [
        "r.yaml:7:3: validation inconclusive (validate.require_informative is true):",
        "  source-ort vs final-ort: every compared output is uninformative: 'probs' constant: all 20 values are "
        "0.1 in source-ort (2 iteration(s)); a model that ignores its input would match it"]
    assert exc.value.result["status"] == "inconclusive"


def test_all_zero_output_is_inconclusive(tmp_path):
    src = zeros_model(tmp_path / "m.onnx")
    result = run(src, src, {"data": {"iterations": 2}})
    assert result["status"] == "inconclusive"
    assert entry(result, "y")["reason"] == ("uninformative: identically zero: all 16 values are 0 in source-ort "
                                            "(2 iteration(s))")


def test_input_independent_output_is_inconclusive(tmp_path):
    """Values differ from element to element, but not from one input to the next."""
    src = save(tmp_path / "m.onnx", offset("b"), [vi("x", [1, 8])], [vi("y", [1, 8])],
               [const("zero", [0.0]), const("b", np.arange(8))])
    # one input cannot show that the output ignores it: hence the default of two iterations
    assert run(src, src, {"data": {"iterations": 1}})["status"] == "passed"
    assert run(src, src)["status"] == "inconclusive"
    result = run(src, src, {"data": {"iterations": 3}})
    assert result["status"] == "inconclusive"
    assert entry(result, "y")["reason"] == ("uninformative: the same in all 3 iterations of source-ort: it does not "
                                            "depend on the input")


def test_a_failing_constant_output_still_fails(tmp_path):
    src = save(tmp_path / "src.onnx", offset("c"), [vi("x", [1, 8])], [vi("y", [1, 8])],
               [const("zero", [0.0]), const("c", [0.1])])
    fin = save(tmp_path / "fin.onnx", offset("c"), [vi("x", [1, 8])], [vi("y", [1, 8])],
               [const("zero", [0.0]), const("c", [0.2])])
    with pytest.raises(ValidationError, match=r"output 'y': max abs error 0\.1 > atol 0\.0001") as exc:
        run(src, fin)
    y = entry(exc.value.result, "y")
    assert (y["status"], y["informative"], exc.value.result["status"]) == ("failed", False, "failed")


def test_one_informative_output_is_enough(tmp_path):
    src = save(tmp_path / "m.onnx", [helper.make_node("Add", ["x", "b"], ["y"]),
                                     helper.make_node("Mul", ["x", "zero"], ["z"])],
               [vi("x", [1, 8])], [vi("y", [1, 8]), vi("z", [1, 8])], [const("b", np.zeros(8)), const("zero", [0.0])])
    result = run(src, src)
    assert (result["status"], entry(result, "y")["status"], entry(result, "z")["status"]) == \
        ("passed", "passed", "inconclusive")
    assert entry(result, "y")["informative"] is True
    assert result["reason"] == "uninformative output(s), not counted as evidence: 'z'"


@pytest.mark.parametrize("arrays, why", [
    ([np.full((2, 3), 0.5)], "constant: all 6 values are 0.5 in ref (1 iteration(s)); a model that ignores its "
                             "input would match it"),
    ([np.full(4, 1e-3) + np.array([0, 1e-10, 0, 2e-10])], "constant: all 4 values are 0.001 in ref (1 iteration(s)); "
                                                          "a model that ignores its input would match it"),
    ([np.zeros(3), np.zeros(3)], "identically zero: all 6 values are 0 in ref (2 iteration(s))"),
    ([np.zeros((1, 0))], "empty in every iteration of ref (1 iteration(s)): nothing to compare"),
    ([np.full(3, np.nan)], "only NaN in ref (1 iteration(s))"),
    ([np.arange(3.0), np.arange(3.0)], "the same in all 2 iterations of ref: it does not depend on the input"),
    ([np.full(4, 1e-3) + np.array([0, 1e-5, 0, 0])], None),   # varies in the 3rd significant digit
    ([np.arange(3.0), np.arange(3.0) + 1e-3], None),
    ([np.array([0.0, -np.inf, 0.0])], None),                   # a mask: 0 and -inf
    ([np.array(["a", "a"])], None),                             # not numeric: not judged
])
def test_output_verdict_rules(arrays, why):
    assert informative.output_verdict(arrays, "ref") == why


# -- the table states its rule and the bound that held -------------------------------------------------

def test_bound_that_held(tmp_path):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    by_abs = entry(run(src, biased(tmp_path / "a.onnx", np.full(8, 5e-5)), {"atol": 1e-4, "rtol": 0.0}), "y")
    assert (by_abs["status"], by_abs["bound"]) == ("passed", "abs")
    # x in [10, 20]: a 0.05% scale error is 5e-3..1e-2 absolute, within rtol 1e-3 only
    cfg = {"atol": 1e-4, "rtol": 1e-3, "data": {"inputs": {"x": {"range": [10, 20]}}}}
    by_rel = entry(run(src, biased(tmp_path / "r.onnx", np.zeros(8), scale=1.0005), cfg), "y")
    assert (by_rel["status"], by_rel["bound"]) == ("passed", "rel")
    assert by_rel["value"] > 1e-4 and by_rel["value_rel"] <= 1e-3
    result = run(src, src)
    assert entry(result, "y")["bound"] == "abs+rel"
    text = table(result)
    assert "┃ output ┃ error abs / rel ┃ tol abs / rel ┃ held ┃ status ┃ note ┃" in text
    assert "│ y │ max 0 / 0 │ 0.0001 / 0.001 │ abs+rel │ passed │" in text
    assert RULE in text and informative.EXPLAIN not in text


# -- detections: counts that add up, "borderline" explained --------------------------------------------

def detections(boxes, scores, classes, capacity):
    n = len(scores)
    pad = lambda a, shape: np.concatenate([np.asarray(a, np.float32).reshape((n,) + shape[1:]),  # noqa: E731
                                           np.zeros(shape, np.float32)])
    return {"detection_boxes": pad(boxes, (capacity - n, 4))[None],
            "detection_scores": pad(scores, (capacity - n,))[None],
            "detection_classes": pad(classes, (capacity - n,))[None], "num_detections": np.array([n], np.float32)}


BOXES = [[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.3, 0.9], [0.6, 0.1, 0.8, 0.3]]
CFG = {"iou_threshold": 0.9, "score_atol": 1e-3}


def compare(ref, cand, **cfg):
    return det.compare_detections([ref], [cand], det.detection_roles(list(ref), {}), {**CFG, **cfg})


def test_detection_counts_add_up_and_borderline_is_explained():
    # Source keeps 4 (full top-4); the final model's 4th is a near-tie another box won: one borderline per
    # side. A 5th source box far off scores well: missing from the final model.
    ref = detections(BOXES, [0.9, 0.8, 0.6, 0.3], [1, 2, 1, 3], capacity=4)
    cand = detections(BOXES[:3] + [[0.7, 0.1, 0.9, 0.2]], [0.9, 0.8, 0.6, 0.3002], [1, 2, 1, 4], capacity=4)
    out = compare(ref, cand)
    assert (out["matched"], out["unmatched_source"], out["borderline_source"]) == (3, 0, 1)
    assert (out["unmatched_final"], out["borderline_final"], out["borderline"]) == (0, 1, 2)
    for side in ("source", "final"):
        assert out["matched"] + out[f"unmatched_{side}"] + out[f"borderline_{side}"] == out[f"{side}_detections"]
    assert det.counts_line(out) == ("source 4 = 3 matched + 0 missing + 1 borderline; final 4 = 3 matched + 0 extra "
                                    "+ 1 borderline (1 image(s); min IoU 1, max score diff 0)")
    ref = detections(BOXES, [0.9, 0.8, 0.6, 0.5], [1, 2, 1, 3], capacity=6)
    missing = compare(ref, detections(BOXES[:3], [0.9, 0.8, 0.6], [1, 2, 1], capacity=6))
    assert (missing["source_detections"], missing["matched"], missing["unmatched_source"],
            missing["borderline_source"], missing["status"]) == (4, 3, 1, 0, "failed")
    result = {"status": "failed", "reason": "x", "comparisons": [], "detections": missing}
    text = table(result)
    assert det.counts_line(missing) in text and det.BORDERLINE in text


def test_no_source_detection_is_inconclusive():
    empty = detections([], [], [], capacity=4)
    out = compare(empty, empty)
    assert out["status"] == "passed"
    informative.judge_detections(out)
    assert (out["status"], out["informative"]) == ("inconclusive", False)
    assert out["reason"] == ("uninformative: the source model kept no detection (score > 0) on any of the 1 image(s); "
                             "nothing to match")
    result = {"comparisons": [{"name": "source-ort vs final-ort", "status": "skipped"}], "detections": out}
    assert informative.doubts(result) == [
        "detections: the source model kept no detection (score > 0) on any of the 1 image(s); nothing to match"]


# -- does the data exercise the declared input range? ----------------------------------------------------

def test_input_coverage(tmp_path):
    src = biased(tmp_path / "m.onnx", np.zeros(8))
    inputs, _ = model_io(src)
    cfg = {"inputs": {"x": {"range": [-1, 1], "shape": [1, 256]}}}
    feeds, _ = make_source_feeds(cfg, {"x": (np.dtype(np.float32), [1, 256])}, {})
    cov = informative.input_coverage(feeds, cfg)["x"]
    assert cov["exercised"] is True and cov["coverage"] >= 0.98 and cov["reason"] is None
    np.savez(tmp_path / "half.npz", x=np.linspace(0, 0.5, 8, dtype=np.float32)[None])
    feeds, _ = make_source_feeds({"npz": "half.npz"}, inputs, {}, base_dir=tmp_path)
    cov = informative.input_coverage(feeds, {"npz": "half.npz", "inputs": {"x": {"range": [0, 1]}}})["x"]
    assert cov == {"input": "x", "declared": [0.0, 1.0], "observed": [0.0, 0.5], "coverage": 0.5, "exercised": False,
                   "reason": "the data fed to source input 'x' spans [0, 0.5], 50% of the declared range [0, 1] "
                             "(validate.data.inputs.x.range); at least 90% needed"}
    # A key naming the final input finds its source input through the contract; undeclared inputs are not checked.
    contract = {"pixels": {"source_input": "x"}}
    assert list(informative.input_coverage(feeds, {"inputs": {"pixels": {"range": [0, 1]}}}, contract)) == ["pixels"]
    assert informative.input_coverage(feeds, {"inputs": {"x": {"shape": [1, 8]}}}) == {}
    result = {"comparisons": [{"name": "source-ort vs final-ort", "status": "passed"}],
              "data": {"coverage": {"x": cov}}}
    assert informative.doubts(result) == [cov["reason"]]


# -- through the command line: summary, report.json, report.md ------------------------------------------

def recipe_for(tmp_path, model, validate=""):
    return write_recipe(tmp_path / "r.yaml", f"""
        name: t
        source:
          onnx: {model.name}
        {validate}
        output:
          dir: out
        """)


def report_of(tmp_path):
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    jsonschema.Draft202012Validator(json.loads((REPO / "schemas" / "report.schema.json").read_text())).validate(rep)
    return rep, (tmp_path / "out" / "report.md").read_text()


def test_inconclusive_run_and_require_informative(tmp_path, run_cli):
    constant_softmax(tmp_path / "m.onnx")
    code, out, err = run_cli(recipe_for(tmp_path, tmp_path / "m.onnx"), "--quiet")
    assert code == 0, err
    rep, md = report_of(tmp_path)
    why = ("source-ort vs final-ort: every compared output is uninformative: 'probs' constant: all 20 values are 0.1 "
           "in source-ort (2 iteration(s)); a model that ignores its input would match it")
    assert (rep["validation"]["status"], rep["validation"]["reason"]) == ("inconclusive", why)
    assert f"**validation inconclusive**: {why}" in md
    assert "| `probs` | max | 0 | 0 | 0.0001 / 0.001 | abs+rel | inconclusive (uninformative: constant" in md
    assert f"validation inconclusive ({why})" in " ".join(out.split())

    strict = tmp_path / "strict"
    strict.mkdir()
    constant_softmax(strict / "m.onnx")
    code, _, err = run_cli(recipe_for(strict, strict / "m.onnx", "validate: {require_informative: true}"))
    assert code == EXIT_VALIDATION
    assert f"r.yaml:4:1: validation inconclusive (validate.require_informative is true):\n  {why}" in err
    assert not list(strict.rglob("*.plan")) and not (strict / "out" / "report.json").exists()


def test_normal_model_passes_and_reports_the_rule(tmp_path, run_cli):
    make_conv_model(tmp_path / "tiny.onnx")
    code, out, err = run_cli(recipe_for(tmp_path, tmp_path / "tiny.onnx"))
    assert code == 0, err
    rep, md = report_of(tmp_path)
    y = rep["validation"]["comparisons"][0]["outputs"][0]
    assert (rep["validation"]["status"], rep["validation"]["reason"]) == ("passed", None)
    assert (y["output"], y["status"], y["informative"], y["bound"]) == ("y", "passed", True, "abs+rel")
    flat = " ".join(out.split())
    assert RULE in flat and "validation: passed" in flat and "validation passed; output in" in flat
    assert "| `y` | max | 0 | 0 | 0.0001 / 0.001 | abs+rel | passed |" in md
    assert f"Rule: {RULE.removeprefix('rule: ')}." in md


def test_no_validate_is_loud(tmp_path, run_cli):
    make_conv_model(tmp_path / "tiny.onnx")
    code, out, err = run_cli(recipe_for(tmp_path, tmp_path / "tiny.onnx"), "--no-validate")
    assert code == 0, err
    rep, md = report_of(tmp_path)
    reason = ("NOT VALIDATED (--no-validate): validation was skipped on the command line, so nothing checked that "
              "the final model and the plan compute what the source model computes")
    assert rep["validation"] == {"status": "skipped", "skipped_by": "--no-validate", "reason": reason,
                                 "comparisons": []}
    assert f"## Validation\n\n**{reason.replace('NOT VALIDATED', 'NOT VALIDATED**', 1)}\n" in md
    flat = " ".join(out.split())
    assert "validate ✓ NOT VALIDATED (--no-validate)" in flat
    assert "; NOT VALIDATED (--no-validate); output in" in flat  # the summary's last line
    assert f"warning: {reason}" in " ".join(err.split())


# -- tolerances are finite numbers >= 0 ------------------------------------------------------------------

@pytest.mark.parametrize("validate, message", [
    ("  atol: .nan", "r.yaml:7:3: validate.atol: nan is not a finite number; a tolerance is a finite number >= 0"),
    ("  rtol: .inf", "r.yaml:7:3: validate.rtol: inf is not a finite number; a tolerance is a finite number >= 0"),
    ("  atol: -0.5", "r.yaml:7:3: validate.atol: -0.5 is less than the minimum of 0"),
    ("  quantile: .NaN", "r.yaml:7:3: validate.quantile: nan is not a finite number; a quantile is a finite number "
                         "in (0, 1]"),
    ("  outputs:\n    y:\n      atol: .nan", "r.yaml:9:7: validate.outputs.y.atol: nan is not a finite number; a "
                                             "tolerance is a finite number >= 0"),
    ("  outputs:\n    y:\n      rtol: -.inf",
     "r.yaml:9:7: validate.outputs.y.rtol: -inf is not a finite number; a tolerance is a finite number >= 0"),
    ("  outputs:\n    y:\n      quantile: .nan", "r.yaml:9:7: validate.outputs.y.quantile: nan is not a finite number; "
                                                 "a quantile is a finite number in (0, 1]"),
    ("  detections:\n    score_atol: .inf", "r.yaml:8:5: validate.detections.score_atol: inf is not a finite number; "
                                            "a tolerance is a finite number >= 0"),
])
def test_non_finite_tolerances_are_recipe_errors(tmp_path, run_cli, validate, message):
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nsource:\n  onnx: tiny.onnx\noutput:\n  dir: out\nvalidate:\n" + validate + "\n")
    for args in ([recipe], ["check", recipe]):
        code, _, err = run_cli(*args)
        assert code == EXIT_RECIPE, err
        assert f"{recipe}:{message.removeprefix('r.yaml:')}" in err
    assert not (tmp_path / "out").exists()


def test_every_non_finite_value_is_reported_at_once(tmp_path, run_cli):
    make_conv_model(tmp_path / "tiny.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nsource:\n  onnx: tiny.onnx\nvalidate:\n  atol: .nan\n  outputs:\n    y: {rtol: .inf}\n"
                      "  data:\n    inputs:\n      x: {range: [0, .inf]}\n")
    code, _, err = run_cli("check", recipe)
    assert code == EXIT_RECIPE
    assert ("r.yaml: 3 recipe errors:\n"
            "  r.yaml:5:3: validate.atol: nan is not a finite number; a tolerance is a finite number >= 0\n"
            "  r.yaml:7:9: validate.outputs.y.rtol: inf is not a finite number; a tolerance is a finite number >= 0\n"
            "  r.yaml:10:22: validate.data.inputs.x.range[1]: inf is not a finite number; it must be a finite number"
            ) in err.replace(f"{tmp_path}/", "")


def test_schema_says_finite():
    schema = json.loads((REPO / "schemas" / "recipe.schema.json").read_text())["properties"]["validate"]["properties"]
    per_output = schema["outputs"]["additionalProperties"]["properties"]
    for spec in (schema["atol"], schema["rtol"], per_output["atol"], per_output["rtol"],
                 schema["detections"]["properties"]["score_atol"]):
        assert "Finite, >= 0" in spec["description"]
    assert "Finite, in (0, 1]" in schema["quantile"]["description"]
    assert "Finite, in (0, 1]" in per_output["quantile"]["description"]
    assert schema["require_informative"]["default"] is False
