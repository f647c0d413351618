"""`python pipeline.py bench OUTPUT_DIR`: latency percentiles and throughput of a published model.

At each optimization profile's opt shape (or the model's static shapes without profiles), on
seeded random inputs, after warm-up runs:

* the engine, where a GPU can run the plan (Polygraphy's TrtRunner; each run timed with CUDA
  events on the runner's stream, inputs already on the device); elsewhere it is reported skipped
  with the reason (backend.has_runtime_gpu), never estimated;
* the final ONNX model on ONNX Runtime (CPU execution provider, its default threads; wall time
  per run, perf_counter) as the reference figure everywhere, plus the post-processing model
  (`nms: split`) on ONNX Runtime, which runs after the engine in deployment too.

Latencies are in milliseconds; throughput is batch items per second (batch / mean latency).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.deploy import outputs as out_guard
from trtpipe.deploy.published import Published, describe, load_published
from trtpipe.deploy.runtime import engine_status, ort_session, run_postprocess
from trtpipe.errors import DeployError
from trtpipe.stages.validate.data import model_io

PERCENTILES = (50, 90, 95, 99)


def bench(out_dir: str | Path, *, warmup: int = 10, iterations: int = 100, dest: str | Path | None = None,
          ui: Any = None) -> dict[str, Any]:
    """Benchmark the published model (see the module docstring) and save the result as JSON.

    Args:
        out_dir: the run's output directory.
        warmup: untimed runs first (>= 0).
        iterations: timed runs per shape and runtime (>= 1).
        dest: JSON file to write (default OUTPUT_DIR/bench.json).
        ui: trtpipe.console.UI for the table (None: silent).

    Returns:
        {"model", "machine", "warmup", "iterations", "shapes": [{"profile", "inputs": {name: shape},
        "batch", "onnxruntime": stats, "engine": stats or {"status": "skipped", "reason"},
        "postprocess_onnxruntime": stats or None}], "json"}; stats are {"status": "measured",
        "mean_ms", "min_ms", "max_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "throughput_per_s"}.

    Raises:
        DeployError: the output directory is not a complete published run, a dynamic input has no
            profile to take its shape from, or warmup/iterations are out of range.
        OutputError: the JSON file cannot be written, or `dest` is a published artifact, under
            OUTPUT_DIR/.runs/, the recipe or a file the run read (deploy/outputs.py).
    """
    if warmup < 0 or iterations < 1:
        raise DeployError(f"--warmup must be >= 0 and --iterations >= 1 (got {warmup}, {iterations})")
    pub = load_published(out_dir)
    target = Path(dest) if dest else pub.dir / "bench.json"
    out_guard.guard(target, out_guard.protected(pub), "--json PATH")  # before minutes of timing, not after
    backend, why = engine_status(pub)
    session = ort_session(pub.final)
    post = ort_session(pub.postprocess) if pub.postprocess else None
    rows = []
    for index, (profile, shapes) in enumerate(bench_shapes(pub)):
        feed = random_feed(pub.final, shapes)
        batch = next(iter(shapes.values()))[0] if shapes else 1
        row = {"profile": profile, "inputs": {n: list(s) for n, s in shapes.items()}, "batch": batch}
        row["onnxruntime"] = _time_ort(session, feed, warmup, iterations, batch)
        if post is not None:
            names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(names, session.run(names, feed)))  # the post-processing model's inputs
            row["postprocess_onnxruntime"] = _time(lambda: run_postprocess(post, pub.postprocess_info, outputs),
                                                   warmup, iterations, batch)
        else:
            row["postprocess_onnxruntime"] = None
        row["engine"] = (_time_engine(pub, backend, index if pub.build.get("profiles") else None, feed, warmup,
                                      iterations, batch)
                         if backend is not None else {"status": "skipped", "reason": f"engine not run: {why}"})
        rows.append(row)
    result = {"model": describe(pub), "warmup": warmup, "iterations": iterations, "shapes": rows,
              "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                          "onnxruntime_providers": session.get_providers()}}
    result["json"] = str(target)
    _write_json(target, result)
    if ui is not None:
        _table(ui, result)
    return result


def bench_shapes(pub: Published) -> list[tuple[str, dict[str, list[int]]]]:
    """(profile name, {input: opt shape}) per optimization profile, or [("static", model shapes)].

    Raises:
        DeployError: there are no profiles and an input has a dynamic dimension.
    """
    profiles = pub.build.get("profiles") or []
    inputs = model_io(pub.final)[0]
    if profiles:
        out = []
        for prof in profiles:
            shapes = {n: list(d["opt"]) for n, d in prof["inputs"].items()}
            for name, (_, dims) in inputs.items():  # static inputs the profile leaves out
                shapes.setdefault(name, list(dims))
            out.append((prof["name"], shapes))
        return out
    dynamic = {n: dims for n, (_, dims) in inputs.items() if any(d is None for d in dims)}
    if dynamic:
        raise DeployError(f"the final model has dynamic inputs {dynamic} and the run had no build.profiles to take "
                          "their shapes from")
    return [("static", {n: list(dims) for n, (_, dims) in inputs.items()})]


def random_feed(final_path: Path, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Seeded random inputs of the final model's dtypes: floats in [0, 1), integers in [0, 10)."""
    rng = np.random.default_rng(0)
    feed = {}
    for name, (dtype, _) in model_io(final_path)[0].items():
        shape = shapes[name]
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype == np.bool_:
            feed[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feed[name] = rng.integers(0, 10, shape).astype(dtype)
    return feed


def stats(latencies_s: list[float], batch: int) -> dict[str, Any]:
    """Latency statistics in milliseconds and throughput (batch items per second) of timed runs."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    out = {"status": "measured", "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max())}
    out.update({f"p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES})
    out["throughput_per_s"] = float(batch * 1e3 / out["mean_ms"]) if out["mean_ms"] > 0 else None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def _time(run, warmup, iterations, batch):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return stats(times, batch)


def _time_ort(session, feed, warmup, iterations, batch):
    names = [o.name for o in session.get_outputs()]
    return _time(lambda: session.run(names, feed), warmup, iterations, batch)


class _CudaEvents:
    """cudaEventRecord / cudaEventElapsedTime through Polygraphy's CUDA runtime library handle."""

    def __init__(self) -> None:
        from polygraphy import cuda
        self.lib = cuda.wrapper().handle
        self.start, self.end = ctypes.c_void_p(), ctypes.c_void_p()
        for ev in (self.start, self.end):
            self._check(self.lib.cudaEventCreate(ctypes.byref(ev)), "cudaEventCreate")

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise DeployError(f"{what} failed with CUDA error {status}")

    def elapsed_s(self, stream_ptr: int, run: Any) -> float:
        """Seconds between events recorded on `stream_ptr` before and after `run()`."""
        stream = ctypes.c_void_p(stream_ptr)
        self._check(self.lib.cudaEventRecord(self.start, stream), "cudaEventRecord")
        run()
        self._check(self.lib.cudaEventRecord(self.end, stream), "cudaEventRecord")
        self._check(self.lib.cudaEventSynchronize(self.end), "cudaEventSynchronize")
        ms = ctypes.c_float()
        self._check(self.lib.cudaEventElapsedTime(ctypes.byref(ms), self.start, self.end), "cudaEventElapsedTime")
        return ms.value / 1e3

    def close(self) -> None:
        for ev in (self.start, self.end):
            self.lib.cudaEventDestroy(ev)


def _time_engine(pub, backend, profile_index, feed, warmup, iterations, batch):
    """The engine's latency, CUDA events around each execution, inputs copied to the device first."""
    from polygraphy import cuda
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from trtpipe.deploy.runtime import refit_engine
    plan = pub.plan.read_bytes()
    engine = refit_engine(backend, plan, pub.final) if pub.deployment.get("strip_weights") else EngineFromBytes(plan)
    events = _CudaEvents()
    try:
        from trtpipe.stages.build.runtime_cache import engine_or_context
        with engine_or_context(backend, engine, pub.build.get("runtime_cache")) as target, \
                TrtRunner(target) as runner:
            if profile_index is not None:
                runner.set_profile(profile_index)
            device = {}
            for name, arr in feed.items():
                device[name] = cuda.DeviceArray(shape=arr.shape, dtype=arr.dtype)
                device[name].copy_from(np.ascontiguousarray(arr), stream=runner.stream)
            views = {n: d.view() for n, d in device.items()}

            def run():
                runner.infer(views, copy_outputs_to_host=False)
            for _ in range(warmup):
                run()
            times = [events.elapsed_s(runner.stream.ptr, run) for _ in range(iterations)]
            for d in device.values():
                d.free()
    finally:
        events.close()
    out = stats(times, batch)
    out["timing"] = "CUDA events on the runner's stream"
    return out


def _write_json(path, data):
    out_guard.make_dir(path.parent, "--json PATH")
    text = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    out_guard.write_atomic(path, lambda fh: fh.write(text), "--json PATH", "the benchmark result")


def _table(ui, result):
    from rich.table import Table
    table = Table(title=f"bench {result['model']['recipe']} ({result['warmup']} warm-up, "
                        f"{result['iterations']} timed runs)", header_style="bold")
    for col in ("profile", "inputs", "runtime", "mean ms", "p50", "p90", "p99", "items/s"):
        table.add_column(col, justify="right" if col not in ("profile", "inputs", "runtime") else "left")
    for row in result["shapes"]:
        shapes = "; ".join(f"{n} {'x'.join(map(str, s))}" for n, s in row["inputs"].items())
        for label, key in (("engine", "engine"), ("onnxruntime (final ONNX)", "onnxruntime"),
                           ("post-processing (onnxruntime)", "postprocess_onnxruntime")):
            st = row.get(key)
            if st is None:
                continue
            if st.get("status") != "measured":
                table.add_row(row["profile"], shapes, label, "skipped", "", "", "", "")
                continue
            table.add_row(row["profile"], shapes, label, f"{st['mean_ms']:.3f}", f"{st['p50_ms']:.3f}",
                          f"{st['p90_ms']:.3f}", f"{st['p99_ms']:.3f}", f"{st['throughput_per_s']:.1f}")
    ui.table(table)
    for row in result["shapes"]:
        if row["engine"].get("status") == "skipped":
            ui.out.print(f"[yellow]{row['profile']}: {row['engine']['reason']}[/]")
            break
    ui.out.print(f"saved {result['json']}")
