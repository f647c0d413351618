"""`check`: everything that can be verified about a recipe without converting or building.

What it covers, in the order a run would hit it:

* the recipe itself (`load_recipe`): YAML syntax, duplicate keys, the schema, pass names and
  their parameters, profile consistency (min <= opt <= max, equal ranks, unique names);
* files the recipe names: the source model (ONNX file / SavedModel directory), plugin libraries,
  validation and calibration data (.npz files, image folders);
* precision settings a schema cannot judge (keys of another mode, targets that lack BF16/FP8);
* backend compatibility: every enabled pass's precheck against the backend a run would use here
  (e.g. `nms: efficient_nms` needs the EfficientNMS_TRT plugin, which TensorRT-RTX lacks);
* with `check --format`, that the file is canonically formatted (`python pipeline.py fmt`).

Backend problems that depend on the machine (`backend: auto`, or a backend not installed here)
can be downgraded to warnings (`check --warn-backend`) on CI machines without the target backend.
Where no backend is installed at all (the core install, `pip install trt-pipeline`, as the
pre-commit hooks use it), the checks that need one are skipped and the result says so
(`CheckResult.skipped`); everything else is checked as usual.

Messages are the ones a run prints (`file:line:col: key.path: message`): the recipe errors come
from the same loader, the pass prechecks are the same functions a run calls first, and the
source messages use the source stage's wording. Nothing here imports TensorFlow, converts or
builds, so a folder of recipes takes about a second.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe import registry
from trtpipe.errors import PipelineError
from trtpipe.recipe.load import load_recipe, resolve_path
from trtpipe.recipe.precision import check_targets

if TYPE_CHECKING:
    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe


def precheck_passes(recipe: Recipe, ctx: registry.PassContext) -> list[PipelineError]:
    """Run each enabled pass's precheck; returns the errors, each message prefixed with its location."""
    problems = []
    for index, item in recipe.enabled_passes():
        info = registry.get(item["pass"])
        if info and info.precheck:
            try:
                info.precheck(item["params"], ctx)
            except PipelineError as err:
                where = recipe.locate(("passes", index, "pass"))
                err.message = f"{where}: passes[{index}] {item['pass']}: {err.message}"
                problems.append(err)
    return problems


def raise_first(problems: list[PipelineError]) -> None:
    """One error carrying every message, with the first one's class (and so exit code)."""
    if problems:
        first = problems[0]
        raise type(first)("\n".join(p.message for p in problems), hint=first.hint)


@dataclass
class CheckResult:
    path: str
    problems: list = field(default_factory=list)   # messages, each `file:line:col: key.path: ...`
    notes: list = field(default_factory=list)      # context for the problems (e.g. what `auto` chose)
    warnings: list = field(default_factory=list)   # backend problems of this machine (--warn-backend)
    backend: str = None                            # e.g. "tensorrt_rtx 1.7.1"
    skipped: list = field(default_factory=list)    # checks not made here, e.g. "backend checks"
    skipped_reason: str = None                     # why (no backend installed, and how to install one)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def skipped_line(self) -> str | None:
        """'skipped: backend checks (no TensorRT or TensorRT-RTX installed: pip install ...)', or None."""
        if not self.skipped:
            return None
        return f"skipped: {', '.join(self.skipped)} ({self.skipped_reason})"


def _where(recipe, path, keys=None):
    from trtpipe.recipe.schema import key_path
    return f"{recipe.locate(path)}: {keys or key_path(path)}"


def check_sources(recipe: Recipe) -> list[str]:
    """The source model exists (same messages as the source stage, which would fail on it)."""
    from trtpipe.stages.source.load import missing_path_error
    src, problems = recipe.data["source"], []
    if "onnx" in src:
        path, where = src["onnx"], _where(recipe, ("source", "onnx"))
        if not os.path.exists(path):
            problems.append(str(missing_path_error(path, where)))
        elif os.path.isdir(path):
            saved = os.path.exists(os.path.join(path, "saved_model.pb"))
            problems.append(f"{where}: {path} is a directory, not an .onnx file"
                            + ("\n  hint: it holds a SavedModel: use `saved_model:` instead" if saved else ""))
    if "saved_model" in src:
        path, where = src["saved_model"], _where(recipe, ("source", "saved_model"))
        if not os.path.exists(path):
            problems.append(str(missing_path_error(path, where)))
        elif not os.path.isfile(os.path.join(path, "saved_model.pb")):
            problems.append(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)"
                            + ("\n  hint: for an .onnx file use `onnx:`" if os.path.isfile(path) else ""))
    return problems


def check_plugins(recipe: Recipe) -> list[str]:
    problems = []
    for i, plugin in enumerate(recipe.data["build"]["plugins"]):
        path = ("build", "plugins", i)
        if not os.path.exists(plugin):
            problems.append(f"{_where(recipe, path)}: plugin library {plugin} does not exist")
        elif not os.path.isfile(plugin):
            problems.append(f"{_where(recipe, path)}: plugin library {plugin} is not a file")
    return problems


def check_data_files(recipe: Recipe) -> list[str]:
    """validate.data and precision.calibration name .npz files / image folders relative to the recipe."""
    problems = []
    places = [("validate", "data")]
    if isinstance(recipe.data.get("precision"), dict):
        places.append(("precision", "calibration"))
    for place in places:
        cfg = recipe.data
        for key in place:
            cfg = cfg.get(key) if isinstance(cfg, dict) else None
        if not isinstance(cfg, dict):
            continue
        if isinstance(cfg.get("npz"), str):
            path = resolve_path(cfg["npz"], recipe.dir)
            if not os.path.isfile(path):  # worded as the validation stage words it when np.load fails
                reason = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
                problems.append(f"{_where(recipe, place + ('npz',))}: cannot read {path}: {reason}")
        images = cfg.get("images")
        if isinstance(images, dict) and isinstance(images.get("dir"), str):
            path = resolve_path(images["dir"], recipe.dir)
            if not os.path.isdir(path):
                problems.append(f"{_where(recipe, place + ('images', 'dir'))}: no such image folder {path}")
    return problems


def check_precision(recipe: Recipe, backend: Backend | str | None = None) -> list[str]:
    """What the precision stage refuses before touching the model: compute capabilities that
    cannot run the precision, when they apply (TensorRT-RTX), as in a run. (The value itself was
    normalized and checked by the recipe loader.) `backend`: the Backend a run would use, or a
    backend name from the recipe; None checks the targets as for TensorRT-RTX."""
    try:
        name = backend if isinstance(backend, str) else getattr(backend, "name", None)
        rtx = name is None or name == "tensorrt_rtx"
        ccs = recipe.data["build"]["compute_capabilities"] if rtx else []
        check_targets(recipe.precision.mode, ccs, recipe.locate)
    except PipelineError as err:
        return [str(err)]
    return []


def resolve(recipe: Recipe) -> tuple[Backend | None, str | None]:
    """(backend, None) for the backend a run would use here, or (None, problem message)."""
    from trtpipe.backend import resolve_backend
    try:
        return resolve_backend(recipe.data["build"]["backend"]), None
    except PipelineError as err:
        return None, f"{_where(recipe, ('build', 'backend'))}: {err}"


def check_backend(recipe: Recipe, backend: Backend | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes): every enabled pass's precheck against the backend a run would use here."""
    if backend is None:
        backend, problem = resolve(recipe)
        if backend is None:
            return [problem], []
    ctx = registry.PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                               recipe_dir=recipe.dir, plugin_libraries=recipe.data["build"]["plugins"])
    problems = [str(err) for err in precheck_passes(recipe, ctx)]
    notes = []
    if problems and recipe.data["build"]["backend"] == "auto":
        notes.append(f"{_where(recipe, ('build', 'backend'))}: `auto` resolves to {backend.label} on this "
                     f"machine; the checks above are against that backend")
    return problems, notes


def all_problems(recipe: Recipe) -> tuple[list[str], list[str], Backend | None]:
    """(problems, notes, backend) for a loaded recipe: everything below the loader's own checks
    (without the checks skipped for lack of a backend, see `skipped_checks`)."""
    found = _collect(recipe)
    return found.problems + found.backend_problems, found.notes, found.backend


# precision modes whose targets are checked against build.compute_capabilities (check_targets)
_TARGET_MODES = ("bf16", "fp8")


def skipped_checks(recipe: Recipe, reason: str | None) -> list[str]:
    """The checks that need a backend, when none is installed (`reason`, else nothing is skipped):
    every pass's backend precheck, and for `backend: auto` the precision target check (whether
    build.compute_capabilities apply depends on the backend `auto` picks)."""
    if not reason:
        return []
    skipped = ["backend checks"]
    if recipe.data["build"]["backend"] == "auto" and recipe.precision.mode in _TARGET_MODES:
        skipped.append("precision targets")
    return skipped


@dataclass
class _Found:
    problems: list
    backend_problems: list
    notes: list
    backend: object       # trtpipe.backend.Backend, or None
    machine: bool         # whether the backend problems depend on this machine
    skipped: list         # skipped_checks()
    skipped_reason: str


def _collect(recipe):
    from trtpipe.backend import no_backend_reason
    problems = check_sources(recipe) + check_plugins(recipe) + check_data_files(recipe)
    reason = no_backend_reason()
    skipped = skipped_checks(recipe, reason)
    if skipped:  # nothing to check against: skip what needs a backend, check the rest
        if "precision targets" not in skipped:
            problems += check_precision(recipe, recipe.data["build"]["backend"])
        return _Found(problems, [], [], None, True, skipped, reason)
    backend, problem = resolve(recipe)
    problems += check_precision(recipe, backend)
    notes, backend_problems = [], []
    if backend is None:
        backend_problems.append(problem)
    else:
        backend_problems, notes = check_backend(recipe, backend)
    # whether the backend problems depend on this machine: `auto` picks what is installed, and a
    # named backend that is not installed here may well be where the recipe is built
    machine = recipe.data["build"]["backend"] == "auto" or backend is None
    return _Found(problems, backend_problems, notes, backend, machine, [], None)


def check_recipe(path: str | Path, check_format: bool = False, warn_backend: bool = False) -> CheckResult:
    """CheckResult for one recipe. A recipe that does not load (YAML, schema, passes, profiles)
    raises RecipeError with every such problem in it, exactly as a run would.

    warn_backend: backend problems that depend on this machine (`backend: auto`, or a backend not
    installed here) become warnings instead of problems, for CI machines without the target backend."""
    recipe = load_recipe(path)
    found = _collect(recipe)
    result = CheckResult(str(path), problems=found.problems, notes=found.notes,
                         backend=found.backend.label if found.backend else None,
                         skipped=found.skipped, skipped_reason=found.skipped_reason)
    if warn_backend and found.machine:
        result.warnings = found.backend_problems
    else:
        result.problems += found.backend_problems
    if check_format:
        result.problems += check_formatting(path, recipe.text)
    return result


def check_formatting(path: str | Path, text: str) -> list[str]:
    from trtpipe.review.fmt import first_difference, format_text
    formatted = format_text(text, str(path))
    if formatted == text:
        return []
    line = first_difference(text, formatted)
    have = (text.splitlines() + [""])[line - 1]
    want = (formatted.splitlines() + [""])[line - 1]
    return [f"{path}:{line}:1: not canonically formatted: line {line} is `{have.strip()}`, "
            f"`python pipeline.py fmt` writes `{want.strip()}` there; run `python pipeline.py fmt {path}`"]


def recipe_files(args: list[str]) -> list[str]:
    """Expand directories to the *.yaml / *.yml recipes in them (sorted); files pass through."""
    out = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            out += sorted(str(q) for q in p.iterdir() if q.suffix in (".yaml", ".yml") and q.is_file())
        else:
            out.append(arg)
    return out
