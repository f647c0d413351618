"""build-all's progress: tasks done / running / failed.

On a terminal a rich progress bar with the counts and the running tasks' names; elsewhere (CI
logs, tests) one plain line per task started, retried and finished.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BuildProgress:
    """Counts and shows tasks as executors report them (use as a context manager)."""

    def __init__(self, console: Console, total: int, quiet: bool = False) -> None:
        self.console, self.total, self.quiet = console, total, quiet
        self.running: dict[str, str] = {}     # task id -> where it runs
        self.done = self.failed = 0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> BuildProgress:
        if self.console.is_terminal and not self.quiet:
            self._bar = Progress(TextColumn("build-all"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 TextColumn("[dim]{task.fields[names]}"), console=self.console, transient=False)
            self._bar.start()
            self._task = self._bar.add_task("tasks", total=self.total, counts=self.counts(), names="")
        return self

    def __exit__(self, *exc: object) -> bool:
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
        return False

    def counts(self) -> str:
        """'3 done · 2 running · 1 failed' (done counts succeeded and failed tasks)."""
        return f"{self.done} done · {len(self.running)} running · {self.failed} failed"

    def started(self, task_id: str, where: str = "") -> None:
        self.running[task_id] = where
        self._line(f"start  {task_id}" + (f" on {where}" if where else ""))
        self._refresh()

    def retried(self, task_id: str, why: str) -> None:
        self.running.pop(task_id, None)
        self._line(f"retry  {task_id}: {why}")
        self._refresh()

    def finished(self, record: dict[str, Any]) -> None:
        self.running.pop(record["id"], None)
        self.done += 1
        ok = record["status"] == "succeeded"
        self.failed += not ok
        if ok:
            hits = record.get("cache_hits", 0)
            what = f"ok     {record['id']} ({record['seconds']:.1f} s, {hits}/{len(record.get('cache') or {})} cached)"
        else:
            first = (record.get("error") or "").strip().splitlines()[:1]
            what = f"FAILED {record['id']} (exit {record['exit_code']}): {first[0] if first else ''}"
        self._line(f"[{self.done}/{self.total}] {what}", force=not ok)
        self._refresh()

    def _line(self, text: str, force: bool = False) -> None:
        if self.quiet and not force:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False)

    def _refresh(self) -> None:
        if self._bar is not None:
            names = ", ".join(sorted(self.running))
            self._bar.update(self._task, completed=self.done, counts=self.counts(),
                             names=names if len(names) < 80 else names[:77] + "...")
