"""The validate stage on real ONNX Runtime + Polygraphy runs: small models built with onnx.helper,
deliberately wrong ones, input contracts, detections, and the data sources."""

import io
import json
import struct
import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

from trtpipe.errors import EXIT_VALIDATION, RecipeError, ValidationError
from trtpipe.recipe.resolved import DEFAULT_IOU, DEFAULT_TOLERANCES
from trtpipe.recipe.schema import fill_defaults, load_schema, schema_errors
from trtpipe.stages.passes.runner import initial_input_contract
from trtpipe.stages.validate import detections as det
from trtpipe.stages.validate.compare import (
    print_table,
    resolve_config,
    validate_models,
)
from trtpipe.stages.validate.data import apply_contract, make_source_feeds, model_io

F32 = TensorProto.FLOAT


def save(path, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # ONNX Runtime 1.31 reads IR <= 13
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def vi(name, shape, dtype=F32):
    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def biased(path, bias, extra_nodes=(), extra_outputs=(), extra_inits=()):
    """y = x + bias, x [1, 8] in [0, 1]: the output error equals the bias change exactly."""
    return save(path, [helper.make_node("Add", ["x", "b"], ["y"]), *extra_nodes], [vi("x", [1, 8])],
                [vi("y", [1, 8]), *extra_outputs], [const("b", bias), *extra_inits])


def run(src, fin, cfg=None, contract=None, **kw):
    contract = initial_input_contract(onnx.load(str(src))) if contract is None else contract
    return validate_models(src, fin, cfg or {}, precision=kw.pop("precision", "fp32"), input_contract=contract,
                           output_map=kw.pop("output_map", {}), postprocess=kw.pop("postprocess", None), **kw)


def entry(result, output, comparison=0):
    return next(e for e in result["comparisons"][comparison]["outputs"] if e["output"] == output)


# -- a deliberately wrong model --------------------------------------------------------------------

def small_cnn(path, fc_weight):
    """image [1,3,16,16] -> Conv -> Relu -> GlobalAveragePool -> Flatten = features -> Gemm = logits."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["image", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["features"]),
             helper.make_node("Gemm", ["features", "fw", "fb"], ["logits"], transB=1)]
    inits = [const("cw", rng.standard_normal((8, 3, 3, 3))), const("cb", rng.standard_normal(8)),
             const("fw", fc_weight), const("fb", np.zeros(10))]
    return save(path, nodes, [vi("image", [1, 3, 16, 16])], [vi("features", [1, 8]), vi("logits", [1, 10])], inits)


def test_perturbed_weight_is_caught_and_named(tmp_path):
    w = np.random.default_rng(1).standard_normal((10, 8)).astype(np.float32)
    src = small_cnn(tmp_path / "src.onnx", w)
    wrong = w.copy()
    wrong[3, 2] += 0.5  # one weight of one class
    fin = small_cnn(tmp_path / "fin.onnx", wrong)

    assert run(src, small_cnn(tmp_path / "same.onnx", w))["status"] == "passed"
    with pytest.raises(ValidationError) as exc:
        run(src, fin)
    msg = str(exc.value)
    assert exc.value.exit_code == EXIT_VALIDATION
    assert "output 'logits'" in msg and "max abs error" in msg and "atol 0.0001" in msg
    assert "'features'" not in msg  # upstream of the change, still equal
    result = exc.value.result
    assert result["status"] == "failed"
    assert entry(result, "features")["status"] == "passed"
    logits = entry(result, "logits")
    assert logits["status"] == "failed" and logits["max_abs"] > 1e-2
    json.dumps(result, allow_nan=False)  # the report stores it as-is


# -- tolerances and statistics ---------------------------------------------------------------------

@pytest.mark.parametrize("delta, ok", [(0.9e-3, True), (1.1e-3, False)])
def test_atol_boundary(tmp_path, delta, ok):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    fin = biased(tmp_path / "fin.onnx", np.full(8, delta))
    cfg = {"atol": 1e-3, "rtol": 0.0}
    if ok:
        result = run(src, fin, cfg)
        assert entry(result, "y")["max_abs"] == pytest.approx(delta, rel=1e-3)
    else:
        with pytest.raises(ValidationError, match=r"output 'y': max abs error 0\.0011 > atol 0\.001"):
            run(src, fin, cfg)


def test_precision_default_tolerances(tmp_path):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    fin = biased(tmp_path / "fin.onnx", np.full(8, 5e-3))   # fine for fp16, not for fp32
    assert entry(run(src, fin, precision="fp16"), "y")["atol"] == DEFAULT_TOLERANCES["fp16"][0]
    with pytest.raises(ValidationError):
        run(src, fin, precision="fp32")


def test_statistic_median_vs_max(tmp_path):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    spike = np.zeros(8)
    spike[5] = 0.5  # one element far off, the other seven exact
    fin = biased(tmp_path / "fin.onnx", spike)
    with pytest.raises(ValidationError, match="max abs error 0.5"):
        run(src, fin, {"statistic": "max"})
    result = run(src, fin, {"outputs": {"y": {"statistic": "median"}}})
    y = entry(result, "y")
    assert (y["statistic"], y["status"], y["value"]) == ("median", "passed", 0.0)
    assert y["max_abs"] == pytest.approx(0.5)
    # quantile: the 99th percentile of 8 elements still sees the spike
    with pytest.raises(ValidationError, match="quantile abs error"):
        run(src, fin, {"statistic": "quantile", "quantile": 0.99})


def test_nan_check(tmp_path):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    # An extra output the source does not have: not compared, but log(x - 2) is NaN everywhere.
    fin = biased(tmp_path / "fin.onnx", np.zeros(8),
                 [helper.make_node("Sub", ["x", "two"], ["neg"]), helper.make_node("Log", ["neg"], ["z"])],
                 [vi("z", [1, 8])], [const("two", [2.0])])
    with pytest.raises(ValidationError, match=r"16 NaN value\(s\) in final-ort output 'z'"):
        run(src, fin)
    result = run(src, fin, {"check_nan": False})
    assert entry(result, "y")["status"] == "passed"
    z = entry(result, "z")
    assert z["status"] == "skipped" and "no output 'z'" in z["reason"]


def test_skip_and_output_map(tmp_path):
    src = biased(tmp_path / "src.onnx", np.zeros(8))
    renamed = save(tmp_path / "fin.onnx", [helper.make_node("Add", ["x", "b"], ["scores"])], [vi("x", [1, 8])],
                   [vi("scores", [1, 8])], [const("b", np.full(8, 0.3))])
    with pytest.raises(ValidationError, match="map them with validate.output_map"):
        run(src, renamed)  # nothing pairs up: not a silent pass
    with pytest.raises(ValidationError, match="output 'scores'"):
        run(src, renamed, output_map={"scores": "y"})  # recorded by a pass: compared (and wrong)
    result = run(src, renamed, {"output_map": {"scores": "y"}, "skip": {"y": "bias calibrated after export"}})
    assert entry(result, "scores")["reason"] == "skipped by validate.skip: bias calibrated after export"
    with pytest.raises(RecipeError, match="validate.skip.score: 'score' is not an output .*did you mean 'scores'"):
        run(src, renamed, {"skip": {"score": "typo"}})  # a name the recipe wrote: a recipe error (exit 3)


# -- the input contract ----------------------------------------------------------------------------

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def conv_tail(inp):
    rng = np.random.default_rng(3)
    return ([helper.make_node("Conv", [inp, "w", "bias"], ["y"], pads=[1, 1, 1, 1])],
            [const("w", rng.standard_normal((4, 3, 3, 3))), const("bias", rng.standard_normal(4))])


@pytest.fixture
def contract_models(tmp_path):
    """Source: uint8 NHWC image, normalized and transposed in the graph. Final: float NCHW `x`."""
    tail, inits = conv_tail("nchw")
    pre = [helper.make_node("Cast", ["image"], ["f"], to=F32), helper.make_node("Mul", ["f", "scale"], ["s"]),
           helper.make_node("Sub", ["s", "mean"], ["m"]), helper.make_node("Div", ["m", "std"], ["n"]),
           helper.make_node("Transpose", ["n"], ["nchw"], perm=[0, 3, 1, 2])]
    src = save(tmp_path / "src.onnx", pre + tail, [vi("image", [1, 8, 8, 3], TensorProto.UINT8)],
               [vi("y", [1, 4, 8, 8])],
               inits + [const("scale", [1 / 255]), const("mean", MEAN), const("std", STD)])
    tail, inits = conv_tail("x")
    fin = save(tmp_path / "fin.onnx", tail, [vi("x", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], inits)
    return src, fin


def contract(steps):
    return {"x": {"source_input": "image", "source_dtype": "uint8", "source_shape": [1, 8, 8, 3],
                  "shape": [1, 8, 8, 3], "steps": steps}}


FULL = [{"op": "cast", "to": "float32"}, {"op": "mul", "value": 1 / 255}, {"op": "sub", "value": MEAN},
        {"op": "div", "value": STD}, {"op": "transpose", "perm": [0, 3, 1, 2]}]


def test_input_contract_is_honoured(contract_models):
    src, fin = contract_models
    result = run(src, fin, contract=contract(FULL))
    assert entry(result, "y")["status"] == "passed"
    assert result["data"]["inputs"]["image"] == {"shape": [1, 8, 8, 3], "dtype": "uint8", "range": [0, 255]}
    # Same steps after the transpose, with the channel axis said explicitly.
    nchw = [FULL[0], FULL[1], FULL[4], {"op": "sub", "value": MEAN, "axis": 1}, {"op": "div", "value": STD, "axis": 1}]
    assert run(src, fin, contract=contract(nchw))["status"] == "passed"


def test_input_contract_mistakes_are_reported(contract_models):
    src, fin = contract_models
    with pytest.raises(ValidationError, match="output 'y'"):  # forgot the normalization: numbers differ
        run(src, fin, contract=contract([FULL[0], FULL[4]]))
    with pytest.raises(ValidationError,
                       match=r"into float32 \[1, 8, 8, 3\], but final input 'x' takes float32 \[1, 3, 8, 8\]"):
        run(src, fin, contract=contract(FULL[:4]))  # forgot the transpose
    with pytest.raises(ValidationError, match="give the step an 'axis'"):
        run(src, fin, contract=contract([FULL[0], FULL[4], FULL[2]]))
    with pytest.raises(ValidationError, match="no input-contract entry"):
        run(src, fin, contract={})


def test_final_input_cut_from_inside_the_source(tmp_path):
    """set_outputs cut the graph's start: the final model takes an inner tensor of the source."""
    tail, inits = conv_tail("r")
    src = save(tmp_path / "src.onnx", [helper.make_node("Relu", ["x"], ["r"])] + tail, [vi("x", [1, 3, 8, 8])],
               [vi("y", [1, 4, 8, 8])], inits)
    fin = save(tmp_path / "fin.onnx", tail, [vi("r", [1, 3, 8, 8])], [vi("y", [1, 4, 8, 8])], inits)
    cut = {"r": {"source_input": None, "source_tensor": "r", "source_dtype": "float32",
                 "source_shape": [1, 3, 8, 8], "shape": [1, 3, 8, 8], "steps": []}}
    cfg = {"data": {"inputs": {"x": {"range": [-1, 1]}}}}
    assert run(src, fin, cfg, contract=cut)["status"] == "passed"
    # Fed the source's input instead (Relu skipped), the outputs differ for negative values.
    wrong = {"r": {**cut["r"], "source_input": "x"}}
    with pytest.raises(ValidationError, match="output 'y'"):
        run(src, fin, cfg, contract=wrong)


def test_dynamic_shapes_and_precision_mapping(tmp_path):
    src = save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["N", 3, "H", "W"])],
               [vi("y", ["N", 3, "H", "W"])])
    with pytest.raises(ValidationError, match=r"dynamic shape \[None, 3, None, None\]"):
        run(src, src)
    contract = initial_input_contract(onnx.load(str(src)))
    contract["x"]["shape"] = [None, 3, 16, "W"]  # as set_input leaves it: symbolic dims stay
    with pytest.raises(ValidationError, match="set validate.data.inputs.x.shape"):
        run(src, src, contract=contract)
    contract["x"]["shape"] = [None, 3, 16, 24]  # a dynamic batch becomes 1
    result = run(src, src, contract=contract, precision={"mode": "fp16", "keep_io_types": True})
    assert result["data"]["inputs"]["x"]["shape"] == [1, 3, 16, 24]
    assert result["tolerances"]["atol"] == DEFAULT_TOLERANCES["fp16"][0]


# -- detections ------------------------------------------------------------------------------------

def detections(boxes, scores, classes, capacity=6):
    n = len(scores)
    pad = lambda a, shape: np.concatenate([np.asarray(a, np.float32), np.zeros(shape, np.float32)])  # noqa: E731
    return {"detection_boxes": pad(boxes, (capacity - n, 4))[None],
            "detection_scores": pad(scores, (capacity - n,))[None],
            "detection_classes": pad(classes, (capacity - n,))[None], "num_detections": np.array([n], np.float32)}


REF = ([[0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.8], [0.2, 0.6, 0.3, 0.9], [0.1, 0.1, 0.4, 0.4]],
       [0.9, 0.8, 0.6, 0.3], [1, 2, 1, 3])  # the last: same box as the first, another class
CFG = {"iou_threshold": 0.9, "score_atol": 1e-3}


def compare(ref, cand, **cfg):
    roles = det.detection_roles(list(ref), {})
    return det.compare_detections([ref], [cand], roles, {**CFG, **cfg})


def test_detections_match_permuted_and_moved_boxes():
    order = [3, 1, 0, 2]
    boxes = (np.array(REF[0]) + 0.002)[order]  # IoU 0.95 for the thinnest box
    cand = detections(boxes, np.array(REF[1])[order] + 2e-4, np.array(REF[2])[order])
    out = compare(detections(*REF), cand)
    assert out["status"] == "passed", out["reason"]
    assert out["matched"] == 4 and out["class_mismatches"] == 0 and 0.9 < out["min_iou"] < 1
    assert out["roles"] == {"boxes": "detection_boxes", "scores": "detection_scores",
                            "classes": "detection_classes", "num_detections": "num_detections"}


def test_detections_reject_missing_and_changed():
    missing = compare(detections(*REF), detections(REF[0][1:], REF[1][1:], REF[2][1:]))
    assert missing["status"] == "failed" and missing["unmatched_source"] == 1
    assert "1 source detection(s) have no match" in missing["reason"]
    classes = list(REF[2])
    classes[1] = 5
    changed = compare(detections(*REF), detections(REF[0], REF[1], classes))
    assert changed["status"] == "failed" and changed["class_mismatches"] == 1
    moved = compare(detections(*REF), detections(np.array(REF[0]) + 0.05, REF[1], REF[2]))
    assert moved["status"] == "failed" and moved["matched"] == 0


def test_detection_cut_offs_are_borderline():
    # Full top-4 on both sides; the last place went to near-tied detections that differ.
    ref = detections(REF[0], REF[1], REF[2], capacity=4)
    cand = detections(REF[0][:3] + [[0.7, 0.1, 0.9, 0.2]], REF[1][:3] + [0.3002], REF[2][:3] + [4], capacity=4)
    out = compare(ref, cand)
    assert out["status"] == "passed" and out["borderline"] == 2
    # Detections that jitter across the score threshold (min_score).
    out = compare(detections(*REF), detections(REF[0][:3], REF[1][:3], REF[2][:3]), min_score=0.2999)
    assert out["status"] == "passed" and out["borderline"] == 1


def nms_like(prefix_in, out_names, k=3, drop_best=False):
    """TopK by score, then gather the boxes: padded, ordered detections from raw boxes/scores."""
    b, s = prefix_in
    nodes = [helper.make_node("TopK", [s, "k"], ["top_s", "idx"], axis=1),
             helper.make_node("Squeeze", [b, "ax0"], ["b2"]), helper.make_node("Squeeze", ["idx", "ax0"], ["i1"]),
             helper.make_node("Gather", ["b2", "i1"], ["g"], axis=0),
             helper.make_node("Unsqueeze", ["g", "ax0"], ["top_b"])]
    inits = [numpy_helper.from_array(np.array([k + drop_best], np.int64), "k"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    if drop_best:  # a broken post-processing model: loses the best detection
        nodes += [helper.make_node("Slice", ["top_s", "one", "big", "ax1"], ["top_s2"]),
                  helper.make_node("Slice", ["top_b", "one", "big", "ax1"], ["top_b2"])]
        inits += [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("one", 1), ("big", 99), ("ax1", 1))]
    last = ("top_b2", "top_s2") if drop_best else ("top_b", "top_s")
    nodes += [helper.make_node("Identity", [last[i]], [out_names[i]]) for i in range(2)]
    return nodes, inits


def raw_head():
    """p [1,10,2], logits [1,10] -> raw_detection_boxes [1,10,4] (valid corners), raw_detection_scores."""
    return ([helper.make_node("Add", ["p", "half"], ["q"]),
             helper.make_node("Concat", ["p", "q"], ["raw_detection_boxes"], axis=2),
             helper.make_node("Sigmoid", ["logits"], ["raw_detection_scores"])], [const("half", [0.5])])


@pytest.fixture
def split_models(tmp_path):
    ins = [vi("p", [1, 10, 2]), vi("logits", [1, 10])]
    raw_out = [vi("raw_detection_boxes", [1, 10, 4]), vi("raw_detection_scores", [1, 10])]
    head, inits = raw_head()
    nms, nms_inits = nms_like(("raw_detection_boxes", "raw_detection_scores"), ["detection_boxes", "detection_scores"])
    src = save(tmp_path / "src.onnx", head + nms, ins,
               raw_out + [vi("detection_boxes", [1, 3, 4]), vi("detection_scores", [1, 3])], inits + nms_inits)
    fin = save(tmp_path / "fin.onnx", head, ins, raw_out, inits)
    for name, broken in (("pp.onnx", False), ("pp_broken.onnx", True)):
        nodes, pp_inits = nms_like(("pb", "ps"), ["out_boxes", "out_scores"], drop_best=broken)
        save(tmp_path / name, nodes, [vi("pb", [1, 10, 4]), vi("ps", [1, 10])],
             [vi("out_boxes", [1, "K", 4]), vi("out_scores", [1, "K"])], pp_inits)
    return src, fin


def postprocess(file):
    return {"file": file, "kind": "detections",
            "inputs": {"pb": "raw_detection_boxes", "ps": "raw_detection_scores"},
            "outputs": {"out_boxes": "detection_boxes", "out_scores": "detection_scores"}}


def test_detections_after_nms_split(split_models):
    src, fin = split_models
    cfg = {"data": {"inputs": {"logits": {"range": [-4, 4]}}}}
    result = run(src, fin, cfg, postprocess=postprocess("pp.onnx"))
    d = result["detections"]
    assert (d["status"], d["matched"], d["images"]) == ("passed", 6, 2)  # 3 detections in each of 2 feeds
    json.dumps(result, allow_nan=False)
    assert d["iou_threshold"] == DEFAULT_IOU["fp32"]
    assert entry(result, "raw_detection_scores")["status"] == "passed"
    assert "post-processing model" in entry(result, "detection_boxes")["reason"]
    with pytest.raises(ValidationError, match="detections .*2 source detection"):
        run(src, fin, cfg, postprocess=postprocess("pp_broken.onnx"))


# -- the engine ------------------------------------------------------------------------------------

def test_engine_comparison_skipped_without_gpu(tmp_path):
    from trtpipe.backend import has_runtime_gpu, resolve_backend
    backend = resolve_backend("tensorrt_rtx")
    ok, why = has_runtime_gpu(backend, ["8.9"])
    if ok:
        pytest.skip(f"this machine can run plans ({why})")
    src = biased(tmp_path / "m.onnx", np.zeros(8))
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not run")
    result = run(src, src, backend=backend, plan_path=plan, compute_capabilities=["8.9"])
    engine = result["comparisons"][1]
    assert engine == {"name": "engine vs final-ort", "status": "skipped", "reason": why}
    assert "CUDA" in why or "compute capability" in why
    assert result["status"] == "passed"  # from source-ort vs final-ort only
    out = io.StringIO()
    print_table(result, Console(file=out, width=120))
    assert "engine vs final-ort: skipped" in out.getvalue() and "source-ort vs final-ort: passed" in out.getvalue()
    assert run(src, src, {"engine": False})["comparisons"][1]["reason"] == "validate.engine is false"


# -- data ------------------------------------------------------------------------------------------

def test_seeded_data_is_reproducible(contract_models):
    src, _ = contract_models
    inputs, _ = model_io(src)
    make = lambda seed: make_source_feeds({"seed": seed, "iterations": 2}, inputs, {})[0]  # noqa: E731
    a, b, c = make(3), make(3), make(4)
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    assert a[0]["image"].dtype == np.uint8 and a[0]["image"].max() > 200


def test_npz_data(tmp_path, contract_models):
    src, fin = contract_models
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "data.npz", image=images)
    feeds, desc = make_source_feeds({"npz": "data.npz"}, model_io(src)[0], {}, base_dir=tmp_path)
    assert desc["kind"] == "npz" and len(feeds) == 3
    assert np.array_equal(feeds[2]["image"], images[2])
    result = run(src, fin, {"data": {"npz": "data.npz"}}, contract=contract(FULL), base_dir=tmp_path)
    assert result["status"] == "passed" and result["comparisons"][0]["iterations"] == 3
    np.savez(tmp_path / "bad.npz", imgae=images)
    with pytest.raises(ValidationError, match="did you mean 'image'"):
        run(src, fin, {"data": {"npz": "bad.npz"}}, contract=contract(FULL), base_dir=tmp_path)


def png(path, rgb):
    """Minimal PNG writer (8-bit RGB), so the test needs no imaging library."""
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", rgb.shape[1], rgb.shape[0], 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_image_folder_data(tmp_path, contract_models):
    src, fin = contract_models
    (tmp_path / "imgs").mkdir()
    flat = np.zeros((8, 8, 3), np.uint8)
    flat[..., 0] = 200  # a flat colour survives any resize exactly
    for i in range(2):
        png(tmp_path / "imgs" / f"{i}.png", flat + i)
    cfg = {"data": {"images": {"dir": "imgs"}}}
    result = run(src, fin, cfg, contract=contract(FULL), base_dir=tmp_path)
    assert result["status"] == "passed" and result["data"]["kind"] == "images"
    assert result["data"]["inputs"]["image"]["images"] == ["0.png", "1.png"]
    feeds, _ = make_source_feeds(resolve_config(cfg)["data"], model_io(src)[0], {}, base_dir=tmp_path)
    assert feeds[1]["image"].shape == (1, 8, 8, 3) and feeds[1]["image"][0, 3, 3].tolist() == [201, 1, 1]


# -- schema ----------------------------------------------------------------------------------------

def test_schema_section_and_documented_defaults():
    schema = load_schema("recipe.schema.json")
    recipe = {"name": "r", "source": {"onnx": "m.onnx"},
              "validate": {"data": {"seed": 3, "inputs": {"image": {"range": [0, 255], "shape": [1, 8, 8, 3]}}},
                           "statistic": "median", "outputs": {"logits": {"atol": 0.1}},
                           "skip": {"num_detections": "int count"}, "detections": {"iou_threshold": 0.8}}}
    assert list(schema_errors(recipe, schema)) == []
    filled = fill_defaults(recipe, schema)["validate"]
    assert filled["check_nan"] is True and filled["engine"] is True and filled["data"]["iterations"] == 2
    bad = {**recipe, "validate": {"data": {"npz": "a.npz", "images": {"dir": "x"}}, "statistc": "max"}}
    messages = [m for _, m in schema_errors(bad, schema)]
    assert any("at most one of `npz` or `images`" in m for m in messages)
    assert any("did you mean 'statistic'" in m for m in messages)
    described = schema["properties"]["validate"]["properties"]["atol"]["description"]
    short = lambda v: f"{v:.0e}".replace("e-0", "e-")  # noqa: E731
    for precision, (atol, rtol) in DEFAULT_TOLERANCES.items():
        assert f"{precision} atol {short(atol)} / rtol {short(rtol)}" in described
    modes = schema["properties"]["precision"].get("enum") or schema["properties"]["precision"]["then"]["enum"]
    assert set(DEFAULT_TOLERANCES) == set(modes)
    iou_doc = schema["properties"]["validate"]["properties"]["detections"]["properties"]["iou_threshold"]["description"]
    assert all(str(v) in iou_doc for v in DEFAULT_IOU.values())


def test_apply_contract_steps():
    src = {"image": np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3)}
    final = {"x": (np.dtype(np.float32), [1, 3, 2, 2])}
    out = apply_contract(src, contract([{"op": "cast", "to": "float32"}, {"op": "add", "value": [0, 100, 200]},
                                         {"op": "transpose", "perm": [0, 3, 1, 2]}]), final)["x"]
    assert out.dtype == np.float32 and out[0, 1, 0, 0] == 101 and out[0, 2, 1, 1] == 211
    with pytest.raises(ValidationError, match="unknown op 'scale'"):
        apply_contract(src, contract([{"op": "scale", "value": 2}]), final)


# -- real tf2onnx output: the TF-OD-style demo detector ---------------------------------------------

@pytest.fixture(scope="module")
def effdet(tmp_path_factory):
    """Source: the converted demo (uint8 [1, ?, ?, 3], preprocessing Loop, NMS). Final: cut at the
    raw outputs; post-processing: the source's own NMS part, as `nms: split` leaves it."""
    import onnx_graphsurgeon as gs

    from tests import tfmodels
    root = tmp_path_factory.mktemp("effdet")
    src = root / "src.onnx"
    onnx.save(tfmodels.convert(tfmodels.demo(root / "saved_model")), str(src))
    graph = gs.import_onnx(onnx.load(str(src)))
    raw = ["raw_detection_boxes", "raw_detection_scores"]
    graph.outputs = [graph.tensors()[n] for n in raw]
    onnx.save(gs.export_onnx(graph.cleanup()), str(root / "fin.onnx"))
    nms_outputs = ["detection_boxes", "detection_scores", "detection_classes", "num_detections"]
    onnx.utils.extract_model(str(src), str(root / "pp.onnx"), raw, nms_outputs)
    np.savez(root / "image.npz", input_tensor=tfmodels.sample_image(128, 128))
    pp = {"file": "pp.onnx", "kind": "detections", "inputs": {n: n for n in raw},
          "outputs": {n: n for n in nms_outputs}}
    return src, root / "fin.onnx", pp, root


@pytest.mark.slow
def test_tf2onnx_detector_after_nms_split(effdet):
    src, fin, pp, root = effdet
    with pytest.raises(ValidationError, match=r"dynamic shape .* set validate.data.inputs.input_tensor.shape"):
        run(src, fin, postprocess=pp)
    result = run(src, fin, {"data": {"npz": "image.npz"}}, postprocess=pp, base_dir=root)
    assert [e["status"] for e in result["comparisons"][0]["outputs"][:2]] == ["passed", "passed"]
    d = result["detections"]
    assert d["status"] == "passed" and d["matched"] == d["source_detections"] > 0
    assert d["roles"]["num_detections"] == "num_detections"
    random = run(src, fin, {"data": {"inputs": {"input_tensor": {"shape": [1, 96, 128, 3]}}}}, postprocess=pp)
    assert random["data"]["inputs"]["input_tensor"]["range"] == [0, 255] and random["status"] == "passed"
    # A folder of photos for the dynamic uint8 input: resized to images.size, fed as-is (NHWC, 0-255).
    (root / "photos").mkdir(exist_ok=True)
    png(root / "photos" / "a.png", np.load(root / "image.npz")["input_tensor"][0])
    photos = run(src, fin, {"data": {"images": {"dir": "photos", "size": [96, 112]}}}, postprocess=pp, base_dir=root)
    assert photos["data"]["inputs"]["input_tensor"]["shape"] == [1, 96, 112, 3]
    assert photos["status"] == "passed" and photos["detections"]["matched"] > 0
