"""What one run shares across its stages: the recipe, backend and UI, the stage cache with the
recipe's keys, which stages are forced (--force / --from), and what each stage records (timings,
cache status). The *_stage.py modules read and fill it; run.py creates it."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtpipe.cache.files import MODEL
from trtpipe.errors import EXIT_USAGE, PipelineError

if TYPE_CHECKING:
    from collections.abc import Callable

    import onnx

    from trtpipe.backend import Backend
    from trtpipe.cache.keys import Keys
    from trtpipe.cache.store import Cache, Entry
    from trtpipe.console import UI
    from trtpipe.recipe.load import Recipe


class UsageError(PipelineError):
    exit_code = EXIT_USAGE


class RunOptions:
    """The command line's run options (`python pipeline.py RECIPE ...`)."""

    def __init__(self, validate: bool = True, debug: bool = False, output_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, force: bool = False, from_stage: str | None = None,
                 compute_capabilities: list[str] | None = None, take_over: bool = False) -> None:
        self.validate = validate
        self.debug = debug
        self.output_dir = output_dir
        self.cache_dir = cache_dir      # None: $TRTPIPE_CACHE_DIR, else the XDG cache directory
        self.force = force              # re-run every stage (results still refresh the cache)
        self.take_over = take_over      # publish into another recipe's output.dir (--force implies it)
        self.from_stage = from_stage    # re-run this stage and the ones after it
        # replaces build.compute_capabilities (--compute-capabilities; build-all's target, trtpipe/fleet)
        self.compute_capabilities = compute_capabilities


_FROZEN = False  # RunState.quiet froze the stage libraries' objects already


def quiet_libraries(verbose: bool) -> None:
    """ONNX Runtime and Polygraphy log warnings meant for their own developers; keep errors."""
    import onnxruntime
    from polygraphy.logger import G_LOGGER
    onnxruntime.set_default_logger_severity(4)  # failures surface as exceptions anyway
    G_LOGGER.colors = False  # no 'colored' module warning (console.third_party_to_log)
    G_LOGGER.module_severity = G_LOGGER.INFO if verbose else G_LOGGER.ERROR


class ModelRef:
    """A stage's output model: its sha256, the cache entry holding it, and the ModelProto once a
    later stage needs it in memory (cached runs never load it)."""

    def __init__(self, sha: str, entry: Entry, model: onnx.ModelProto | None = None) -> None:
        self.sha, self.entry, self.model = sha, entry, model

    def load(self) -> onnx.ModelProto:
        if self.model is None:
            from trtpipe.cache.files import load_model
            self.entry.verify(self.entry.model_files())
            # external weights stay references to the entry's data file (files.load_model)
            self.model = load_model(self.entry.path(MODEL))
        return self.model


class StageTimings(dict):
    """{stage: seconds}; each entry also records the run's peak resident memory when the stage
    ended (`peak_rss`, bytes: this process's high-water mark, so stage by stage it only grows;
    the build runs in a child process and is measured by bench/big_model.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_rss: dict[str, int] = {}

    def __setitem__(self, stage: str, seconds: float) -> None:
        import resource
        super().__setitem__(stage, seconds)
        self.peak_rss[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


class RunState:
    """Created once the recipe is loaded and the cache opened; passed to every *_stage.run()."""

    def __init__(self, recipe: Recipe, backend: Backend, ui: UI, options: RunOptions, cache: Cache, keys: Keys,
                 forced: set[str]) -> None:
        self.recipe, self.backend, self.ui, self.options = recipe, backend, ui, options
        self.cache, self.keys, self.forced = cache, keys, forced
        self.timings, self.stages = StageTimings(), {}
        self.build_worker: Any = None  # the build process, started early (stages/build/isolated.py)
        self.will_build = True          # False for `bisect`: no build process is started for it
        # The model each enabled pass left, in order: (label "passes[i]", ModelRef, the context
        # state it left: input_contract, output_map, postprocess, artifacts). Filled by the passes
        # stage, cached or not; validation bisects them when it fails (stages/validate/bisect.py).
        self.pass_models: list[tuple[str, ModelRef, dict[str, Any]]] = []
        self._quieted = False
        # Checks that only protect work from starting (the passes' prechecks): run at the first
        # stage that is not cached, so a fully cached run imports no pass module (issue 13).
        self.before_work: Callable[[], None] | None = None

    def quiet(self) -> None:
        """Silence library chatter once, and only when a stage actually runs them. The stage
        libraries are imported by then (onnx, numpy, graphsurgeon, ONNX Runtime, Polygraphy): their
        objects live as long as the process, so they are frozen out of the garbage collector's
        full collections, which otherwise walk them again and again while the stages allocate."""
        if not self._quieted:
            quiet_libraries(self.ui.verbose)
            global _FROZEN
            if not _FROZEN:  # once per process: a second run's heap also holds the first's garbage
                gc.freeze()
                _FROZEN = True
            self._quieted = True

    def lookup(self, kind: str, key: str | None, label: str,
               verify: list[str] | tuple[str, ...] | None = ()) -> Entry | None:
        """The cached entry for a stage, unless the stage is forced; records the stage status."""
        entry = None
        if key is not None and label not in self.forced:
            entry = self.cache.get(kind, key, verify=verify)
        status = "cached" if entry else ("forced" if label in self.forced else "ran")
        self.stages[label] = {"status": status, "key": key}
        if entry is None and self.before_work is not None:
            check, self.before_work = self.before_work, None
            check()
        return entry

    def cache_report(self) -> dict[str, Any]:
        """The report's `cache` section: the directory, each stage's status and key, and per row
        of the timings table 'cached', 'ran', 'forced' or 'k/n cached' for passes."""
        summary = {row: self.stages[row]["status"] for row in ("source", "precision", "validate", "build")
                   if row in self.stages}
        states = [self.stages[p]["status"] for p in (f"passes[{i}]" for i, _ in self.recipe.enabled_passes())
                  if p in self.stages]
        if states:
            hits = states.count("cached")
            summary["passes"] = ("cached" if hits == len(states) else states[0] if len(set(states)) == 1
                                 else f"{hits}/{len(states)} cached")
        return {"dir": str(self.cache.root), "stages": self.stages, "summary": summary}


def forced_stages(recipe: Recipe, force: bool, from_stage: str | None) -> set[str]:
    """Stage labels a run must redo: all with --force, `from_stage` and those after it with --from."""
    from trtpipe.stages.order import downstream, stage_labels
    n = len(recipe.data["passes"])
    if force:
        return set(stage_labels(n))
    if not from_stage:
        return set()
    start = from_stage
    names = [item["pass"] for item in recipe.data["passes"]]
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
        from trtpipe.recipe.schema import suggest
        raise UsageError(f"--from {start!r}: not a stage of {recipe.name}{suggest(start, choices)}; "
                         f"stages: {', '.join(choices)}")
    return set(downstream(first, n))
