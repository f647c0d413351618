"""recipes/effdet.yaml at fp32 by hand: the baseline of issue 13's P1 target (cold run <= 1.05x this).

What a deployment engineer writes without trt-pipeline: tf2onnx's Python API on the SavedModel
(opset 17, as `python -m tf2onnx.convert --saved-model` converts), the recipe's graph edits written
directly with onnx-graphsurgeon for this one model (no checks, no cache), then the TensorRT-RTX
builder for compute capability 8.9. Nothing from trtpipe/ or passes/ is imported.

    python bench/handwritten/effdet.py OUT_DIR [--saved-model DIR]

Writes OUT_DIR/effdet.onnx (the engine's graph), OUT_DIR/effdet.postprocess.onnx (the NMS, for
ONNX Runtime) and OUT_DIR/effdet.plan; prints one JSON line on stdout: seconds per step named like
the pipeline's stages (source, passes, build), their parts ("source/import_tf", "passes/nms", ...)
and `total` since this file started running (bench/cold_overhead.py reads it).
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402  (T0 first: the step times start with the script)
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_graphsurgeon as gs  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAVED_MODEL = REPO / "models" / "effdet_demo" / "saved_model"
OPSET = 17
# recipes/effdet.yaml: set_input, replace_preprocessing, nms (split), build
INPUT, INPUT_SHAPE = "input_tensor", [1, 256, 256, 3]
SCALE, MEAN, STD = 1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
LOOP = "StatefulPartitionedCall/map/while_loop"  # the tf.map_fn preprocessing; output 1 feeds the stem Conv
BOXES, SCORES = "raw_detection_boxes", "raw_detection_scores"
DETECTIONS = ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
WORKSPACE = 2 << 30  # build.workspace: 2GiB


class Steps(dict):
    """Seconds per step: `with steps("passes/fold_constants"):` adds the block's wall time."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t


def convert(saved_model: Path, steps: Steps) -> onnx.ModelProto:
    """SavedModel (tag serve, signature serving_default) -> ONNX at OPSET, on the CPU, the way
    tf2onnx's CLI does it: tf_loader.from_saved_model, then convert._convert_common (tf2onnx 1.17
    has no public convert.from_saved_model; `from_graph_def` would drop the initialized tables).
    Records "source/import_tf" and "source/convert" in `steps`; raises whatever tf2onnx raises."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with steps("source/import_tf"):
        import tensorflow as tf
        from tf2onnx import convert as t2o
        from tf2onnx import tf_loader
    with steps("source/convert"):
        graph_def, inputs, outputs, tables, rename = tf_loader.from_saved_model(
            str(saved_model), None, None, ["serve"], ["serving_default"], None, False,
            return_initialized_tables=True, return_tensors_to_rename=True)
        with tf.device("/cpu:0"):
            model, _ = t2o._convert_common(graph_def, name="saved_model", opset=OPSET, input_names=inputs,
                                           output_names=outputs, tensors_to_rename=rename,
                                           initialized_tables=tables, continue_on_error=False,
                                           custom_op_handlers={}, extra_opset=[])
    return model


def fold(graph: gs.Graph, size_threshold: int | None = None) -> gs.Graph:
    """ONNX shape inference (with data propagation) + graphsurgeon's `fold_constants(fold_shapes=True)`
    until the node count stops changing, at most 10 rounds (fold_constants' max_rounds default);
    folded tensors above `size_threshold` bytes stay computed. ONNX Runtime's errors propagate."""
    for _ in range(10):
        before = len(graph.nodes)
        graph = gs.import_onnx(onnx.shape_inference.infer_shapes(gs.export_onnx(graph), data_prop=True))
        graph.fold_constants(fold_shapes=True, size_threshold=size_threshold, error_ok=False)
        graph.cleanup().toposort()
        if len(graph.nodes) == before:
            break
    return graph


def edit(model: onnx.ModelProto, out: Path, steps: Steps) -> onnx.ModelProto:
    """The recipe's passes for this graph: float32 static input, explicit normalization instead of
    the map_fn Loop, exact nearest Resize modes, NMS cut off into OUT/effdet.postprocess.onnx, fold, cleanup."""
    with steps("passes/import"):
        graph = gs.import_onnx(model)
        tensors = graph.tensors()
    with steps("passes/set_input"):
        image = tensors[INPUT]
        image.dtype, image.shape = np.float32, INPUT_SHAPE  # uint8 [1,?,?,3] -> float32 pixels 0..255

    with steps("passes/replace_preprocessing"):  # map_fn Loop -> x * scale, - mean, / std, NHWC -> NCHW
        loop = next(n for n in graph.nodes if n.name == LOOP)
        backbone_in = loop.outputs[1]  # what the stem Conv reads: now computed by the nodes below
        loop.outputs[1] = gs.Variable(backbone_in.name + "/replaced")
        prefix = f"{INPUT}/preprocess"
        x = image
        for op, name, value in (("Mul", "scale", np.array(SCALE, np.float32)),
                                ("Sub", "mean", np.array(MEAN, np.float32).reshape(1, 1, 1, 3)),
                                ("Div", "std", np.array(STD, np.float32).reshape(1, 1, 1, 3))):
            x = graph.layer(op=op, name=f"{prefix}/{name}", inputs=[x, gs.Constant(f"{prefix}/{name}", value)],
                            outputs=[gs.Variable(f"{prefix}/{name}:0", np.float32)])[0]
        graph.layer(op="Transpose", name=f"{prefix}/transpose", attrs={"perm": [0, 3, 1, 2]}, inputs=[x],
                    outputs=[backbone_in])

    with steps("passes/fix_resize"):  # tf_half_pixel_for_nn + floor == half_pixel + round_prefer_ceil
        for node in graph.nodes:
            if node.op == "Resize" and node.attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
                node.attrs["coordinate_transformation_mode"] = "half_pixel"
                node.attrs["nearest_mode"] = "round_prefer_ceil"

    with steps("passes/nms"):  # split: the engine ends at the raw boxes/scores, the rest is post-processing
        post = graph.copy()
        cut = post.tensors()
        for name in (BOXES, SCORES):
            cut[name].inputs.clear()
        post.inputs, post.outputs = [cut[BOXES], cut[SCORES]], [cut[n] for n in DETECTIONS]
        post.name = f"{graph.name}_postprocess"
        post.cleanup().toposort()
        onnx.save(gs.export_onnx(post), str(out / "effdet.postprocess.onnx"))
        graph.outputs = [tensors[BOXES], tensors[SCORES]]
        graph.cleanup().toposort()

    with steps("passes/fold_constants"):
        graph = fold(graph)
    with steps("passes/cleanup"):
        graph.cleanup().toposort()
    with steps("passes/export"):
        return gs.export_onnx(graph)


def build(onnx_path: Path, plan_path: Path, steps: Steps, workspace: int = WORKSPACE) -> None:
    """TensorRT-RTX: parse `onnx_path`, strongly typed network, `workspace` bytes of workspace,
    ahead-of-time for compute capability 8.9; the plan goes to `plan_path`. Records "build/import",
    "build/parse+build" and "build/write" in `steps`. SystemExit with the parser's errors on failure."""
    with steps("build/import"):
        import onnxruntime_ep_nv_tensorrt_rtx  # noqa: F401  (preloads the TensorRT-RTX libraries)
        import tensorrt_rtx_bindings as trt
    with steps("build/parse+build"):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            raise SystemExit("\n".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # as trt-pipeline builds
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM89, 0)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise SystemExit("build_serialized_network failed")
    with steps("build/write"):
        plan_path.write_bytes(bytes(memoryview(plan)))


def report(steps: Steps) -> None:
    """One JSON line on stdout: every step in seconds, and `total` since T0."""
    steps["total"] = time.perf_counter() - T0
    print(json.dumps({k: round(v, 4) for k, v in steps.items()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output directory (created)")
    ap.add_argument("--saved-model", type=Path, default=SAVED_MODEL)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    with steps("source"):
        model = convert(args.saved_model, steps)
    with steps("passes"):
        final = edit(model, args.out, steps)
        with steps("passes/save"):
            onnx.save(final, str(args.out / "effdet.onnx"))
    with steps("build"):
        build(args.out / "effdet.onnx", args.out / "effdet.plan", steps)
    report(steps)


if __name__ == "__main__":
    main()
