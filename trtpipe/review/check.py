"""`check`: everything that can be verified about a recipe without converting or building.

What it covers, in the order a run would hit it:

* the recipe itself (`load_recipe`): YAML syntax, duplicate keys, the schema, pass names and
  their parameters, profile consistency (min <= opt <= max, equal ranks, unique names);
* files the recipe names: the source model (ONNX file / SavedModel directory), plugin libraries,
  validation and calibration data (.npz files, image folders);
* precision settings a schema cannot judge (keys of another mode, targets that lack BF16/FP8);
* the model: every input, output, tensor and node name in passes, profiles and validation
  settings exists in the source model (read without weights or TensorFlow, model_check.py);
* backend compatibility: every enabled pass's precheck against the backend a run would use here
  (e.g. `nms: efficient_nms` needs the EfficientNMS_TRT plugin, which TensorRT-RTX lacks);
* deprecated plugins (warnings): EfficientNMS_TRT and BatchedNMS_TRT, with the alternative; build
  caches the backend does not use (a timing cache with TensorRT-RTX, a runtime cache with TensorRT);
* with `check --fmt`, that the file is canonically formatted (`python pipeline.py fmt`).

Backend checks need the backend: where the recipe's backend is not installed (or, for `backend:
auto`, none is), they are skipped and the result says so (`CheckResult.skipped`, a warning);
`check --strict-backend` makes that an error. Everything else is checked as usual. Backend
problems of `backend: auto`, which depend on what this machine has, can be downgraded to
warnings with `check --warn-backend`.

Messages are the ones a run prints (`file:line:col: key.path: message`): the recipe errors come
from the same loader, the pass prechecks are the same functions a run calls first, and the
source messages use the source stage's wording. Nothing here imports TensorFlow, converts or
builds, so a folder of recipes takes about a second. check_output.py prints the results as text,
JSON or GitHub workflow annotations (`check --format`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe import registry
from trtpipe.errors import PipelineError
from trtpipe.recipe.load import load_recipe
from trtpipe.recipe.precision import check_targets

if TYPE_CHECKING:
    from trtpipe.backend import Backend
    from trtpipe.recipe.load import Recipe


def precheck_passes(recipe: Recipe, ctx: registry.PassContext) -> list[PipelineError]:
    """Run each enabled pass's precheck; returns the errors, each message prefixed with its location
    (the parameter's line when the error carries a `key_path` relative to the pass item, else the
    `pass:` line). Warnings a precheck gives (ctx.warn) are prefixed with the pass's location in
    ctx.warnings and when shown through ctx.warner. Then the deployment options the backend
    `ctx.backend` refuses whatever the model (stages/build/options.static_refusals), so that a run
    refuses them before converting and `check` reports them."""
    from trtpipe.stages.build.options import static_refusals
    problems: list[PipelineError] = []
    for index, item in recipe.enabled_passes():
        info = registry.get(item["pass"])
        if info and info.precheck:
            prefix = f"{recipe.locate(('passes', index, 'pass'))}: passes[{index}] {item['pass']}: "
            warned, warner = len(ctx.warnings), ctx.warner  # ctx.warn() from a precheck: located too
            ctx.warner = (lambda msg, show=warner, at=prefix: show(at + msg)) if warner else None
            try:
                info.precheck(item["params"], ctx)
            except PipelineError as err:  # located at the parameter the error names, if it names one
                where = recipe.locate(("passes", index, *(getattr(err, "key_path", None) or ("pass",))))
                err.message = f"{where}: passes[{index}] {item['pass']}: {err.message}"
                problems.append(err)
            finally:
                ctx.warner = warner
                ctx.warnings[warned:] = [prefix + w for w in ctx.warnings[warned:]]
    return problems + static_refusals(recipe.data["build"], ctx.backend, recipe.locate)


def raise_first(problems: list[PipelineError]) -> None:
    """One error carrying every message, with the first one's class (and so exit code)."""
    if problems:
        first = problems[0]
        raise type(first)("\n".join(p.message for p in problems), hint=first.hint)


@dataclass
class CheckResult:
    """What `check` found in one recipe. Every message is `file:line:col: key.path: ...`."""
    path: str
    problems: list = field(default_factory=list)   # errors (exit 3)
    notes: list = field(default_factory=list)      # context for the problems (e.g. what `auto` chose)
    warnings: list = field(default_factory=list)   # e.g. a deprecated plugin; never fail the check
    backend_warnings: list = field(default_factory=list)  # backend problems of this machine (--warn-backend)
    backend: str = None                            # e.g. "tensorrt_rtx 1.7.1"
    skipped: list = field(default_factory=list)    # checks not made here, e.g. "backend checks"
    skipped_reason: str = None                     # why (the backend is not installed, and how to install it)

    @property
    def ok(self) -> bool:
        """No problems (warnings and skipped checks do not count)."""
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


def check_files(recipe: Recipe) -> list[str]:
    """The files the recipe names, as a run checks them before its first stage (stages/run_files.py,
    same messages): the source model, plugin libraries, validation/calibration data and files named
    by pass parameters exist and are regular files (or the directory a SavedModel / image folder
    is; a FIFO or a device is named as such), and no output would overwrite one of them."""
    from trtpipe.stages.run_files import input_problems, output_problems
    problems = [str(err) for err in input_problems(recipe)]
    return problems + [str(err) for err in output_problems(recipe, recipe.data["output"]["dir"])]


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
        backend = resolve_backend(recipe.data["build"]["backend"])
        backend.trt  # noqa: B018 -- a run imports it lazily; `check` must know now that it imports
        return backend, None
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
    notes = list(ctx.warnings)  # e.g. plugin fields left unset (their defaults apply)
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
    """The checks that need a backend, when it is not installed (`reason`, else nothing is
    skipped): every pass's backend precheck, and for `backend: auto` the precision target check
    (whether build.compute_capabilities apply depends on the backend `auto` picks)."""
    if not reason:
        return []
    skipped = ["backend checks"]
    if recipe.data["build"]["backend"] == "auto" and recipe.precision.mode in _TARGET_MODES:
        skipped.append("precision targets")
    return skipped


def missing_backend(name: str) -> str | None:
    """Why the backend `name` (a recipe's build.backend) cannot be checked against here (it is not
    installed; for `auto`, none is), with how to install it; None when it is installed.
    Nothing is imported (trtpipe.backend.installed_backends)."""
    from trtpipe.backend import INSTALL_ALL, installed_backends, no_backend_reason
    if name == "auto":
        return no_backend_reason()
    if name in installed_backends():
        return None
    how = "pip install 'trt-pipeline[tensorrt]'" if name == "tensorrt" else INSTALL_ALL
    return f"{name} is not installed here: {how}"


# plugins NVIDIA has deprecated, and what to use instead
DEPRECATED_PLUGINS = {
    "EfficientNMS_TRT": "EfficientNMS_TRT is deprecated in TensorRT, with no replacement plugin planned; "
                        "`nms: {mode: native}` keeps ONNX NonMaxSuppression, which TensorRT imports as its "
                        "built-in INMSLayer (TensorRT 10+; not TensorRT-RTX, which has no NMS: use `mode: split`)",
    "BatchedNMS_TRT": "BatchedNMS_TRT is deprecated since TensorRT 8.5 and removed in TensorRT 11; `nms: {mode: "
                      "native}` keeps ONNX NonMaxSuppression (TensorRT's INMSLayer), `mode: split` runs the NMS "
                      "after the engine",
}
DEPRECATED_PLUGINS["BatchedNMSDynamic_TRT"] = DEPRECATED_PLUGINS["BatchedNMS_TRT"].replace(
    "BatchedNMS_TRT", "BatchedNMSDynamic_TRT", 1)


def deprecated_plugins(recipe: Recipe) -> list[str]:
    """Warnings, located at the parameter, for enabled passes that put a deprecated TensorRT
    plugin into the graph (`nms` modes efficient_nms and batched_nms, a `plugin` pass's `op`)."""
    out = []
    for index, item in recipe.enabled_passes():
        params = item.get("params") or {}
        plugin, key = None, None
        if item["pass"] == "nms" and params.get("mode") == "efficient_nms":
            plugin, key = "EfficientNMS_TRT", "mode"
        elif item["pass"] == "nms" and params.get("mode") == "batched_nms":
            chosen = params.get("plugin")
            plugin, key = (chosen if chosen in DEPRECATED_PLUGINS else "BatchedNMS_TRT"), "mode"
        elif item["pass"] == "plugin" and params.get("op") in DEPRECATED_PLUGINS:
            plugin, key = params["op"], "op"
        if plugin:
            path = ("passes", index, "params", key)
            out.append(f"{recipe.locate(path)}: passes[{index}] {item['pass']}: {key}: {DEPRECATED_PLUGINS[plugin]}")
    return out


def cache_settings(recipe: Recipe, backend: Backend | None) -> list[str]:
    """Warnings for build caches the backend does not use: a timing cache with TensorRT-RTX
    (NVIDIA: its timing-cache calls do not affect the plan and force a GPU query during
    ahead-of-time builds; the run ignores it) and a runtime cache with TensorRT."""
    build, out = recipe.data["build"], []
    name = backend.name if backend is not None else build["backend"]
    if build.get("timing_cache") and name == "tensorrt_rtx":
        out.append(f"{_where(recipe, ('build', 'timing_cache'))}: not used with TensorRT-RTX (its timing cache does "
                   "not affect the plan and forces a GPU query during ahead-of-time builds); remove it, or use "
                   "build.runtime_cache for the kernels TensorRT-RTX compiles where a GPU runs the plan")
    if build.get("runtime_cache") and name == "tensorrt":
        out.append(f"{_where(recipe, ('build', 'runtime_cache'))}: TensorRT has no runtime cache (a TensorRT-RTX "
                   "setting); it is ignored here")
    return out


@dataclass
class _Found:
    problems: list
    backend_problems: list
    notes: list
    backend: object       # trtpipe.backend.Backend, or None
    machine: bool         # whether the backend problems depend on this machine
    skipped: list         # skipped_checks()
    skipped_reason: str


def _collect(recipe, strict_backend=False):
    from trtpipe.review.model_check import check_model_names
    problems = check_files(recipe) + check_model_names(recipe)[0]
    name = recipe.data["build"]["backend"]
    reason = missing_backend(name)
    if reason and strict_backend:
        problems.append(f"{_where(recipe, ('build', 'backend'))}: backend checks need {name} "
                        f"(--strict-backend): {reason}")
    skipped = skipped_checks(recipe, reason)
    if skipped:  # nothing to check against: skip what needs a backend, check the rest
        if "precision targets" not in skipped:
            problems += check_precision(recipe, name)
        return _Found(problems, [], [], None, True, skipped, reason)
    backend, problem = resolve(recipe)
    problems += check_precision(recipe, backend)
    notes, backend_problems = [], []
    if backend is None:
        backend_problems.append(problem)
    else:
        backend_problems, notes = check_backend(recipe, backend)
    # whether the backend problems depend on this machine: `auto` picks what is installed
    machine = name == "auto" or backend is None
    return _Found(problems, backend_problems, notes, backend, machine, [], None)


def check_recipe(path: str | Path, check_format: bool = False, warn_backend: bool = False,
                 strict_backend: bool = False) -> CheckResult:
    """CheckResult for one recipe. A recipe that does not load (YAML, schema, passes, profiles)
    raises RecipeError with every such problem in it, exactly as a run would.

    Args:
        path: the recipe file.
        check_format: also require canonical formatting (`python pipeline.py fmt`).
        warn_backend: backend problems that depend on this machine (`backend: auto`) become
            warnings instead of problems, for CI machines without the target backend.
        strict_backend: a backend that is not installed here is a problem, not skipped checks.

    Raises:
        RecipeError: the recipe is not a regular file, or does not load.
    """
    recipe = load_recipe(path)
    found = _collect(recipe, strict_backend)
    result = CheckResult(str(path), problems=found.problems, notes=found.notes,
                         warnings=deprecated_plugins(recipe) + cache_settings(recipe, found.backend),
                         backend=found.backend.label if found.backend else None,
                         skipped=found.skipped, skipped_reason=found.skipped_reason)
    if warn_backend and found.machine:
        result.backend_warnings = found.backend_problems
    else:
        result.problems += found.backend_problems
    if check_format:
        result.problems += check_formatting(path, recipe.text)
    return result


def check_formatting(path: str | Path, text: str) -> list[str]:
    """[] when `text` is as `python pipeline.py fmt` writes it, else one message naming the first
    line that differs and what fmt writes there."""
    from trtpipe.review.fmt import first_difference, format_text, visible
    formatted = format_text(text, str(path))
    if formatted == text:
        return []
    line = first_difference(text, formatted)
    have = (text.splitlines() + [""])[line - 1]
    want = (formatted.splitlines() + [""])[line - 1]
    bom = (" (it starts with a UTF-8 byte-order mark, \\uFEFF, which fmt drops)"
           if line == 1 and text.startswith("\ufeff") and not formatted.startswith("\ufeff") else "")
    return [f"{path}:{line}:1: not canonically formatted: line {line} is `{visible(have.strip())}`{bom}, "
            f"`python pipeline.py fmt` writes `{visible(want.strip())}` there; run `python pipeline.py fmt {path}`"]


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
