"""Run a command and sample the resident memory of it and every process it starts (Linux /proc,
every 0.2 s); print each process's peak and the peak of the largest one, with the command's own
output lines timestamped, so a peak can be matched to the stage that made it.

    python bench/rss_watch.py -- python pipeline.py recipe.yaml -v
"""

import os
import subprocess
import sys
import threading
import time


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main(argv):
    cmd = argv[argv.index("--") + 1:] if "--" in argv else argv
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks, names, timeline = {}, {}, []

    def sample():
        while proc.poll() is None:
            todo, seen = [proc.pid], []
            while todo:
                p = todo.pop()
                seen.append(p)
                todo += _children(p)
            for p in seen:
                r = _rss(p)
                if r is not None and r > peaks.get(p, 0):
                    peaks[p] = r
                    if p not in names:
                        try:
                            names[p] = open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80]
                        except OSError:
                            names[p] = "?"
            timeline.append((time.perf_counter() - t0, sum(_rss(p) or 0 for p in seen)))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    for line in proc.stdout:
        big = max(peaks.values(), default=0)
        print(f"[{time.perf_counter() - t0:7.1f}s max {big / 2**30:5.2f} GiB] {line}", end="")
    proc.wait()
    th.join()
    for p, r in sorted(peaks.items(), key=lambda kv: -kv[1]):
        print(f"peak {r / 2**30:6.2f} GiB  pid {p}  {names.get(p)}")
    print(f"largest process peak: {max(peaks.values(), default=0) / 2**30:.2f} GiB; "
          f"all processes together at most {max((s for _, s in timeline), default=0) / 2**30:.2f} GiB; "
          f"exit {proc.returncode}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
