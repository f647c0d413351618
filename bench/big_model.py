"""P3: a model over 2 GiB of weights, kept in external data, through the whole pipeline.

Generates an ONNX model of large MatMuls (random weights, written tensor by tensor into one
external data file, never all in memory), writes a recipe (fold_constants, cleanup,
set_outputs; fp32 or fp16 precision; validation on), runs `python pipeline.py` in a child process
with an empty cache and prints its peak resident memory (the largest of the run and the build
process it starts: getrusage(RUSAGE_CHILDREN).ru_maxrss) against the weight bytes.

    python bench/big_model.py                     # 2.25 GiB, fp32 and fp16
    python bench/big_model.py --gib 0.1 --modes fp32
    python bench/big_model.py --keep /tmp/big     # keep the model, cache and outputs there

Target (README "Performance"; issue 13): the run completes; peak memory <= 1.5x the weight bytes for fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30


def make_model(directory: str | Path, weight_bytes: int, layers: int = 9, name: str = "big") -> tuple[Path, int]:
    """Write `<name>.onnx` + `<name>.onnx.data` into `directory`: input x [1, N] float32 ->
    `layers` x (MatMul with an N x N weight, Tanh) -> output y [1, N], N chosen so the weights
    total about `weight_bytes`. Weights ~ N(0, 1/N), so activations stay O(1) in fp16 too.

    Args:
        directory: where to write (created).
        weight_bytes: target size of all weights together, bytes.
        layers: number of MatMuls.
        name: file stem.

    Returns:
        (path of the .onnx file, exact weight bytes written).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = max(8, int((weight_bytes / 4 / layers) ** 0.5) // 8 * 8)
    data_name = f"{name}.onnx.data"
    rng = np.random.default_rng(0)
    inits, nodes, offset = [], [], 0
    with open(directory / data_name, "wb") as f:
        for i in range(layers):
            w = rng.standard_normal((n, n), dtype=np.float32)
            w *= np.float32(1.0 / np.sqrt(n))
            raw = w.tobytes()
            f.write(raw)
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n, n])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                t.external_data.add(key=k, value=v)
            offset += len(raw)
            del w, raw
            inits.append(t)
            x = "x" if i == 0 else f"a{i - 1}"
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], ["y" if i == layers - 1 else f"a{i}"],
                                          name=f"tanh{i}"))
    # a small side branch set_outputs cuts off: it must not survive into the plan
    nodes.append(helper.make_node("ReduceMean", ["a0"], ["side"], name="side_mean", keepdims=1))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n]),
                               helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench-big-model")
    model.ir_version = 8
    onnx.save_model(model, str(directory / f"{name}.onnx"))
    return directory / f"{name}.onnx", offset


RECIPE = """\
name: {name}
source:
  onnx: {onnx}
passes:
  - pass: fold_constants
  - pass: cleanup
  - pass: set_outputs
    params: {{outputs: [y]}}
precision: {precision}
build:
  backend: tensorrt_rtx
  workspace: 1GiB
  compute_capabilities: ["8.9"]
output:
  dir: {out}
"""


def write_recipe(directory: str | Path, onnx_path: str | Path, precision: str, name: str = "big") -> Path:
    """A recipe running the P3 stages on `onnx_path`; outputs in `directory/out-<precision>`."""
    directory = Path(directory)
    path = directory / f"{name}-{precision}.yaml"
    path.write_text(RECIPE.format(name=f"{name}-{precision}", onnx=Path(onnx_path).resolve(), precision=precision,
                                  out=(directory / f"out-{precision}").resolve()))
    return path


def run_pipeline(recipe: Path, cache: Path, extra: list[str] | None = None) -> dict:
    """Run the pipeline in a child process; returns wall seconds, exit code and peak RSS (bytes)
    of the largest process it started (this one's children: the run and its build process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    env = dict(os.environ, TRTPIPE_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, str(REPO / "pipeline.py"), str(recipe), "-q", *(extra or [])],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    return {"exit": proc.returncode, "wall_s": wall, "peak_rss": peak, "peak_is_fresh": peak > before * 1024,
            "stderr": proc.stderr[-3000:], "stdout": proc.stdout[-3000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.25, help="weight size in GiB (default 2.25)")
    ap.add_argument("--modes", default="fp32,fp16", help="precisions to run, comma separated")
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one, removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="trtpipe-big-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        t = time.perf_counter()
        onnx_path, weights = make_model(work / "model", int(args.gib * GIB))
        print(f"model: {onnx_path} ({weights / GIB:.2f} GiB of weights in external data, "
              f"made in {time.perf_counter() - t:.0f}s)", flush=True)
        for mode in args.modes.split(","):
            # one child per mode: RUSAGE_CHILDREN is a maximum over all children so far, so each
            # mode is measured from a fresh interpreter of its own
            recipe = write_recipe(work, onnx_path, mode)
            code = ("import json, sys; sys.path.insert(0, %r); import big_model as b; from pathlib import Path; "
                    "print(json.dumps(b.run_pipeline(Path(%r), Path(%r))))"
                    % (str(Path(__file__).parent), str(recipe), str(work / f"cache-{mode}")))
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            try:
                res = json.loads(out.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                print(out.stdout, out.stderr, file=sys.stderr)
                return 1
            res.update(mode=mode, weights=weights, ratio=res["peak_rss"] / weights)
            report = work / f"out-{mode}" / "report.json"
            if report.is_file():
                rep = json.loads(report.read_text())
                res["validation"] = (rep.get("validation") or {}).get("status")
                res["timings"] = rep.get("timings")
            rows.append(res)
            if res["exit"] != 0:
                print(f"{mode}: exit {res['exit']}\n{res['stderr']}\n{res['stdout']}", file=sys.stderr)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(f"{'precision':<10}{'exit':>5}{'wall s':>9}{'peak RSS GiB':>14}{'weights GiB':>13}{'ratio':>8}"
                  f"  validation")
            for r in rows:
                print(f"{r['mode']:<10}{r['exit']:>5}{r['wall_s']:>9.1f}{r['peak_rss'] / GIB:>14.2f}"
                      f"{r['weights'] / GIB:>13.2f}{r['ratio']:>8.2f}  {r.get('validation')}")
            print("target: fp32 ratio <= 1.50 (peak RSS of the largest process / weight bytes)")
        return 0 if all(r["exit"] == 0 for r in rows) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
