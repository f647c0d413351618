"""Runs many `python pipeline.py ...` invocations fast and each in a process of its own.

Started as `python tests/hostile/driver.py JOBS.json RESULTS.json`. It imports the CLI once, then forks
one child per job (the fork skips the ~0.5 s interpreter and import start-up of a fresh
`python pipeline.py`, which would make a corpus of hundreds of invocations cost minutes). Each child:

- starts a session of its own (so a timeout kills the builder process it may spawn as well),
- runs under an address-space limit (RLIMIT_AS) so that a memory bomb fails instead of taking the
  machine, and with stdin closed,
- chdir()s to the job's directory, points stdout/stderr at files and calls the CLI's `entry()`,
  exactly what `python pipeline.py ARGS` calls.

The parent waits with `os.wait4` and records exit code (or signal), wall seconds, peak resident
memory (`ru_maxrss`, KiB on Linux) and the captured output. A job still running after its timeout
has its whole process group killed and is recorded as `timeout`.

The driver must be a fresh process (never fork pytest itself: its threads and imported native
libraries make fork unsafe).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _child(job: dict) -> None:
    os.setsid()
    limit = int(job.get("address_space_bytes", 6 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.chdir(job["cwd"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    for key, value in job.get("env", {}).items():
        os.environ[key] = value
    sys.argv = ["pipeline.py", *job["argv"]]
    from trtpipe.cli import entry
    try:
        entry()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os._exit(0)


def _leftovers(pgid: int, grace: float = 3.0) -> bool:
    """True if processes of the job's session outlive it by more than `grace` seconds (they are
    then killed). A moment is allowed: multiprocessing's resource tracker exits when it reads EOF
    from the finished job, shortly after it."""
    end = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        if time.monotonic() > end:
            os.killpg(pgid, signal.SIGKILL)
            return True
        time.sleep(0.02)


def _run(job: dict) -> dict:
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(job)
        finally:
            os._exit(70)  # only reached if _child itself raised before entry()
    deadline = start + float(job.get("timeout", 10.0))
    timed_out = False
    while True:
        wpid, status, usage = os.wait4(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wpid, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.01)
    seconds = time.monotonic() - start
    leaked = _leftovers(pid)
    code = os.waitstatus_to_exitcode(status)
    with open(job["stdout"], errors="replace") as f:
        stdout = f.read()
    with open(job["stderr"], errors="replace") as f:
        stderr = f.read()
    return {"id": job["id"], "code": code, "timeout": timed_out, "seconds": round(seconds, 3),
            "max_rss_kib": usage.ru_maxrss, "stdout": stdout, "stderr": stderr, "leaked_processes": leaked}


def main() -> None:
    jobs_path, results_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, REPO)
    # Imported once, before the forks: the CLI and the libraries a run imports lazily (ONNX
    # Runtime, Polygraphy, onnx-graphsurgeon). Importing them starts no threads; sessions, which
    # do, are only made in the children. The backend (TensorRT-RTX) is imported by the build's own
    # spawned process, as in any run.
    import onnx_graphsurgeon  # noqa: F401
    import onnxruntime  # noqa: F401
    import polygraphy.backend.onnxrt  # noqa: F401
    import polygraphy.comparator  # noqa: F401

    import trtpipe.cli  # noqa: F401
    import trtpipe.review.commands  # noqa: F401
    import trtpipe.stages.run  # noqa: F401
    with open(jobs_path) as f:
        jobs = json.load(f)
    results = [_run(job) for job in jobs]
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
