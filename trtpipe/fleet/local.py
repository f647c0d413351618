"""The local executor (the default): `--jobs` workers on this machine, each task a child process.

Tasks start in `Schedule` order with one task per recipe at a time (its runs share the stage
cache's recipe lock), so `--jobs 2` builds two recipes side by side and a recipe's other targets
reuse its conversion. A task whose process is killed by a signal (say the OOM killer) is retried
once; a task that fails on its own (a non-zero exit code) is not: its error is deterministic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from trtpipe.errors import EXIT_USAGE
from trtpipe.fleet.progress import BuildProgress
from trtpipe.fleet.report import failed_record
from trtpipe.fleet.runner import local_worker, run_task
from trtpipe.fleet.tasks import Schedule, Task

MAX_ATTEMPTS = 2   # the first run and one retry after its process was killed


def unsatisfiable_here(task: Task) -> str | None:
    """Why this machine cannot build `task`'s target, or None.

    A GPU-kind target needs a local GPU of that kind; compute capabilities are built ahead of
    time by TensorRT-RTX on any machine (a `tensorrt` recipe is checked after its run, by the
    runner, against the GPU it ran on).
    """
    if not task.target.gpu:
        return None
    from trtpipe.backend import probe_cuda
    ok, info = probe_cuda()
    if ok and task.target.gpu.lower() in info["name"].lower().replace(" ", ""):
        return None
    have = f"this machine has {info['name']}" if ok else info
    return (f"target {task.target.label} is a GPU kind, and {have}: build it where such a GPU is, e.g. "
            f"--executor ray on a cluster whose GPU nodes carry accelerator_type:{task.target.gpu}")


def run_local(tasks: list[Task], options: dict[str, Any], jobs: int, progress: BuildProgress,
              results: dict[int, dict]) -> None:
    """Run `tasks` on this machine, at most `jobs` at a time.

    Args:
        tasks: the tasks (tasks.expand).
        options: runner options (cache_dir, remote_cache, pause_once; runner.run_task).
        jobs: worker processes at a time (>= 1).
        progress: where starts, retries and results are shown.
        results: filled as tasks finish, {task index: record} (runner.run_task's records, plus
            `attempts`): complete on return, what finished so far on Ctrl-C.

    Raises:
        KeyboardInterrupt: Ctrl-C; the running tasks were interrupted first (they publish nothing).
    """
    runnable = []
    for task in tasks:
        why = (task.error and task.error[1]) or unsatisfiable_here(task)
        if why:
            code = task.error[0] if task.error else EXIT_USAGE
            results[task.index] = failed_record(task, code, why, executor="local",
                                                status="failed" if task.error else "unsatisfiable")
            progress.finished(results[task.index])
        else:
            runnable.append(task)
    schedule = Schedule(runnable, one_per_recipe=True)
    attempts = {t.index: 0 for t in runnable}
    procs: dict[int, subprocess.Popen] = {}
    lock = threading.Lock()
    futures: dict[Future, tuple[Task, int]] = {}
    jobs = max(1, min(jobs, len(runnable)))  # a pool no larger than the tasks it runs
    slots = list(range(jobs))

    def started(index):
        def keep(proc):
            with lock:
                procs[index] = proc
        return keep

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="build-all") as pool:
        try:
            while not schedule.done():
                for task in schedule.ready():
                    if not slots:
                        break
                    slot = slots.pop(0)
                    schedule.start(task)
                    attempts[task.index] += 1
                    futures[pool.submit(run_task, task.spec(), options, local_worker(slot),
                                        started(task.index))] = (task, slot)
                    progress.started(task.id, f"local slot {slot}")
                if not futures:
                    raise RuntimeError(f"build-all: nothing runs and nothing may start: {schedule.pending}")
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in finished:
                    task, slot = futures.pop(fut)
                    slots.append(slot)
                    with lock:
                        procs.pop(task.index, None)
                    record = fut.result()
                    code = record["exit_code"]
                    if code < 0 and code != -signal.SIGINT and attempts[task.index] < MAX_ATTEMPTS:
                        progress.retried(task.id, f"its process was killed ({record['error'].splitlines()[0]})")
                        schedule.retry(task)
                        continue
                    record["attempts"] = attempts[task.index]
                    schedule.finish(task)
                    results[task.index] = record
                    progress.finished(record)
        except KeyboardInterrupt:
            with lock:
                for proc in procs.values():  # their own session: Ctrl-C did not reach them
                    with contextlib.suppress(OSError):
                        os.killpg(proc.pid, signal.SIGINT)
            for fut in list(futures):
                with contextlib.suppress(Exception):
                    fut.result(timeout=60)
            raise
