"""The main job: recipe -> source -> passes -> precision -> validate -> build -> publish -> report.

Each stage lives in its own module; this file strings them together, times them, and makes sure
nothing is published unless every stage succeeded. Every stage output goes through the stage
cache (cache.py): a stage whose key is cached is not run, its output is copied from the cache,
and a model is loaded into memory only when a later stage must actually run on it. One run per
recipe at a time (a lock in the cache directory); artifacts are staged and renamed into place.
"""

import shutil
import time
import types
from pathlib import Path

from . import cache as cache_mod
from . import report as report_mod
from .backend import has_runtime_gpu, resolve_backend
from .checks import precheck_passes, raise_first
from .errors import EXIT_USAGE, PipelineError, ValidationError
from .lock import is_abandoned, own_directory
from .publish import Staging
from .recipe import load_recipe
from .registry import PassContext


class UsageError(PipelineError):
    exit_code = EXIT_USAGE


class RunOptions:
    def __init__(self, validate=True, debug=False, output_dir=None, cache_dir=None, force=False, from_stage=None):
        self.validate = validate
        self.debug = debug
        self.output_dir = output_dir
        self.cache_dir = cache_dir      # None: $TRTPIPE_CACHE_DIR, else the XDG cache directory
        self.force = force              # re-run every stage (results still refresh the cache)
        self.from_stage = from_stage    # re-run this stage and the ones after it


def quiet_libraries(verbose):
    """ONNX Runtime and Polygraphy log warnings meant for their own developers; keep errors."""
    import onnxruntime
    from polygraphy.logger import G_LOGGER
    onnxruntime.set_default_logger_severity(4)  # failures surface as exceptions anyway
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR


def run_recipe(recipe_path, ui, options=None):
    options = options or RunOptions()
    for attempt in range(3):
        try:
            return _Run(recipe_path, ui, options).run()
        except cache_mod.CorruptEntry as err:  # found while loading a cached model: already discarded
            if attempt == 2:
                raise
            ui.warn(f"{err}; starting the run over without it")


class _ModelRef:
    """A stage's output model: its sha256, the cache entry holding it, and the ModelProto once a
    later stage needs it in memory (cached runs never load it)."""

    def __init__(self, sha, entry, model=None):
        self.sha, self.entry, self.model = sha, entry, model

    def load(self):
        if self.model is None:
            import onnx
            self.entry.verify(self.entry.model_files())
            self.model = onnx.load(str(self.entry.path(cache_mod.MODEL)))  # external data from the entry
        return self.model


class _OnePass:
    """The slice of a Recipe that transform.run_passes reads, for one pass."""

    def __init__(self, recipe, index, item):
        self._item, self.locate = (index, item), recipe.locate

    def enabled_passes(self):
        return [self._item]


class _Run:
    def __init__(self, recipe_path, ui, options):
        self.recipe_path, self.ui, self.options = recipe_path, ui, options
        self.timings, self.stages = {}, {}
        self._quieted = False

    # -------------------------------------------------------------------------------- the run
    def run(self):
        ui, options = self.ui, self.options
        t0 = time.perf_counter()
        ui.stage("recipe", str(self.recipe_path))
        recipe = self.recipe = load_recipe(self.recipe_path)
        backend = self.backend = resolve_backend(recipe.data["build"]["backend"])
        problems = precheck_passes(recipe, PassContext(name=recipe.name, backend=backend.name,
                                                       backend_version=backend.version_tuple, recipe_dir=recipe.dir,
                                                       plugin_libraries=recipe.data["build"]["plugins"]))
        raise_first(problems)  # refuse before minutes of conversion, e.g. a plugin the backend lacks
        self.forced = self._forced()
        root, _ = cache_mod.resolve_dir(options.cache_dir)
        cache = self.cache = cache_mod.Cache(root, warn=ui.warn).open()
        cache.replace_existing = bool(self.forced)
        self.keys = cache_mod.Keys(recipe, backend, cache.hasher)
        self.timings["recipe"] = ui.done(f"{recipe.name}: {len(recipe.enabled_passes())} pass(es), "
                                         f"backend {backend.name} {backend.version}")

        out = recipe.data["output"]
        if options.output_dir:
            out["dir"] = str(Path(options.output_dir).resolve())
        lock = cache.recipe_lock(recipe.path, on_wait=lambda pid: ui.info(
            f"waiting for another run of {recipe.name} (pid {pid or '?'}) to finish"))
        with lock, cache.use_lock(), Staging(out["dir"], where=f"{recipe.locate(('output', 'dir'))}: ") as staging:
            owner = own_directory(staging.dir)
            try:
                _remove_abandoned_staging(staging)
                rep, published = self._stages(staging, out, t0)
            finally:
                owner.release()
        ui.table(report_mod.summary_table(rep, published))
        return rep

    def _stages(self, staging, out, t0):
        recipe, backend, ui = self.recipe, self.backend, self.ui
        source_path = staging.path(f"{recipe.name}.source.onnx")
        source, cur = self._source(source_path)
        ctx = PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                          recipe_dir=recipe.dir, stage_dir=staging.dir, logger=ui.detail,
                          plugin_libraries=recipe.data["build"]["plugins"],
                          input_contract=source.input_contract)
        cur, pass_stats = self._passes(cur, ctx, staging, source)
        final, precision, ops_final = self._precision(cur, source, source_path, ctx)
        final_path = staging.path(out["onnx"])
        cache_mod.copy_model(final.entry.path(cache_mod.MODEL), final_path)

        # Validation runs before the build so a wrong graph fails fast; where a GPU can run the
        # plan it runs after the build instead, to include the engine-vs-ORT comparison.
        gpu_ok, _ = has_runtime_gpu(backend, recipe.data["build"]["compute_capabilities"])
        validate = lambda plan_sha=None, plan_path=None: self._validate(  # noqa: E731
            source, final, source_path, final_path, ctx, precision, staging, plan_sha, plan_path)
        validation = None if gpu_ok else validate()
        plan_path = staging.path(out["plan"])
        result, plan_sha = self._build(final, final_path, plan_path)
        if validation is None:
            validation = validate(plan_sha, plan_path)

        artifacts = [source_path.name, out["onnx"], out["plan"]] + sorted(_stage_artifacts(ctx, staging))
        artifacts += [n for n in (source_path.name + ".data", out["onnx"] + ".data") if staging.path(n).exists()]
        self.timings["total"] = time.perf_counter() - t0
        rep = report_mod.make_report(
            recipe=recipe, backend=backend, source=source, pass_stats=pass_stats, build=result,
            validation=validation, timings=self.timings, ops_final=ops_final,
            artifacts={name: staging.path(name) for name in artifacts}, options=self.options, precision=precision)
        rep["cache"] = {"dir": str(self.cache.root), "stages": self.stages,
                        "summary": _summary(self.stages, [f"passes[{i}]" for i, _ in recipe.enabled_passes()])}
        report_mod.write(rep, staging.path("report.json"), staging.path("report.md"))
        cache_mod.pause("publish")
        return rep, staging.publish(artifacts + ["report.json", "report.md"])

    # ----------------------------------------------------------------------------- helpers
    def _quiet(self):
        if not self._quieted:
            quiet_libraries(self.ui.verbose)
            self._quieted = True

    def _lookup(self, kind, key, label, verify=()):
        """The cached entry for a stage, unless the stage is forced; records the stage status."""
        entry = None
        if key is not None and label not in self.forced:
            entry = self.cache.get(kind, key, verify=verify)
        status = "cached" if entry else ("forced" if label in self.forced else "ran")
        self.stages[label] = {"status": status, "key": key}
        return entry

    def _forced(self):
        from .recipe_diff import downstream, stage_labels
        n = len(self.recipe.data["passes"])
        labels = stage_labels(n)
        if self.options.force:
            return set(labels)
        start = self.options.from_stage
        if not start:
            return set()
        names = [item["pass"] for item in self.recipe.data["passes"]]
        if start in ("source", "precision", "validate", "build"):
            first = start
        elif start == "passes" and n:
            first = ("passes", 0)
        elif start.startswith("passes[") and start.endswith("]") and start[7:-1].isdigit() and int(start[7:-1]) < n:
            first = ("passes", int(start[7:-1]))
        elif start in names:
            first = ("passes", names.index(start))
        else:
            choices = ["source"] + (["passes"] + [f"passes[{i}]" for i in range(n)] if n else []) + sorted(set(names)) \
                + ["precision", "validate", "build"]
            from .schema_check import suggest
            raise UsageError(f"--from {start!r}: not a stage of {self.recipe.name}{suggest(start, choices)}; "
                             f"stages: {', '.join(choices)}")
        return set(downstream(first, n))

    # ------------------------------------------------------------------------------ source
    def _source(self, source_path):
        recipe, ui = self.recipe, self.ui
        src = recipe.data["source"]
        ui.stage("source", _source_label(src))
        key = self.keys.source()
        entry = self._lookup("source", key, "source", verify=None)
        if entry is not None:
            meta = entry.meta
            cache_mod.copy_model(entry.path(cache_mod.MODEL), source_path)
            source = types.SimpleNamespace(kind=meta["kind"], path=src.get("onnx") or src.get("saved_model"),
                                           opset=meta["opset"], versions=meta["versions"], nodes=meta["nodes"],
                                           input_contract=meta["input_contract"], sha=meta["model_sha"])
            self.timings["source"] = ui.done(f"cached: {source.kind}, {source.nodes} nodes, opset {source.opset}")
            return source, _ModelRef(source.sha, entry)
        from .source import load_source
        from .transform import initial_input_contract
        self._quiet()
        loaded = load_source(src, locate=recipe.locate, log=ui.detail)
        contract = initial_input_contract(loaded.model)
        with self.cache.writer("source", key) as w:
            sha = w.save_model(loaded.model)
            w.meta = {"model_sha": sha, "kind": loaded.kind, "opset": loaded.opset, "versions": loaded.versions,
                      "nodes": len(loaded.model.graph.node), "input_contract": contract,
                      "timings": {k: round(v, 3) for k, v in loaded.timings.items()}}
            entry = w.commit("source")
        cache_mod.copy_model(entry.path(cache_mod.MODEL), source_path)
        source = types.SimpleNamespace(kind=loaded.kind, path=loaded.path, opset=loaded.opset, versions=loaded.versions,
                                       nodes=len(loaded.model.graph.node), input_contract=contract, sha=sha)
        self.timings["source"] = ui.done(f"{source.kind}: {source.nodes} nodes, opset {source.opset}")
        return source, _ModelRef(sha, entry, loaded.model)

    # ------------------------------------------------------------------------------ passes
    def _passes(self, cur, ctx, staging, source):
        recipe, ui, hasher = self.recipe, self.ui, self.cache.hasher
        ui.stage("passes")
        stats, cached = [], 0
        for index, item in recipe.enabled_passes():
            label = f"passes[{index}]"
            key = self.keys.pass_(index, item, cur.sha, cache_mod.ctx_state(ctx, hasher))
            entry = self._lookup("pass", key, label, verify=[f"artifacts/{n}" for n in self._artifact_names(key)])
            if entry is not None:
                ui.step(f"{label} {item['pass']} [dim](cached)[/]")
                meta = entry.meta
                for note in meta["notes"]:
                    ui.detail(note)
                for name in meta["artifact_files"]:
                    shutil.copyfile(entry.path(f"artifacts/{name}"), staging.path(name))
                state = meta["ctx"]
                ctx.input_contract, ctx.output_map, ctx.postprocess = (
                    state["input_contract"], state["output_map"], state["postprocess"])
                ctx.artifacts = {name: staging.path(name) for name in state["artifacts"]}
                stats.append(meta["stats"])
                cur, cached = _ModelRef(meta["model_sha"], entry), cached + 1
                continue
            from .transform import run_passes
            self._quiet()
            before = cache_mod.ctx_state(ctx, hasher)["artifacts"]
            notes = len(ctx.notes)
            model, one = run_passes(cur.load(), _OnePass(recipe, index, item), ctx, progress=ui)
            after = cache_mod.ctx_state(ctx, hasher)
            new = sorted(n for n, sha in after["artifacts"].items() if before.get(n) != sha)
            with self.cache.writer("pass", key) as w:
                sha = w.save_model(model)
                for name in new:
                    w.add_file(f"artifacts/{name}", ctx.artifacts[name])
                w.meta = {"model_sha": sha, "stats": one[0], "ctx": after, "artifact_files": new,
                          "notes": ctx.notes[notes:]}
                entry = w.commit(label)
            stats.append(one[0])
            cur = _ModelRef(sha, entry, model)
        n_before = source.nodes
        n_after = stats[-1]["nodes_after"] if stats else n_before
        note = f" ({cached} cached)" if cached and cached < len(stats) else " (cached)" if cached else ""
        self.timings["passes"] = ui.done(f"{n_before} -> {n_after} nodes{note}")
        return cur, stats

    def _artifact_names(self, key):
        """Artifacts a cached pass entry holds (read from its manifest before verifying them)."""
        import json
        try:
            manifest = json.loads((self.cache.entry_dir("pass", key) / cache_mod.MANIFEST).read_text())
            return manifest["meta"]["artifact_files"]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    # --------------------------------------------------------------------------- precision
    def _precision(self, cur, source, source_path, ctx):
        """Realize `precision` in the graph (TensorRT 11 / RTX are strongly typed: no builder flags)."""
        from .precision import normalize
        recipe, ui, backend = self.recipe, self.ui, self.backend
        cfg = normalize(recipe.data["precision"], recipe.locate)
        ui.stage("precision", cfg["mode"])
        key = self.keys.precision(cur.sha, source.sha, ctx.input_contract)
        entry = self._lookup("precision", key, "precision", verify=None)
        if entry is not None:
            meta = entry.meta
            ctx.input_contract = meta["input_contract"]
            self.timings["precision"] = ui.done(f"cached: {_precision_text(cfg, meta['stats'])}")
            return _ModelRef(meta["model_sha"], entry), meta["stats"], meta["ops_final"]
        from .precision import apply_precision
        from .transform import op_histogram
        from .validate import resolve_config
        self._quiet()
        model = cur.load()
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
        ops_final = op_histogram(model)
        with self.cache.writer("precision", key) as w:
            sha = w.save_model(model)
            w.meta = {"model_sha": sha, "stats": stats, "input_contract": ctx.input_contract, "ops_final": ops_final}
            entry = w.commit("precision")
        self.timings["precision"] = ui.done(_precision_text(cfg, stats))
        return _ModelRef(sha, entry, model), stats, ops_final

    # ---------------------------------------------------------------------------- validate
    def _validate(self, source, final, source_path, final_path, ctx, precision, staging, plan_sha, plan_path):
        recipe, ui, options = self.recipe, self.ui, self.options
        if not options.validate:
            ui.stage("validate")
            self.timings["validate"] = ui.done("skipped (--no-validate)")
            self.stages["validate"] = {"status": "skipped", "key": None}
            return {"status": "skipped", "reason": "--no-validate given", "comparisons": []}
        state = cache_mod.ctx_state(ctx, self.cache.hasher)
        key = self.keys.validate(source.sha, final.sha, state, plan_sha)
        ui.stage("validate", "Polygraphy: ONNX Runtime on source vs final" + (", engine vs ORT" if plan_path else ""))
        entry = self._lookup("validate", key, "validate")
        if entry is not None:
            result = entry.meta["result"]
            if ui.verbose:
                from .validate import print_table
                print_table(result, ui.out)
            self.timings["validate"] = ui.done(f"{result['status']} (cached)")
            return result
        from .validate import print_table, validate_models
        self._quiet()
        twin = _ort_twin(final, precision, staging)
        try:
            result = validate_models(
                str(source_path), str(final_path), recipe.data.get("validate"), precision=recipe.data["precision"],
                input_contract=ctx.input_contract, output_map=ctx.output_map, postprocess=ctx.postprocess,
                plan_path=str(plan_path) if plan_path else None, backend=self.backend, locate=recipe.locate,
                log=ui.detail, base_dir=recipe.dir, compute_capabilities=recipe.data["build"]["compute_capabilities"],
                final_ort_path=str(twin["path"]) if twin and twin["path"] else None,
                final_ort_optimize=twin["optimize"] if twin else True)
        except ValidationError as err:  # failed validations are never cached
            if getattr(err, "result", None):
                print_table(err.result, ui.out)
            raise
        if twin:
            result["final_ort_note"] = twin["note"]
        if not ui.quiet:
            print_table(result, ui.out)
        with self.cache.writer("validate", key) as w:
            w.meta = {"result": result}
            w.commit("validate")
        self.timings["validate"] = ui.done(result["status"])
        return result

    # ------------------------------------------------------------------------------- build
    def _build(self, final, final_path, plan_path):
        from .build import BuildResult, build_plan
        recipe, ui, backend = self.recipe, self.ui, self.backend
        ui.stage("build", f"{backend.name} {backend.version}")
        key = self.keys.build(final.sha)
        entry = self._lookup("build", key, "build", verify=["plan"])
        if entry is not None:
            shutil.copyfile(entry.path("plan"), plan_path)
            summary = dict(entry.meta["summary"])
            size = summary.pop("plan_bytes")
            result = BuildResult(plan=b"", **summary)
            self.timings["build"] = ui.done(f"cached: plan {size / 2**20:.2f} MiB")
            return result, entry.meta["plan_sha"]
        build_cfg = dict(recipe.data["build"])
        implicit = not build_cfg.get("timing_cache")
        if implicit:  # one timing cache per backend + device, kept in the cache directory
            build_cfg["timing_cache"] = str(self.cache.timing_cache_path(backend, self.keys.device()))
        result = build_plan(str(final_path), build_cfg, backend, locate=recipe.locate, progress=ui, log=ui.detail)
        if implicit:  # the recipe did not ask for a timing cache: no notes about it in the report
            result.warnings = [w for w in result.warnings if "timing cache" not in w]
            result.timing_cache = None
        with self.cache.writer("build", key) as w:
            (w.dir / "plan").write_bytes(result.plan)
            sha = cache_mod.sha256_file(w.dir / "plan")
            w.meta = {"summary": result.summary(), "plan_sha": sha}
            entry = w.commit("build")
        shutil.copyfile(entry.path("plan"), plan_path)
        self.timings["build"] = ui.done(f"plan {len(result.plan) / 2**20:.2f} MiB")
        return result, sha


def _summary(stages, pass_labels):
    """Per row of the timings table: 'cached', 'ran', 'forced' or 'k/n cached' for passes."""
    out = {}
    for row in ("source", "precision", "validate", "build"):
        if row in stages:
            out[row] = stages[row]["status"]
    states = [stages[p]["status"] for p in pass_labels if p in stages]
    if states:
        hits = states.count("cached")
        out["passes"] = ("cached" if hits == len(states) else states[0] if len(set(states)) == 1
                         else f"{hits}/{len(states)} cached")
    return out


def _precision_text(cfg, stats):
    kept = len(stats.get("kept_fp32") or {})
    return f"{cfg['mode']}" + (f", {kept} node(s) kept in fp32" if cfg["mode"] != "fp32" else "")


def _final_feeds(recipe, source_path, ctx, final_model, data_cfg):
    """Feeds for the final model's inputs derived from source-side data through the input contract."""
    import tempfile

    import onnx

    from .validate_data import apply_contract, make_source_feeds, model_io
    src_in, _ = model_io(str(source_path))
    feeds, _ = make_source_feeds(data_cfg, src_in, ctx.input_contract, base_dir=recipe.dir, locate=recipe.locate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "final.onnx"
        onnx.save_model(final_model, str(path))
        fin_in, _ = model_io(str(path))
    return [apply_contract(f, ctx.input_contract, fin_in) for f in feeds]


def _ort_twin(final, precision, staging):
    """What ONNX Runtime runs for validation when it cannot run the final model as it is."""
    mode = precision["mode"]
    if mode in ("fp16", "bf16"):
        from .precision import emulate_in_fp32
        path = staging.path(".validate-emulated.onnx")  # not published
        cache_mod.save_model(emulate_in_fp32(final.load()), path)
        return {"path": path, "optimize": True,
                "note": f"{mode} graph run in ONNX Runtime with {mode} rounding emulated in fp32"}
    if mode == "fp8":
        return {"path": None, "optimize": False, "note": "fp8 Q/DQ run with ONNX Runtime optimizations off"}
    return None


def _source_label(src):
    return f"ONNX {src['onnx']}" if "onnx" in src else f"SavedModel {src['saved_model']} (tf2onnx, opset {src['opset']})"


def _remove_abandoned_staging(staging):
    """Staging directories of runs that were killed (their owner lock is gone)."""
    for d in staging.out_dir.glob(".trtpipe-staging-*"):
        if d != staging.dir and d.is_dir() and is_abandoned(d):
            shutil.rmtree(d, ignore_errors=True)


def _stage_artifacts(ctx, staging):
    """Files passes asked to publish (e.g. the NMS post-processing model), relative to staging."""
    names = []
    for name, path in ctx.artifacts.items():
        path = Path(path)
        if path.parent != staging.dir:
            raise RuntimeError(f"pass artifact {name} must be written inside the stage directory")
        names.append(path.name)
    return names
