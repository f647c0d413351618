"""Stage 1: recipe file -> `Recipe`.

Reads the YAML (keeping line/column marks), checks it against schemas/recipe.schema.json, checks
every pass name and its parameters against the pass registry, checks what a schema cannot say
(profile shape consistency, unique profile names), fills defaults and resolves paths against the
recipe's directory. All errors are collected and reported together, each with file:line:col.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import re
import stat
from pathlib import Path

from trtpipe import registry
from trtpipe.errors import RecipeError
from trtpipe.recipe.resolved import (  # noqa: F401
    SOURCE_KINDS,
    BuildSettings,
    Precision,
    Tolerances,
    non_finite,
    parse_size,
    resolve_values,
)
from trtpipe.recipe.schema import fill_defaults, key_path, load_schema, schema_errors, suggest
from trtpipe.recipe.yamlmarks import MAX_RECIPE_BYTES, Marks, load_yaml_with_marks, too_big

MAX_ERRORS = 50  # recipe errors shown; the rest are counted


@dataclasses.dataclass
class Recipe:
    path: Path
    text: str
    raw: dict            # as written
    data: dict           # defaults filled, paths absolute
    marks: Marks
    defaults: set        # key paths whose values came from defaults

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def locate(self, path: tuple) -> str:
        return self.marks.locate(path)

    @property
    def precision(self) -> Precision:
        """The normalized precision (mode and its options)."""
        return Precision.of(self.data)

    @property
    def tolerances(self) -> Tolerances:
        """Validation tolerances, defaults following from the precision filled in."""
        return Tolerances.of(self.data)

    @property
    def build(self) -> BuildSettings:
        """The resolved build settings."""
        return BuildSettings.of(self.data)

    def enabled_passes(self) -> list[tuple[int, dict]]:
        return [(i, p) for i, p in enumerate(self.data["passes"]) if p.get("enabled", True)]


def load_recipe(path: str | Path) -> Recipe:
    """Read, check and resolve a recipe file (stage 1).

    Args:
        path: the recipe YAML file (UTF-8); relative paths inside it resolve against its directory.

    Returns:
        The Recipe: `raw` as written, `data` with schema defaults filled, precision normalized,
        `build.workspace_bytes` in bytes, paths absolute and `<name>` expanded; `marks` locate any
        key path as `file:line:col`; `defaults` holds the key paths that came from defaults.

    Raises:
        RecipeError: the file is missing, unreadable, not a regular file or over 1 MiB
            (`read_recipe_text`); YAML it may not use, over the nesting or alias limits, a syntax
            error or a duplicate key (`load_yaml_with_marks`); every schema violation, NaN or
            infinite number, unknown pass name, invalid pass parameter and inconsistent build
            profile (min <= opt <= max per dimension, equal ranks, unique names), all reported
            together with file:line:col (the first MAX_ERRORS by line, then a count); precision
            options of another mode; a workspace that is not > 0 bytes; output file names that collide.
        PassError: a third-party pass entry point failed to load (the registry is loaded to check
            pass names).
    """
    path = Path(path)
    text = read_recipe_text(path)
    raw, marks = load_yaml_with_marks(text, str(path))
    check_mapping(raw, str(path))
    # NaN passes every JSON Schema bound and inf fails them as "greater than the maximum": a bound
    # error at a NaN/inf is said as what it is, "not a finite number"; other errors there (a size
    # written as a float) say what is expected
    errors = list(schema_errors(raw, load_schema("recipe.schema.json")))
    errors += _check_passes(raw) + _check_build(raw)
    bounds = re.compile(r"greater than the maximum|less than the minimum")
    non_finite_paths = {p for p, _ in non_finite(raw)}
    errors = [e for e in errors if not (e[0] in non_finite_paths and bounds.search(e[1]))]
    known = {p for p, _ in errors}
    bad_numbers = [(p, msg) for p, msg in non_finite(raw) if p not in known]
    errors += bad_numbers
    if errors:
        raise RecipeError(_error_list(path, errors, marks),
                          hint="write finite numbers (e.g. `atol: 1e-3`); YAML's .nan and .inf are not allowed "
                               "in a recipe" if bad_numbers else None)
    data = fill_defaults(raw, load_schema("recipe.schema.json"))
    data["passes"] = [_fill_pass_defaults(item) for item in data["passes"]]
    defaults = _default_paths(raw, data)
    _resolve(data, path.parent.resolve(), marks.locate)
    resolve_values(data, marks.locate)
    return Recipe(path.resolve(), text, raw, data, marks, defaults)


def check_mapping(raw: object, filename: str) -> None:
    """Refuse a recipe document that is not a YAML mapping (an empty file, a list, a scalar).

    Raises:
        RecipeError: `raw` (what the YAML loaded to) is not a dict.
    """
    if raw is None:
        raise RecipeError(f"{filename}:1:1: recipe is empty: a recipe is a YAML mapping with at least "
                          f"`name:` and `source:`")
    if not isinstance(raw, dict):
        kind = "a list" if isinstance(raw, list) else f"a single value ({type(raw).__name__})"
        raise RecipeError(f"{filename}:1:1: a recipe must be a YAML mapping with at least `name:` and `source:`, "
                          f"got {kind}")


def read_recipe_text(path: str | Path) -> str:
    """The text of recipe file `path`, checked before it is opened: only a regular file of at most
    MAX_RECIPE_BYTES (1 MiB) is read, so a FIFO, a device such as /dev/zero or a huge file can
    neither hang nor exhaust memory.

    Args:
        path: the recipe file (UTF-8).

    Returns:
        The file's text.

    Raises:
        RecipeError: missing (with a did-you-mean among the folder's YAML files), a directory, not a
            regular file, over MAX_RECIPE_BYTES, unreadable, or not UTF-8 (with the line and column
            of the first bad byte).
    """
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise RecipeError(f"{path}: {_not_regular(info.st_mode)}; a recipe must be a regular file",
                              hint="`python pipeline.py check` also takes a folder of recipes"
                              if stat.S_ISDIR(info.st_mode) else None)
        if info.st_size > MAX_RECIPE_BYTES:
            raise RecipeError(too_big(str(path), info.st_size))
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if not stat.S_ISREG(now.st_mode):
                raise RecipeError(f"{path}: {_not_regular(now.st_mode)}; a recipe must be a regular file")
            data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        near = [p.name for p in path.parent.glob("*.y*ml")] if path.parent.is_dir() else []
        raise RecipeError(f"{path}: recipe file not found{suggest(path.name, near)}") from None
    except OSError as err:
        raise RecipeError(f"{path}: cannot read recipe: {err.strerror or err}") from None
    if len(data) > MAX_RECIPE_BYTES:  # it grew after the stat
        raise RecipeError(too_big(str(path), len(data)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise RecipeError(f"{path}:{line}:{col}: not UTF-8 text: byte 0x{data[err.start]:02x} ({err.reason})",
                          hint="save the recipe as UTF-8") from None


def _not_regular(mode):
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return "is " + next((name for test, name in kinds if test(mode)), "not a regular file")


def _error_list(path, errors, marks):
    """One message for every recipe error, sorted by line: the first MAX_ERRORS, then a count."""
    errors.sort(key=lambda e: marks.line(e[0]) or marks.line(e[0][:-1]) or 0)
    lines = [f"{marks.locate(p)}: {key_path(p)}: {msg}" for p, msg in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        lines.append(f"... and {len(errors) - MAX_ERRORS} more")
    noun = "error" if len(errors) == 1 else "errors"
    return f"{path}: {len(errors)} recipe {noun}:\n  " + "\n  ".join(lines)


def _check_passes(raw):
    errors = []
    items = raw.get("passes")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or not isinstance(item.get("pass"), str):
            continue  # the schema check already reported it
        info = registry.get(item["pass"])
        if info is None:
            errors.append(((("passes", i, "pass")),
                           f"unknown pass '{item['pass']}'{suggest(item['pass'], registry.names())}; "
                           f"`python pipeline.py passes` lists them"))
            continue
        if isinstance(item.get("params", {}), dict):
            errors += list(schema_errors(item.get("params") or {}, info.schema, ("passes", i, "params")))
    return errors


def _check_build(raw):
    """What the schema cannot say; skips anything the schema check already found malformed."""
    build = raw.get("build")
    if not isinstance(build, dict):
        return []
    errors = []
    workspace = build.get("workspace")
    if isinstance(workspace, float) and math.isfinite(workspace) and workspace.is_integer():
        # JSON Schema counts 1e99 and 2.0 as integers; a size is written as text or whole bytes
        errors.append((("build", "workspace"),
                       f"expected a size such as 2GiB, 512MiB, 1.5GB or a whole number of bytes (e.g. 2147483648), "
                       f"got the YAML float {workspace!r}"))
    seen = {}
    profiles = build.get("profiles")
    for i, prof in enumerate(profiles if isinstance(profiles, list) else []):
        if (not isinstance(prof, dict) or not isinstance(prof.get("name"), str)
                or not isinstance(prof.get("inputs"), dict)):
            continue
        if prof["name"] in seen:
            errors.append((("build", "profiles", i, "name"),
                           f"duplicate profile name '{prof['name']}' (also profiles[{seen[prof['name']]}])"))
        seen.setdefault(prof["name"], i)
        for inp, dims in prof["inputs"].items():
            if not (isinstance(dims, dict) and all(isinstance(dims.get(k), list) for k in ("min", "opt", "max"))):
                continue
            if not all(isinstance(d, int) for k in ("min", "opt", "max") for d in dims[k]):
                continue
            errors += _check_profile_dims(("build", "profiles", i, "inputs", inp), inp, dims)
    return errors


def _check_profile_dims(path, name, dims):
    lo, opt, hi = dims["min"], dims["opt"], dims["max"]
    if not len(lo) == len(opt) == len(hi):
        return [(path, f"input '{name}': min, opt and max must have the same rank, got {lo}, {opt}, {hi}")]
    bad = [d for d in range(len(lo)) if not lo[d] <= opt[d] <= hi[d]]
    if bad:
        return [(path, f"input '{name}': need min <= opt <= max in every dimension; "
                       f"dimension {bad[0]} has min={lo[bad[0]]}, opt={opt[bad[0]]}, max={hi[bad[0]]}")]
    return []


def _fill_pass_defaults(item):
    info = registry.get(item["pass"])
    item = dict(item)
    item["params"] = fill_defaults(item.get("params") or {}, info.schema)
    return item


def _default_paths(raw, data, prefix=()):
    """Key paths present in `data` only because of defaults (for `explain` and the report)."""
    out = set()
    if isinstance(data, dict):
        for k, v in data.items():
            if not isinstance(raw, dict) or k not in raw:
                out.add(prefix + (k,))
            else:
                out |= _default_paths(raw[k], v, prefix + (k,))
    elif isinstance(data, list) and isinstance(raw, list):
        for i, (r, d) in enumerate(zip(raw, data)):
            out |= _default_paths(r, d, prefix + (i,))
    return out


def _resolve(data, base, locate):
    """Make recipe paths absolute (relative to the recipe) and expand name placeholders."""
    src = data["source"]
    if "onnx" in src:  # SavedModel-only settings mean nothing for an ONNX source
        for key in ("signature", "tag", "opset", "large_model"):
            src.pop(key, None)
    elif "frozen_graph" in src or "tflite" in src:  # no signatures or tag sets in a single-graph file
        for key in ("signature", "tag"):
            src.pop(key, None)
    for key in SOURCE_KINDS:
        if key in src:
            src[key] = resolve_path(src[key], base)
    build = data["build"]
    for key in ("timing_cache", "runtime_cache"):
        if build.get(key):
            build[key] = str((base / build[key]).resolve())
    build["plugins"] = [str((base / p).resolve()) for p in build["plugins"]]
    out = data["output"]
    name = data["name"]
    if out.get("labels"):  # class names for `predict`, published next to the plan
        out["labels"] = str((base / out["labels"]).resolve())
        if not Path(out["labels"]).is_file():
            raise RecipeError(f"{locate(('output', 'labels'))}: output.labels: {out['labels']} is not a file",
                              hint="a text file with one class name per line, or a JSON list of names")
    out["dir"] = str((base / out["dir"].replace("<name>", name)).resolve())
    out["plan"] = out["plan"].replace("<name>", name)
    out["onnx"] = out["onnx"].replace("<name>", name)
    reserved = {f"{name}.source.onnx": "the converted source model", "report.json": "the report",
                "report.md": "the report"}
    taken = {**reserved, out["plan"]: "output.plan"}
    if out["onnx"] in taken:
        raise RecipeError(f"{locate(('output', 'onnx'))}: output.onnx: '{out['onnx']}' is already the name of "
                          f"{taken[out['onnx']]}",
                          hint="give the final ONNX model its own file name")
    if out["plan"] in reserved:
        raise RecipeError(f"{locate(('output', 'plan'))}: output.plan: '{out['plan']}' is already the name of "
                          f"{reserved[out['plan']]}",
                          hint="give the plan its own file name")


def resolve_path(value: str, base: Path) -> str:
    """Recipe paths are relative to the recipe; `pkg:<package>/<path>` names a file shipped inside
    an installed Python package (e.g. the onnx wheel's model-zoo test graphs)."""
    if value.startswith("pkg:"):
        package, _, rest = value[4:].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return str(Path(value))  # the source stage reports the missing file
        return str(Path(list(spec.submodule_search_locations)[0]) / rest)
    return str((base / value).resolve())
