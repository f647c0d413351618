"""What the stage cache buys on recipes/effdet.yaml, against a plain hand-written script.

Measured in one run, each step a fresh process (`python pipeline.py ...`, wall clock, imports
included), with an empty cache directory of its own:

  cold          first run: conversion, passes, precision, validation, build
  no-op         the same recipe again: everything from the cache
  build edit    build.workspace changed: only the build runs
  pass edit     a pass parameter changed (fold_constants.max_rounds): that pass runs again; the
                stages after it run only if its output changed (content-addressed)

and the same steps done by a hand-written script with no cache (tf2onnx's Python API, the same
graph-surgery functions applied to one onnx-graphsurgeon graph, the same precision rewrite and
ORT validation, TensorRT-RTX's builder API): every step costs a full run. The hand-written
script does the same work as the pipeline, so `cold pipeline / hand-written` is the cost of the
orchestration (checks after each pass, cache hashing and writes, locks, report).

Targets: cold <= 1.05x hand-written; no-op <= 0.10x cold; a build-only edit does no conversion
and no pass work (read from report.json's cache section).

    python bench/pipeline.py              # median of 3 cold runs each
    python bench/pipeline.py --repeat 1   # quicker, noisier
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HAND_WRITTEN = r'''
"""effdet by hand: tf2onnx -> graph surgery -> fp16 -> ORT check -> TensorRT-RTX plan. No cache."""
import os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
out = sys.argv[3]
t0 = time.perf_counter()
import tensorflow as tf
import tf2onnx
from tf2onnx import convert, tf_loader
import onnx
import onnx_graphsurgeon as gs
from trtpipe import registry
from trtpipe.recipe.load import load_recipe
from trtpipe.registry import PassContext
recipe = load_recipe(sys.argv[2])
sm = recipe.data["source"]["saved_model"]
graph_def, ins, outs, tables, rename = tf_loader.from_saved_model(
    sm, None, None, ["serve"], ["serving_default"], None, False,
    return_initialized_tables=True, return_tensors_to_rename=True)
with tf.device("/cpu:0"):
    source, _ = convert._convert_common(graph_def, name="saved_model", opset=17, input_names=ins, output_names=outs,
                                        tensors_to_rename=rename, initialized_tables=tables)
onnx.save(source, f"{out}/source.onnx")
t1 = time.perf_counter()

from trtpipe.stages.passes.runner import initial_input_contract
from pathlib import Path
ctx = PassContext(name="effdet", backend="tensorrt_rtx", recipe_dir=recipe.dir, stage_dir=Path(out),
                  input_contract=initial_input_contract(source))
graph = gs.import_onnx(source)
for _, item in recipe.enabled_passes():
    graph = registry.get(item["pass"]).func(graph, item["params"], ctx)
model = gs.export_onnx(graph)
t2 = time.perf_counter()

from trtpipe.stages.precision.mixed import apply_precision, emulate_in_fp32
from trtpipe.stages.validate.compare import resolve_config, validate_models
from trtpipe.stages.validate.data import apply_contract, make_source_feeds, model_io
onnx.save(model, f"{out}/surgery.onnx")
src_in, _ = model_io(f"{out}/source.onnx")
fin_in, _ = model_io(f"{out}/surgery.onnx")
data = resolve_config(recipe.data["validate"])["data"]
feeds = [apply_contract(f, ctx.input_contract, fin_in)
         for f in make_source_feeds(data, src_in, ctx.input_contract, base_dir=recipe.dir)[0]]
model, _ = apply_precision(model, "fp16", compute_capabilities=["8.9"], data_feeds=feeds)
onnx.save(model, f"{out}/effdet.onnx")
onnx.save(emulate_in_fp32(model), f"{out}/emulated.onnx")
t3 = time.perf_counter()
validate_models(f"{out}/source.onnx", f"{out}/effdet.onnx", recipe.data["validate"], precision="fp16",
                input_contract=ctx.input_contract, output_map=ctx.output_map, postprocess=ctx.postprocess,
                base_dir=recipe.dir, final_ort_path=f"{out}/emulated.onnx")
t4 = time.perf_counter()

import onnxruntime_ep_nv_tensorrt_rtx  # noqa: F401  (loads the TensorRT-RTX libraries)
import tensorrt_rtx_bindings as trt
logger = trt.Logger(trt.Logger.ERROR)
builder = trt.Builder(logger)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
assert parser.parse_from_file(f"{out}/effdet.onnx"), [parser.get_error(i) for i in range(parser.num_errors)]
config = builder.create_builder_config()
config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe.data["build"]["workspace_bytes"]))
config.num_compute_capabilities = 1
config.set_compute_capability(trt.ComputeCapability.SM89, 0)
plan = builder.build_serialized_network(network, config)
open(f"{out}/effdet.plan", "wb").write(bytes(memoryview(plan)))
t5 = time.perf_counter()
print({"convert": t1 - t0, "surgery": t2 - t1, "precision": t3 - t2, "validate": t4 - t3, "build": t5 - t4})
'''


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new)


def run(cmd, env):
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="cold runs of each kind (median is reported)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON too")
    args = ap.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    work = Path(tempfile.mkdtemp(prefix="trtpipe-bench-"))
    try:
        recipes = work / "recipes"
        recipes.mkdir()
        base = (REPO / "recipes" / "effdet.yaml").read_text().replace(
            "../models/effdet_demo/saved_model", str(REPO / "models" / "effdet_demo" / "saved_model"))
        variants = {
            "cold": base,
            "no-op": base,
            "build edit": edit(base, "workspace: 2GiB", "workspace: 1GiB"),
            "pass edit": edit(base, "  - pass: fold_constants\n",
                              "  - pass: fold_constants\n    params: {max_rounds: 5}\n"),
        }
        hand = work / "hand.py"
        hand.write_text(HAND_WRITTEN)
        (recipes / "effdet.yaml").write_text(base)

        def pipeline(text, cache, out):
            path = recipes / "effdet.yaml"
            path.write_text(text)
            took = run([sys.executable, str(REPO / "pipeline.py"), str(path), "-o", str(out), "--cache-dir", str(cache),
                        "-q"], env)
            rep = json.loads((out / "report.json").read_text())
            return took, rep["cache"]["stages"]

        def handwritten(n):
            out = work / f"hand-{n}"
            out.mkdir()
            took = run([sys.executable, str(hand), str(REPO), str(recipes / "effdet.yaml"), str(out)], env)
            return took

        cold_p, cold_h, steps, statuses = [], [], {}, {}
        for i in range(args.repeat):  # interleaved, so machine load affects both alike
            (recipes / "effdet.yaml").write_text(base)
            cold_h.append(handwritten(i))
            cache = work / f"cache-{i}"
            took, st = pipeline(base, cache, work / f"out-{i}")
            cold_p.append(took)
            statuses["cold"] = st
            if i == 0:
                for name in ("no-op", "build edit", "pass edit"):
                    out = work / f"out-{name.replace(' ', '-')}"
                    steps[name], statuses[name] = pipeline(variants[name], cache, out)
                    if name == "build edit":  # back to the original before the pass edit
                        pipeline(base, cache, work / "out-back")
        cold, hand_cold = statistics.median(cold_p), statistics.median(cold_h)
        rows = [("cold", cold, hand_cold), *((n, steps[n], hand_cold) for n in ("no-op", "build edit", "pass edit"))]
        print(f"recipes/effdet.yaml, {args.repeat} cold run(s) each (median), wall clock per process\n")
        print(f"{'step':<12} {'pipeline s':>10} {'by hand s':>10} {'vs hand':>8} {'vs cold':>8}  stages run")
        for name, p, h in rows:
            ran = [s for s, v in statuses[name].items() if v["status"] != "cached"]
            print(f"{name:<12} {p:>10.2f} {h:>10.2f} {p / h:>7.2f}x {p / cold:>7.2f}x  {', '.join(ran) or '(none)'}")
        build_only = [s for s, v in statuses["build edit"].items() if v["status"] != "cached"]
        checks = {
            "cold <= 1.05x hand-written": cold / hand_cold <= 1.05,
            "no-op <= 0.10x cold": steps["no-op"] / cold <= 0.10,
            "build edit runs no conversion/pass": build_only == ["build"],
        }
        fmt = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
        print(f"\ncold runs: pipeline {fmt(cold_p)}; by hand {fmt(cold_h)}")
        for what, ok in checks.items():
            print(f"  {'ok  ' if ok else 'MISS'} {what}")
        if args.json:
            print(json.dumps({"cold": cold_p, "hand": cold_h, "steps": steps, "statuses": statuses, "checks": checks}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
