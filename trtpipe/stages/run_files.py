"""The files a run reads and the files it writes, worked out from the recipe before anything runs.

Two rules, checked once where the recipe's paths enter (`run` calls `input_problems` and
`output_problems` right after loading the recipe; `check` reports the same messages):

* every input is a regular file, or the directory a SavedModel / an image folder is: a FIFO, a
  socket, a device or a directory where a file is expected is named as such ("is a FIFO, not a
  regular file"), never reported as missing and never opened (reading a FIFO blocks forever,
  /dev/zero never ends); only `stat` is asked;
* nothing the run reads is written: every output (plan, final and source ONNX, files passes
  publish, report.json/.md, the run's own bookkeeping in output.dir, the
  recipe's timing cache) must resolve (realpath) to a path that is no input, lies in no input
  directory (a SavedModel, an image folder), and no input lies where the run keeps its versions
  (`.runs/`), rejected graphs (`failed/`) or staging directories.

Exit codes: a source model (or its external data) of the wrong kind is a source error (4), as a
missing one is; every other path of the wrong kind (data files, plugin libraries, the timing
cache, files named by pass parameters) is a recipe error (3); an output that would overwrite an
input, or a special file where an output goes, is an output error (8).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trtpipe.errors import OutputError, PipelineError, RecipeError, SourceError
from trtpipe.fileguard import not_a_directory, not_a_file, special_files_in, special_kind

if TYPE_CHECKING:
    from trtpipe.recipe.load import Recipe

# names the run keeps inside output.dir next to the published files (stages/output_dir.py, publish.py)
RUNS_DIR = ".runs"
FAILED_DIR = "failed"
MARKER = ".trt-pipeline.json"
LOCK = ".trt-pipeline.lock"
STAGING_PREFIX = ".trtpipe-staging-"
# external weights publishing names after their content; others in output.dir are removed
DATA_NAME = re.compile(r".+\.[0-9a-f]{16}\.data$")
EXTERNAL_CHECK_BYTES = 64 * 2**20  # source graphs read up front for their external data files


@dataclass(frozen=True)
class FileUse:
    """One file or directory a run reads or writes."""
    path: str      # absolute, as the recipe resolved it
    what: str      # "the source model", "validation data", ...
    key: tuple     # recipe key path it comes from (for file:line:col), () for the recipe itself
    tree: bool = False  # a directory whose whole content is read (SavedModel, image folder)


def _where(recipe: Recipe, key: tuple) -> str:
    from trtpipe.recipe.schema import key_path
    if not key:
        return str(recipe.path)
    return f"{recipe.locate(key)}: {key_path(key)}"


def _data_places(recipe: Recipe) -> list[tuple[tuple, dict]]:
    places = []
    data = (recipe.data.get("validate") or {}).get("data")
    if isinstance(data, dict):
        places.append((("validate", "data"), data))
    prec = recipe.data.get("precision")
    if isinstance(prec, dict) and isinstance(prec.get("calibration"), dict):
        places.append((("precision", "calibration"), prec["calibration"]))
    return places


def recipe_inputs(recipe: Recipe) -> list[FileUse]:
    """Every file and directory the recipe names for the run to read: the recipe, the source model
    (an .onnx file, a SavedModel directory, a frozen graph .pb or a .tflite file), validation and
    calibration data (.npz, image folders), plugin libraries, and files named by pass parameters.
    External data of an ONNX source is added by `external_data_inputs` (it needs the model's graph)."""
    from trtpipe.recipe.load import resolve_path
    uses = [FileUse(str(recipe.path), "the recipe", ())]
    src = recipe.data["source"]
    if src.get("onnx"):
        uses.append(FileUse(src["onnx"], "the source model", ("source", "onnx")))
    if src.get("saved_model"):
        uses.append(FileUse(src["saved_model"], "the source SavedModel", ("source", "saved_model"), tree=True))
    for kind, what in (("frozen_graph", "the source frozen graph"), ("tflite", "the source TFLite model")):
        if src.get(kind):
            uses.append(FileUse(src[kind], what, ("source", kind)))
    for place, cfg in _data_places(recipe):
        if isinstance(cfg.get("npz"), str):
            uses.append(FileUse(resolve_path(cfg["npz"], recipe.dir), "data file", place + ("npz",)))
        images = cfg.get("images")
        if isinstance(images, dict) and isinstance(images.get("dir"), str):
            uses.append(FileUse(resolve_path(images["dir"], recipe.dir), "image folder", place + ("images", "dir"),
                                tree=True))
    for i, plugin in enumerate(recipe.data["build"]["plugins"]):
        uses.append(FileUse(plugin, "plugin library", ("build", "plugins", i)))
    if recipe.data["output"].get("labels"):  # copied next to the plan for predict
        uses.append(FileUse(recipe.data["output"]["labels"], "the labels file", ("output", "labels")))
    for index, item in recipe.enabled_passes():
        for key, value in _strings(item.get("params") or {}, ("passes", index, "params")):
            path = _named_path(value, recipe.dir)
            if path is not None:
                uses.append(FileUse(path, f"file named by passes[{index}] {item['pass']}", key,
                                    tree=os.path.isdir(path)))
    return uses


def _strings(value, key):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, key + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, key + (i,))
    elif isinstance(value, str):
        yield key, value


def _named_path(value, base):
    """A pass parameter naming an existing path (what the cache hashes as a file the pass reads,
    cache/hashing.py referenced_files), else None."""
    if not value or len(value) >= 4096 or ("/" not in value and "." not in value) or "\0" in value:
        return None
    p = Path(value) if os.path.isabs(value) else Path(base) / value
    try:
        if not os.path.lexists(p) or Path(base).resolve().is_relative_to(p.resolve()):
            return None
    except (OSError, ValueError):
        return None
    return str(p)


# ------------------------------------------------------------------------------------- inputs

def input_problems(recipe: Recipe) -> list[PipelineError]:
    """Inputs that are missing or of the wrong kind, each a PipelineError (source model and its
    external data: SourceError; every other path: RecipeError) whose message starts with
    `file:line:col: key.path:`. `check` prints the messages; a run raises the first class."""
    from trtpipe.stages.source.paths import missing_path_error, source_file_problem
    problems = []
    for use in recipe_inputs(recipe):
        where = _where(recipe, use.key)
        if use.key == ():
            continue  # the recipe was read already (recipe/load.py refuses anything but a regular file)
        if use.key == ("source", "onnx"):
            problems += _source_onnx(use.path, where, missing_path_error)
        elif use.key == ("source", "saved_model"):
            problems += _saved_model(use.path, where, missing_path_error)
        elif use.key in (("source", "frozen_graph"), ("source", "tflite")):
            problem = source_file_problem(use.key[1], use.path, where)
            problems += [problem] if problem else []
        elif use.key[:2] == ("build", "plugins"):
            problem = not_a_file(use.path, "plugin library")
            if special_kind(use.path) == "missing":
                problems.append(RecipeError(f"{where}: plugin library {use.path} does not exist"))
            elif problem:
                problems.append(RecipeError(f"{where}: {problem}"))
        elif use.key[-1] == "npz":
            problems += _npz(use.path, where)
        elif use.key[-2:] == ("images", "dir"):
            problems += _image_folder(use.path, where)
        else:  # a file a pass parameter names: it exists (else it is no path); a FIFO would block hashing
            kind = special_kind(use.path)
            if kind not in (None, "a directory", "missing"):
                problems.append(RecipeError(f"{where}: {use.path} is {kind}, not a regular file or directory"))
            elif kind == "a directory":
                problems += [RecipeError(f"{where}: {p} (in {use.path}) is {k}, not a regular file")
                             for p, k in special_files_in(use.path)]
    timing = recipe.data["build"].get("timing_cache")
    if timing:
        kind = special_kind(timing)
        if kind not in (None, "missing"):
            problems.append(RecipeError(
                f"{_where(recipe, ('build', 'timing_cache'))}: {timing} is {kind}, not a regular file; a timing "
                "cache is read and then replaced after the build, so it must be a regular file or not exist yet",
                hint="point build.timing_cache at a file (it is created if missing), or remove the key"))
    return problems


def _source_onnx(path, where, missing_path_error):
    kind = special_kind(path)
    if kind == "missing" or kind == "a broken symbolic link":
        return [missing_path_error(path, where)]
    if kind == "a directory":
        saved = os.path.exists(os.path.join(path, "saved_model.pb"))
        return [SourceError(f"{where}: {path} is a directory, not an .onnx file",
                            hint="it holds a SavedModel: use `saved_model:` instead" if saved else None)]
    if kind is not None:
        return [SourceError(f"{where}: {path} is {kind}, not a regular file")]
    # Its external data files too. Only graphs up to EXTERNAL_CHECK_BYTES are read here (a model
    # keeping its weights outside is small; a bigger one would be parsed twice): the source stage
    # checks the others' external files with the same message when it loads them.
    if os.path.getsize(path) <= EXTERNAL_CHECK_BYTES:
        named = external_data_inputs(path)
        nul = [p for p in named if "\0" in p]
        if nul:  # no file can have such a name (the OS refuses it), so the model cannot be loaded
            return [SourceError(f"{where}: the model names an external data file whose name holds a NUL byte: "
                                f"{os.path.basename(nul[0])!r}", hint="re-save the model with its weights inside "
                                "or in a file with a plain name")]
        special = [m for m in (not_a_file(p, "external data file") for p in named) if m]
        if special:
            return [SourceError(f"{where}: " + "; ".join(special))]
    return []


def _saved_model(path, where, missing_path_error):
    kind = special_kind(path)
    if kind in ("missing", "a broken symbolic link"):
        return [missing_path_error(path, where)]
    if kind is None:
        return [SourceError(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)",
                            hint="for an .onnx file use `onnx:`")]
    if kind != "a directory":
        return [SourceError(f"{where}: {path} is {kind}, not a SavedModel directory")]
    pb = os.path.join(path, "saved_model.pb")
    pb_kind = special_kind(pb)
    if pb_kind == "missing":
        return [SourceError(f"{where}: {path} is not a SavedModel directory (no saved_model.pb)")]
    if pb_kind is not None:
        return [SourceError(f"{where}: {pb} is {pb_kind}, not a regular file")]
    return [SourceError(f"{where}: {p} (in the SavedModel) is {k}, not a regular file")
            for p, k in special_files_in(path)]


def _npz(path, where):
    import errno
    kind = special_kind(path)
    if kind in ("missing", "a broken symbolic link"):
        # worded as the validation stage words a failed np.load, so `check` and `run` agree
        reason = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return [RecipeError(f"{where}: cannot read {path}: {reason}")]
    if kind is not None:
        return [RecipeError(f"{where}: {path} is {kind}, not a regular file")]
    return []


def _image_folder(path, where):
    from trtpipe.stages.validate.data import IMAGE_EXTENSIONS
    if not os.path.lexists(path) or special_kind(path) in ("missing", "a broken symbolic link"):
        return [RecipeError(f"{where}: no such image folder {path}")]
    problem = not_a_directory(path, "image folder")
    if problem:
        return [RecipeError(f"{where}: {problem}")]
    problems = []
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        return [RecipeError(f"{where}: cannot list image folder {path}: {err.strerror or err}")]
    for name in names:
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            problem = not_a_file(os.path.join(path, name), "image")
            if problem:
                problems.append(RecipeError(f"{where}: {problem}"))
                if len(problems) >= 5:
                    break
    return problems


def external_data_inputs(model_path: str | Path) -> list[str]:
    """The external data files an ONNX model names (absolute paths; the graph's wire format is read,
    no weights, no onnx import: review/model_names.external_locations). Call only for a regular
    file; an unreadable model gives [] (the source stage reports it)."""
    from trtpipe.review.model_names import external_locations
    base = Path(model_path).parent
    return sorted({str(base / location) for location in external_locations(model_path)})


# ------------------------------------------------------------------------------------ outputs

def output_names(recipe: Recipe) -> list[tuple[str, str, tuple]]:
    """[(file name in output.dir, what it is, recipe key)] of the files a run of `recipe` publishes
    (files passes add, e.g. the NMS post-processing model, are checked when published)."""
    out, name = recipe.data["output"], recipe.name
    plan_key = ("output", "plan") if "plan" in (recipe.raw.get("output") or {}) else ("output", "dir")
    onnx_key = ("output", "onnx") if "onnx" in (recipe.raw.get("output") or {}) else ("output", "dir")
    # (external weights are published as `<model>.<sha256[:16]>.data`, named after their content)
    names = [(out["plan"], "the plan", plan_key), (out["onnx"], "the final ONNX model", onnx_key),
             (f"{name}.source.onnx", "the converted source model", ("output", "dir")),
             (f"{name}.postprocess.onnx", "the post-processing model", ("output", "dir")),
             ("report.json", "the report", ("output", "dir")), ("report.md", "the report", ("output", "dir"))]
    return names


def output_problems(recipe: Recipe, out_dir: str | Path, via_option: bool = False,
                    extra: list[tuple[str, str]] | None = None) -> list[OutputError]:
    """Outputs that would overwrite or sit inside an input of the run, and inputs inside the places
    the run rewrites (its versions, rejected graphs and staging directories in output.dir).

    Args:
        recipe: the loaded recipe.
        out_dir: the output directory the run writes (after `-o`).
        via_option: whether out_dir came from `-o` (messages then name the option, not the recipe line).
        extra: more [(file name in out_dir, what)] to check (files passes registered).

    Returns:
        OutputErrors, each naming the output, the input it would overwrite and where both come from.
    """
    out_dir = Path(os.path.realpath(out_dir))
    uses = [u for u in recipe_inputs(recipe) if os.path.lexists(u.path)]
    files = {os.path.realpath(u.path): u for u in uses}
    trees = [(os.path.realpath(u.path), u) for u in uses if u.tree or os.path.isdir(u.path)]
    src = recipe.data["source"].get("onnx")
    model_dir = os.path.dirname(os.path.realpath(src)) if src else None
    if (src and special_kind(src) is None and os.path.getsize(src) <= EXTERNAL_CHECK_BYTES
            and (_under(model_dir, out_dir) or _under(out_dir, model_dir))):
        for data in external_data_inputs(src):  # only read when outputs could land beside the model
            if "\0" in data:
                continue  # no such file can exist: input_problems refuses the model
            files.setdefault(os.path.realpath(data), FileUse(data, "external data of the source model",
                                                             ("source", "onnx")))

    def where(key):
        return f"-o {out_dir}: " if via_option and key[:2] == ("output", "dir") else f"{_where(recipe, key)}: "

    outputs = [(out_dir / n, what, key) for n, what, key in output_names(recipe)]
    outputs += [(out_dir / n, what, ("output", "dir")) for n, what in (extra or [])]
    outputs += [(out_dir / MARKER, "the output directory's owner marker", ("output", "dir")),
                (out_dir / LOCK, "the output directory's lock file", ("output", "dir"))]
    timing = recipe.data["build"].get("timing_cache")
    if timing:
        outputs.append((Path(timing), "the timing cache", ("build", "timing_cache")))
    problems = []
    for path, what, key in outputs:
        if path.parent == out_dir and os.path.lexists(path) and not os.path.islink(path):
            kind = special_kind(path)  # refused now, not after minutes of work when publishing
            if kind == "a directory":
                problems.append(OutputError(f"{where(key)}cannot publish {path.name}: {path} is a directory",
                                            hint="remove it or choose another output.dir"))
            elif kind is not None and path.name != LOCK:
                problems.append(OutputError(f"{where(key)}cannot publish {path.name}: {path} is {kind}; special "
                                            "files are never replaced", hint="remove it or choose another output.dir"))
        real = os.path.realpath(path)
        hit = files.get(real)
        if hit is not None:
            problems.append(OutputError(
                f"{where(key)}{what} would be written to {path}, which is {_input_name(recipe, hit)}; "
                "the run never overwrites a file it reads",
                hint="choose another output.dir or output file name"))
            continue
        for tree, use in trees:
            if _under(real, tree) and real != tree:
                problems.append(OutputError(
                    f"{where(key)}{what} would be written to {path}, inside {_input_name(recipe, use)}; "
                    "the run never writes into a directory it reads",
                    hint="choose an output.dir outside it"))
                break
    if timing:
        real_timing = os.path.realpath(timing)
        for path, what, _ in outputs[:-1]:
            if os.path.realpath(path) == real_timing:
                problems.append(OutputError(f"{where(('build', 'timing_cache'))}the timing cache {timing} is also "
                                            f"{what}", hint="give the timing cache its own file"))
    # files publishing replaces or removes when it switches versions: its own content-named weights,
    # and the plain artifacts an older trt-pipeline left (adopted, then dropped). A run reading one
    # of them (an earlier run's final ONNX and weights as the source) would delete its own input.
    managed = set(legacy_artifact_names(out_dir))
    for real, use in files.items():
        name = os.path.basename(real)
        if os.path.dirname(real) == str(out_dir) and (DATA_NAME.match(name) or name in managed):
            problems.append(OutputError(
                f"{_where(recipe, use.key) if use.key else use.path}: {use.what} {use.path} is a file of the "
                f"output directory {out_dir} that publishing replaces or removes",
                hint="copy the model (and its weights) elsewhere and name that copy in the recipe, or "
                     "choose another output.dir"))
    kept = [out_dir / RUNS_DIR, out_dir / FAILED_DIR]
    for real, use in dict(list(files.items()) + trees).items():
        staged = _under(real, out_dir) and any(part.startswith(STAGING_PREFIX)
                                               for part in Path(real).relative_to(out_dir).parts)
        inside = [k for k in kept if _under(real, k)] or ([out_dir] if staged else [])
        if inside:
            problems.append(OutputError(
                f"{_where(recipe, use.key) if use.key else use.path}: {use.what} {use.path} lies inside {inside[0]}, "
                "which the run rewrites (published versions, rejected graphs, staging)",
                hint="copy the file elsewhere and name that copy in the recipe"))
    return problems


def _input_name(recipe, use):
    if not use.key:
        return f"the recipe {use.path} itself"
    return f"{use.what} {use.path} ({_where(recipe, use.key)})"


def _under(path, directory):
    try:
        return Path(path).is_relative_to(Path(directory))
    except (TypeError, ValueError):
        return False


def legacy_artifact_names(out_dir: str | Path) -> list[str]:
    """Artifact names an earlier trt-pipeline's report.json lists (plain files in output.dir, which
    publishing adopts into a version and later removes); [] when there is no readable report."""
    report = Path(out_dir) / "report.json"
    if special_kind(report) is not None:
        return []
    try:
        if report.stat().st_size > 64 * 2**20:
            return []
        artifacts = json.loads(report.read_text()).get("artifacts") or {}
    except (OSError, ValueError, AttributeError):
        return []
    names = [n for n in artifacts if isinstance(n, str) and "/" not in n and n not in ("", ".", "..")]
    return names + ["report.json", "report.md"]
