"""ONNX's own operator tests, run through the tool as recipes (issue 12, tests/onnx_node_corpus.py).

A sample of onnx's backend node tests, a few per op family, each as a recipe (ONNX source,
`cleanup`, fp32) run by `python pipeline.py` in-process with validation on. Every case must end in
one of the two ways the tool promises: a published plan whose final ONNX model computes the test's
reference outputs (checked in ONNX Runtime: plans cannot run without a GPU), or a documented exit
code (README "Exit codes", not 1) with a message naming what is wrong and no traceback. The cases
below also pin each class of failure the corpus found: inputs of types validation cannot feed,
models newer than the installed ONNX Runtime, ops it lacks, parameter inputs (TopK's `K`, Slice's
`steps`, ...), fixed zero-size dimensions, source models the onnx checks reject, parser messages.
"""

from __future__ import annotations

import pytest

from tests.onnx_node_corpus import TRACEBACK, classify, node_cases, reference_check, run_case, write_case
from trtpipe.errors import EXIT_CODES, EXIT_INTERNAL

# onnx.backend.test.case.node modules to import (importing one generates its cases; all: ~10 s).
MODULES = ("abs", "add", "conv", "maxpool", "matmul", "softmax", "concat", "castlike", "trilu", "topk", "reshape",
           "slice", "equal", "identity", "bitshift", "causal_conv_with_state", "adagrad",
           "meanvariancenormalization", "acosh", "bitwisenot", "reducemin")

VALUE_K = """
    validate:
      data:
        inputs:
          k: {value: [3]}
    """
PROFILE_K = """
    build:
      profiles:
        - name: default
          inputs:
            k: {min: [1], opt: [3], max: [4]}
    """
NPZ = """
    validate:
      data:
        npz: reference.npz
    """

# (case, extra recipe text, extra CLI flags, expected: "plan" or (exit code, message fragments))
CASES = [
    # op families that build a plan equal to the references
    ("test_abs", "", (), "plan"),
    ("test_add_bcast", "", (), "plan"),
    ("test_conv_with_strides_padding", "", (), "plan"),
    ("test_maxpool_2d_default", "", (), "plan"),
    ("test_matmul_2d", "", (), "plan"),
    ("test_softmax_axis_1", "", (), "plan"),
    ("test_concat_2d_axis_0", "", (), "plan"),
    # a fixed zero-size dimension is not dynamic (CastLike's `like` input is [0])
    ("test_castlike_FLOAT_to_FLOAT16", "", (), "plan"),
    # a zero-size input beside a parameter input, given through the .npz way out
    ("test_tril_zero", NPZ, (), "plan"),
    # parameter inputs: refused with random data, named with what they feed and the way out ...
    ("test_top_k", "", (), (10, ["source input 'k'", "operand 'K' of a TopK node", "validate.data.npz",
                                 "validate.data.inputs.k.value"])),
    ("test_reshape_reordered_all_dims", "", (), (10, ["source input 'shape'", "operand 'shape' of a Reshape node"])),
    ("test_slice", "", (), (10, ["source input 'starts'", "operand 'starts' of a Slice node"])),
    # ... given values, a shape tensor's profile must hold values, not shapes ...
    ("test_top_k", VALUE_K, (), (3, ["build.profiles is empty", "VALUES (not shapes)", "k [1] int64",
                                     "k: {min: [1], opt: [1], max: [8]}  # values"])),
    # ... and with both, the plan equals the references
    ("test_top_k", VALUE_K + PROFILE_K, (), "plan"),
    # types validation cannot feed: the input, its type and the way out
    ("test_castlike_BFLOAT16_to_FLOAT", "", (), (10, ["source input 'input' is bfloat16",
                                                      "ONNX Runtime's Python API", "--no-validate"])),
    ("test_equal_string", "", (), (10, ["source input 'x' is a string tensor", "takes no string arrays",
                                       "--no-validate"])),
    ("test_identity_sequence", "", (), (4, ["input 'x' is seq(tensor(float))", "output 'y' is seq(tensor(float))",
                                            "dense tensors only"])),
    # newer than the installed ONNX Runtime reads: the source check refuses it, with or without validation
    ("test_bitshift_right_uint8", "", (), (4, ["IR version 14 is newer than ONNX Runtime", "at most IR 13",
                                               "ai.onnx opset 28 is newer than"])),
    ("test_bitshift_right_uint8", "", ("--no-validate",), (4, ["IR version 14 is newer than ONNX Runtime"])),
    ("test_causal_conv_with_state_basic", "", (), (4, ["ai.onnx opset 27 is newer than ONNX Runtime",
                                                       "at most 26", "convert_version(model, 26)"])),
    # an op ONNX Runtime lacks: validation could not run (not "outputs disagree")
    ("test_adagrad", "", (), (10, ["validation could not run", "has no implementation",
                                   "ai.onnx.preview.training:Adagrad"])),
    # the source model computes NaN on the data (acosh of [0, 1]): the data, not a pass, is at fault
    ("test_acosh", "", (), (10, ["the source model itself computes", "NaN", "output 'y'", "range"])),
    # min over an empty set is +inf in both models: that agrees, so validation passes and the build
    # speaks (the parser wants ReduceMin's axes as a constant), not "outputs disagree" blaming cleanup
    ("test_reduce_min_empty_set", NPZ, (), (7, ["(ReduceMin, node index 0)", "build-time constant"])),
    # the source fails the onnx checks every pass output gets: a source error naming the check
    ("test_mvn", "", (), (4, ["source.onnx", "ONNX shape inference (strict", "MeanVarianceNormalization"])),
    # the parser's message names the node, op and cause, without the CUDA runtime's lines (no GPU here)
    ("test_bitwise_not_2d", "", (), (7, ["the ONNX parser rejected", "BitwiseNot",
                                         "the parser does not support this node (its check checkBitwiseNot"])),
    ("test_maxpool_2d_uint8", "", (), (7, ["(MaxPool, node index 0)", "input has type UInt8 but must have type"])),
]


@pytest.fixture(scope="module")
def corpus():
    """The sample's test cases by name (only the modules above are imported)."""
    return {c.name: c for c in node_cases(sorted({name for name, *_ in CASES}), MODULES)}


def _inproc(run_cli, flags):
    def runner(argv):
        code, out, err = run_cli(*argv, *flags)  # an exception escaping main fails the test: a traceback
        return code, out + err
    return runner


def _case_id(name, extra, flags):
    given = {VALUE_K: "-value", VALUE_K + PROFILE_K: "-value-profile", NPZ: "-npz"}.get(extra, "")
    return name + given + "".join(f"-{f.strip('-')}" for f in flags)


@pytest.mark.parametrize("name, extra, flags, expected", CASES, ids=[_case_id(*c[:3]) for c in CASES])
def test_operator_case_ends_in_a_matching_plan_or_a_documented_error(corpus, tmp_path, run_cli, name, extra, flags,
                                                                      expected):
    case = corpus[name]
    result = run_case(write_case(case, tmp_path / name, extra), runner=_inproc(run_cli, flags), cache=False)
    text = result["output"]
    assert TRACEBACK not in text and result["code"] != EXIT_INTERNAL, text
    assert result["code"] in EXIT_CODES, text
    for leak in ("cannot access local variable", "CUDA driver version is insufficient"):
        assert leak not in text, text
    outcome, detail = classify(case, result)
    if expected == "plan":
        assert outcome == "matched", f"{outcome}: {detail}\n{text}"
        return
    code, fragments = expected
    assert result["code"] == code, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert result["plan"] is None and not (tmp_path / name / "out" / "report.json").exists()


def test_a_plan_matches_the_reference_only_when_it_computes_it(corpus, tmp_path, run_cli):
    """The reference check itself: the final model of another op does not pass for this one."""
    abs_case, relu_like = corpus["test_abs"], corpus["test_add_bcast"]
    result = run_case(write_case(abs_case, tmp_path / "abs"), runner=_inproc(run_cli, ()), cache=False)
    assert reference_check(abs_case, result["final"]) is None
    assert reference_check(relu_like, result["final"]) is not None


def test_savedmodel_opset_above_tf2onnx_is_refused_before_conversion(tmp_path, run_cli):
    """tf2onnx 1.17 converts to at most opset 18: `source.opset: 19` is a source error naming both,
    found before TensorFlow is imported (the SavedModel here is only its file name)."""
    from trtpipe.stages.source.support import tf2onnx_max_opset
    version, top = tf2onnx_max_opset()
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: sm\nsource:\n  saved_model: sm\n  opset: {top + 1}\noutput:\n  dir: out\n")
    code, out, err = run_cli(recipe)
    assert code == 4, err
    assert f"source.opset: opset {top + 1} is newer than tf2onnx {version} (installed) converts to (at most opset " \
           f"{top})" in err and f"set source.opset to {top} or lower" in err


def test_optional_values_inside_the_graph_are_a_source_error(tmp_path, run_cli):
    """An If whose branches return optional(tensor): TensorRT has no optional type and
    onnx-graphsurgeon cannot write it back (its exporter fails with "cannot access local variable
    'onnx_tensor'"), so the source stage refuses it by name instead of the first pass failing."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    opt = helper.make_optional_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2]))
    branch = lambda name: helper.make_graph([helper.make_node("Optional", ["x"], ["o"])], name, [],  # noqa: E731
                                            [helper.make_value_info("o", opt)])
    graph = helper.make_graph(
        [helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["opt"], name="pick", then_branch=branch("t"), else_branch=branch("e")),
         helper.make_node("OptionalGetElement", ["opt"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [numpy_helper.from_array(np.float32(0), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), tmp_path / "m.onnx")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: opt\nsource:\n  onnx: m.onnx\npasses:\n  - pass: cleanup\noutput:\n  dir: out\n")
    code, out, err = run_cli(recipe)
    assert code == 4, err
    assert "If node 'pick''s then_branch output 'o' is optional(tensor(float))" in err and "onnx_tensor" not in err


def test_parameter_inputs_are_found_through_casts_and_concats_and_in_subgraphs():
    """What `parameter_inputs` calls a parameter: an input reaching Reshape's `shape` through Cast and
    Concat, one read by a Slice inside an If branch (by name, from the outer scope); not the data."""
    from onnx import TensorProto, helper

    from trtpipe.graph.inputs import parameter_inputs
    i64, f = TensorProto.INT64, TensorProto.FLOAT
    then = helper.make_graph([helper.make_node("Slice", ["x", "starts", "ends"], ["s"], name="inner")], "then", [],
                             [helper.make_tensor_value_info("s", f, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["s2"])], "else", [],
                              [helper.make_tensor_value_info("s2", f, None)])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["dims"], ["dims64"], to=i64),
         helper.make_node("Concat", ["head", "dims64"], ["shape"], axis=0),
         helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape"),
         helper.make_node("If", ["flag"], ["z"], then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", f, [2, 6]), helper.make_tensor_value_info("dims", TensorProto.INT32, [1]),
         helper.make_tensor_value_info("head", i64, [1]), helper.make_tensor_value_info("starts", i64, [1]),
         helper.make_tensor_value_info("ends", i64, [1]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", f, None), helper.make_tensor_value_info("z", f, None)])
    found = parameter_inputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert found == {"dims": ["operand 'shape' of Reshape node 'reshape'"],
                     "head": ["operand 'shape' of Reshape node 'reshape'"],
                     "starts": ["operand 'starts' of Slice node 'inner'"],
                     "ends": ["operand 'ends' of Slice node 'inner'"]}
