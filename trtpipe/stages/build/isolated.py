"""The ONNX parser and the builder run in a child process, so that their crashes are reported.

TensorRT's parser and builder are native code: on some graphs they crash the process (the
TensorRT-RTX 1.7.1 parser segfaults on tf2onnx's `crop_and_resize` Loop), abort, or run out of
memory, and a crash in the run's own process would end it with no message (exit 139) and leave its
staging directory behind. Here `build_plan` runs in a child process (forked while that is safe,
else spawned); a signal, an abort or a vanished child becomes a BuildError (exit 7) naming the
signal and the last thing the parser or builder reported, and the run cleans up as after any
failed stage. The same child enforces `build.timeout`.

The child is started as soon as a run knows it will convert or build (`BuildWorker.start`), so
importing the backend overlaps with the conversion; progress and log lines come back over a pipe.
Only TensorRT's native code needs this: everything else stays in the run's process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trtpipe.errors import BuildError, PipelineError

ENV_IN_PROCESS = "TRTPIPE_BUILD_IN_PROCESS"  # "1": build in the run's own process (debugging)


class BuildWorker:
    """A child process that builds one plan (see the module docstring)."""

    def __init__(self, backend_name: str) -> None:
        method = _start_method()
        ctx = multiprocessing.get_context(method)
        self._conn, child = ctx.Pipe()
        # a forked child also holds the parent's end: it closes it, so that it sees the parent go
        inherited = self._conn if method == "fork" else None
        self._process = ctx.Process(target=_serve, args=(child, backend_name, inherited), daemon=True,
                                    name="trtpipe-build")
        self._process.start()
        child.close()

    @classmethod
    def start(cls, backend_name: str) -> BuildWorker | None:
        """A worker for `backend_name`, or None when builds run in-process (TRTPIPE_BUILD_IN_PROCESS=1)."""
        return None if os.environ.get(ENV_IN_PROCESS) == "1" else cls(backend_name)

    def build(self, model_path: str, build_cfg: dict, *, timeout_s: float | None, locate: Callable | None,
              progress: Any = None, log: Callable[[str], Any] | None = None,
              plan_file: str | None = None) -> Any:
        """Run `build_plan(model_path, build_cfg, backend)` in the child.

        Args:
            model_path: the final ONNX file.
            build_cfg: the resolved `build` section (plain data).
            timeout_s: seconds after which the child is stopped (None: no limit).
            locate: the recipe's key path -> "file:line:col" (it must pickle: a bound method of the Recipe).
            progress: the UI receiving the builder's progress phases (`phase(name, current, total)`).
            log: sink for detail lines.
            plan_file: the child streams the plan into this file (build_plan's plan_file) rather
                than sending its bytes back through the pipe.

        Returns:
            The BuildResult.

        Raises:
            BuildError: the child crashed (signal, abort, lost), or ran longer than `timeout_s`;
                any PipelineError the build raised, as it raised it.
        """
        log = log or (lambda msg: None)
        last = "starting the builder"
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            try:
                self._conn.send((model_path, build_cfg, locate, plan_file))
            except (BrokenPipeError, ConnectionResetError, EOFError):  # the child died before the request
                raise self._crash(last) from None
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._conn.poll(wait if wait is not None else 1.0):
                    if deadline is not None and time.monotonic() >= deadline:
                        self.stop()
                        raise BuildError(f"the build took longer than build.timeout ({timeout_s:g} s) and was "
                                         f"stopped; last builder message: {last}",
                                         hint="raise build.timeout, lower build.optimization_level, or narrow "
                                              "the profiles")
                    if not self._process.is_alive():
                        raise self._crash(last)
                    continue
                try:
                    kind, payload = self._conn.recv()
                except (EOFError, OSError):
                    raise self._crash(last) from None
                if kind == "log":
                    last = payload
                    log(payload)
                elif kind == "phase":
                    last = f"{payload[0]} ({payload[1]}/{payload[2]})"
                    if progress is not None and hasattr(progress, "phase"):
                        progress.phase(*payload)
                elif kind == "result":
                    return payload
                elif kind == "error":
                    raise payload
                elif kind == "bug":
                    raise RuntimeError(f"the build process failed:\n{payload}")
        finally:
            self.stop()

    def raise_if_failed(self) -> None:
        """Raise the error the child reported before any request (the backend cannot be imported),
        so that a run stops between stages instead of after minutes of conversion and passes."""
        try:
            ready = self._conn.poll(0)
        except (OSError, ValueError):  # closed: stopped already
            return
        if ready:
            try:
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                return  # gone without a word: build() reports the crash when asked to build
            if kind == "error":
                raise payload

    def stop(self) -> None:
        """Stop the child (idempotent)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=10)
        self._conn.close()

    def _crash(self, last: str) -> BuildError:
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is not None and code < 0:
            try:
                how = f"signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"signal {-code}"
        else:
            how = f"exit code {code}" if code is not None else "no exit status"
        return BuildError(f"the TensorRT parser/builder crashed ({how}); last message before the crash: {last}",
                          hint="a crash inside TensorRT's native code: the graph is likely one it cannot parse; "
                               "cut or replace the part named above with a pass, or try another "
                               "build.compute_capabilities / backend")


def _start_method() -> str:
    """"fork" while this process runs no other thread and has not imported TensorFlow (the worker
    is started before a conversion): the child starts in milliseconds with the imports done here,
    where a spawned one starts a new interpreter and imports again, competing with the run on a
    small machine (issue 13). Otherwise "spawn": a fork copies other threads' locks mid-flight."""
    import sys
    import threading
    if sys.platform == "linux" and threading.active_count() == 1 and "tensorflow" not in sys.modules:
        return "fork"
    return "spawn"


def _serve(conn: Any, backend_name: str, parent_end: Any = None) -> None:
    """The child: import the backend now (overlapping the parent's conversion), then build once."""
    if parent_end is not None:  # forked: without this, recv() would never see the parent die
        parent_end.close()
    from trtpipe.backend import resolve_backend
    from trtpipe.stages.build.plan import build_plan
    try:
        backend = resolve_backend(backend_name)
        backend.trt  # noqa: B018 -- import it now, while the parent converts: the point of starting early
    except PipelineError as err:
        # said at once (the parent looks between stages: BuildWorker.raise_if_failed), and the
        # pipe kept open until the request or the parent's end, which then reads it
        _reply(conn, "error", err)
        with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):
            conn.recv()
        return
    try:
        model_path, build_cfg, locate, plan_file = conn.recv()
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the run ended (a cached build, or a failure before it) without asking

    class _Progress:
        def phase(self, name: str, current: int, total: int) -> None:
            conn.send(("phase", (name, current, total)))

    try:
        result = build_plan(model_path, build_cfg, backend, locate=locate, progress=_Progress(),
                            log=lambda msg: conn.send(("log", str(msg))), plan_file=plan_file)
        _reply(conn, "result", result)
    except PipelineError as err:
        _reply(conn, "error", err)
    except Exception:  # a bug: the parent shows it as one (exit 1), with this traceback
        _reply(conn, "bug", traceback.format_exc())


def _reply(conn: Any, kind: str, payload: Any) -> None:
    try:
        conn.send((kind, payload))
    except (OSError, BrokenPipeError):
        pass


def build_in_child(state: Any, final_path: Path, build_cfg: dict, plan_file: Path | None = None) -> Any:
    """The run's build: in the worker started earlier (or one started now), as BuildWorker.build."""
    worker = getattr(state, "build_worker", None) or BuildWorker.start(state.backend.name)
    state.build_worker = None  # one build per worker
    timeout = build_cfg.get("timeout")
    if worker is None:
        from trtpipe.stages.build.plan import build_plan
        return build_plan(str(final_path), build_cfg, state.backend, locate=state.recipe.locate,
                          progress=state.ui, log=state.ui.detail, plan_file=plan_file)
    return worker.build(str(final_path), build_cfg, timeout_s=timeout, locate=state.recipe.locate,
                        progress=state.ui, log=state.ui.detail,
                        plan_file=str(plan_file) if plan_file is not None else None)
