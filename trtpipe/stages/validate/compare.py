"""Stage 5: does the final model still compute what the source model computed?

Built on Polygraphy: OnnxrtRunner/TrtRunner run the models through `Comparator.run`,
`SimpleCompareFunc` + `Comparator.compare_accuracy` compare outputs, `Comparator.validate` checks
NaN/Inf (outputs.py), and `DataLoader` makes the seeded random data (data.py); table.py prints the
result. This module decides *what* to compare with what:

* source-ort vs final-ort, always: the source model (after conversion) and the final ONNX in ONNX
  Runtime on the same data; the final model's feed is derived through the passes' input contract.
  Outputs are paired through the output map; outputs that exist on one side only are listed as not
  compared, with the reason.
* detections, when `nms: split` moved NMS into a post-processing model: final + post-processing
  (ORT) against the source's NMS outputs, matched by IoU (detections.py).
* engine vs final-ort, where a GPU can run the plan; otherwise reported skipped with the reason.

Tolerances follow Polygraphy's rule: an output passes when the chosen error statistic is within
atol OR within rtol (relative to the source's values, the reference side).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polygraphy.comparator import Comparator

from trtpipe.errors import BuildError, RecipeError, ValidationError, suggest
from trtpipe.recipe.precision import normalize
from trtpipe.recipe.resolved import resolve_validate
from trtpipe.stages.validate import informative, plugin_cut
from trtpipe.stages.validate.corners import concat_feeds, concat_outputs, data_config, profile_corners
from trtpipe.stages.validate.data import apply_contract, cut_inputs, make_source_feeds, model_io, quiet_polygraphy
from trtpipe.stages.validate.finite import check_reference_finite
from trtpipe.stages.validate.outputs import (
    ENGINE,
    FINAL,
    POST,
    SOURCE,
    compare_outputs,
    inner_tensors,
    match_detections,
    plan_outputs,
    run_ort,
    run_postprocess,
    skip_reason,
    tolerance,
)
from trtpipe.stages.validate.parameters import find_parameters, keep_values, shape_profiles
from trtpipe.stages.validate.table import print_table as print_table  # re-exported: callers print from here

if TYPE_CHECKING:
    from trtpipe.backend import Backend


def resolve_config(validate_cfg: dict | None, mode: str = "fp32") -> dict:
    """`validate` as a resolved recipe holds it (schema defaults, tolerances for `mode`)."""
    return resolve_validate(validate_cfg, mode)


def validate_models(source_model_path: str | Path, final_model_path: str | Path, validate_cfg: dict | None, *,
                    precision: str | dict | None, input_contract: dict[str, dict] | None,
                    output_map: dict[str, str] | None, postprocess: dict | None,
                    plan_path: str | Path | None = None, backend: Backend | str | None = None,
                    locate: Callable[[tuple], str] | None = None, log: Callable[[str], Any] | None = None,
                    base_dir: str | Path | None = None, compute_capabilities: list[str] | None = None,
                    final_ort_path: str | Path | None = None, final_ort_optimize: bool = True,
                    profiles: list[dict] | None = None) -> dict[str, Any]:
    """Compare source and final model (and engine, detections) on the same data (stage 5).

    Both models run in ONNX Runtime through Polygraphy on `validate.data` (seeded random, .npz or
    images), generated for the source model's inputs and fed to the final model through the input
    contract. An output passes when its error statistic is within atol OR within rtol relative to
    the source's values (Polygraphy's SimpleCompareFunc rule); NaN/Inf fail it when checked.

    Args:
        source_model_path: the converted source model (.onnx).
        final_model_path: the final model (.onnx); the post-processing model is looked up next to it.
        validate_cfg: the recipe's `validate` section (None: defaults; tolerances default by precision).
        precision: the recipe's precision (mode name or mapping): picks default tolerances.
        input_contract: {final input name: {"source_input", "source_dtype", "source_shape", "shape",
            "steps"}} recorded by the passes (docs/architecture.md); None: identity.
        output_map: {final output name: source output name} recorded by the passes.
        postprocess: `ctx.postprocess` after `nms: split` ({"file", "inputs", "outputs", "kind"}):
            detections are then compared by IoU matching.
        plan_path: the serialized plan, compared engine vs final-ort where a GPU can run it.
        backend: the Backend (or its name) to run the plan with; None: "auto".
        locate: recipe key path -> "file:line:col", so messages point at the recipe line.
        log: optional sink for detail lines.
        base_dir: base directory of relative data paths (the recipe's directory).
        compute_capabilities: the plan's TensorRT-RTX targets ("8.9", ...): the GPU must match one.
        final_ort_path: what ONNX Runtime runs instead of the final model when it cannot run it as
            it is (an fp16/bf16 model emulated in fp32).
        final_ort_optimize: False turns ONNX Runtime's graph optimizations off for the final model
            (fp8 Q/DQ would be fused into kernels ORT lacks).
        profiles: `build.profiles`: the models are also compared at every profile's min, opt and
            max shapes on seeded random data (corners.py); a fixed-batch source runs in slices.

    Returns:
        A JSON-able dict: `status` ("passed", "failed", "inconclusive": nothing failed but nothing
        compared proves anything, see informative.py, or "skipped"), `reason`, `data` (what was
        fed), `tolerances`, `comparisons` ([{name, status, reason, iterations, outputs: [{output,
        source_output, status, reason, statistic, atol, rtol, max_abs, max_rel, value,
        value_rel}]}], source vs final and engine vs final), and `detections` after `nms: split`.

    Raises:
        ValidationError: a comparison failed (the dict above is its `.result`); an output name in
            `validate` that neither model has; the data could not be read or does not fit the
            inputs or the input contract.
        ValidationNotRunError (a ValidationError, exit code 10): ONNX Runtime could not run a model
            (an op, type or opset it lacks); no data can be made for an input (a parameter input
            such as TopK's `K` or a string input without given values, a bfloat16/float8/int4 input).
        RecipeError: `precision` is not a valid precision value.
    """
    precision = normalize(precision)["mode"]
    cfg = resolve_config(validate_cfg, precision)
    log = log or (lambda msg: None)
    where = (locate(("validate",)) + ": ") if locate else ""
    if not cfg["enabled"]:
        return {"status": "skipped", "reason": "validate.enabled is false", "comparisons": []}
    tolerances = {"precision": precision, "atol": cfg["atol"], "rtol": cfg["rtol"],
                  "statistic": cfg["statistic"], "quantile": cfg["quantile"]}
    src_in, src_out = model_io(source_model_path)
    fin_in, fin_out = model_io(final_model_path)
    src_tensors = inner_tensors(source_model_path)
    _check_names(cfg, src_out, fin_out, src_tensors, locate)
    # TensorRT plugin nodes: ONNX Runtime runs the final model cut before them (outputs depending on
    # them are engine only) unless validate.ort_custom_ops implements them (plugin_cut.py).
    plugins = plugin_cut.ort_view(final_ort_path or final_model_path, cfg["ort_custom_ops"],
                                  set(src_tensors) | set(src_out), base_dir=base_dir, locate=locate)

    contract = input_contract or {}
    # Inputs whose values act as shapes or attributes get no random data (parameters.py).
    params = find_parameters(source_model_path)
    feeds, data = make_source_feeds(cfg["data"], src_in, contract, base_dir=base_dir, locate=locate,
                                    parameters=params)
    data["coverage"] = informative.input_coverage(feeds, cfg["data"], contract)
    log(f"validate: {data['kind']} data, {len(feeds)} iteration(s)")
    # Final inputs cut from inside the source (set_outputs) are fed the source's own values.
    inner = cut_inputs(contract)
    omap = {**(output_map or {}), **cfg["output_map"]}
    # Final outputs that are tensors inside the source (a cut by set_outputs, nms split at named
    # tensors, rename): the source exposes them as extra outputs, so they are compared for real.
    cut = [s for s in dict.fromkeys(omap.get(f, f) for f in fin_out) if s not in src_out and s in src_tensors]
    extra = [t for t in plugins.compare if t not in src_out]  # what reaches the plugins
    src_outputs = list(dict.fromkeys(list(src_out) + inner + cut + extra)) if inner or cut or extra else None
    src_run = run_ort(source_model_path, SOURCE, feeds, src_outputs)
    check_reference_finite(src_run, cfg, src_out, where)  # NaN in the reference: the data is the problem
    inner_values = [{t: it[t] for t in inner} for it in list(src_run.values())[0]]
    final_feeds = [apply_contract({**f, **v}, contract, fin_in) for f, v in zip(feeds, inner_values)]
    # `final_ort_path`: what ONNX Runtime runs for the final model when it cannot run the model
    # itself (bf16/fp16 emulated in fp32: ORT's CPU kernels lack bf16 Conv and compute fp16 in fp32).
    fin_run = run_ort(plugins.model_path, FINAL, final_feeds, optimize=final_ort_optimize,
                      custom_ops=plugins.custom_ops)

    tol_for = lambda name, source_name=None: tolerance(cfg, tolerances, name, source_name)  # noqa: E731
    pairs, entries = plugin_cut.around_plugins(plugins, *plan_outputs(cfg, fin_out, src_out, omap, postprocess, cut))
    main = compare_outputs(f"{SOURCE} vs {FINAL}", fin_run, src_run, pairs, entries, tol_for, cfg)
    result = {"status": None, "reason": None, "data": data, "tolerances": tolerances, "comparisons": [main]}
    if plugins.nodes:
        result["plugins"] = plugins.as_result()
    shown = {n: list(a.shape) for n, a in final_feeds[0].items()} if final_feeds else None
    corner_runs = []  # (label, final feed, final-ort run) for the engine comparison at each corner
    profiles, notes = shape_profiles(profiles, params, contract)  # a shape tensor's profile holds values
    if notes:  # the plan takes values never compared: not evidence for them (informative.doubts)
        main["note"] = "; ".join(notes)
        result["comparisons"].append({"name": f"{SOURCE} vs {FINAL} at the other parameter values",
                                      "status": "inconclusive", "uncompared": True,
                                      "reason": "; ".join(notes) + " (the others are not compared)"})
    for corner in profile_corners(profiles, contract, src_in, fin_in, compared=shown):
        comp, ran = _at_corner(
            corner, cfg, source_model_path, plugins.model_path, final_ort_optimize, src_in, fin_in,
            contract, src_outputs, pairs, entries, tol_for, base_dir, locate, params, custom_ops=plugins.custom_ops)
        result["comparisons"].append(comp)
        if ran:
            corner_runs.append((corner.label, *ran[:2]))
            if postprocess:  # the post-processing model runs after the engine at every shape the plan takes
                result["comparisons"].append(_postprocess_at_corner(
                    corner.label, postprocess, final_model_path, ran[1], ran[2], ran[3], tol_for, cfg,
                    precision, tolerances, omap))
    if postprocess and postprocess.get("kind") == "outputs":  # split_postprocess: element-wise
        result["comparisons"].append(_postprocessed(postprocess, final_model_path, fin_run, src_run, tol_for, cfg))
    elif postprocess:
        result["detections"] = _detections(postprocess, final_model_path, fin_run, src_run, cfg, precision, tolerances,
                                          omap, src_feeds=feeds)
    elif main["status"] == "skipped" and not all(skip_reason(cfg, f, omap.get(f, f)) or f in plugins.engine_only
                                                 for f in fin_out):
        # Nothing paired up: an unrecorded rename, not something to pass silently.
        main.update(status="failed", reason=f"no output of the final model {list(fin_out)} corresponds to an "
                                            f"output of the source model {list(src_out)}; map them with "
                                            f"validate.output_map or skip them with a reason (validate.skip)")
    engine = _engine(cfg, backend, plan_path, compute_capabilities, final_feeds, fin_run, fin_out, omap, tol_for,
                     engine_only=(plugins.engine_only, src_run))
    result["comparisons"].append(engine)
    if engine["status"] != "skipped":  # where a GPU runs the plan: at every profile corner too
        result["comparisons"] += [_engine(cfg, backend, plan_path, compute_capabilities, [feed], run, fin_out, omap,
                                          tol_for, label=label, engine_only=(plugins.engine_only, None))
                                  for label, feed, run in corner_runs]
    return _finish(result, where, log)


def _check_names(cfg, src_out, fin_out, src_tensors, locate):
    """Catch typos in output names the recipe mentions (source tensors inside the graph count too:
    a cut's outputs are compared against them). They are recipe errors, located at the key."""
    at = (lambda *path: f"{locate(('validate', *path))}: ") if locate else (lambda *path: "")
    known = list(dict.fromkeys(list(fin_out) + list(src_out)))
    for key in ("skip", "outputs", "output_map"):
        for name in cfg[key]:
            if name not in known and name not in src_tensors:
                raise RecipeError(f"{at(key, name)}validate.{key}.{name}: '{name}' is not an output of the source "
                                  f"or the final model {known}{suggest(name, known, cutoff=0.5)}")
    for final, source in cfg["output_map"].items():
        if source not in src_out and source not in src_tensors:
            raise RecipeError(f"{at('output_map', final)}validate.output_map.{final}: '{source}' is neither an output "
                              f"nor a tensor computed by the source model {list(src_out)}"
                              f"{suggest(source, list(src_out) + sorted(src_tensors), cutoff=0.5)}")


def _at_corner(corner, cfg, source_path, final_path, final_optimize, src_in, fin_in, contract, src_outputs,
               pairs, entries, tol_for, base_dir, locate, params, custom_ops=()):
    """source vs final at one profile corner (corners.py), on seeded random data."""
    from polygraphy.comparator import IterationResult, RunResults
    name = f"{SOURCE} vs {FINAL} at {corner.label}"
    if corner.problem:
        return {"name": name, "status": "inconclusive", "uncompared": True,
                "reason": f"cannot compare at this profile corner: {corner.problem}; narrow the profile, or "
                          f"validate at shapes the source model accepts"}, None
    data = keep_values(data_config(corner, cfg["data"], cfg["data"].get("seed", 1), contract), cfg["data"], contract)
    feeds, _ = make_source_feeds(data, src_in, contract, base_dir=base_dir, locate=locate, parameters=params)
    src_run = run_ort(source_path, SOURCE, feeds, src_outputs)
    check_reference_finite(src_run, cfg, model_io(source_path)[1], f"{name}: ")
    batch = next(iter(corner.source_shapes.values()))[0] if corner.source_shapes else 1
    outputs, unassembled = concat_outputs(list(src_run.values())[0], batch)
    joined = RunResults([(SOURCE, [IterationResult(outputs, runner_name=SOURCE)])])
    final_feed = apply_contract(concat_feeds(feeds), contract, fin_in)
    fin_run = run_ort(final_path, FINAL, [final_feed], optimize=final_optimize, custom_ops=custom_ops)
    if unassembled:  # those outputs are not compared here; the rest are
        pairs = {f: s for f, s in pairs.items() if s not in unassembled}
        entries = [dict(e, status="skipped", reason=unassembled[e["source_output"]])
                   if e.get("source_output") in unassembled and e["status"] == "pending" else e for e in entries]
    comp = compare_outputs(name, fin_run, joined, pairs, entries, tol_for, cfg)
    if not pairs and not unassembled and any(not (e.get("reason") or "").startswith("skipped by validate.skip")
                                             for e in comp["outputs"] if e["output"] in _run_outputs(fin_run)):
        # e.g. every output feeds the post-processing model: detections are compared at the main shape only
        comp.update(status="inconclusive", uncompared=True,
                    reason="no output could be compared at this profile corner (see each output)")
    if unassembled and pairs:  # the plan accepts this shape; these outputs are not proven there
        comp.update(uncompared=True, reason=f"output(s) {sorted(unassembled)} not compared at this corner: the "
                                            f"fixed-batch source cannot produce them at this batch")
    if unassembled and not pairs:
        comp.update(status="inconclusive", uncompared=True,
                    reason="cannot compare at this profile corner: no output of the fixed-batch source can be "
                           "assembled from single-batch runs (see each output); narrow the profile to the source's "
                           "batch, or export the source with a dynamic batch")
    comp["shapes"] = corner.final_shapes
    if corner.slices > 1:
        comp["note"] = (f"the source model has a fixed batch: it ran {corner.slices} times, outputs concatenated "
                        f"along axis 0")
    return comp, (final_feed, fin_run, joined, concat_feeds(feeds))


def _postprocess_at_corner(label, postprocess, final_model_path, fin_run, src_run, src_feed, tol_for, cfg,
                           precision, tolerances, omap):
    """final-ort + the post-processing model (`split_postprocess`, `nms: split`) against the source
    at one profile corner: element-wise, or detections matched by IoU, as at the main shape."""
    have = _run_outputs(src_run) | set(src_feed)
    if postprocess.get("settings"):  # the cut tensors the reference post-processing runs on
        missing = sorted(i for i, f in postprocess["inputs"].items() if (omap or {}).get(f, f) not in have
                         and i not in have)
    else:  # the source outputs compared against
        missing = sorted(set(postprocess["outputs"].values()) - have)
    if missing:  # e.g. a fixed-batch source whose outputs cannot be assembled at this batch
        return {"name": f"{SOURCE} vs {FINAL} + {POST} at {label}", "status": "inconclusive", "uncompared": True,
                "reason": f"the post-processing outputs cannot be compared at this profile corner: the source run "
                          f"there lacks {missing}"}
    if postprocess.get("kind") == "outputs":
        comp = _postprocessed(postprocess, final_model_path, fin_run, src_run, tol_for, cfg)
        comp["name"] = f"{comp['name']} at {label}"
        return comp
    dets = _detections(postprocess, final_model_path, fin_run, src_run, cfg, precision, tolerances, omap,
                       src_feeds=[src_feed])
    return {"name": f"detections (final + post-processing vs source NMS outputs) at {label}",
            "status": dets["status"], "reason": dets.get("reason"), "detections": dets}


def _run_outputs(run):
    """Output names of a one-runner RunResults' first iteration."""
    return set(list(run.values())[0][0].keys())


def _engine_only_inputs(postprocess, fin_run):
    """Why the post-processing cannot run on final-ort's outputs, or None: it reads tensors only the
    engine computes (after a plugin: plugin_cut.py), which ONNX Runtime's run of the final model lacks."""
    absent = sorted({f for f in postprocess["inputs"].values()} - _run_outputs(fin_run))
    if not absent:
        return None
    return (f"the post-processing model reads {absent}, computed only by the engine (after a plugin): its "
            f"outputs are compared only where a GPU runs the plan")


def _postprocessed(postprocess, final_model_path, fin_run, src_run, tol_for, cfg):
    """final-ort + post-processing (split_postprocess) against the source's outputs, element-wise."""
    from polygraphy.comparator import IterationResult, RunResults
    unrun = _engine_only_inputs(postprocess, fin_run)
    if unrun:
        return {"name": f"{SOURCE} vs {FINAL} + {POST}", "status": "inconclusive", "reason": unrun}
    pp_path = Path(postprocess["file"])
    pp_path = pp_path if pp_path.is_absolute() else Path(final_model_path).parent / pp_path
    cand = RunResults([(POST, [IterationResult(it, runner_name=POST) for it in
                               run_postprocess(pp_path, postprocess, fin_run)])])
    names = list(postprocess["outputs"].values())
    entries = [{"output": s, "source_output": s, "status": "pending", "reason": None} for s in names]
    return compare_outputs(f"{SOURCE} vs {FINAL} + {POST}", cand, src_run, {s: s for s in names}, entries,
                           tol_for, cfg)


def _detections(postprocess, final_model_path, fin_run, src_run, cfg, precision, tolerances, omap=None,
                src_feeds=None):
    """The post-processed detections of the final model against the source's NMS outputs (or, with
    changed NMS settings, against the post-processing model run on the source's cut tensors and,
    for cut tensors that are graph inputs, on `src_feeds`: the source feeds, one per iteration)."""
    omap = omap or {}
    unrun = _engine_only_inputs(postprocess, fin_run)
    if unrun:
        return {"status": "inconclusive", "reason": unrun}
    pp_path = Path(postprocess["file"])
    pp_path = pp_path if pp_path.is_absolute() else Path(final_model_path).parent / pp_path
    cand = run_postprocess(pp_path, postprocess, fin_run)
    ref = list(src_run.values())[0]
    if postprocess.get("settings"):
        # `nms: split` changed NMS settings: the source's own outputs hold the old settings' detections.
        # The reference is the post-processing model on the source's tensors at the cut (exposed as
        # inner outputs), so the engine is what is compared, under the new settings on both sides.
        iterations = list(src_run.values())[0]
        values = [{**feed, **dict(it.items())} for feed, it in zip(src_feeds or [{}] * len(iterations), iterations)]
        known = values[0].keys() if values else ()
        # a cut tensor under its source name (renamed by passes: output_map), else under its own: a
        # graph input the post-processing also reads is a source feed (nms_postprocess passthrough)
        on_source = {**postprocess, "inputs": {i: omap.get(f, f) if omap.get(f, f) in known else i
                                               for i, f in postprocess["inputs"].items()}}
        ref = run_postprocess(pp_path, on_source, {SOURCE: values})
    missing = [s for s in postprocess["outputs"].values() if s not in ref[0].keys()]
    if missing:
        return {"status": "failed", "reason": f"the source model has no output(s) {missing} to compare the "
                                              f"post-processing outputs with"}
    return match_detections(ref, cand, postprocess, cfg)


def _engine(cfg, backend, plan_path, ccs, final_feeds, fin_run, fin_out, omap, tol_for, label=None, engine_only=None):
    """engine vs final-ort where a GPU runs the plan. `engine_only`: (plugin_cut's engine_only outputs, the source
    run): those outputs have no final-ort values, so the engine's are compared with the source's (engine vs
    source-ort), or skipped where no source run is given (profile corners)."""
    name = f"{ENGINE} vs {FINAL}" + (f" at {label}" if label else "")
    only, src_run = engine_only or ({}, None)
    skipped = lambda why: {"name": name, "status": "skipped", "reason": why}  # noqa: E731
    if not cfg["engine"]:
        return skipped("validate.engine is false")
    from trtpipe.backend import has_runtime_gpu, resolve_backend
    try:
        backend = resolve_backend(backend or "auto") if backend is None or isinstance(backend, str) else backend
    except BuildError as err:
        return skipped(f"no TensorRT runtime: {err}")
    ok, device = has_runtime_gpu(backend, ccs)
    if not ok:
        return skipped(device)
    if not plan_path or not Path(plan_path).is_file():
        return skipped("no plan to run (validation ran before the build)")
    try:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        with quiet_polygraphy():
            run = Comparator.run([TrtRunner(EngineFromBytes(BytesFromPath(str(plan_path))), name=ENGINE)],
                                 data_loader=final_feeds)
    except Exception as err:
        return {"name": name, "status": "failed", "reason": f"the plan could not run on {device}: "
                                                            f"{type(err).__name__}: {err}"}
    # Same outputs on both sides; only the recipe's skips apply.
    entries = [{"output": f, "source_output": omap.get(f, f), "status": "pending", "reason": None} for f in fin_out]
    for e in entries:
        why = skip_reason(cfg, e["output"], e["source_output"])
        if why:
            e.update(status="skipped", reason=f"skipped by validate.skip: {why}")
    pairs = {e["output"]: e["output"] for e in entries if e["status"] == "pending" and e["output"] not in only}
    out = compare_outputs(name, run, fin_run, pairs, [e for e in entries if e["output"] not in only],
                          lambda f, s=None: tol_for(f, omap.get(f, f)), cfg, check=[run])
    theirs = [dict(e, engine_checked=True) for e in entries if e["output"] in only and e["status"] == "pending"]
    if theirs and src_run is not None:  # plugin outputs: the engine against the source itself
        vs_source = compare_outputs(f"{ENGINE} vs {SOURCE}", run, src_run, {e["output"]: e["source_output"]
                                    for e in theirs}, theirs, tol_for, cfg, check=[run])
        out["outputs"] += vs_source["outputs"]
        out["status"], out["reason"] = informative.comparison_status(out["outputs"])
    elif theirs:
        out["outputs"] += [dict(e, status="skipped", engine_checked=False, reason="engine only: compared with the "
                                "source at the main shape only") for e in theirs]
    out["device"] = device
    return out


def _finish(result, where, log):
    """Overall status: failed (anything failed), else inconclusive (informative.doubts: nothing
    informative was compared, or the data missed a declared input range), else passed; skipped when
    nothing ran. Inconclusive raises too when validate.require_informative is set."""
    failed = [c for c in result["comparisons"] if c["status"] == "failed"]
    dets = result.get("detections")
    if dets:
        informative.judge_detections(dets)
    lines = []
    for comp in failed:
        bad = [e for e in comp.get("outputs", []) if e["status"] == "failed"]
        lines += ([f"{comp['name']}: output '{e['output']}': {e['reason']}" for e in bad]
                  or [f"{comp['name']}: {comp['reason']}"])
    if dets and dets["status"] == "failed":
        lines.append(f"detections (final + post-processing vs source NMS outputs): {dets['reason']}")
    ran = [c for c in result["comparisons"] if c["status"] != "skipped"] + ([dets] if dets else [])
    doubts = [] if lines or not ran else informative.doubts(result)
    result["status"] = "failed" if lines else ("inconclusive" if doubts else "passed") if ran else "skipped"
    result["reason"] = ("; ".join(lines) or "; ".join(doubts) or
                        (informative.partly_uninformative(result) if ran else "nothing could be compared"))
    for comp in result["comparisons"]:
        log(f"validate: {comp['name']}: {comp['status']}" + (f" ({comp['reason']})" if comp.get("reason") else ""))
    if lines:
        err = ValidationError(f"{where}validation failed:\n  " + "\n  ".join(lines),
                              hint="if this difference is expected (e.g. lower precision), set validate.atol/rtol "
                                   "or validate.outputs.<name>.atol/rtol, or skip the output with a reason under "
                                   "validate.skip")
        err.result = result
        raise err
    if doubts and informative.required(result):
        err = ValidationError(f"{where}validation inconclusive (validate.require_informative is true):\n  "
                              + "\n  ".join(doubts),
                              hint="feed data that makes the outputs vary (real images or an .npz under "
                                   "validate.data, wider validate.data.inputs.<name>.range), skip outputs that are "
                                   "constant by design with a reason (validate.skip), or set "
                                   "validate.require_informative: false")
        err.result = result
        raise err
    return result

