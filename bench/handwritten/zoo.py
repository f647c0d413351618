"""recipes/zoo-resnet50.yaml by hand: the zoo baseline of issue 13's P1 target (cold run <= 1.05x this).

What a deployment engineer writes without trt-pipeline: load the onnx wheel's light_resnet50.onnx,
fold constants with onnx-graphsurgeon (folded tensors above 1 MiB stay unfolded, as the recipe's
size_threshold says), clean up, save, and build an fp32 TensorRT-RTX plan for compute capability
8.9 with a 1 GiB workspace. Shares `fold` and `build` with effdet.py (same calls); nothing from
trtpipe/ or passes/ is imported.

    python bench/handwritten/zoo.py OUT_DIR

Writes OUT_DIR/zoo-resnet50.onnx and OUT_DIR/zoo-resnet50.plan; prints one JSON line on stdout:
seconds per step (source, passes, build), their parts ("passes/fold_constants", ...) and `total`
since this file started running (bench/cold_overhead.py reads it).
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402  (T0 first: the step times start with the script)
from pathlib import Path  # noqa: E402

import onnx  # noqa: E402
import onnx_graphsurgeon as gs  # noqa: E402
from effdet import Steps, build, fold, report  # noqa: E402  (this directory is sys.path[0])

SOURCE = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
SIZE_THRESHOLD = 1 << 20  # fold_constants.size_threshold: 1048576 (keeps in-graph weight generators)
WORKSPACE = 1 << 30       # build.workspace: 1GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output directory (created)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = Steps()
    with steps("source"):
        model = onnx.load(str(SOURCE))
    with steps("passes"):
        with steps("passes/import"):
            graph = gs.import_onnx(model)
        with steps("passes/fold_constants"):
            graph = fold(graph, size_threshold=SIZE_THRESHOLD)
        with steps("passes/cleanup"):
            graph.cleanup().toposort()
        with steps("passes/export"):
            final = gs.export_onnx(graph)
            final.ir_version = max(final.ir_version, 4)  # IR 3 lists weights as inputs; graphsurgeon drops them
        with steps("passes/save"):
            onnx.save(final, str(args.out / "zoo-resnet50.onnx"))
    with steps("build"):
        build(args.out / "zoo-resnet50.onnx", args.out / "zoo-resnet50.plan", steps, workspace=WORKSPACE)
    report(steps)


if __name__ == "__main__":
    main()
