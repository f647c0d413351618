"""The Ray executor: each task a Ray task (`pip install -e ".[ray]"`) that runs the ordinary run
in a child process on the worker that Ray picked.

* Where: without `--address`, `ray.init()` starts a new Ray on this machine for the run (even
  where one is running), bound to 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), with
  `--jobs` CPUs (default: all) and every target's resource; with `--address` (`ray://head:10001`,
  `127.0.0.1:6379`, or `auto` for the cluster this machine belongs to) it connects to that cluster
  (KubeRay on Kubernetes, `ray start`) and uses the resources its nodes carry.
* Routing: a task asks for its target's resources (Target.ray_resources: `sm_89` for compute
  capability 8.9, `accelerator_type:A100` plus a GPU for a GPU kind) and one CPU. Nodes declare
  them, e.g. `ray start --resources '{"sm_86": 1, "sm_89": 1}'` (KubeRay: rayStartParams
  `resources`). Only the presence matters: a task takes 0.001 of it, so CPUs bound concurrency.
* Fail fast: a target that no alive node can satisfy is failed before anything is submitted
  ("unsatisfiable", naming the missing resources and what the nodes have), instead of waiting
  for a node that never comes; a node that leaves while its tasks wait fails them the same way.
* Worker death: `max_retries=1` re-runs a task once when its worker process or node dies
  (application failures, i.e. a non-zero exit code of the run, are not retried). The run dies
  with its worker (child.py) and leaves nothing partial: entries are committed by rename, and
  the retried run removes the killed one's leftovers.
* Identical stages once: a recipe's first target (its leader) runs before its others (Schedule);
  with a shared remote tier (`--remote-cache`) or a shared `--cache-dir`, the followers, on any
  node, find its conversion, passes and validation cached.

Workers need trt-pipeline installed and the recipes, models and output directories at the same
paths as on the driver (a shared filesystem or the same image); each task's output goes to its
worker's filesystem.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from trtpipe.errors import EXIT_USAGE, PipelineError
from trtpipe.fleet.progress import BuildProgress
from trtpipe.fleet.report import failed_record
from trtpipe.fleet.runner import code_root, run_task
from trtpipe.fleet.tasks import Schedule, Task

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": a local Ray binds 127.0.0.1 only
LOCAL_RESOURCE_UNITS = 1000.0                          # a local Ray carries every target's resource
CHECK_EVERY_S = 2.0                                    # how often waiting tasks' nodes are re-checked
CONNECT_TIMEOUT_S = 5.0                                # --address must answer a TCP connect within this


class RayUnavailable(PipelineError):
    """Ray is not installed, or the cluster cannot be reached (a usage error, exit 2)."""

    exit_code = EXIT_USAGE


def execute(spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The Ray task: run one task on this worker (runner.run_task), saying which node and process ran it."""
    import ray
    ctx = ray.get_runtime_context()
    worker = {"executor": "ray", "host": socket.gethostname(), "node_id": ctx.get_node_id(),
              "node_ip": ray.util.get_node_ip_address(), "worker_pid": os.getpid()}
    return run_task(spec, options, worker)


def connect(address: str | None, tasks: list[Task], jobs: int | None) -> Any:
    """ray.init(): connect to `address`, or start a loopback-only local Ray carrying every target's
    resources. Returns the ray module.

    Raises:
        RayUnavailable: Ray is not installed, or `address` cannot be reached.
    """
    host_port = _host_port(address) if address else None
    if address:
        _check_reachable(address, host_port)
    if not address or (host_port and _is_loopback(host_port[0])):
        # read when Ray is imported: a local Ray binds 127.0.0.1 only, and a cluster on 127.0.0.1
        # is reached there (else Ray swaps 127.0.0.1 for this machine's network address)
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError as err:
        raise RayUnavailable("--executor ray needs Ray: pip install -e \".[ray]\" (or pip install ray)") from err
    if not address:
        from ray._private import ray_constants
        if ray_constants.ENABLE_RAY_CLUSTER:  # Ray was imported before the variable was set, or it is "1"
            raise RayUnavailable(f"a local Ray would listen on this machine's network address: set {LOOPBACK_ENV}=0 "
                                 f"before Ray is imported (it is {os.environ.get(LOOPBACK_ENV)!r}), so that it binds "
                                 "127.0.0.1 only; or give --address")
    # workers import this checkout's trtpipe where the path exists (a local Ray, a shared filesystem)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                              "runtime_env": {"env_vars": {"PYTHONPATH": code_root() + ":${PYTHONPATH}"}}}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            resources = {r: LOCAL_RESOURCE_UNITS for t in tasks if not t.target.gpu for r in t.target.ray_resources()}
            ray.init(address="local", num_cpus=jobs or os.cpu_count(), resources=resources, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        raise RayUnavailable(f"cannot {'connect to the Ray cluster at ' + address if address else 'start Ray'}: "
                             f"{err}", hint="check --address (ray://HOST:10001 or HOST:6379) and that the cluster "
                                            "is up (ray status)") from err
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of `ray://HOST:PORT` or `HOST:PORT`; None for `auto` and the like."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check_reachable(address: str, host_port: tuple[str, int] | None) -> None:
    """Fail in seconds when nothing listens at the address (Ray itself retries for minutes)."""
    if host_port is None:
        return
    try:
        socket.create_connection(host_port, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {err.strerror or err}",
                             hint="check --address (ray://HOST:10001 for Ray Client, HOST:6379 for the GCS) and "
                                  "that the cluster is up (ray status)") from err


def _needs(task: Task) -> dict[str, float]:
    need = {"CPU": 1.0, **task.target.ray_resources()}
    if task.target.gpu:
        need["GPU"] = 1.0
    return need


def unsatisfiable(task: Task, nodes: list[dict[str, Any]]) -> str | None:
    """Why no alive node can run `task`, or None.

    Args:
        task: the task.
        nodes: `ray.nodes()`.

    Returns:
        A message naming the missing resources and what the alive nodes carry, or None.
    """
    need = _needs(task)
    alive = [n for n in nodes if n.get("Alive")]
    for node in alive:
        have = node.get("Resources") or {}
        if all(have.get(r, 0) >= amount for r, amount in need.items()):
            return None
    custom = sorted({r for n in alive for r in (n.get("Resources") or {})
                     if r.startswith(("sm_", "accelerator_type:")) or r in ("GPU",)})
    return (f"no node of the Ray cluster can build target {task.target.label}: it needs "
            f"{', '.join(sorted(r for r in need if r != 'CPU'))} and a CPU on one node; the {len(alive)} alive "
            f"node(s) carry {', '.join(custom) or 'no target resources'} (declare them with ray start "
            f"--resources '{{\"sm_89\": 1}}', KubeRay rayStartParams resources)")


def run_ray(tasks: list[Task], options: dict[str, Any], address: str | None, jobs: int | None,
            progress: BuildProgress, results: dict[int, dict]) -> dict[str, Any]:
    """Run `tasks` as Ray tasks (see the module docstring).

    Args:
        tasks: the tasks (tasks.expand).
        options: runner options (cache_dir, remote_cache, pause_once; runner.run_task).
        address: the cluster to connect to; None starts a local Ray.
        jobs: at most this many tasks submitted at once (None: as many as the cluster takes).
        progress: where starts and results are shown.
        results: filled as tasks finish, {task index: record}: complete on return, what finished
            so far on Ctrl-C (the driver's exit stops the job's Ray tasks, and their runs with them).

    Returns:
        The cluster: {address, nodes: [{node_id, ip, resources}]}.

    Raises:
        RayUnavailable: Ray missing or unreachable.
        KeyboardInterrupt: Ctrl-C.
    """
    ray = connect(address, tasks, jobs)
    try:
        nodes = ray.nodes()
        info = {"address": address or "local", "nodes": [
            {"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress"), "resources": n.get("Resources")}
            for n in nodes if n.get("Alive")]}
        _run(ray, tasks, options, jobs, progress, nodes, results)
        return info
    finally:
        ray.shutdown()


def _run(ray, tasks, options, jobs, progress, nodes, results):
    runnable = []
    for task in tasks:
        why = (task.error and task.error[1]) or unsatisfiable(task, nodes)
        if why:
            code = task.error[0] if task.error else EXIT_USAGE
            results[task.index] = failed_record(task, code, why, executor="ray",
                                                status="failed" if task.error else "unsatisfiable")
            progress.finished(results[task.index])
        else:
            runnable.append(task)
    remote_fn = ray.remote(execute)
    schedule = Schedule(runnable, one_per_recipe=False)
    inflight: dict[Any, Task] = {}
    last_check = time.monotonic()
    while not schedule.done():
        for task in schedule.ready():
            if jobs and len(inflight) >= jobs:
                break
            need = _needs(task)
            ref = remote_fn.options(num_cpus=need.pop("CPU"), num_gpus=need.pop("GPU", 0), resources=need,
                                    max_retries=1, retry_exceptions=False, name=f"build {task.id}").remote(
                task.spec(), options)
            inflight[ref] = task
            schedule.start(task)
            progress.started(task.id, "ray")
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=CHECK_EVERY_S)
        for ref in done:
            task = inflight.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as err:  # the worker (or node) died twice, or the task was cancelled
                record = failed_record(task, None, f"{type(err).__name__}: {err}", executor="ray")
            record["attempts"] = None  # Ray retries inside; build-all does not see attempts
            schedule.finish(task)
            results[task.index] = record
            progress.finished(record)
        if not done and time.monotonic() - last_check >= CHECK_EVERY_S:
            last_check = time.monotonic()
            nodes = ray.nodes()
            for ref, task in list(inflight.items()):
                why = unsatisfiable(task, nodes)
                if why:  # its nodes left while it waited: it would wait forever
                    ray.cancel(ref, force=True)
                    inflight.pop(ref)
                    schedule.finish(task)
                    results[task.index] = failed_record(task, EXIT_USAGE, why, executor="ray", status="unsatisfiable")
                    progress.finished(results[task.index])
