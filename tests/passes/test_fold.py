"""Constant folding must not change what a graph computes (`fold_constants`, `sanitize`).

Regression for case c01-fold-cast-elision: `Y = X[:, :int(float(w) * 0.5)]` (w = X's width) was
folded into `Slice(X, 0, 0)` because onnx-graphsurgeon's shape-tensor cast elision converted the
float 0.5 to int 0 in place. The models are built here with onnx.helper: the c01 construct, and
variants of the same class (a shared float constant on the shape path and on the data path; other
ops and constants, some exact in integer arithmetic and some not; static and dynamic width).
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import ops, ort_run, write_recipe
from trtpipe import PassError, run_pass

FOLDING_PASSES = ["fold_constants", "sanitize"]
WIDTHS = [1, 2, 3, 7, 8, 9]


OPS = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract, "Max": np.maximum,
       "Min": np.minimum}
# (op, constant): the first of each kind is exact in int64 (graphsurgeon may drop the casts), the
# second is not (dropping them changed the value: 0.5 -> 0, -0.5 -> 0, 0.75 -> 0, 2.5 -> 2).
VARIANTS = [("Mul", 0.5), ("Mul", 2.0), ("Div", 2.0), ("Div", 0.75), ("Add", -0.5), ("Sub", 1.0),
            ("Max", 2.5), ("Min", 4.0)]
REPEAT = 3  # Y slices X repeated 3 times: an end up to 3 * width is visible in Y's shape


def cast_elision_model(op: str = "Mul", const: float = 0.5, width: int | None = 8, share: bool = False,
                       second: bool = False, repeat: int = 1) -> onnx.ModelProto:
    """The c01 construct, `Y = X[:, :int(float(w) <op> const)]` with w = X.shape[1]:

        s = Shape(X); w = Gather(s, 1); wf = Cast<float>(w); hf = <op>(wf, c); hi = Cast<int64>(hf)
        end = Unsqueeze(hi, [0]); Y = Slice(X', [0], end, [1])

    As in c01 the int64 [0] is shared by Unsqueeze and Slice. X' is X repeated `repeat` times
    along axis 1 (so that an end beyond w shows in Y's shape). `share` also feeds the float
    constant c to the data path: `Z = X * c`, a second output; `second` adds a second shape path
    with its own <op>(wf, c) and output `Y2`. `width=None` makes the width dynamic ("W")."""
    w = width if width is not None else "W"
    nodes = [
        helper.make_node("Shape", ["X"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "one"], ["w"], name="gather", axis=0),
        helper.make_node("Cast", ["w"], ["wf"], name="to_float", to=TensorProto.FLOAT),
    ]
    data = "X"
    if repeat > 1:
        nodes.append(helper.make_node("Concat", ["X"] * repeat, ["Xr"], name="repeat", axis=1))
        data = "Xr"
    outputs = []
    for suffix in ("", "2") if second else ("",):
        nodes += [
            helper.make_node(op, ["wf", "c"], [f"hf{suffix}"], name=f"shape_math{suffix}"),
            helper.make_node("Cast", [f"hf{suffix}"], [f"hi{suffix}"], name=f"to_int{suffix}", to=TensorProto.INT64),
            helper.make_node("Unsqueeze", [f"hi{suffix}", "zero1"], [f"end{suffix}"], name=f"unsqueeze{suffix}"),
            helper.make_node("Slice", [data, "zero1", f"end{suffix}", "one1"], [f"Y{suffix}"], name=f"slice{suffix}"),
        ]
        outputs.append(helper.make_tensor_value_info(f"Y{suffix}", TensorProto.FLOAT, [1, None]))
    if share:
        nodes.append(helper.make_node("Mul", ["X", "c"], ["Z"], name="data_mul"))
        outputs.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, [1, w]))
    inits = [numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
             numpy_helper.from_array(np.array(const, dtype=np.float32), "c"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero1"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "one1")]
    graph = helper.make_graph(nodes, "cast_elision", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, w])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def expected_end(op: str, const: float, width: int, repeat: int = 1) -> int:
    """What the source graph computes for the slice end: float32 math, Cast truncating toward 0,
    Slice clamping to the sliced width."""
    value = OPS[op](np.float32(width), np.float32(const)).astype(np.float32)
    return max(0, min(math.trunc(float(value)), width * repeat))


def x_of(width: int) -> np.ndarray:
    return np.random.default_rng(width).standard_normal((1, width)).astype(np.float32)


def assert_same_outputs(source: onnx.ModelProto, folded: onnx.ModelProto, width: int) -> dict:
    """Both graphs in ONNX Runtime on the same input: identical outputs (values and shapes)."""
    x = x_of(width)
    want, got = ort_run(source, {"X": x}), ort_run(folded, {"X": x})
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, (name, width)
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} at width {width}")
    return got


def initializers(model: onnx.ModelProto) -> list[tuple]:
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [(name, a.dtype, a.tolist()) for name, a in arrays.items()]


# -- the c01 construct ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDING_PASSES)
def test_c01_construct_folds_to_the_same_slice(name):
    """Width 8: int(8.0 * 0.5) = 4. Everything folds; the plan used to compute Slice(X, 0, 0)."""
    model = cast_elision_model()
    folded = run_pass(model, name)
    assert ops(folded) == ["Slice"]
    ends = [numpy_helper.to_array(t).tolist() for t in folded.graph.initializer
            if t.name == folded.graph.node[0].input[2]]
    assert ends == [[4]]
    got = assert_same_outputs(model, folded, 8)
    assert got["Y"].shape == (1, 4)
    np.testing.assert_array_equal(got["Y"], x_of(8)[:, :4])


@pytest.mark.parametrize("name", FOLDING_PASSES)
def test_c01_shared_half_keeps_the_data_path_float(name):
    """The 0.5 also scales the data (Z = X * 0.5): Z stays X * 0.5, Y stays X[:, :4]."""
    model = cast_elision_model(share=True)
    folded = run_pass(model, name)
    got = assert_same_outputs(model, folded, 8)
    assert got["Y"].shape == (1, 4)
    np.testing.assert_array_equal(got["Z"], x_of(8) * np.float32(0.5))
    (mul,) = [n for n in folded.graph.node if n.op_type == "Mul"]
    scale = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}[mul.input[1]]
    assert scale.dtype == np.float32 and scale.tolist() == 0.5


# -- the class: other ops and constants, shared or not, static or dynamic width -----------------

@pytest.mark.parametrize("name", FOLDING_PASSES)
@pytest.mark.parametrize("op,const", VARIANTS, ids=[f"{o}-{c}" for o, c in VARIANTS])
@pytest.mark.parametrize("share", [False, True], ids=["own", "shared"])
@pytest.mark.parametrize("width", [8, None], ids=["static", "dynamic"])
def test_folding_keeps_the_shape_arithmetic(name, op, const, share, width):
    model = cast_elision_model(op, const, width, share=share, repeat=REPEAT)
    folded = run_pass(model, name)
    for w in [width] if width else WIDTHS:
        got = assert_same_outputs(model, folded, w)
        end = expected_end(op, const, w, REPEAT)
        assert got["Y"].shape == (1, end), (op, const, w)
        np.testing.assert_array_equal(got["Y"], np.concatenate([x_of(w)] * REPEAT, axis=1)[:, :end])
        if share:
            np.testing.assert_array_equal(got["Z"], x_of(w) * np.float32(const))


@pytest.mark.parametrize("name", FOLDING_PASSES)
def test_exact_cast_elision_still_applies_on_dynamic_shapes(name):
    """int(float(w) * 2.0) is w * 2 in int64 for every width: the casts go (TensorRT wants int
    shape tensors), the data path keeps its float 2.0, and the constant copies made for the
    elision are merged again where they end up equal (the two shape paths share one int64 2)."""
    model = cast_elision_model("Mul", 2.0, None, share=True, second=True)
    folded = run_pass(model, name)
    assert "Cast" not in ops(folded)
    inits = initializers(folded)
    assert len(inits) <= len(model.graph.initializer) + 1  # + the int64 2 next to the float 2.0
    assert sorted((str(d), v) for _, d, v in inits if v == 2) == [("float32", 2.0), ("int64", 2)]
    for w in WIDTHS:
        got = assert_same_outputs(model, folded, w)
        assert got["Y"].shape == got["Y2"].shape == (1, min(2 * w, w))
        np.testing.assert_array_equal(got["Z"], x_of(w) * np.float32(2.0))


@pytest.mark.parametrize("name", FOLDING_PASSES)
def test_inexact_cast_elision_is_left_alone(name):
    """int(float(w) * 0.5) on a dynamic width keeps its casts: w * 0 would be 0 for every width."""
    model = cast_elision_model("Mul", 0.5, None, repeat=REPEAT)
    folded = run_pass(model, name)
    assert ops(folded).count("Cast") == 2 and "Identity" not in ops(folded)
    for w in WIDTHS:
        assert assert_same_outputs(model, folded, w)["Y"].shape == (1, w // 2)


# -- the fold check --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FOLDING_PASSES)
def test_fold_check_names_the_pass_and_the_changed_output(name, monkeypatch):
    """A fold that changes a value (here: the folded slice end, 4 -> 3) is refused."""
    fold = gs.Graph.fold_constants

    def corrupting_fold(self, *args, **kwargs):
        out = fold(self, *args, **kwargs)
        for tensor in self.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.name == "end":
                tensor.values = np.array([3], dtype=np.int64)
        return out
    monkeypatch.setattr(gs.Graph, "fold_constants", corrupting_fold)
    with pytest.raises(PassError) as err:
        run_pass(cast_elision_model(), name)
    msg = str(err.value)
    assert f"constant folding in pass '{name}' changed output 'Y'" in msg
    assert "shape [1, 3] differs from the unfolded graph's [1, 4]" in msg


def test_fold_check_is_reported_and_skipped_above_its_limits(monkeypatch):
    from trtpipe import PassContext
    from trtpipe.graph import fold_check
    ctx = PassContext()
    run_pass(cast_elision_model(), "fold_constants", ctx=ctx)
    assert any("outputs unchanged by folding" in n for n in ctx.notes)
    monkeypatch.setattr(fold_check, "CHECK_MAX_NODES", 3)
    ctx = PassContext()
    run_pass(cast_elision_model(), "fold_constants", ctx=ctx)
    assert any("outputs not checked after folding: 7 nodes (> 3)" in n for n in ctx.notes)


# -- the pipeline ----------------------------------------------------------------------------------

RECIPE = """
    name: c01
    source:
      onnx: cast_elision.onnx
    passes:
      - pass: {name}
    precision: fp32
    validate:
      data: {{seed: 3, iterations: 1}}
    output:
      dir: out
    """


@pytest.mark.parametrize("name", FOLDING_PASSES)
@pytest.mark.parametrize("validate", [True, False], ids=["validated", "no-validate"])
def test_recipe_on_c01_builds_a_correct_model(name, validate, tmp_path, run_cli):
    model = cast_elision_model(share=True)
    onnx.save(model, str(tmp_path / "cast_elision.onnx"))
    recipe = write_recipe(tmp_path / "c01.yaml", RECIPE.format(name=name))
    code, out, err = run_cli(recipe, *([] if validate else ["--no-validate"]))
    assert code == 0, err
    status = json.loads((tmp_path / "out" / "report.json").read_text())["validation"]["status"]
    assert status == ("passed" if validate else "skipped")
    if validate:
        assert "validation passed" in out
    final = onnx.load(str(tmp_path / "out" / "c01.onnx"))
    got = assert_same_outputs(model, final, 8)
    assert got["Y"].shape == (1, 4)
    assert (tmp_path / "out" / "c01.plan").stat().st_size > 0
