"""The validation stage, cached: ONNX Runtime on the source model vs the final model (and the
plan vs ONNX Runtime where a GPU can run it), through Polygraphy. Only passing validations are
cached; where ONNX Runtime cannot run the final model as it is, it runs an fp32 twin."""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtpipe.cache.files import save_model
from trtpipe.cache.keys import ctx_state
from trtpipe.errors import ValidationError

if TYPE_CHECKING:
    from trtpipe.registry import PassContext
    from trtpipe.stages.run_state import ModelRef, RunState


NO_VALIDATE = ("NOT VALIDATED (--no-validate): validation was skipped on the command line, so nothing checked "
               "that the final model and the plan compute what the source model computes")


def _skipped(state):
    """--no-validate: record the stage as skipped, loudly (the summary and both reports say NOT VALIDATED)."""
    state.ui.stage("validate")
    state.timings["validate"] = state.ui.done("[bold yellow]NOT VALIDATED[/] (--no-validate)")
    state.ui.warn(NO_VALIDATE)
    state.stages["validate"] = {"status": "skipped", "key": None}
    return {"status": "skipped", "skipped_by": "--no-validate", "reason": NO_VALIDATE, "comparisons": []}


def run(state: RunState, source: types.SimpleNamespace, final: ModelRef, source_path: Path, final_path: Path,
        ctx: PassContext, staging: Any, plan_sha: str | None = None, plan_path: Path | None = None) -> dict:
    """Returns the validation result (raises ValidationError when it fails). `staging` is the
    run's stages.publish.Staging (the fp32 twin of an fp16/bf16 model is written into it)."""
    recipe, ui = state.recipe, state.ui
    if not state.options.validate:
        return _skipped(state)
    key = state.keys.validate(source.sha, final.sha, ctx_state(ctx, state.cache.hasher), plan_sha)
    ui.stage("validate", "Polygraphy: ONNX Runtime on source vs final" + (", engine vs ORT" if plan_path else ""))
    entry = state.lookup("validate", key, "validate")
    if entry is not None:
        result = entry.meta["result"]
        if ui.verbose:
            from trtpipe.stages.validate.compare import print_table
            print_table(result, ui.out)
        state.timings["validate"] = ui.done(f"{result['status']} (cached)")
        return result
    from trtpipe.stages.validate.compare import print_table, validate_models
    state.quiet()
    twin = _ort_twin(final, recipe.precision.mode, staging)
    try:
        result = validate_models(
            str(source_path), str(final_path), recipe.data.get("validate"), precision=recipe.data["precision"],
            input_contract=ctx.input_contract, output_map=ctx.output_map, postprocess=ctx.postprocess,
            plan_path=str(plan_path) if plan_path else None, backend=state.backend, locate=recipe.locate,
            log=ui.detail, base_dir=recipe.dir, compute_capabilities=recipe.data["build"]["compute_capabilities"],
            final_ort_path=str(twin["path"]) if twin and twin["path"] else None,
            final_ort_optimize=twin["optimize"] if twin else True, profiles=recipe.data["build"]["profiles"])
    except ValidationError as err:  # failed validations are never cached
        if getattr(err, "result", None):
            print_table(err.result, ui.out)
            if err.result.get("status") == "failed":
                _bisect_failure(state, source, source_path, ctx, err)  # names the first diverging pass
        raise
    if twin:
        result["final_ort_note"] = twin["note"]
    if (recipe.data.get("validate") or {}).get("bisect") == "always":
        result["bisect"] = _bisect(state, source, source_path, ctx, failed=False)
    if not ui.quiet:
        print_table(result, ui.out)
    with state.cache.writer("validate", key) as w:
        w.meta = {"result": result}
        w.commit("validate")
    state.timings["validate"] = ui.done(result["status"])
    return result


def _ort_twin(final, mode, staging):
    """What ONNX Runtime runs for validation when it cannot run the final model as it is."""
    if mode in ("fp16", "bf16"):
        from trtpipe.stages.precision.mixed import emulate_in_fp32
        path = staging.path(".validate-emulated.onnx")  # not published
        save_model(emulate_in_fp32(final.load()), path)
        return {"path": path, "optimize": True,
                "note": f"{mode} graph run in ONNX Runtime with {mode} rounding emulated in fp32"}
    if mode == "fp8":
        return {"path": None, "optimize": False, "note": "fp8 Q/DQ run with ONNX Runtime optimizations off"}
    return None


def _bisect(state, source, source_path, ctx, failed):
    """validate.bisect (stages/validate/bisect.py): each pass's model vs the source, printed; the
    result, {"status": "not run", "reason"} when `auto` finds the graph too big or too long, or
    {"status": "error", "reason"} when it could not run."""
    from trtpipe.stages.validate import bisect
    recipe, ui = state.recipe, state.ui
    mode = (recipe.data.get("validate") or {}).get("bisect", "auto")
    steps = bisect.pass_models(recipe, state.pass_models)
    go, why = bisect.should_bisect(mode, source_path, steps)
    if not go:
        ui.detail(f"bisect: not run: {why}")
        return {"status": "not run", "reason": why}
    ui.info(f"bisect: comparing the model after each of {len(steps)} pass(es) with the source model")
    try:
        result = bisect.bisect_passes(
            source_path, steps, recipe.data.get("validate"), precision=recipe.data["precision"],
            source_sha=source.sha, data_contract=ctx.input_contract, base_dir=recipe.dir, locate=recipe.locate,
            log=ui.detail, stop_at_first=failed and mode == "auto")
    except ValidationError as err:  # the source could not run on the data: validation says so itself
        return {"status": "error", "reason": err.message}
    if not ui.quiet:
        bisect.print_bisect(result, ui.out)
    return result


def _bisect_failure(state, source, source_path, ctx, err):
    """After a failed comparison: bisect the passes (validate.bisect) and add what it found to the
    error message and its result. A bisect that cannot run is mentioned, never masks the failure."""
    try:
        result = _bisect(state, source, source_path, ctx, failed=True)
    except Exception as exc:  # noqa: BLE001 - the validation failure is what the user must see
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    if result["status"] == "not run":
        return
    err.result["bisect"] = result
    if result["status"] == "error":
        line = f"bisect could not run: {result['reason']}"
    elif result["status"] == "agreed":
        line = (f"bisect: {result['summary']}; the difference arises after the passes (precision "
                f"{state.recipe.precision.mode}, profile corners or the engine)")
    else:
        line = result["summary"] if result["status"] == "diverged" else f"bisect: {result['summary']}"
    err.message = f"{err.message}\n  {line}"
    err.args = (err.message,)
