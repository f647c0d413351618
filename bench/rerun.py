"""P2: what a re-run costs against a cold run, measured side by side in one run.

After a warm-up run (it writes the bytecode and the tool's scan of its own code, `codescan.json`,
which each pair's cache starts with; no stage entry), for each pair: a cache with no entry, then
  cold        `python pipeline.py RECIPE` (every stage runs)
  no-op       the same again (every stage from the cache)
  build edit  the recipe with build.workspace changed (only the build runs)
each a fresh process, wall clock with imports. Ratios are taken pair by pair (so a machine whose
speed drifts, e.g. shared with other work, still gives comparable figures) and their medians
printed. The code is snapshotted first into a temporary copy of the repository: stage keys hash
the stage code, so edits made meanwhile in the checkout would otherwise turn cached stages stale.
The no-op run is also checked for what it must not import (TensorFlow, ONNX Runtime, Polygraphy,
the backend, onnx, numpy, onnx-graphsurgeon).

    python bench/rerun.py                        # recipes/effdet.yaml, 3 pairs
    python bench/rerun.py --pairs 1 --recipe recipes/zoo-resnet50.yaml

Targets (README "Performance"; issue 13): no-op <= 0.05x cold, build edit <= 0.15x cold.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "tf2onnx", "onnxruntime", "polygraphy", "tensorrt_rtx_bindings", "tensorrt", "onnx", "numpy",
         "onnx_graphsurgeon")


def snapshot(dest: Path) -> Path:
    """Copy the repository's code, recipes and models (no .git, no build outputs) into `dest`."""
    skip = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")

    def ignore(directory, names):
        top = {"build"} if Path(directory) == REPO else set()  # build outputs, not trtpipe/stages/build
        return set(skip(directory, names)) | (top & set(names))
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stderr


def heavy_imports(importtime_stderr: str) -> list[str]:
    """Top-level packages of HEAVY that `python -X importtime` saw imported."""
    found = set()
    for line in importtime_stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", line)
        if m and m.group(1).split(".")[0] in HEAVY:
            found.add(m.group(1).split(".")[0])
    return sorted(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/effdet.yaml")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="trtpipe-rerun-"))
    try:
        repo = snapshot(work / "repo")
        recipe = repo / args.recipe
        text = recipe.read_text()
        new = re.sub(r"(\n\s*workspace:\s*)(\S+)", lambda m: m.group(1) + ("512MiB" if m.group(2) != "512MiB"
                                                                           else "256MiB"), text, count=1)
        if new == text:
            raise SystemExit(f"{recipe}: no build.workspace line to edit")
        rows = []
        # as a user's shell runs it: bytecode kept (this sandbox sets PYTHONDONTWRITEBYTECODE)
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # a warm-up run writes the bytecode and the tool's scan of its own code (codescan.json), which
        # every cold run below starts with: a per-installation memo like .pyc files, no stage entry
        warm = work / "cache-warm"
        timed([sys.executable, "pipeline.py", "-q", "-o", str(work / "out-warm"), str(recipe)],
              dict(clean, TRTPIPE_CACHE_DIR=str(warm), TF_CPP_MIN_LOG_LEVEL="3"), repo)
        for i in range(args.pairs):
            cache, out = work / f"cache{i}", work / f"out{i}"
            cache.mkdir()
            shutil.copyfile(warm / "codescan.json", cache / "codescan.json")
            env = dict(clean, TRTPIPE_CACHE_DIR=str(cache), TF_CPP_MIN_LOG_LEVEL="3")
            base = [sys.executable, "pipeline.py", "-q", "-o", str(out)]
            cold, _ = timed(base + [str(recipe)], env, repo)
            noop, _ = timed(base + [str(recipe)], env, repo)
            _, imports = timed([sys.executable, "-X", "importtime"] + base[1:] + [str(recipe)], env, repo)
            report = json.loads((out / "report.json").read_text())
            states = set(report["cache"]["summary"].values())
            recipe.write_text(new)  # the same recipe file, edited (one recipe per output directory)
            try:
                build, _ = timed(base + [str(recipe)], env, repo)
            finally:
                recipe.write_text(text)
            report_b = json.loads((out / "report.json").read_text())
            rows.append({"cold_s": cold, "noop_s": noop, "build_edit_s": build,
                         "noop_ratio": noop / cold, "build_edit_ratio": build / cold,
                         "noop_all_cached": states == {"cached"}, "noop_heavy_imports": heavy_imports(imports),
                         "build_edit_ran": sorted(k for k, v in report_b["cache"]["summary"].items() if v != "cached"),
                         "noop_stage_s": report["timings_s"]})
            print(f"pair {i + 1}: cold {cold:.2f}s  no-op {noop:.2f}s ({noop / cold:.3f}x)  build edit "
                  f"{build:.2f}s ({build / cold:.3f}x)", flush=True)
        med = {k: statistics.median(r[k] for r in rows) for k in ("cold_s", "noop_s", "build_edit_s",
                                                                   "noop_ratio", "build_edit_ratio")}
        if args.json:
            print(json.dumps({"pairs": rows, "median": med}, indent=1))
        else:
            print(f"\n{args.recipe}, {args.pairs} pair(s), medians of pair-by-pair ratios")
            print(f"{'run':<12}{'seconds':>9}{'x cold':>9}{'target':>9}")
            print(f"{'cold':<12}{med['cold_s']:>9.2f}{1:>9.3f}{'':>9}")
            print(f"{'no-op':<12}{med['noop_s']:>9.2f}{med['noop_ratio']:>9.3f}{'<= 0.05':>9}")
            print(f"{'build edit':<12}{med['build_edit_s']:>9.2f}{med['build_edit_ratio']:>9.3f}{'<= 0.15':>9}")
            print(f"no-op all cached: {all(r['noop_all_cached'] for r in rows)}; heavy imports in the no-op run: "
                  f"{sorted({m for r in rows for m in r['noop_heavy_imports']}) or 'none'}; build edit ran: "
                  f"{rows[0]['build_edit_ran']}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
