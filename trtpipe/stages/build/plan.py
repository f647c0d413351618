"""Stage: final ONNX model + recipe `build` section -> serialized plan bytes.

One code path for tensorrt 10.x/11.x and TensorRT-RTX (modern API only: strongly typed network,
OnnxParser.parse_from_file, memory-pool limits, build_serialized_network). Every failure is a
BuildError that says which node, layer, input or recipe line is at fault, never a bare
"failed to build engine". Writing the plan is publish's job: this returns bytes.

TensorRT objects (builder, network, config, parser) are typed `Any`: they come from whichever of
`tensorrt` / `tensorrt_rtx` the Backend imported.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from trtpipe.backend import probe_cuda, rtx_supported_ccs
from trtpipe.errors import BuildError, OutputError, RecipeError
from trtpipe.fileguard import disk_full_error, is_disk_full, special_kind
from trtpipe.recipe.resolved import resolve_build
from trtpipe.stages.build import options as options_mod
from trtpipe.stages.build import plugins as plugin_mod
from trtpipe.stages.build.capture import capture
from trtpipe.stages.build.errors import build_failure, grab_stderr, missing_profiles, parser_failure
from trtpipe.stages.build.plan_file import build_to_file, weight_bytes
from trtpipe.stages.build.result import BuildResult  # re-exported: callers take it from here

if TYPE_CHECKING:
    from trtpipe.backend import Backend

_BUILD_LOCK = threading.Lock()  # one build at a time: the logger is process-wide


class BuildConfigError(RecipeError, BuildError):
    """A recipe mistake that only shows against the parsed network (profiles naming inputs it lacks,
    wrong ranks or static dims, a missing profile, an unknown compute capability): it is located in
    the recipe and exits with the recipe code, yet is still a BuildError for callers of build_plan."""


def build_plan(model_path: str | Path, build_cfg: dict | None, backend: Backend, *,
               locate: Callable[[tuple], str] | None = None, progress: Any = None,
               log: Callable[[str], Any] | None = None, plan_file: str | Path | None = None) -> BuildResult:
    """Parse the ONNX model with the backend's ONNX parser and build a serialized plan (engine).

    The network is created strongly typed (precision comes from the graph: TensorRT 11 and
    TensorRT-RTX have no FP16/INT8 builder flags) and parsed from the file, so external weights
    next to it are read from disk. One build at a time per process (TensorRT's logger is global).

    Args:
        model_path: the final ONNX model file.
        build_cfg: the recipe's resolved `build` section, or a partial mapping that gets the schema
            defaults (recipe.resolved.resolve_build): `workspace_bytes` (bytes; the WORKSPACE memory
            pool limit), `optimization_level` (the builder's, 0-5), `profiles` ([{name, inputs:
            {input name: {min, opt, max}}}], one dims list each), `compute_capabilities` (["8.9", ...];
            TensorRT-RTX only, built ahead of time), `plugins` (library paths), `timing_cache`
            (path or None), and the deployment options (stages/build/options.py: max_aux_streams,
            version_compatible, exclude_lean_runtime, hardware_compatibility_level, refittable,
            strip_weights, weight_streaming, sparsity, tf32).
        backend: the imported tensorrt or tensorrt_rtx module.
        locate: recipe key path -> "file:line:col", so errors point at the recipe line.
        progress: optional UI whose `phase(name, current, total)` receives the builder's progress
            (IProgressMonitor phases and steps; an exception there cancels the build and is
            re-raised).
        log: optional sink for detail lines (`-v`).
        plan_file: write the plan into this file (streamed while serialized for big models:
            plan_file.build_to_file) instead of returning its bytes; `plan` is then b"" and
            `plan_file` names it.

    Returns:
        BuildResult: `plan` (the serialized engine, bytes), backend name and version,
        `compute_capabilities` built for (None on tensorrt: the local GPU), `duration_s`
        (seconds), `inputs`/`outputs` ([{"name", "dtype" (numpy name), "shape" (-1 for dynamic
        dims)}]), `memory` ({"activation_bytes", "weights_bytes"} in bytes, when the builder
        printed them), `num_layers` (after parsing), `warnings`, `profiles` (names, in TensorRT's
        order), `timing_cache` (path or None), `reproducible` ("byte-identical" or "not guaranteed
        by <backend>: <what differs>", see BuildResult), `deployment` (the deployment options set,
        key -> value, defaults left out).

    Raises:
        BuildError: the model file is missing or unreadable; a plugin library is missing or cannot
            be loaded; the graph needs a plugin no registry provides; the parser rejected the graph
            (node, op and cause named); the builder failed (layers mapped to ONNX nodes).
        BuildConfigError: (a RecipeError and a BuildError; exits with the recipe code) the recipe's
            `build.profiles` do not fit the parsed network (dynamic inputs but no profile, an input
            the network lacks, wrong rank, a static dim changed, not min <= opt <= max, a dynamic
            input left out, TensorRT rejected the profile), or a compute capability the backend
            does not support.
        OptionError: (a RecipeError and a BuildError; exits with the recipe code) a deployment option
            the backend lacks (no such flag or attribute in its bindings, or its builder reports it
            unsupported), or `exclude_lean_runtime` without `version_compatible`.
        RecipeError: `timing_cache` names a FIFO, device or directory (refused, never replaced).
        OutputError: the timing cache cannot be written (a disk-full message names the space needed).
    """
    log = log or (lambda msg: None)
    model_path = str(model_path)
    if not os.path.isfile(model_path):
        raise BuildError(f"model file {model_path} does not exist")
    cfg = _with_defaults(build_cfg)
    t0 = time.perf_counter()
    with _BUILD_LOCK, capture(backend.trt) as cap:
        builder = backend.trt.Builder(cap.logger)
        # The parser owns the imported weights: keep it alive until the plan is serialized.
        network, parser, model, notes = _parse(backend, builder, cap, model_path, cfg, locate, log)
        inputs = _tensors(network.num_inputs, network.get_input)
        outputs = _tensors(network.num_outputs, network.get_output)
        log(f"network: {network.num_layers} layers, inputs "
            + ", ".join(f"{t['name']} {t['shape']} {t['dtype']}" for t in inputs))
        config, ccs, deployment = _configure(backend, builder, cfg, inputs, model, cap, locate, log)
        # TensorRT-RTX gets no timing cache: NVIDIA's TensorRT-RTX docs ("Timing Cache Migration") say its
        # timing-cache calls do not affect the plan and force a GPU query during ahead-of-time builds
        timing_cache = None if backend.is_rtx else cfg["timing_cache"]
        if backend.is_rtx and cfg["timing_cache"]:
            notes.append(f"build.timing_cache {os.path.basename(cfg['timing_cache'])} is not used with "
                         f"{backend.label}: TensorRT-RTX has no timing cache (it would only force a GPU query "
                         "during ahead-of-time builds); build.runtime_cache keeps its JIT kernels where a GPU "
                         "runs the plan")
        if timing_cache:
            _load_timing_cache(backend, config, timing_cache, notes, log, locate)
        monitor = _attach_progress(backend.trt, config, progress)

        log(f"building with {backend.label}" + (f" for compute capability {', '.join(ccs)}" if ccs else ""))
        cap.reset()
        if plan_file is not None:
            ok = build_to_file(backend.trt, builder, network, config, plan_file, weight_bytes(model_path))
            serialized, plan = (True if ok else None), b""
        else:
            plan_file = None
            serialized = builder.build_serialized_network(network, config)
        if monitor is not None and monitor.error is not None:
            raise monitor.error
        if serialized is None:
            raise _failure(cap, network, model, backend, ccs, deployment)
        if plan_file is None:
            plan = bytes(memoryview(serialized))
        del parser, serialized
        if timing_cache:
            _save_timing_cache(backend, config, timing_cache, locate, log)
        return BuildResult(
            plan=plan, backend=backend.name, backend_version=backend.version,
            compute_capabilities=ccs, duration_s=time.perf_counter() - t0,
            inputs=_public(inputs), outputs=_public(outputs), memory=cap.memory or None,
            num_layers=network.num_layers, warnings=notes + cap.warning_list(),
            profiles=[p["name"] for p in cfg["profiles"]], timing_cache=timing_cache,
            deployment=deployment, plan_file=str(plan_file) if plan_file is not None else None)


def _parse(backend, builder, cap, model_path, cfg, locate, log):
    """Plugins first (the parser needs them), then the plugin check, then the parser itself."""
    trt = backend.trt
    regs = plugin_mod.registries(backend, builder, cap.logger)
    plugin_mod.load_libraries(cfg["plugins"], regs[0], lambda: cap.errors, locate)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, cap.logger)
    try:
        model = onnx.load(model_path, load_external_data=False)  # graph only: weights stay on disk
    except Exception as exc:
        raise BuildError(f"{model_path} is not a readable ONNX model: {exc}") from None
    plugin_mod.check_plugins(model, parser, regs, backend)

    log(f"parsing {os.path.basename(model_path)}")
    cap.reset()
    with grab_stderr() as printed:
        parsed = parser.parse_from_file(model_path)  # from the file: external data next to it works
    if not parsed:
        raise BuildError(parser_failure(parser, model, model_path, cap, printed.get("text", ""), backend.label))
    notes = [ln for ln in printed.get("text", "").splitlines() if ln.strip()]
    return network, parser, model, notes


def _configure(backend, builder, cfg, inputs, model, cap, locate, log):
    trt = backend.trt
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg["workspace_bytes"]))
    config.builder_optimization_level = int(cfg["optimization_level"])
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # memory figures, layer names
    ccs = _set_compute_capabilities(backend, config, cfg["compute_capabilities"], locate, log)
    _add_profiles(builder, config, inputs, cfg["profiles"], _dim_names(model), locate)
    # deployment options (refit, weight stripping, compatibility, ...): refused where the backend lacks them
    deployment = options_mod.apply(backend, config, cfg, cap, locate=locate, log=log)
    return config, ccs, deployment


def _failure(cap, network, model, backend, ccs, deployment):
    """build_failure's error, with a hint naming the deployment option to blame when one is."""
    err = build_failure(cap, network, model, backend, ccs)
    ok, info = probe_cuda()
    hint = options_mod.failure_hint(deployment, cap.error_list(), backend, None if ok else str(info))
    if hint:
        err.hint = hint
    return err


def _with_defaults(build_cfg):
    # a recipe's build section is resolved already; direct callers may pass a partial mapping.
    # The defaults are the schema's (recipe.schema.json: build), nowhere else.
    return resolve_build(build_cfg)


def _network_flags(trt):
    # Strongly typed: precision comes from the ONNX graph. TensorRT 11 and RTX are always strongly
    # typed; on 10.x this flag makes the build honour the graph's types the same way.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


# --- progress --------------------------------------------------------------------------------

def _attach_progress(trt, config, progress):
    if progress is None or not hasattr(trt, "IProgressMonitor") or not hasattr(config, "progress_monitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.totals, self.error = {}, None

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.totals[phase_name] = num_steps
            self._emit(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            self._emit(phase_name, step + 1, self.totals.get(phase_name, 0))
            return self.error is None  # False cancels the build

        def phase_finish(self, phase_name):
            total = self.totals.pop(phase_name, 0)
            self._emit(phase_name, total, total)

        def _emit(self, name, current, total):
            # An exception must not unwind through TensorRT's C++: keep it, cancel, re-raise later.
            if self.error is None:
                try:
                    progress.phase(name, current, total)
                except Exception as exc:
                    self.error = exc

    monitor = Monitor()
    config.progress_monitor = monitor
    return monitor


# --- network, profiles -----------------------------------------------------------------------

def _dtype(dt):
    name = str(dt).split(".")[-1].lower()
    return {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(name, name)


def _tensors(count, get):
    out = []
    for i in range(count):
        t = get(i)
        out.append({"name": t.name, "dtype": _dtype(t.dtype), "shape": [int(d) for d in t.shape],
                    "is_shape_tensor": bool(getattr(t, "is_shape_tensor", False))})
    return out


def _public(tensors):
    return [{k: t[k] for k in ("name", "dtype", "shape")} for t in tensors]


def _dim_names(model):
    """Input name -> dims as the ONNX graph spells them (symbolic names for dynamic axes)."""
    names = {}
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        names[vi.name] = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in dims]
    return names


def _fmt_input(t, dim_names):
    dims = dim_names.get(t["name"]) or []
    shown = [dims[i] if d < 0 and i < len(dims) else str(d) for i, d in enumerate(t["shape"])]
    return f"{t['name']} [{', '.join(shown)}] {t['dtype']}"


def _where(locate, path):
    return plugin_mod.location_prefix(locate, path)


def _add_profiles(builder, config, inputs, profiles, dim_names, locate):
    by_name = {t["name"]: t for t in inputs}
    dynamic = [t for t in inputs if any(d < 0 for d in t["shape"]) or t["is_shape_tensor"]]
    listing = "; ".join(_fmt_input(t, dim_names) for t in inputs)
    if dynamic and not profiles:
        text, hint = missing_profiles(dynamic, lambda t: _fmt_input(t, dim_names))  # shapes vs shape-tensor values
        raise BuildConfigError(f"{_where(locate, ('build', 'profiles'))}{text}", hint=hint)
    for i, prof in enumerate(profiles):
        tprof = builder.create_optimization_profile()
        for name, dims in prof["inputs"].items():
            where = _where(locate, ("build", "profiles", i, "inputs", name))
            t = by_name.get(name)
            if t is None:
                # With a single input there is only one thing the user can have meant.
                close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.5) or (
                    list(by_name) if len(by_name) == 1 else [])
                raise BuildConfigError(f"{where}profile '{prof['name']}' names input '{name}', which the "
                                       f"network does not have" + (f"; did you mean '{close[0]}'?" if close else "")
                                       + f"\n  network inputs: {listing}")
            _check_dims(prof["name"], t, dims, where, dim_names)
            if t["is_shape_tensor"]:
                tprof.set_shape_input(name, dims["min"], dims["opt"], dims["max"])
            else:
                tprof.set_shape(name, dims["min"], dims["opt"], dims["max"])
        missing = [t for t in dynamic if t["name"] not in prof["inputs"]]
        where = _where(locate, ("build", "profiles", i))
        if missing:
            raise BuildConfigError(f"{where}profile '{prof['name']}' gives no shapes for dynamic input(s) "
                                   + "; ".join(_fmt_input(t, dim_names) for t in missing)
                                   + " (every profile must cover every dynamic input)")
        if config.add_optimization_profile(tprof) < 0:
            raise BuildConfigError(f"{where}TensorRT rejected profile '{prof['name']}'")


def _check_dims(pname, t, dims, where, dim_names):
    lo, opt, hi = (list(dims[k]) for k in ("min", "opt", "max"))
    head = f"{where}profile '{pname}', input {_fmt_input(t, dim_names)}: "
    if t["is_shape_tensor"]:
        return  # values of a shape tensor, not a shape: TensorRT checks them
    rank = len(t["shape"])
    for key, val in (("min", lo), ("opt", opt), ("max", hi)):
        if len(val) != rank:
            raise BuildConfigError(head + f"{key} {val} has rank {len(val)}, the input has rank {rank}")
    for axis, d in enumerate(t["shape"]):
        if not lo[axis] <= opt[axis] <= hi[axis]:
            raise BuildConfigError(head + f"need min <= opt <= max on every axis; axis {axis} has "
                                   f"min={lo[axis]}, opt={opt[axis]}, max={hi[axis]}")
        if d >= 0 and not lo[axis] == opt[axis] == hi[axis] == d:
            raise BuildConfigError(head + f"axis {axis} is static ({d}) but the profile gives "
                                   f"min={lo[axis]}, opt={opt[axis]}, max={hi[axis]}")


def _set_compute_capabilities(backend, config, ccs, locate, log):
    if not backend.is_rtx:
        log("tensorrt builds for the local GPU; build.compute_capabilities applies to tensorrt_rtx only")
        return None
    trt = backend.trt
    members = []
    for i, cc in enumerate(ccs):
        member = getattr(trt.ComputeCapability, "SM" + str(cc).replace(".", ""), None)
        if member is None:
            raise BuildConfigError(f"{_where(locate, ('build', 'compute_capabilities', i))}compute capability "
                                   f"{cc!r} is not supported by {backend.label}; supported: "
                                   + ", ".join(rtx_supported_ccs(backend)))
        members.append(member)
    config.num_compute_capabilities = len(members)
    for i, member in enumerate(members):
        config.set_compute_capability(member, i)
    return [str(cc) for cc in ccs]


# --- timing cache ----------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(backend):
    """TensorRT-RTX warns (DeprecationWarning) on every timing-cache call: they are no-ops there."""
    with warnings.catch_warnings():
        if backend.is_rtx:
            warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _timing_cache_problem(path, locate):
    """A timing cache is read, then replaced: it must be a regular file, or not exist yet. A FIFO,
    a device or a directory there is refused, never read (it could block) nor replaced."""
    kind = special_kind(path)
    if kind in (None, "missing"):
        return None
    return RecipeError(f"{_where(locate, ('build', 'timing_cache'))}timing cache {path} is {kind}, not a regular "
                       "file; it is read before and replaced after the build, so it must be a regular file or "
                       "not exist yet", hint="point build.timing_cache at a file (created if missing)")


def _load_timing_cache(backend, config, path, notes, log, locate=None):
    problem = _timing_cache_problem(path, locate)
    if problem is not None:
        raise problem
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            data = fh.read()
    with _quiet(backend):
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # some versions raise on a corrupt file instead of returning None
            cache = None
        if cache is None and data:
            notes.append(f"timing cache {path} could not be read; starting a new one")
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, False):
            notes.append(f"timing cache {path} does not match this device/version; starting a new one")
            config.set_timing_cache(config.create_timing_cache(b""), False)
    if backend.is_rtx:
        notes.append(f"{backend.label} treats timing caches as no-ops; {os.path.basename(path)} "
                     "is kept for tensorrt builds but speeds nothing up here")
    log(f"timing cache {path}: " + (f"loaded {len(data)} bytes" if data else "new"))


def _save_timing_cache(backend, config, path, locate, log):
    with _quiet(backend):
        blob = bytes(memoryview(config.get_timing_cache().serialize()))
    problem = _timing_cache_problem(path, locate)  # it may have changed during the build
    if problem is not None:
        raise problem
    tmp = None
    try:  # atomic: a crash mid-write must not leave a truncated cache for the next build
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".timing-", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(exc, path, len(blob), "the timing cache") from None
        raise OutputError(f"{_where(locate, ('build', 'timing_cache'))}cannot write timing cache "
                          f"{path}: {exc}") from None
    finally:
        if tmp is not None:  # never leave a .timing-*.tmp behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    log(f"timing cache {path}: saved {len(blob)} bytes")
