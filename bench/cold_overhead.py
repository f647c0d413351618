"""Target P1 (README "Performance"; issue 13): a cold run with validation off costs <= 1.05x a hand-written script.

A = `python pipeline.py RECIPE --no-validate --cache-dir EMPTY -o OUT -q` (a fresh cache directory
each run, so every stage runs; it holds only `codescan.json`, copied from the warm-up run: the
tool's memo of its own modules' import graph, which a cache key names, kept per installation like
Python's .pyc files, not a stage's output); B = bench/handwritten/<script>.py, the same tool calls written
directly with tf2onnx / onnx-graphsurgeon / TensorRT-RTX (no trtpipe import). Both run as whole
fresh processes, timed from outside (wall clock; CPU = user + sys of the process and the children it
reaped, from wait4; peak RSS of the largest of them). One warm-up pair, then N counted pairs whose
order alternates (AB, BA, AB, ...); the ratio A/B is taken pair by pair and its median is the
figure P1 quotes. Recipes: recipes/effdet.yaml with precision fp32 and recipes/zoo-resnet50.yaml
(fp32), copied to a temporary directory with absolute paths.

Before timing, the warm-up pair's outputs are compared (the script must build the same thing):
same op-type histogram, same input/output names, dtypes and shapes, and outputs allclose (rtol
1e-4, atol 1e-5) in ONNX Runtime on one seeded random input, for the final ONNX (and effdet's
post-processing model).

The stage table takes the pipeline's report.json (`timings_s` per stage, `passes[].duration_s`,
`build.duration_s`) and the source cache entry's sub-timings (import_tf / convert / check), medians
over the counted runs, beside the script's own step times (its JSON line on stdout).

    python bench/cold_overhead.py                      # both recipes, 3 counted pairs each
    python bench/cold_overhead.py --pairs 5 --recipes effdet
    python bench/cold_overhead.py --verify             # warm-up pair + equivalence check only
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx  # imported where needed: the bench process itself stays light

REPO = Path(__file__).resolve().parent.parent
HAND = REPO / "bench" / "handwritten"
TARGET = 1.05
# recipe name -> (recipe file, hand-written script, artifacts compared)
RECIPES = {
    "effdet": ("recipes/effdet.yaml", "effdet.py", ["effdet.onnx", "effdet.postprocess.onnx"]),
    "zoo-resnet50": ("recipes/zoo-resnet50.yaml", "zoo.py", ["zoo-resnet50.onnx"]),
}
RTOL, ATOL = 1e-4, 1e-5
# Both sides run as a user's shell runs them: Python keeps compiled bytecode (this sandbox sets
# PYTHONDONTWRITEBYTECODE, under which every run recompiles the editable checkout's modules).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def variant(name: str, work: Path) -> Path:
    """The recipe with paths made absolute (it no longer sits in recipes/) and precision fp32."""
    text = (REPO / RECIPES[name][0]).read_text()
    text = re.sub(r"(?<=[\s=])\.\./", f"{REPO}/", text)  # ../models/..., ../build/...: relative to recipes/
    text, n = re.subn(r"^precision: \w+", "precision: fp32", text, flags=re.M)
    assert n == 1, f"{name}: no top-level `precision:` line"
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` to completion; wall seconds, CPU seconds (process + reaped children), peak RSS bytes."""
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=ENV)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.with_suffix(".err").read_text(errors="replace")[-3000:]
        sys.exit(f"failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss * 1024}


def run_pipeline(recipe: Path, work: Path, tag: str) -> dict:
    """One cold pipeline run (empty cache work/cache-TAG, output work/out-TAG): `timed`'s figures plus
    "steps" (seconds: report.json's timings_s, "passes/<pass>" from passes[].duration_s,
    "build/parse+build" from build.duration_s, "source/<part>" from the source cache entry) and "dir"."""
    cache, out = work / f"cache-{tag}", work / f"out-{tag}"
    memo = work / "codescan.json"
    if memo.is_file():  # the tool's scan of its own code (see the module docstring); no stage entry
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(memo, cache / "codescan.json")
    res = timed([sys.executable, str(REPO / "pipeline.py"), str(recipe), "--no-validate", "--cache-dir", str(cache),
                 "-o", str(out), "-q"], work / f"log-{tag}")
    if not memo.is_file() and (cache / "codescan.json").is_file():
        shutil.copyfile(cache / "codescan.json", memo)
    rep = json.loads((out / "report.json").read_text())
    steps = dict(rep["timings_s"])
    for p in rep["passes"]:
        steps[f"passes/{p['pass']}"] = steps.get(f"passes/{p['pass']}", 0.0) + p["duration_s"]
    steps["build/parse+build"] = rep["build"]["duration_s"]  # in the build child
    for manifest in (cache / "entries" / "source").glob("*/*/manifest.json"):
        for k, v in (json.loads(manifest.read_text())["meta"].get("timings") or {}).items():
            steps[f"source/{k}"] = v
    res["steps"], res["dir"] = steps, out
    return res


def run_script(name: str, work: Path, tag: str) -> dict:
    """One run of the recipe's hand-written script into work/hand-TAG: `timed`'s figures plus
    "steps" (the script's JSON line, seconds) and "dir"."""
    out = work / f"hand-{tag}"
    res = timed([sys.executable, str(HAND / RECIPES[name][1]), str(out)], work / f"log-{tag}")
    lines = [ln for ln in (work / f"log-{tag}.out").read_text().splitlines() if ln.startswith("{")]
    res["steps"], res["dir"] = json.loads(lines[-1]), out
    return res


def io_spec(model: onnx.ModelProto) -> tuple:
    """((name, elem_type, dims) of each non-weight input), (same for each output)."""
    weights = {t.name for t in model.graph.initializer}
    spec = lambda v: (v.name, v.type.tensor_type.elem_type,  # noqa: E731
                      [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim])
    return [spec(v) for v in model.graph.input if v.name not in weights], [spec(v) for v in model.graph.output]


def compare(pipeline_onnx: Path, script_onnx: Path) -> list[str]:
    """Differences between two models: op histogram, I/O, ONNX Runtime outputs on one seeded input."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    a, b = onnx.load(str(pipeline_onnx)), onnx.load(str(script_onnx))
    problems = []
    ha, hb = (collections.Counter(n.op_type for n in m.graph.node) for m in (a, b))
    if ha != hb:
        problems.append(f"op histogram: pipeline-only {dict(ha - hb)}, script-only {dict(hb - ha)}")
    if io_spec(a) != io_spec(b):
        problems.append(f"I/O: pipeline {io_spec(a)} vs script {io_spec(b)}")
        return problems
    rng = np.random.default_rng(0)
    feeds = {}
    for name, elem, dims in io_spec(a)[0]:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
        feeds[name] = (rng.uniform(0, 255, shape) if dtype.kind == "f" else rng.integers(0, 4, shape)).astype(dtype)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    run = lambda m: ort.InferenceSession(m.SerializeToString(), opts,  # noqa: E731
                                         providers=["CPUExecutionProvider"]).run(None, feeds)
    for (name, *_), x, y in zip(io_spec(a)[1], run(a), run(b)):
        if x.shape != y.shape or not np.allclose(x, y, rtol=RTOL, atol=ATOL):
            diff = np.abs(x.astype(np.float64) - y).max() if x.shape == y.shape else "shape"
            problems.append(f"output {name}: not allclose (rtol {RTOL}, atol {ATOL}); max |diff| {diff}")
    return problems


def verify(name: str, a: dict, b: dict) -> bool:
    """Compare each of the recipe's artifacts from pipeline run `a` and script run `b`; print a
    line per artifact; True when none differs."""
    ok = True
    for artifact in RECIPES[name][2]:
        problems = compare(a["dir"] / artifact, b["dir"] / artifact)
        ok &= not problems
        print(f"  verify {artifact}: " + ("same ops, same I/O, outputs allclose" if not problems
                                          else "DIFFERENT\n    " + "\n    ".join(problems)))
    return ok


def fmt_run(r: dict) -> str:
    """'  6.09 s wall   6.19 s cpu 0.78 GiB' for one run."""
    return f"{r['wall']:6.2f} s wall {r['cpu']:6.2f} s cpu {r['rss'] / 2**30:4.2f} GiB"


def stage_table(name: str, pipe: list[dict], hand: list[dict]) -> None:
    """Median seconds per stage: pipeline (share of its process wall), script, ratio."""
    med = lambda runs, key: statistics.median(r["steps"].get(key, 0.0) for r in runs)  # noqa: E731
    wall_a, wall_b = statistics.median(r["wall"] for r in pipe), statistics.median(r["wall"] for r in hand)
    stages = ("recipe", "source", "passes", "precision", "validate", "build")
    staged = lambda r: sum(r["steps"].get(s, 0.0) for s in stages)  # noqa: E731
    # pipeline: report.json's total starts after the CLI's imports and ends before the report is written
    rows = [("start, imports, exit", statistics.median(r["wall"] - r["steps"]["total"] for r in pipe),
             statistics.median(r["wall"] - staged(r) for r in hand),
             "interpreter start + exit, imports outside stages")]
    def subs(stage):  # "stage/part" keys, in the order the runs report them
        return list(dict.fromkeys(k for r in pipe + hand for k in r["steps"] if k.startswith(stage + "/")))
    for stage in stages:
        in_b = any(stage in r["steps"] for r in hand)
        rows.append((stage, med(pipe, stage), med(hand, stage) if in_b else None, ""))
        for key in subs(stage):
            in_a, in_b = any(key in r["steps"] for r in pipe), any(key in r["steps"] for r in hand)
            rows.append(("  " + key.split("/", 1)[1], med(pipe, key) if in_a else None,
                         med(hand, key) if in_b else None, ""))
    rows.append(("after build", statistics.median(r["steps"]["total"] - staged(r) for r in pipe), None,
                 "deploy facts, report pictures (report.json + publish: in the first row)"))
    rows.append(("total (process wall)", wall_a, wall_b, ""))
    print(f"\n{name}: median seconds over {len(pipe)} counted runs each (sub-rows are parts of the row above)")
    print(f"  {'stage':<24} {'pipeline s':>10} {'share':>6} {'script s':>9} {'ratio':>7}  note")
    for label, a, b, note in rows:
        share = f"{100 * a / wall_a:5.1f}%" if a is not None else ""
        ratio = f"{a / b:6.2f}x" if a is not None and b else ("   -" if b is None else "")
        cell = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        print(f"  {label:<24} {cell(a):>10} {share:>6} {cell(b):>9} {ratio:>7}  {note}")


def bench(name: str, work: Path, pairs: int, verify_only: bool) -> dict:
    """Warm-up pair + verification, then `pairs` counted pairs in alternating order; prints each
    pair, the median wall ratio and the stage table. Returns {"verified", and unless verify_only
    or the check failed: "ratios", "median", "pipeline" and "script" runs (seconds, bytes)}."""
    recipe = variant(name, work)
    print(f"\n== {name}: {RECIPES[name][0]} (precision fp32, --no-validate) vs bench/handwritten/{RECIPES[name][1]}")
    a, b = run_pipeline(recipe, work, f"{name}-warm"), run_script(name, work, f"{name}-warm-hand")
    print(f"  warm-up   pipeline {fmt_run(a)} | script {fmt_run(b)}")
    ok = verify(name, a, b)
    if verify_only or not ok:
        return {"verified": ok}
    pipe, hand, ratios = [], [], []
    for i in range(pairs):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")
        got = {}
        for who in order:
            got[who] = (run_pipeline(recipe, work, f"{name}-{i}") if who == "A"
                        else run_script(name, work, f"{name}-{i}-hand"))
        for r in got.values():  # outputs are not needed after the timing: keep the disk small
            shutil.rmtree(r["dir"], ignore_errors=True)
        shutil.rmtree(work / f"cache-{name}-{i}", ignore_errors=True)
        pipe.append(got["A"])
        hand.append(got["B"])
        ratios.append(got["A"]["wall"] / got["B"]["wall"])
        print(f"  pair {i + 1} {''.join(order)}  pipeline {fmt_run(got['A'])} | script {fmt_run(got['B'])} | "
              f"wall {ratios[-1]:.3f}x cpu {got['A']['cpu'] / got['B']['cpu']:.3f}x  load {os.getloadavg()[0]:.2f}")
    median = statistics.median(ratios)
    print(f"  {name}: median ratio pipeline/script {median:.3f}x (pairs: {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"target <= {TARGET}: {'met' if median <= TARGET else 'MISSED'}")
    stage_table(name, pipe, hand)
    return {"verified": ok, "ratios": ratios, "median": median,
            "pipeline": [{k: v for k, v in r.items() if k != "dir"} for r in pipe],
            "script": [{k: v for k, v in r.items() if k != "dir"} for r in hand]}


def main() -> None:
    """Command line (module docstring); exits non-zero when a script does not build the same model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="counted A/B pairs per recipe, after one warm-up pair")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--verify", action="store_true", help="only the warm-up pair and the equivalence check")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, outputs)")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = ap.parse_args()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or args.pairs < 1:
        ap.error(f"unknown recipe(s) {unknown}" if unknown else "--pairs must be >= 1")
    work = Path(tempfile.mkdtemp(prefix="trtpipe-p1-"))
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"python {sys.version.split()[0]}; work dir {work}")
    results = {}
    try:
        for name in names:
            results[name] = bench(name, work, args.pairs, args.verify)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for name, r in results.items():
        if "median" in r:
            few = "" if len(r["ratios"]) >= 3 else f"; only {len(r['ratios'])} pair(s): P1 asks for at least 3"
            print(f"P1 {name}: {r['median']:.3f}x (target <= {TARGET}{few})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    if not all(r["verified"] for r in results.values()):
        sys.exit("the hand-written script does not build the same model as the pipeline (see verify lines)")


if __name__ == "__main__":
    main()
