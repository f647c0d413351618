"""Detector exports of current TF stacks and the 2026-11-30 failure cases, recipe -> plan, as a user
runs them (`python pipeline.py RECIPE`): real tf2onnx (tests/tfmodels_detectors.py look-alikes),
graph surgery, validation with ONNX Runtime (detections matched by IoU, counted) and a TensorRT-RTX
plan. Sources are the look-alikes converted once (cached on disk) and given as ONNX files, except
the YOLO-style one, which goes through the recipe's own SavedModel conversion.
"""

import json

import onnx
import pytest

from tests import tfmodels_detectors as det
from tests.helpers import write_recipe

pytestmark = pytest.mark.slow

RANGE = "inputs: {images: {range: [0, 255]}}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> path of the look-alike's converted ONNX (one conversion per module, cached on disk)."""
    root, paths = tmp_path_factory.mktemp("detector_models"), {}

    def get(name):
        if name not in paths:
            paths[name] = root / f"{name}.onnx"
            onnx.save(det.onnx_model(name), str(paths[name]))
        return paths[name]
    return get


def run(run_cli, tmp_path, body, *args):
    recipe = write_recipe(tmp_path / "r.yaml", body)
    code, out, err = run_cli(recipe, *args)
    report = tmp_path / "out" / "report.json"
    return code, out + err, json.loads(report.read_text()) if code == 0 else None


def detections(report):
    d = report["validation"]["detections"]
    assert d["status"] == "passed", d
    return d


def test_model_garden_loop_nms_and_image_info_output_to_a_validated_plan(models, run_cli, tmp_path):
    """Item 4 + 1: the map_fn Loop also outputs image_info (a graph output, and read by the NMS to
    rescale boxes): the Loop goes, image_info becomes a constant of the static input, the nested
    per-class NMS loops leave the engine."""
    code, text, rep = run(run_cli, tmp_path, f"""
        name: mg
        source: {{onnx: {models("model_garden")}}}
        passes:
          - pass: set_input
            params: {{dtype: float32, shape: [1, 64, 64, 3]}}
          - pass: replace_preprocessing
            params: {{layout: NHWC, scale: 1.0}}
          - pass: nms
            params: {{mode: split}}
          - pass: fold_constants
          - pass: cleanup
        validate: {{data: {{seed: 3, iterations: 2}}}}
        output: {{dir: out}}
        """)
    assert code == 0, text
    final = onnx.load(str(tmp_path / "out" / "mg.onnx"))
    assert "Loop" not in {n.op_type for n in final.graph.node}
    assert [o["name"] for o in rep["build"]["outputs"]].count("image_info") == 1
    d = detections(rep)
    assert d["source_detections"] >= 5 and d["matched"] == d["source_detections"] == d["final_detections"]
    assert d["min_iou"] == 1.0 and d["max_score_diff"] <= 1e-5
    assert (tmp_path / "out" / "mg.plan").stat().st_size > 0


def test_keras_hub_argsort_nms_settings_and_dynamic_batch_to_a_validated_plan(models, run_cli, tmp_path):
    """Items 1-2: the argsort TopK over 4096 anchors leaves the engine; the recipe's NMS settings
    are applied (fewer detections than the source's defaults, the reference being the
    post-processing on the source's own tensors); dynamic_batch after the split."""
    code, text, rep = run(run_cli, tmp_path, f"""
        name: kh
        source: {{onnx: {models("keras_hub")}}}
        passes:
          - pass: nms
            params: {{mode: split, score_threshold: 0.34, max_detections: 10}}
          - pass: dynamic_batch
          - pass: fold_constants
          - pass: cleanup
        validate:
          data: {{seed: 3, iterations: 2, {RANGE}}}
          detections: {{scores: confidence}}
        build:
          profiles:
            - name: default
              inputs: {{images: {{min: [1, 128, 128, 3], opt: [2, 128, 128, 3], max: [4, 128, 128, 3]}}}}
        output: {{dir: out}}
        """)
    assert code == 0, text
    pp = rep["deploy"]["postprocess"]
    assert pp["settings"] == {"score_threshold": 0.34, "max_detections": 10}
    d = detections(rep)
    assert 1 <= d["source_detections"] == d["matched"] and d["min_iou"] == 1.0 and d["max_score_diff"] == 0
    assert [o["shape"][0] for o in rep["build"]["outputs"]] == [-1] * len(rep["build"]["outputs"])
    post = onnx.load(str(tmp_path / "out" / "kh.postprocess.onnx"))
    assert {"TopK", "Loop"} <= {n.op_type for n in post.graph.node}
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in post.graph.input)


def test_yolo_single_image_nms_from_the_saved_model(run_cli, tmp_path):
    saved = det.yolo(tmp_path / "saved_model")
    code, text, rep = run(run_cli, tmp_path, f"""
        name: yolo
        source: {{saved_model: {saved}}}
        passes:
          - pass: nms
            params: {{mode: split}}
          - pass: fold_constants
          - pass: cleanup
        validate: {{data: {{seed: 3, iterations: 2, {RANGE}}}}}
        output: {{dir: out}}
        """)
    assert code == 0, text
    d = detections(rep)
    assert d["source_detections"] >= 5 and d["matched"] == d["source_detections"] == d["final_detections"]
    assert d["unmatched_source"] == d["unmatched_final"] == 0 and d["min_iou"] == 1.0
    assert "NonMaxSuppression" not in {n.op_type for n in onnx.load(str(tmp_path / "out" / "yolo.onnx")).graph.node}


def test_uint8_input_without_map_fn_builds_after_set_input(models, run_cli, tmp_path):
    """c05: set_input's Cast back to uint8 feeds only a Cast to float32: folded, the plan builds."""
    code, text, rep = run(run_cli, tmp_path, f"""
        name: u8
        source: {{onnx: {models("uint8")}}}
        passes:
          - pass: set_input
            params: {{name: pixels, dtype: float32}}
          - pass: sanitize
        output: {{dir: out}}
        """)
    assert code == 0, text
    final = onnx.load(str(tmp_path / "out" / "u8.onnx"))
    assert not [n for n in final.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.UINT8]
    assert rep["validation"]["status"] == "passed" and rep["build"]["inputs"][0]["dtype"] == "float32"


def test_topk_over_3840_moves_to_post_processing(models, run_cli, tmp_path):
    """c07: the build error names the pass; with it, validation compares final + post-processing with
    the source element-wise."""
    body = f"""
        name: top
        source: {{onnx: {models("topk")}}}
        passes:
          - pass: SPLIT
          - pass: cleanup
        output: {{dir: out}}
        """
    code, text, _ = run(run_cli, tmp_path, body.replace("SPLIT", "sanitize"))
    assert code == 7 and "K exceeds the maximum value allowed (3840)" in text
    assert "hint: TensorRT's TopK takes K <= 3840: move that TopK" in text and "`split_postprocess` pass" in text
    code, text, rep = run(run_cli, tmp_path, body.replace("SPLIT", "split_postprocess"))
    assert code == 0, text
    comp = next(c for c in rep["validation"]["comparisons"] if c["name"].endswith("postprocess-ort"))
    assert comp["status"] == "passed"
    assert {o["output"]: o["max_abs"] for o in comp["outputs"]} == {"top_scores": 0.0, "top_indices": 0.0}
    assert "TopK" not in {n.op_type for n in onnx.load(str(tmp_path / "out" / "top.onnx")).graph.node}


def test_unique_is_named_unsupported_with_the_pass_that_moves_it(models, run_cli, tmp_path):
    """c06: the parser's bare "false" becomes the op, the backend, the node and the pass to use; that
    pass then gives a validated plan."""
    body = f"""
        name: uq
        source: {{onnx: {models("unique")}}}
        passes: PASSES
        output: {{dir: out}}
        """
    code, text, _ = run(run_cli, tmp_path, body.replace("PASSES", "[{pass: sanitize}]"))
    assert code == 7
    assert "ONNX op Unique is not supported by tensorrt_rtx" in text
    assert "node 'StatefulPartitionedCall/UniqueWithCounts' (Unique" in text
    assert "the `split_postprocess` pass with `ops: [Unique]`" in text
    moved = "[{pass: split_postprocess, params: {ops: [Unique]}}]"
    code, text, rep = run(run_cli, tmp_path, body.replace("PASSES", moved))
    assert code == 0, text
    assert rep["validation"]["status"] == "passed"


def test_a_wrong_input_size_after_replace_preprocessing_names_the_size_expected(models, run_cli, tmp_path):
    """The Loop resizes to a size shape inference cannot see: measured, and said instead of a shape
    inference error deep in the network."""
    code, text, _ = run(run_cli, tmp_path, f"""
        name: mg
        source: {{onnx: {models("model_garden")}}}
        passes:
          - pass: set_input
            params: {{dtype: float32, shape: [1, 80, 80, 3]}}
          - pass: replace_preprocessing
            params: {{layout: NHWC, scale: 1.0}}
        output: {{dir: out}}
        """)
    assert code == 5
    assert "the removed preprocessing resized images to [64, 64]" in text and "[1, 80, 80, 3]" in text
    assert "Incompatible dimensions" not in text


def test_decode_jpeg_string_input_conversion_starts_after_the_decoding(run_cli, tmp_path):
    """c08: the hint names the recipe key and the tensor where decoding ends; with it, a plan."""
    saved = det.decode_jpeg(tmp_path / "saved_model")
    body = f"""
        name: jpg
        source:
          saved_model: {saved}
          INPUTS
        passes:
          - pass: set_input
            params: {{shape: [1, 32, 32, 3]}}
        output: {{dir: out}}
        """
    code, text, _ = run(run_cli, tmp_path, body.replace("INPUTS", ""))
    assert code == 4 and "DecodeJpeg" in text
    tensor = "StatefulPartitionedCall/map/TensorArrayV2Stack/TensorListStack:0"
    assert "no ONNX opset defines DecodeJpeg" in text and f"`source.inputs: ['{tensor}']`" in text
    assert "higher `source.opset`" not in text
    code, text, rep = run(run_cli, tmp_path, body.replace("INPUTS", f"inputs: ['{tensor}']"))
    assert code == 0, text
    assert rep["build"]["inputs"] == [{"name": "TensorListStack_input", "dtype": "float32", "shape": [1, 32, 32, 3]}]
    assert rep["validation"]["status"] == "passed"


def test_caffe_and_uff_sources_say_the_parsers_are_gone(run_cli, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", """
        name: old
        source:
          uff: model.uff
        output: {dir: out}
        """)
    code, out, err = run_cli("check", recipe)
    assert code == 3
    assert f"{recipe}:3:3: source.uff: expected nothing: TensorRT 10 removed the UFF parser" in out + err
