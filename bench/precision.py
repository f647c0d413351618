"""What each precision costs and gives: plan size, builder memory, graph types, error vs fp32.

For one model, every requested precision is realized in the graph (trtpipe.precision), built with
TensorRT-RTX for one compute capability (trtpipe.build.build_plan: VERBOSE logger, DETAILED
profiling, so the builder's "Total Activation Memory" / "Total Weights Memory" are parsed), and
run with ONNX Runtime on the same seeded data as the fp32 model (fp16/bf16 through
`emulate_in_fp32`, which rounds every low-precision tensor; fp8 with ORT's graph optimizations
off). Prints a table (or --json).

    python bench/precision.py                          # light resnet50, all precisions, SM 8.9
    python bench/precision.py --model effdet --modes fp32,fp16,int8
    python bench/precision.py --model final.onnx --cc 12.0 --samples 4
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from trtpipe.backend import resolve_backend  # noqa: E402
from trtpipe.errors import PipelineError  # noqa: E402
from trtpipe.stages.build.plan import build_plan  # noqa: E402
from trtpipe.stages.precision.mixed import apply_precision, emulate_in_fp32  # noqa: E402

MODES = ("fp32", "fp16", "bf16", "int8", "fp8")


def load_model(name):
    from tests import test_precision as tp
    if name == "resnet50":
        return tp.light_resnet50()
    if name == "effdet":  # the flagship recipe's graph after its passes, before its precision stage
        from trtpipe.recipe.load import load_recipe
        from trtpipe.registry import PassContext
        from trtpipe.stages.passes.runner import initial_input_contract, run_passes
        from trtpipe.stages.source.load import load_source
        recipe = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "effdet.yaml")
        source = load_source(recipe.data["source"])
        with tempfile.TemporaryDirectory() as tmp:
            ctx = PassContext(name=recipe.name, stage_dir=Path(tmp),
                              input_contract=initial_input_contract(source.model))
            return run_passes(source.model, recipe, ctx)[0]
    return onnx.load(name)


def make_feeds(model, samples, seed, value_range=None):
    inits = {t.name for t in model.graph.initializer}
    feeds = []
    for i in range(samples):
        rng, feed = np.random.default_rng(seed + i), {}
        for v in model.graph.input:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            shape = [d.dim_value or 1 for d in t.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
            low, high = value_range or ((0, 255) if np.issubdtype(dtype, np.integer) else (0.0, 1.0))
            feed[v.name] = rng.uniform(low, high, shape).astype(dtype)
        feeds.append(feed)
    return feeds


def run_ort(model, feed, optimize=True):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def bench(model, modes, cc, samples, seed, backend, workdir, value_range=None):
    feeds = make_feeds(model, samples, seed, value_range)
    reference = run_ort(model, feeds[0])
    rows = []
    for mode in modes:
        row = {"mode": mode}
        try:
            t0 = time.perf_counter()
            out, stats = apply_precision(model, mode, compute_capabilities=[cc], data_feeds=feeds)
            row["convert_s"] = time.perf_counter() - t0
            row["nodes"] = stats["nodes"]
            row["qdq_pairs"] = stats["qdq_pairs"]
            row["kept_fp32"] = len(stats.get("kept_fp32", {})) + len(stats.get("excluded", {}))
            path = workdir / f"{mode}.onnx"
            onnx.save(out, str(path))
            row["onnx_bytes"] = path.stat().st_size
            t0 = time.perf_counter()
            result = build_plan(str(path), {"compute_capabilities": [cc]}, backend)
            row["build_s"] = time.perf_counter() - t0
            row["plan_bytes"] = len(result.plan)
            row.update(result.memory or {})
            runnable = emulate_in_fp32(out) if mode in ("fp16", "bf16") else out
            got = run_ort(runnable, feeds[0], optimize=mode != "fp8")
            row["max_abs_err"] = max(float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64))))
                                     for r, g in zip(reference, got))
        except PipelineError as err:
            row["error"] = str(err).splitlines()[0]
        rows.append(row)
    return rows


def mib(n):
    return "-" if n is None else f"{n / 2**20:.2f}"


def table(rows, title):
    head = ["precision", "plan MiB", "act. MiB", "weights MiB", "onnx MiB", "nodes by type", "Q/DQ",
            "kept/excl.", "max |err|", "convert s", "build s"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["mode"], "refused: " + r["error"]] + [""] * (len(head) - 2))
            continue
        nodes = " ".join(f"{k}:{v}" for k, v in r["nodes"].items() if k != "other")
        lines.append([r["mode"], mib(r["plan_bytes"]), mib(r.get("activation_bytes")), mib(r.get("weights_bytes")),
                      mib(r["onnx_bytes"]), nodes, str(r["qdq_pairs"]), str(r["kept_fp32"]),
                      f"{r['max_abs_err']:.2e}", f"{r['convert_s']:.1f}", f"{r['build_s']:.1f}"])
    widths = [max(len(h), *(len(x[i]) for x in lines if len(x[1]) < 60 or i != 1)) for i, h in enumerate(head)]
    out = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in lines]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="resnet50 | effdet | path to a (final) .onnx")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated precisions")
    ap.add_argument("--cc", default="8.9", help="TensorRT-RTX compute capability to build for")
    ap.add_argument("--samples", type=int, default=2, help="random feeds (overflow guard / calibration)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--range", default=None, help="input value range 'low,high' (default 0,1; 0,255 for "
                    "integer inputs); the effdet recipe's final model takes pixels: 0,255")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown precision(s) {bad}; choose from {', '.join(MODES)}")
    backend = resolve_backend("tensorrt_rtx")
    model = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        value_range = tuple(float(v) for v in args.range.split(",")) if args.range else None
        rows = bench(model, modes, args.cc, args.samples, args.seed, backend, Path(tmp), value_range)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows, f"{args.model}: {backend.label}, compute capability {args.cc}, "
                          f"{args.samples} random feed(s), error vs fp32 on ONNX Runtime"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
