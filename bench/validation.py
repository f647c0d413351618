"""What validation costs on a cold run: recipes/effdet.yaml with validation (every comparison the
recipe implies: source vs final, detections, profile corners; bisect only runs on failure) against
the same cold run with `--no-validate`.

Each run is a fresh process with an empty cache directory of its own; the two kinds alternate
(A B A B ...) so that drift in the machine's speed falls on both, and the median of the per-pair
ratios is reported. Target (validation issue): <= 1.15x.

    python bench/validation.py              # 3 pairs
    python bench/validation.py --pairs 5 --recipe recipes/zoo-resnet50.yaml
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cold_run(recipe: Path, validate: bool) -> tuple[float, dict]:
    """Wall seconds of one cold `python pipeline.py` run, and its report.json."""
    with tempfile.TemporaryDirectory(prefix="trtpipe-bench-") as tmp:
        cmd = [sys.executable, str(REPO / "pipeline.py"), str(recipe), "--quiet", "--cache-dir", f"{tmp}/cache",
               "-o", f"{tmp}/out"] + ([] if validate else ["--no-validate"])
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
        return seconds, json.loads(Path(f"{tmp}/out/report.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="A/B pairs (the median ratio is reported)")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "effdet.yaml"))
    args = ap.parse_args()
    rows = []
    for i in range(args.pairs):
        with_v, rep = cold_run(Path(args.recipe), True)
        without, _ = cold_run(Path(args.recipe), False)
        rows.append((with_v, without, rep["timings_s"]["validate"]))
        print(f"pair {i + 1}: validated {with_v:.2f} s, --no-validate {without:.2f} s, "
              f"ratio {with_v / without:.3f} (validate stage {rows[-1][2]:.2f} s)", flush=True)
    ratios = [a / b for a, b, _ in rows]
    print(f"\n{Path(args.recipe).name}: cold run with validation / without, median of {len(rows)} pairs: "
          f"{statistics.median(ratios):.3f}x (min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.15x")
    print(f"validate stage: median {statistics.median(r[2] for r in rows):.2f} s; "
          f"cold run without validation: median {statistics.median(r[1] for r in rows):.2f} s")


if __name__ == "__main__":
    main()
