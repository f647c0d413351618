"""The main job: recipe -> source -> passes -> validate -> build -> publish -> report.

Each stage lives in its own module; this file only strings them together, times them, and makes
sure nothing is published unless every stage succeeded.
"""

import time
from pathlib import Path

import onnx

from . import report as report_mod
from .backend import has_runtime_gpu, resolve_backend
from .build import build_plan
from .checks import precheck_passes, raise_first
from .errors import ValidationError
from .publish import Staging
from .recipe import load_recipe
from .registry import PassContext
from .source import load_source
from .transform import initial_input_contract, op_histogram, run_passes
from .validate import print_table, resolve_config, validate_models


class RunOptions:
    def __init__(self, validate=True, debug=False, output_dir=None):
        self.validate = validate
        self.debug = debug
        self.output_dir = output_dir


def quiet_libraries(verbose):
    """ONNX Runtime and Polygraphy log warnings meant for their own developers; keep errors."""
    import onnxruntime
    from polygraphy.logger import G_LOGGER
    onnxruntime.set_default_logger_severity(4)  # failures surface as exceptions anyway
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR


def run_recipe(recipe_path, ui, options=None):
    options = options or RunOptions()
    quiet_libraries(ui.verbose)
    timings = {}
    t0 = time.perf_counter()

    ui.stage("recipe", str(recipe_path))
    recipe = load_recipe(recipe_path)
    backend = resolve_backend(recipe.data["build"]["backend"])
    problems = precheck_passes(recipe, PassContext(name=recipe.name, backend=backend.name,
                                                   backend_version=backend.version_tuple, recipe_dir=recipe.dir,
                                                   plugin_libraries=recipe.data["build"]["plugins"]))
    raise_first(problems)  # refuse before minutes of conversion, e.g. a plugin the backend lacks
    timings["recipe"] = ui.done(f"{recipe.name}: {len(recipe.enabled_passes())} pass(es), "
                                f"backend {backend.name} {backend.version}")

    out = recipe.data["output"]
    if options.output_dir:
        out["dir"] = str(Path(options.output_dir).resolve())
    with Staging(out["dir"], where=f"{recipe.locate(('output', 'dir'))}: ") as staging:
        ui.stage("source", _source_label(recipe.data["source"]))
        source = load_source(recipe.data["source"], locate=recipe.locate, log=ui.detail)
        timings["source"] = ui.done(f"{source.kind}: {len(source.model.graph.node)} nodes, opset {source.opset}")
        source_path = staging.path(f"{recipe.name}.source.onnx")
        _save_onnx(source.model, source_path)

        ui.stage("passes")
        ctx = PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                          recipe_dir=recipe.dir, stage_dir=staging.dir, logger=ui.detail,
                          plugin_libraries=recipe.data["build"]["plugins"],
                          input_contract=initial_input_contract(source.model))
        model, pass_stats = run_passes(source.model, recipe, ctx, progress=ui)
        timings["passes"] = ui.done(f"{len(source.model.graph.node)} -> {len(model.graph.node)} nodes")
        model, precision = _precision(recipe, model, source_path, ctx, backend, ui, timings)
        final_path = staging.path(out["onnx"])
        _save_onnx(model, final_path)
        ort_twin = _ort_twin(model, precision, staging)

        # Validation runs before the build so a wrong graph fails fast; where a GPU can run the
        # plan it runs after the build instead, to include the engine-vs-ORT comparison.
        gpu_ok, _ = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
        validate = lambda plan=None: _validate(recipe, options, ui, source_path, final_path, ctx,  # noqa: E731
                                               backend, plan, timings, ort_twin)
        validation = None if gpu_ok else validate()

        ui.stage("build", f"{backend.name} {backend.version}")
        result = build_plan(str(final_path), recipe.data["build"], backend,
                            locate=recipe.locate, progress=ui, log=ui.detail)
        plan_path = staging.path(out["plan"])
        plan_path.write_bytes(result.plan)
        timings["build"] = ui.done(f"plan {len(result.plan) / 2**20:.2f} MiB")
        if validation is None:
            validation = validate(plan_path)

        artifacts = [source_path.name, out["onnx"], out["plan"]] + sorted(_stage_artifacts(ctx, staging))
        timings["total"] = time.perf_counter() - t0
        rep = report_mod.make_report(
            recipe=recipe, backend=backend, source=source, pass_stats=pass_stats, build=result,
            validation=validation, timings=timings, ops_final=op_histogram(model),
            artifacts={name: staging.path(name) for name in artifacts}, options=options, precision=precision)
        report_mod.write(rep, staging.path("report.json"), staging.path("report.md"))
        published = staging.publish(artifacts + ["report.json", "report.md"])
    ui.table(report_mod.summary_table(rep, published))
    return rep


def _precision(recipe, model, source_path, ctx, backend, ui, timings):
    """Realize `precision` in the graph (TensorRT 11 / RTX are strongly typed: no builder flags)."""
    from .precision import apply_precision, normalize
    cfg = normalize(recipe.data["precision"], recipe.locate)
    ui.stage("precision", cfg["mode"])
    feeds = make_feeds = None
    if cfg["mode"] != "fp32":
        make_feeds = lambda data_cfg: _final_feeds(recipe, source_path, ctx, model, data_cfg)  # noqa: E731
        feeds = make_feeds(resolve_config(recipe.data.get("validate"))["data"])
    ccs = recipe.data["build"]["compute_capabilities"] if backend.name == "tensorrt_rtx" else []
    model, stats = apply_precision(model, recipe.data["precision"], compute_capabilities=ccs, data_feeds=feeds,
                                   locate=recipe.locate, log=ui.detail, recipe_dir=recipe.dir, make_feeds=make_feeds)
    for name, dtype in (stats.get("io_types_changed") or {}).items():
        # keep_io_types: false changed a graph input's type: validation data must follow
        if name in ctx.input_contract:
            ctx.input_contract[name]["steps"].append({"op": "cast", "to": dtype})
    kept = len(stats.get("kept_fp32") or {})
    timings["precision"] = ui.done(f"{cfg['mode']}" + (f", {kept} node(s) kept in fp32" if cfg["mode"] != "fp32" else ""))
    return model, stats


def _final_feeds(recipe, source_path, ctx, final_model, data_cfg):
    """Feeds for the final model's inputs derived from source-side data through the input contract."""
    import tempfile
    from .validate_data import apply_contract, make_source_feeds, model_io
    src_in, _ = model_io(str(source_path))
    feeds, _ = make_source_feeds(data_cfg, src_in, ctx.input_contract, base_dir=recipe.dir, locate=recipe.locate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "final.onnx"
        onnx.save_model(final_model, str(path))
        fin_in, _ = model_io(str(path))
    return [apply_contract(f, ctx.input_contract, fin_in) for f in feeds]


def _ort_twin(model, precision, staging):
    """What ONNX Runtime runs for validation when it cannot run the final model as it is."""
    mode = precision["mode"]
    if mode in ("fp16", "bf16"):
        from .precision import emulate_in_fp32
        path = staging.path(".validate-emulated.onnx")  # not published
        _save_onnx(emulate_in_fp32(model), path)
        return {"path": path, "optimize": True,
                "note": f"{mode} graph run in ONNX Runtime with {mode} rounding emulated in fp32"}
    if mode == "fp8":
        return {"path": None, "optimize": False, "note": "fp8 Q/DQ run with ONNX Runtime optimizations off"}
    return None


def _validate(recipe, options, ui, source_path, final_path, ctx, backend, plan_path, timings, ort_twin):
    if not options.validate:
        ui.stage("validate")
        timings["validate"] = ui.done("skipped (--no-validate)")
        return {"status": "skipped", "reason": "--no-validate given", "comparisons": []}
    ui.stage("validate", "Polygraphy: ONNX Runtime on source vs final" + (", engine vs ORT" if plan_path else ""))
    try:
        result = validate_models(
            str(source_path), str(final_path), recipe.data.get("validate"), precision=recipe.data["precision"],
            input_contract=ctx.input_contract, output_map=ctx.output_map, postprocess=ctx.postprocess,
            plan_path=str(plan_path) if plan_path else None, backend=backend, locate=recipe.locate,
            log=ui.detail, base_dir=recipe.dir, compute_capabilities=recipe.data["build"]["compute_capabilities"],
            final_ort_path=str(ort_twin["path"]) if ort_twin and ort_twin["path"] else None,
            final_ort_optimize=ort_twin["optimize"] if ort_twin else True)
    except ValidationError as err:
        if getattr(err, "result", None):
            print_table(err.result, ui.out)
        raise
    if ort_twin:
        result["final_ort_note"] = ort_twin["note"]
    if not ui.quiet:
        print_table(result, ui.out)
    timings["validate"] = ui.done(result["status"])
    return result


def _source_label(src):
    return f"ONNX {src['onnx']}" if "onnx" in src else f"SavedModel {src['saved_model']} (tf2onnx, opset {src['opset']})"


def _save_onnx(model, path):
    large = model.ByteSize() >= 2**31 - 1
    onnx.save_model(model, str(path), save_as_external_data=large,
                    location=Path(path).name + ".data" if large else None)


def _stage_artifacts(ctx, staging):
    """Files passes asked to publish (e.g. the NMS post-processing model), relative to staging."""
    names = []
    for name, path in ctx.artifacts.items():
        path = Path(path)
        if path.parent != staging.dir:
            raise RuntimeError(f"pass artifact {name} must be written inside the stage directory")
        names.append(path.name)
    return names
