"""build-all.json, build-all.md and the summary table.

build-all.json: `{"format": 1, "argv", "executor", "address", "targets", "jobs", "cache_dir",
"remote_cache", "started", "seconds", "summary": {"tasks", "succeeded", "failed"}, "tasks": [...]}`;
per task: `id` (name@target), `recipe`, `name`, `target`, `ccs`, `status` (succeeded, failed,
unsatisfiable, cancelled), `exit_code` (the run's: README "Exit codes"; negative: killed by that
signal; null: never ran), `error`, `output_dir`, `plan` {path, sha256, bytes}, `cache` {stage label:
cached / ran / forced} and `cache_hits`, `remote` {fetched, uploaded}, `worker` {executor, host,
node_id, pid, ...}, `attempts`, `started`, `seconds`, `log` (the name of its file in
build-all-logs/).
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from trtpipe.cache.files import atomic_write
from trtpipe.errors import OutputError
from trtpipe.fileguard import not_a_directory
from trtpipe.fleet.tasks import Task

FORMAT = 1


def failed_record(task: Task, code: int | None, message: str, executor: str, status: str = "failed") -> dict[str, Any]:
    """The record of a task that failed without running (its recipe does not load, or no worker
    can build its target): exit code `code` (None: never ran), error `message`."""
    return {**task.spec(), "status": status, "exit_code": code, "error": message, "plan": None, "cache": {},
            "cache_hits": 0, "remote": {"fetched": [], "uploaded": []}, "worker": {"executor": executor},
            "attempts": 0, "started": round(time.time(), 3), "seconds": 0.0, "log": ""}


def cancelled_record(task: Task, executor: str) -> dict[str, Any]:
    """The record of a task that Ctrl-C stopped before it finished."""
    return failed_record(task, None, "cancelled (interrupted)", executor, status="cancelled")


def prepare(out_dir: str | Path) -> Path:
    """Create the report directory and its build-all-logs/ (checked before any task runs).

    Args:
        out_dir: `--report-dir`.

    Returns:
        The build-all-logs/ directory.

    Raises:
        OutputError: `out_dir` (or a parent) is not a directory, or cannot be created or written
            (exit 8, naming the path).
    """
    out = Path(out_dir)
    logs = out / "build-all-logs"
    for p in (out, logs):
        why = not_a_directory(p, "--report-dir" if p is out else "--report-dir's")
        if why:
            raise OutputError(f"{why}; build-all writes build-all.json, build-all.md and build-all-logs/ there",
                              hint="point --report-dir at a writable directory")
    try:
        logs.mkdir(parents=True, exist_ok=True)
        if not os.access(logs, os.W_OK | os.X_OK) or not os.access(out, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "permission denied")
    except OSError as err:
        raise OutputError(f"--report-dir {out}: cannot create or write {logs}: {err.strerror or err}",
                          hint="point --report-dir at a writable directory") from err
    return logs


def write(out_dir: str | Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write build-all.json, build-all.md and build-all-logs/<task>.log into `out_dir`.

    Args:
        out_dir: the report directory (created).
        records: one per task, in task order (runner.run_task / failed_record).
        meta: the run's settings (command, executor, address, targets, jobs, cache_dir,
            remote_cache, started, seconds).

    Returns:
        (build-all.json, build-all.md) paths.

    Raises:
        OutputError: the report directory cannot be created or written (prepare).
    """
    out = Path(out_dir)
    logs = prepare(out)
    tasks = []
    for rec in records:
        rec = dict(rec)
        text = rec.pop("log", "") or ""
        name = re.sub(r"[^A-Za-z0-9_.@+-]", "_", rec["id"]) + ".log"
        if text:
            try:
                atomic_write(logs / name, text.encode())
            except OSError as err:
                raise OutputError(f"--report-dir {out}: cannot write {logs / name}: {err.strerror or err}",
                                  hint="point --report-dir at a writable directory") from err
        rec["log"] = f"build-all-logs/{name}" if text else None
        tasks.append(rec)
    ok = sum(r["status"] == "succeeded" for r in tasks)
    doc = {"format": FORMAT, **meta, "summary": {"tasks": len(tasks), "succeeded": ok, "failed": len(tasks) - ok},
           "tasks": tasks}
    json_path, md_path = out / "build-all.json", out / "build-all.md"
    try:
        atomic_write(json_path, (json.dumps(doc, indent=1) + "\n").encode())
        atomic_write(md_path, markdown(doc).encode())
    except OSError as err:
        raise OutputError(f"--report-dir {out}: cannot write {err.filename or json_path}: {err.strerror or err}",
                          hint="point --report-dir at a writable directory") from err
    return json_path, md_path


def _where(worker: dict[str, Any]) -> str:
    if worker.get("node_id"):
        return f"{worker.get('node_ip', '?')} node {worker['node_id'][:8]}"
    if "slot" in worker:
        return f"{worker.get('host', 'local')} slot {worker['slot']}"
    return worker.get("executor", "")


def _hits(rec: dict[str, Any]) -> str:
    n = len(rec.get("cache") or {})
    remote = len(rec["remote"]["fetched"]) if rec.get("remote") else 0
    return f"{rec['cache_hits']}/{n}" + (f" ({remote} remote)" if remote else "") if n else "-"


def markdown(doc: dict[str, Any]) -> str:
    """build-all.md: settings, one row per task, then each failure's message."""
    s = doc["summary"]
    lines = [f"# build-all: {s['succeeded']}/{s['tasks']} tasks succeeded", "",
             f"- executor: {doc['executor']}" + (f" ({doc['address']})" if doc.get("address") else ""),
             f"- targets: {', '.join(doc['targets'])}", f"- wall time: {doc['seconds']:.1f} s", "",
             "| task | target | status | exit | cache hits | plan sha256 | worker | seconds |",
             "|---|---|---|---:|---|---|---|---:|"]
    for r in doc["tasks"]:
        plan = f"`{r['plan']['sha256'][:16]}`" if r.get("plan") else "-"
        code = "-" if r["exit_code"] is None else r["exit_code"]
        lines.append(f"| {r['name']} | {r['target']} | {r['status']} | {code} | {_hits(r)} | {plan} | "
                     f"{_where(r['worker'])} | {r['seconds']:.1f} |")
    failures = [r for r in doc["tasks"] if r["status"] != "succeeded"]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            lines += [f"### {r['id']} ({r['status']}, exit {r['exit_code']})", "", "```text",
                      (r.get("error") or "").strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_table(records: list[dict[str, Any]]) -> Table:
    """The terminal summary: one row per task."""
    table = Table(title="build-all", title_justify="left")
    for col, kw in (("task", {}), ("status", {}), ("exit", {"justify": "right"}), ("cache hits", {}),
                    ("plan sha256", {}), ("worker", {}), ("seconds", {"justify": "right"})):
        table.add_column(col, **kw)
    for r in records:
        style = "green" if r["status"] == "succeeded" else "red"
        table.add_row(r["id"], f"[{style}]{r['status']}[/]", "-" if r["exit_code"] is None else str(r["exit_code"]),
                      _hits(r), r["plan"]["sha256"][:16] if r.get("plan") else "-", _where(r["worker"]),
                      f"{r['seconds']:.1f}")
    return table
