"""The main job: recipe -> source -> passes -> precision -> validate -> build -> publish -> report.

Each stage's work lives in its own module (source.py, transform.py, precision.py, validate.py,
build.py) and each cached stage around it in `<stage>_stage.py`: look the stage's key up in the
stage cache (cache.py), copy a cached output instead of running, or run it and commit an entry. A
model is loaded into memory only when a later stage must actually run on it. This file strings
the stages together, times them, and makes sure nothing is published unless every stage
succeeded. Before any stage, the files the recipe names are checked (run_files.py: inputs are
regular files, no output is an input). One run per recipe at a time (a lock in the cache
directory) and one run per output directory (its own lock and owner, output_dir.py); artifacts
are staged and published as one set (publish.py). A write that does not fit (disk full, quota,
file size limit) ends the run as an OutputError naming the file.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text

from trtpipe.backend import has_runtime_gpu, resolve_backend
from trtpipe.cache.files import MODEL, copy_model
from trtpipe.cache.keys import Keys
from trtpipe.cache.lock import own_directory
from trtpipe.cache.store import Cache, CorruptEntry, pause, resolve_dir
from trtpipe.deploy.facts import deploy_section
from trtpipe.errors import PassError, PipelineError
from trtpipe.fileguard import disk_full_error, is_disk_full, writing
from trtpipe.recipe.load import load_recipe
from trtpipe.registry import PassContext
from trtpipe.review.check import precheck_passes, raise_first
from trtpipe.stages import report as report_mod
from trtpipe.stages import report_pictures_cached
from trtpipe.stages.build import cached as build_stage
from trtpipe.stages.output_dir import OutputDir
from trtpipe.stages.passes import cached as passes_stage
from trtpipe.stages.precision import cached as precision_stage
from trtpipe.stages.publish import Staging, name_data_by_content
from trtpipe.stages.run_files import input_problems, output_problems
from trtpipe.stages.run_state import RunOptions, RunState, forced_stages
from trtpipe.stages.source import cached as source_stage
from trtpipe.stages.validate import cached as validate_stage

if TYPE_CHECKING:
    from trtpipe.console import UI

__all__ = ["RunOptions", "run_recipe"]  # RunOptions lives in run_state (the stages read it there)


def run_recipe(recipe_path: str | Path, ui: UI, options: RunOptions | None = None) -> dict[str, Any]:
    """Run a recipe end to end: recipe -> source -> passes -> precision -> validate -> build ->
    report, each stage served from the stage cache when its key matches, and publish the artifacts
    into `output.dir` only if every stage succeeded (staged, then switched in as one set, publish.py).
    One run per recipe and one per output directory at a time: a second run waits for the first
    one's lock. An output directory holding another recipe's artifacts is refused unless
    --take-over (or --force).

    Args:
        recipe_path: the recipe YAML file.
        ui: progress and messages (stage lines, warnings, `-v` details, the final summary table).
        options: command-line options (validation on/off, output and cache directories, --force,
            --from); default RunOptions().

    Returns:
        The report (what report.json holds, schemas/report.schema.json): resolved recipe, tool
        versions, per-pass stats, precision counts, validation table, build summary (durations in
        seconds, memory in bytes), artifacts' sizes in bytes and sha256, cache status per stage.

    Raises:
        RecipeError: the recipe is unreadable or invalid, including what only shows later: precision
            options that match no node or unreadable calibration data, build profiles or compute
            capabilities that do not fit the parsed network (BuildConfigError, also a BuildError).
        UsageError: `--from` names no stage of the recipe (exit code 2; defined in run_state).
        SourceError: the source model is missing, corrupt or not fully converted.
        PassError: a pass failed or left an invalid graph, a pass precheck or the precision
            rewrite failed, a pass registered an artifact outside its stage directory, or a
            third-party pass failed to load.
        ValidationError: outputs disagree beyond the recipe's tolerances, or the validation data
            cannot be read or fed to the models (the fp16 overflow guard reads it too).
        BuildError: the backend is unknown or not installed, lacks a plugin a pass needs, or the
            parser/builder failed.
        OutputError: the cache directory, output directory or timing cache is not writable; an
            output would overwrite a file the run reads; the output directory holds another
            recipe's artifacts (without --take-over or --force); a write did not fit (disk full,
            quota, file size limit; the message names the file and the space needed); or
            publishing failed.
        CorruptEntry: the same cache entry turned out corrupt three runs in a row (a bug or a
            failing disk; not a PipelineError).
    """
    options = options or RunOptions()
    for attempt in range(3):
        try:
            return _run(recipe_path, ui, options)
        except CorruptEntry as err:  # found while loading a cached model: already discarded
            if attempt == 2:
                raise
            ui.warn(f"{err}; starting the run over without it")


def _run(recipe_path, ui, options):
    t0 = time.perf_counter()
    ui.stage("recipe", str(recipe_path))
    recipe = load_recipe(recipe_path)
    if options.compute_capabilities:  # --compute-capabilities: what build-all's targets override
        recipe.data["build"]["compute_capabilities"] = list(options.compute_capabilities)
    out = recipe.data["output"]
    if options.output_dir:
        out["dir"] = str(Path(options.output_dir).resolve())
    # What the run reads must be regular files (a FIFO would hang it) and nothing it writes may be
    # one of them: both refused here, before any stage (stages/run_files.py).
    raise_first(input_problems(recipe))
    raise_first(output_problems(recipe, out["dir"], via_option=bool(options.output_dir)))
    backend = resolve_backend(recipe.data["build"]["backend"])
    forced = forced_stages(recipe, options.force, options.from_stage)
    root, _ = resolve_dir(options.cache_dir)
    cache = Cache(root, warn=ui.warn).open()
    cache.replace_existing = bool(forced)
    state = RunState(recipe, backend, ui, options, cache, Keys(recipe, backend, cache.hasher), forced)
    # The passes' prechecks refuse what cannot build (e.g. a plugin the backend lacks) before
    # minutes of conversion and before output.dir is touched. They import every pass module
    # (onnx, numpy, graphsurgeon), so when the source stage is cached they wait for the first
    # stage with work to do: a fully cached run repeats what they once let through (issue 13).
    state.before_work = lambda: raise_first(precheck_passes(recipe, PassContext(
        name=recipe.name, backend=backend.name, backend_version=backend.version_tuple, recipe_dir=recipe.dir,
        plugin_libraries=recipe.data["build"]["plugins"], warner=ui.warn)))
    if not cache.has_local("source", state.keys.source()) or "source" in forced:
        check, state.before_work = state.before_work, None
        check()
    state.timings["recipe"] = ui.done(f"{recipe.name}: {len(recipe.enabled_passes())} pass(es), "
                                      f"backend {backend.name} {backend.version}")

    where = f"-o {out['dir']}: " if options.output_dir else f"{recipe.locate(('output', 'dir'))}: "
    lock = cache.recipe_lock(recipe.path, on_wait=lambda pid: ui.info(
        f"waiting for another run of {recipe.name} (pid {pid or '?'}) to finish"))
    out_dir = OutputDir(out["dir"], recipe.path, recipe.name, force=options.force or options.take_over, where=where,
                        on_wait=lambda pid: ui.info(Text(f"waiting for another run writing into {out['dir']} "
                                                         f"(pid {pid or '?'}) to finish")))
    with lock, cache.use_lock(), out_dir, Staging(out["dir"], where=where) as staging:
        owner = own_directory(staging.dir)
        try:
            rep, published = _stages(state, staging, out, t0, out_dir)
        except PipelineError as err:
            out_dir.keep_failed(err, staging.dir, out["onnx"])  # the rejected graph outlives the staging dir
            raise
        except OSError as err:  # a write that did not fit, wherever it happened (a stage, the cache)
            if is_disk_full(err):
                raise disk_full_error(err, *_failed_write(err, staging, out["dir"])) from err
            raise
        finally:
            owner.release()
            if state.build_worker is not None:  # started for a build that did not happen
                state.build_worker.stop()
    ui.table(report_mod.summary_table(rep, published))
    return rep


def _backend_imports(state):
    """Between stages: the build process imports the backend while they run; if it could not, say
    so now rather than when the build starts."""
    if state.build_worker is not None:
        state.build_worker.raise_if_failed()


def _stages(state, staging, out, t0, out_dir):
    recipe, backend, ui = state.recipe, state.backend, state.ui
    source_path = staging.path(f"{recipe.name}.source.onnx")
    source, cur = source_stage.run(state, source_path)
    _backend_imports(state)
    ctx = PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                      recipe_dir=recipe.dir, stage_dir=staging.dir, logger=ui.detail, warner=ui.warn,
                      plugin_libraries=recipe.data["build"]["plugins"],
                      input_contract=source.input_contract)
    cur, pass_stats = passes_stage.run(state, cur, ctx, staging, source.nodes)
    _backend_imports(state)
    final, precision_stats, ops_final = precision_stage.run(state, cur, source, source_path, ctx)
    _backend_imports(state)
    final_path = staging.path(out["onnx"])
    with writing(Path(out["dir"]) / out["onnx"], _model_bytes(final.entry.path(MODEL)), "the final ONNX model"):
        copy_model(final.entry.path(MODEL), final_path)

    # Validation runs before the build so a wrong graph fails fast; where a GPU can run the
    # plan it runs after the build instead, to include the engine-vs-ORT comparison.
    gpu_ok, _ = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
    validate = functools.partial(validate_stage.run, state, source, final, source_path, final_path, ctx, staging)
    validation = None if gpu_ok else validate()
    plan_path = staging.path(out["plan"])
    result, plan_sha = build_stage.run(state, final, final_path, plan_path)
    if validation is None:
        validation = validate(plan_sha, plan_path)

    extra = sorted(_stage_artifacts(ctx, staging))
    # what predict/bench/export read: input contract, labels, engine facts, export command lines
    deploy, deploy_files = deploy_section(recipe=recipe, backend=backend, ctx=ctx, staging=staging,
                                          plan_path=plan_path, final_path=final_path, build_result=result)
    # the pictures report.md links (report_pictures.py); one that cannot be made is said in the report
    pictures = report_pictures_cached.run(state, source_path, final_path, ctx, staging, validation)
    picture_files = sorted(pictures["files"].values())
    raise_first(output_problems(recipe, out["dir"], via_option=bool(state.options.output_dir),
                                extra=[(name, f"artifact '{name}' of a pass") for name in extra]
                                + [(name, f"deployment file '{name}'") for name in deploy_files]
                                + [(name, f"report picture '{name}'") for name in picture_files]))
    artifacts = [source_path.name, out["onnx"], out["plan"]] + extra + deploy_files + picture_files
    # external weights published under content-named files (publish.py: onnx refuses linked ones)
    artifacts += [n for n in (name_data_by_content(staging.path(m)) for m in (source_path.name, out["onnx"])) if n]
    state.timings["total"] = time.perf_counter() - t0
    rep = report_mod.make_report(
        recipe=recipe, backend=backend, source=source, pass_stats=pass_stats, build=result,
        validation=validation, timings=state.timings, ops_final=ops_final,
        artifacts={name: staging.path(name) for name in artifacts}, options=state.options,
        precision=precision_stats, pictures=pictures)
    rep["cache"] = state.cache_report()
    rep["deploy"] = deploy
    with writing(Path(out["dir"]) / "report.json", None, "the report"):
        report_mod.write(rep, staging.path("report.json"), staging.path("report.md"))
    pause("publish")
    return rep, staging.publish(artifacts + ["report.json", "report.md"], marker=out_dir.marker)


def _model_bytes(path):
    from trtpipe.cache.files import model_files
    return sum(p.stat().st_size for p in model_files(path))


def _failed_write(err, staging, out_dir):
    """(the file a write that did not fit was for, bytes it needed or None): its public name when
    it was being staged; a copy (shutil.copyfile names source and destination) needed the source's size."""
    path = getattr(err, "filename2", None) or getattr(err, "filename", None)
    need = None
    if getattr(err, "filename2", None) and err.filename:
        try:
            need = Path(err.filename).stat().st_size
        except (OSError, TypeError, ValueError):
            need = None
    if path and staging.dir and Path(path).parent == staging.dir:
        return Path(out_dir) / Path(path).name, need
    return path or staging.dir, need


def _stage_artifacts(ctx, staging):
    """Files passes asked to publish (e.g. the NMS post-processing model), relative to staging."""
    names = []
    for name, path in ctx.artifacts.items():
        path = Path(path)
        if path.parent != staging.dir:
            raise PassError(f"a pass registered artifact '{name}' at {path}, outside the stage directory "
                            f"{staging.dir}; passes must write artifacts into ctx.stage_dir")
        names.append(path.name)
    return names


def bisect_recipe(recipe_path: str | Path, ui: UI, options: RunOptions | None = None) -> dict[str, Any]:
    """`python pipeline.py bisect RECIPE`: run the recipe's source and passes through the stage cache
    (cached entries are reused, missing ones computed and committed, nothing is published), then
    compare the model after each pass with the source model on the validation data
    (stages/validate/bisect.py) and print one row per pass and the first diverging pass.

    Args:
        recipe_path: the recipe YAML file.
        ui: progress and messages; the per-pass table is printed even with --quiet.
        options: the cache directory (`cache_dir`) and --force; default RunOptions().

    Returns:
        The bisect result (bisect.bisect_passes) when no pass diverges.

    Raises:
        ValidationError: a pass's outputs diverge from the source's beyond the validation tolerances
            (the message names the first such pass, its recipe line and the nodes it changed), or
            the validation data cannot be made or fed to the source model.
        RecipeError, UsageError, SourceError, PassError, BuildError, OutputError: as run_recipe,
            for the source and passes stages.
        CorruptEntry: the same cache entry turned out corrupt three times in a row.
    """
    from trtpipe.errors import ValidationError
    from trtpipe.stages.validate import bisect
    options = options or RunOptions()
    for attempt in range(3):
        try:
            result = _bisect(recipe_path, ui, options, bisect)
            break
        except CorruptEntry as err:  # found while loading a cached model: already discarded
            if attempt == 2:
                raise
            ui.warn(f"{err}; starting over without it")
    bisect.print_bisect(result, ui.out)
    if result["status"] == "diverged":
        raise ValidationError(result["summary"], hint="fix the pass, or remove it from the recipe; "
                                                      "`python pipeline.py passes NAME` documents it")
    return result


def _bisect(recipe_path, ui, options, bisect):
    import tempfile
    ui.stage("recipe", str(recipe_path))
    recipe = load_recipe(recipe_path)
    raise_first(input_problems(recipe))
    backend = resolve_backend(recipe.data["build"]["backend"])
    raise_first(precheck_passes(recipe, PassContext(
        name=recipe.name, backend=backend.name, backend_version=backend.version_tuple, recipe_dir=recipe.dir,
        plugin_libraries=recipe.data["build"]["plugins"])))
    forced = forced_stages(recipe, options.force, None)
    root, _ = resolve_dir(options.cache_dir)
    cache = Cache(root, warn=ui.warn).open()
    cache.replace_existing = bool(forced)
    state = RunState(recipe, backend, ui, options, cache, Keys(recipe, backend, cache.hasher), forced)
    state.will_build = False
    ui.done(f"{recipe.name}: {len(recipe.enabled_passes())} pass(es)")
    lock = cache.recipe_lock(recipe.path, on_wait=lambda pid: ui.info(
        f"waiting for another run of {recipe.name} (pid {pid or '?'}) to finish"))
    with lock, cache.use_lock(), tempfile.TemporaryDirectory(prefix="trtpipe-bisect-") as tmp, \
            Staging(tmp) as staging:  # pass artifacts land here and are thrown away
        source_path = staging.path(f"{recipe.name}.source.onnx")
        source, cur = source_stage.run(state, source_path)
        ctx = PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                          recipe_dir=recipe.dir, stage_dir=staging.dir, logger=ui.detail, warner=ui.warn,
                          plugin_libraries=recipe.data["build"]["plugins"], input_contract=source.input_contract)
        passes_stage.run(state, cur, ctx, staging, source.nodes)
        ui.stage("bisect", "ONNX Runtime on each pass's model vs the source model")
        state.quiet()
        result = bisect.bisect_passes(
            source_path, bisect.pass_models(recipe, state.pass_models), recipe.data["validate"],
            precision=recipe.data["precision"], source_sha=source.sha, data_contract=ctx.input_contract,
            base_dir=recipe.dir, locate=recipe.locate, log=ui.detail)
        ui.done(result["status"])
    return result
