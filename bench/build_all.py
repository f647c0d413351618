"""build-all: the zoo recipes (recipes/zoo-*.yaml) x 2 targets, serial vs parallel vs Ray.

Each configuration is one `python pipeline.py build-all ...` process (wall clock, imports and
Ray start-up included) with an empty stage cache of its own:

  one target    serial (--jobs 1), --targets 8.9 only: what one full run of every recipe costs
  serial        --jobs 1, --targets 8.6,8.9
  local -j2     --jobs 2 (local executor), the same tasks
  ray local     --executor ray --jobs 2: a Ray started on 127.0.0.1 for the run

Ratios printed:

  local -j2 / serial, ray local / serial   parallel speed-up; on 2 cores it approaches 0.5x for
                                           build-bound work (the builder is mostly one thread)
  serial / (2 x one target)                 what the second target costs against a second full
                                            run: the source, passes and validation are shared
                                            (cache hits, read from build-all.json), only the
                                            precision check and the build run again

The zoo recipes are ONNX files: their "conversion" is a load, and what a second target shares is
the passes and the validation. `--savedmodel` adds recipes/effdet.yaml (a TF SavedModel that
tf2onnx converts), one target against two, serially: what sharing a real conversion saves.

    python bench/build_all.py                # one run each (a full set takes minutes)
    python bench/build_all.py --repeat 3     # medians of 3
    python bench/build_all.py --savedmodel   # also effdet, 1 vs 2 targets
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

CONFIGS = {
    "one target": ["--targets", "8.9", "--jobs", "1"],
    "serial": ["--targets", "8.6,8.9", "--jobs", "1"],
    "local -j2": ["--targets", "8.6,8.9", "--jobs", "2"],
    "ray local": ["--targets", "8.6,8.9", "--jobs", "2", "--executor", "ray"],
}


SAVEDMODEL = {
    "effdet 1 target": ["--targets", "8.9", "--jobs", "1"],
    "effdet 2 targets": ["--targets", "8.6,8.9", "--jobs", "1"],
}


def run(name, recipes, work, config=None):
    """One build-all process with a fresh cache; returns (wall seconds, build-all.json)."""
    d = work / name.replace(" ", "-")
    shutil.rmtree(d, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "pipeline.py"), "build-all", *map(str, recipes), *(config or CONFIGS[name]), "-q",
           "-o", str(d / "out"), "--report-dir", str(d), "--cache-dir", str(d / "cache")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: build-all exited {proc.returncode}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    doc = json.loads((d / "build-all.json").read_text())
    if doc["executor"] == "ray":
        ips = {n["ip"] for n in doc["cluster"]["nodes"]}
        if ips != {"127.0.0.1"}:
            sys.exit(f"{name}: the local Ray listened on {ips}, not on loopback only")
    return wall, doc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--savedmodel", action="store_true", help="also recipes/effdet.yaml, 1 vs 2 targets")
    args = parser.parse_args()
    recipes = sorted((REPO / "recipes").glob("zoo-*.yaml"))
    work = Path(tempfile.mkdtemp(prefix="trtpipe-bench-build-all-"))
    print(f"{len(recipes)} zoo recipes x targets 8.6,8.9 on {os.cpu_count()} CPUs; work dir {work}")
    walls, docs = {}, {}
    try:
        for _ in range(args.repeat):
            for name in CONFIGS:
                wall, doc = run(name, recipes, work)
                walls.setdefault(name, []).append(wall)
                docs[name] = doc
                print(f"  {name:<11} {wall:7.1f} s   ({doc['summary']['succeeded']}/{doc['summary']['tasks']} tasks)",
                      flush=True)
            for name, config in (SAVEDMODEL.items() if args.savedmodel else ()):
                wall, doc = run(name, [REPO / "recipes" / "effdet.yaml"], work, config)
                walls.setdefault(name, []).append(wall)
                docs[name] = doc
                print(f"  {name:<16} {wall:7.1f} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print("\nmedian wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()))
    print(f"local -j2 / serial          {med['local -j2'] / med['serial']:.2f}x   (2 cores: 0.5x is the floor)")
    print(f"ray local / serial          {med['ray local'] / med['serial']:.2f}x   (includes starting Ray)")
    print(f"serial / (2 x one target)   {med['serial'] / (2 * med['one target']):.2f}x   "
          f"(1.0x: the second target would cost a full run)")
    if args.savedmodel:
        ratio = med["effdet 2 targets"] / (2 * med["effdet 1 target"])
        print(f"effdet: 2 targets / (2 x 1 target)   {ratio:.2f}x   (the conversion runs once)")
    shas = {name: {t["id"]: t["plan"]["sha256"] for t in doc["tasks"]}
            for name, doc in docs.items() if name in ("serial", "local -j2", "ray local")}
    same = len({json.dumps(v, sort_keys=True) for v in shas.values()}) == 1
    print(f"plans byte-identical across serial, local -j2, ray local: {'yes' if same else 'NO'}")
    hits = {t["id"]: f"{t['cache_hits']}/{len(t['cache'])}" for t in docs["serial"]["tasks"]}
    print("cache hits per task (serial): " + ", ".join(f"{k} {v}" for k, v in hits.items()))


if __name__ == "__main__":
    main()
