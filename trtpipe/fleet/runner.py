"""Run one task in its own process and read back what it did.

A task is the ordinary run, `python -m trtpipe.cli RECIPE -o OUT --compute-capabilities CC -q
[--cache-dir DIR]`, in a child process: the TensorRT builder and its logger are process-wide, so
two builds never share a process. The child dies with the process that started it (a Linux parent
death signal, trtpipe/fleet/child.py): when a Ray worker is killed its run goes too, and the
retried task finds what any killed run leaves, which is nothing partial (the stage cache commits
entries by rename; publishing is staged and renamed; the next run removes the leftovers).

After the run, `report.json` in the task's output directory gives the stage cache status of every
stage and the plan; the plan's sha256 is computed from the published file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtpipe.cache.files import sha256_file
from trtpipe.cache.remote import ENV as REMOTE_ENV
from trtpipe.cache.remote import LOG_ENV as REMOTE_LOG_ENV
from trtpipe.cache.store import PAUSE_ENV
from trtpipe.errors import EXIT_INTERNAL

# Tests only: "<stage>:<marker file>". The first attempt of every task that finds no marker file
# creates it ({"worker_pid", "child_pid", "log"}) and runs with TRTPIPE_TEST_PAUSE_AT=<stage>, so
# a test can kill the worker while the run waits there; the retried attempt finds the marker
# and runs through. Never set it otherwise.
PAUSE_ONCE_ENV = "TRTPIPE_FLEET_TEST_PAUSE_ONCE"
LOG_LIMIT = 256 * 1024   # characters of a task's output kept in its result


def code_root() -> str:
    """The directory holding this `trtpipe` package (and `passes`, `schemas`): children import from it."""
    return str(Path(__file__).resolve().parents[2])


def child_command(spec: dict[str, Any], cache_dir: str | None) -> list[str]:
    """The command line of a task's run (the parent's pid first, for child.py)."""
    cmd = [sys.executable, "-m", "trtpipe.fleet.child", str(os.getpid()), spec["recipe"],
           "-o", spec["output_dir"], "-q"]
    if spec["ccs"]:
        cmd += ["--compute-capabilities", ",".join(spec["ccs"])]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    return cmd


def run_task(spec: dict[str, Any], options: dict[str, Any], worker: dict[str, Any],
             on_start: Callable[[subprocess.Popen], Any] | None = None) -> dict[str, Any]:
    """Run one task (Task.spec()) in a child process and describe the outcome.

    Args:
        spec: the task: recipe path, target, compute capabilities to build for, output directory.
        options: `cache_dir` (local stage cache; "{node}" is replaced by the worker's node id, for
            nodes that share a filesystem), `remote_cache` (path or URL of the shared tier),
            `pause_once` (tests only, see PAUSE_ONCE_ENV).
        worker: who runs it (executor, host, node id...); the child's pid is added.
        on_start: called with the child process once started (the local executor uses it to stop
            children on Ctrl-C).

    Returns:
        The task's record for build-all.json: status (succeeded / failed), exit_code (the run's,
        negative for a signal), error (the run's last error message), plan {path, sha256, bytes},
        cache {stage label: cached / ran / forced}, cache_hits, remote {fetched, uploaded: entries
        moved through the remote tier}, worker, started (Unix time), seconds (wall), log (output,
        at most LOG_LIMIT characters).
    """
    node = str(worker.get("node_id") or "local")[:12]
    cache_dir = options.get("cache_dir")
    cache_dir = cache_dir.replace("{node}", node) if cache_dir else None
    env = dict(os.environ)
    env.pop(PAUSE_ENV, None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code_root(), env.get("PYTHONPATH")) if p)  # this very code
    if options.get("remote_cache"):
        env[REMOTE_ENV] = options["remote_cache"]
    fd, remote_log = tempfile.mkstemp(prefix="trtpipe-remote-", suffix=".jsonl")
    os.close(fd)
    env[REMOTE_LOG_ENV] = remote_log
    out_fd, out_path = tempfile.mkstemp(prefix="trtpipe-task-", suffix=".log")
    marker = _pause_once(options.get("pause_once"), env)
    started, t0 = time.time(), time.perf_counter()
    try:
        with os.fdopen(out_fd, "wb") as out:
            proc = subprocess.Popen(child_command(spec, cache_dir), env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        worker = dict(worker, pid=proc.pid)
        if marker:
            Path(marker).write_text(json.dumps({"worker_pid": os.getpid(), "child_pid": proc.pid, "log": out_path}))
        if on_start:
            on_start(proc)
        code = proc.wait()
        seconds = time.perf_counter() - t0
        log = Path(out_path).read_text(errors="replace")
        remote = _remote_log(remote_log)
    finally:
        for p in (out_path, remote_log):
            with contextlib.suppress(OSError):
                os.unlink(p)
    record = {**spec, "status": "succeeded" if code == 0 else "failed", "exit_code": code, "error": None,
              "plan": None, "cache": {}, "cache_hits": 0, "remote": remote, "worker": worker,
              "started": round(started, 3), "seconds": round(seconds, 3), "log": log[-LOG_LIMIT:]}
    if code != 0:
        record["error"] = error_message(log, code)
        return record
    try:
        _read_report(record, spec)
    except (OSError, ValueError, KeyError) as err:
        record.update(status="failed", exit_code=EXIT_INTERNAL,
                      error=f"the run exited 0 but its report or plan cannot be read: {err}")
    return record


def _read_report(record, spec):
    out = Path(spec["output_dir"])
    rep = json.loads((out / "report.json").read_text())
    stages = rep["cache"]["stages"]
    record["cache"] = {label: s["status"] for label, s in stages.items()}
    record["cache_hits"] = sum(s["status"] == "cached" for s in stages.values())
    plan = out / spec["plan_name"]
    record["plan"] = {"path": str(plan), "sha256": sha256_file(plan), "bytes": plan.stat().st_size}
    backend = rep["backend"]
    record["backend"] = f"{backend['name']} {backend['version']}"
    if spec["ccs"] and backend["name"] == "tensorrt":  # it built for the GPU it ran on: was that the target?
        from trtpipe.backend import probe_cuda
        ok, info = probe_cuda()
        cc = info["cc"] if ok else None
        if spec["ccs"] != [cc]:
            record.update(status="failed", exit_code=EXIT_INTERNAL,
                          error=f"the tensorrt backend builds for the GPU it runs on (compute capability {cc}), "
                                f"not for target {spec['target']}: route it to a worker with that GPU")


def error_message(log: str, code: int) -> str:
    """The run's error message from its output (`error (exit N): ...` to the end), else its last lines."""
    at = log.rfind("error (exit ")
    if at >= 0:
        return log[at:].strip()[:4000]
    if code < 0:
        import signal
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"the run was killed by {name}" + (f"; its last output:\n{_tail(log)}" if log.strip() else "")
    return _tail(log) or f"the run exited {code} without a message"


def _tail(log, lines=20):
    return "\n".join(log.strip().splitlines()[-lines:])[:4000]


def _remote_log(path):
    fetched, uploaded = [], []
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                item = json.loads(line)
                (fetched if item["op"] == "fetch" else uploaded).append(f"{item['kind']}/{item['key'][:16]}")
    return {"fetched": fetched, "uploaded": uploaded}


def _pause_once(value, env):
    if not value or ":" not in value:
        return None
    stage, marker = value.split(":", 1)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # the first attempt of any task only
    except FileExistsError:
        return None
    os.close(fd)
    env[PAUSE_ENV] = stage
    return marker


def local_worker(slot: int) -> dict[str, Any]:
    """The `worker` of a task run by the local executor."""
    return {"executor": "local", "host": socket.gethostname(), "slot": slot}
