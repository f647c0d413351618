"""Running a published model: the engine through Polygraphy's TrtRunner where a GPU can run the plan,
else the final ONNX model on ONNX Runtime; then the post-processing model (ONNX Runtime).

`choose_runtime` decides and says why: a plan runs only with the backend (and version) that built
it, on a GPU it was built for (backend.has_runtime_gpu); a weight-stripped plan is refitted from
the final ONNX model first (`refit_engine`, the backend's OnnxParserRefitter). No engine runs on a
machine without one: the reason is returned and shown, never a stand-in result.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtpipe.backend import has_runtime_gpu, resolve_backend
from trtpipe.deploy.published import Published, plan_backend
from trtpipe.errors import BuildError, DeployError

RUNTIMES = ("auto", "engine", "onnxruntime")
# TensorRT objects an engine needs alive for as long as it is used (its runtime and logger): kept
# here, since the bindings do not tie their lifetimes to the engine's.
_ALIVE: list[Any] = []
ORT_LABEL = "onnxruntime (final ONNX)"


@dataclass
class Choice:
    """Which runtime runs the final model: "engine" or "onnxruntime", and why not the engine."""

    runtime: str
    label: str                    # for output: "engine (tensorrt_rtx 1.7.1, device 0 ...)" / ORT_LABEL
    reason: str | None = None     # why the engine did not run (None when it did)
    backend: Any = None           # the Backend, when the engine runs

    @property
    def banner(self) -> str | None:
        """ "engine not run: <reason>; ran the final ONNX on ONNX Runtime", or None."""
        if self.runtime == "engine":
            return None
        return f"engine not run: {self.reason}; ran the final ONNX on ONNX Runtime"


def engine_status(pub: Published) -> tuple[Any, str]:
    """(Backend, device description) when this machine can run the published plan, else
    (None, why not): the plan's format, its backend installed here at the same version (or a
    version-compatible plan), and a GPU of a compute capability it was built for."""
    written_by = plan_backend(pub.plan)
    if written_by is None:
        return None, f"{pub.plan.name} is not a TensorRT or TensorRT-RTX plan (unknown first bytes)"
    if pub.backend and written_by != pub.backend:
        return None, (f"{pub.plan.name} is a {written_by} plan but report.json says {pub.backend} built it: "
                      "the plan was replaced")
    try:
        backend = resolve_backend(written_by)
    except BuildError as err:
        return None, (f"the plan was built by {written_by} {pub.backend_version}, which cannot be used here "
                      f"({err.message.split(';')[0]})")
    if pub.backend_version and backend.version != pub.backend_version and not pub.deployment.get("version_compatible"):
        return None, (f"the plan was built by {written_by} {pub.backend_version} but {backend.version} is installed; "
                      "a plan runs only on the version that built it unless built with build.version_compatible")
    ok, info = has_runtime_gpu(backend, pub.compute_capabilities)
    if not ok:
        return None, info
    return backend, info


def choose_runtime(pub: Published, wanted: str = "auto") -> Choice:
    """The runtime for `--runtime wanted` (auto, engine, onnxruntime).

    Raises:
        DeployError: `engine` was asked for and cannot run here (the message says why).
    """
    if wanted not in RUNTIMES:
        raise DeployError(f"--runtime {wanted!r}: expected one of {', '.join(RUNTIMES)}")
    if wanted == "onnxruntime":
        return Choice("onnxruntime", ORT_LABEL, "--runtime onnxruntime was asked for")
    backend, info = engine_status(pub)
    if backend is not None:
        return Choice("engine", f"engine ({backend.label}, {info})", backend=backend)
    if wanted == "engine":
        raise DeployError(f"--runtime engine: the engine cannot run here: {info}",
                          hint="use --runtime auto (or onnxruntime) to run the final ONNX model on ONNX Runtime")
    return Choice("onnxruntime", ORT_LABEL, info)


def ort_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session for an ONNX file (external data next to it is read).

    Raises:
        DeployError: ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise DeployError(f"{path}: ONNX Runtime cannot load the model: {err}") from None


def refit_engine(backend: Any, plan: bytes, onnx_path: str | Path) -> Any:
    """Deserialize `plan` and put the weights of `onnx_path` into it (Refitter + OnnxParserRefitter);
    needs a GPU runtime. Returns the refitted ICudaEngine.

    Raises:
        DeployError: the plan cannot be deserialized, is not refittable, or the ONNX model's weights
            do not fit it (each missing weight named).
    """
    trt = backend.trt
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise DeployError(f"{backend.label} cannot deserialize the plan (another version, or not a plan)")
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise DeployError(f"{onnx_path}: its weights do not fit the plan: " + "; ".join(errors or ["no detail"]))
    if not refitter.refit_cuda_engine():
        missing = list(refitter.get_missing_weights())
        raise DeployError("refit failed" + (f"; weights the ONNX model did not give: {', '.join(missing[:10])}"
                                            if missing else ""))
    _ALIVE.append((logger, runtime))
    return engine


def deserialize(backend: Any, plan: bytes) -> Any:
    """The ICudaEngine of a serialized plan (needs a GPU that can run it), or None when the backend
    cannot deserialize it."""
    trt = backend.trt
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    _ALIVE.append((logger, runtime))
    return engine


class FinalModel:
    """The final model on the chosen runtime: `run(feed) -> {output name: array}`; close() frees it."""

    def __init__(self, pub: Published, choice: Choice) -> None:
        self.pub, self.choice = pub, choice
        self._session = self._runner = None
        self._stack = contextlib.ExitStack()
        if choice.runtime == "engine":
            from polygraphy.backend.trt import TrtRunner
            plan = pub.plan.read_bytes()
            if pub.deployment.get("strip_weights"):
                engine = refit_engine(choice.backend, plan, pub.final)
            else:
                from polygraphy.backend.trt import EngineFromBytes
                engine = EngineFromBytes(plan)
            # TensorRT-RTX with build.runtime_cache: a context keeping its JIT kernels in that file
            from trtpipe.stages.build.runtime_cache import engine_or_context
            engine = self._stack.enter_context(
                engine_or_context(choice.backend, engine, pub.build.get("runtime_cache")))
            self._runner = self._stack.enter_context(TrtRunner(engine))
        else:
            self._session = ort_session(pub.final)

    def run(self, feed: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """Outputs of the final model for one feed (numpy arrays, on the host)."""
        if self._runner is not None:
            return OrderedDict((k, np.asarray(v)) for k, v in self._runner.infer(feed).items())
        names = [o.name for o in self._session.get_outputs()]
        return OrderedDict(zip(names, self._session.run(names, dict(feed))))

    @property
    def runner(self) -> Any:
        """The Polygraphy TrtRunner (engine runtime), else None."""
        return self._runner

    @property
    def session(self) -> Any:
        """The ONNX Runtime session (onnxruntime runtime), else None."""
        return self._session

    def close(self) -> None:
        """Free the engine's runner (device buffers, execution context); idempotent."""
        self._stack.close()


@contextlib.contextmanager
def final_model(pub: Published, choice: Choice) -> Iterator[FinalModel]:
    """`with final_model(pub, choice) as model:` FinalModel, closed on exit."""
    model = FinalModel(pub, choice)
    try:
        yield model
    finally:
        model.close()


def run_postprocess(session: Any, info: dict, outputs: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
    """The post-processing model (`nms: split`) on the final model's outputs: its inputs are fed from
    the final outputs `info["inputs"]` names; returns its outputs under their names.

    Raises:
        DeployError: a final output the post-processing model needs is missing.
    """
    feed = {}
    for pp_input, final_output in (info.get("inputs") or {}).items():
        if final_output not in outputs:
            raise DeployError(f"the post-processing model reads final output '{final_output}', which the final "
                              f"model does not produce (it has {list(outputs)})")
        feed[pp_input] = outputs[final_output]
    names = [o.name for o in session.get_outputs()]
    return OrderedDict(zip(names, session.run(names, feed)))
