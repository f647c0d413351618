"""`python pipeline.py refit PLAN --onnx FINAL.onnx`: put the weights back into a refittable or
weight-stripped plan (build.refittable / build.strip_weights) on the machine that runs it.

The backend that wrote the plan (its first bytes say which) deserializes it, its Refitter with an
OnnxParserRefitter reads every weight from the ONNX model (the published final model: the same
graph the plan was built from), and the refitted engine is serialized with its weights
(SerializationFlag.EXCLUDE_WEIGHTS cleared) to a new plan file; PLAN itself is never written.
Deserializing needs a GPU the plan can run on: elsewhere the command stops and says why (exit 9).
"""

from __future__ import annotations

import os
from pathlib import Path

from trtpipe.backend import has_runtime_gpu, resolve_backend
from trtpipe.deploy.outputs import write_atomic
from trtpipe.deploy.published import plan_backend
from trtpipe.deploy.runtime import refit_engine
from trtpipe.errors import BuildError, DeployError


def refit(plan: str | Path, onnx_path: str | Path, dest: str | Path | None = None) -> Path:
    """Refit `plan` with the weights of `onnx_path` and write the result.

    Args:
        plan: a plan built with build.refittable or build.strip_weights.
        onnx_path: the ONNX model whose weights go in (the run's published final model).
        dest: the refitted plan to write (default: `<plan stem>.refitted.plan` next to PLAN).

    Returns:
        The path written.

    Raises:
        DeployError: PLAN or the ONNX model is missing; PLAN is not a TensorRT / TensorRT-RTX plan;
            the backend that wrote it is not installed; no GPU here can run it; the plan is not
            refittable or the model's weights do not fit it; `dest` is PLAN or the ONNX model.
        OutputError: `dest` cannot be written.
    """
    plan, onnx_path = Path(plan), Path(onnx_path)
    for path, what in ((plan, "plan"), (onnx_path, "ONNX model")):
        if not path.is_file():
            raise DeployError(f"{path}: no such {what}")
    out = Path(dest) if dest else plan.with_name(f"{plan.stem}.refitted.plan")
    why = _refused(out, plan, onnx_path)
    if why:
        raise DeployError(f"{out}: refit never writes over {why}", hint="name another file with -o")
    written_by = plan_backend(plan)
    if written_by is None:
        raise DeployError(f"{plan}: not a TensorRT or TensorRT-RTX plan (its first bytes are neither's)")
    try:
        backend = resolve_backend(written_by)
    except BuildError as err:
        raise DeployError(f"{plan} was built by {written_by}, which cannot be used here: {err.message}") from None
    ok, info = has_runtime_gpu(backend)
    if not ok:
        raise DeployError(f"refit not run: {backend.label} refits a deserialized engine, which needs a GPU that "
                          f"can run the plan: {info}",
                          hint="run refit on the machine that runs the plan")
    engine = refit_engine(backend, plan.read_bytes(), onnx_path)
    data = _serialize_with_weights(backend, engine)
    write_atomic(out, lambda fh: fh.write(data), "-o PATH", "the refitted plan")
    return out


def _refused(out, plan, onnx_path):
    """What `out` is that refit must not replace, or None: one of its inputs (the plan, the ONNX
    model, the weights files the model names; also through another link to the same file), or a file
    a run published (in an output directory: its owner marker beside it, or under .runs/)."""
    from trtpipe.review.model_names import external_locations
    from trtpipe.stages.run_files import MARKER
    inputs = [plan, onnx_path] + [onnx_path.parent / loc for loc in external_locations(onnx_path)]
    real = os.path.realpath(out)
    try:
        st = os.stat(out)
    except OSError:
        st = None
    for path in inputs:
        if real == os.path.realpath(path) or (st is not None and os.path.exists(path)
                                              and os.path.samestat(st, os.stat(path))):
            return f"its input {path}"
    if os.path.lexists(out) and (os.path.exists(os.path.join(os.path.dirname(os.path.abspath(out)), MARKER))
                                 or f"{os.sep}.runs{os.sep}" in real):
        return "a file a run published"
    return None


def _serialize_with_weights(backend, engine):
    trt = backend.trt
    flag = getattr(getattr(trt, "SerializationFlag", None), "EXCLUDE_WEIGHTS", None)
    if flag is not None and hasattr(engine, "create_serialization_config"):
        config = engine.create_serialization_config()
        config.clear_flag(flag)  # a stripped engine serializes without weights unless told otherwise
        blob = engine.serialize_with_config(config)
    else:
        blob = engine.serialize()
    if blob is None:
        raise DeployError(f"{backend.label} could not serialize the refitted engine")
    return bytes(memoryview(blob))
