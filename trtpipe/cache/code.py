"""The code a cached output depends on, found from imports rather than listed by hand.

A stage's (or pass's) cache key must change when any project module that computes its output
changes. `code_digest(roots)` walks the import statements of the root modules (at any depth:
function-level imports count too), follows every import that names a module of the same
project (the roots' top-level packages, `trtpipe`, the other top-level packages of the
distributions that ship the roots, and any module on the user's own path, outside the standard
library and site-packages), and hashes the files it reaches. Editing a
helper a pass imports therefore re-runs that pass; editing a module nothing in the closure
imports does not.

Not followed: the cache's own bookkeeping (`trtpipe.cache`, `trtpipe.stages.run_state`), which
decides where outputs are stored, not what they contain; the store's `FORMAT` covers that.
Imports under `if TYPE_CHECKING:` are skipped (they never run). Dynamic imports
(`importlib.import_module`) are invisible to this walk: project code does not use them on a
stage's path (the pass registry's discovery is not part of any output).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import site
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NOT_FOLLOWED = ("trtpipe.cache", "trtpipe.stages.run_state")

_parsed: dict[str, tuple[tuple, str, list[str]]] = {}  # path -> (stamp, sha256, imported module names)
_memo: dict[str, Any] = {"path": None, "dirty": False}  # where _parsed is kept between runs (use_memo)
_dists: dict[str, Any] = {}  # "saved": {"stamp", "by_top"}: _packages_distributions, kept with _parsed


def use_memo(path: str | Path) -> None:
    """Keep the scans (file sha256 and imports, per path, size, mtime and inode) in the JSON file
    `path` between runs, so a fully cached run does not re-read and re-parse ~300 modules. A file
    whose size, mtime or inode changed is scanned again, as within a run."""
    import json
    path = Path(path)
    if _memo["path"] == path:
        return
    _memo["path"] = path
    try:
        saved = json.loads(path.read_text())
        for name, (stamp, sha, names) in saved["scans"].items():
            _parsed.setdefault(name, (tuple(stamp), sha, list(names)))
        if saved.get("distributions") and "saved" not in _dists:
            _dists["saved"] = saved["distributions"]
    except (OSError, ValueError, TypeError, KeyError):
        pass  # none yet, or unreadable: scanned afresh and rewritten


def _save_memo() -> None:
    if not (_memo["path"] and _memo["dirty"]):
        return
    import contextlib
    import json

    from trtpipe.cache.files import atomic_write
    with contextlib.suppress(OSError):
        atomic_write(_memo["path"], json.dumps({"scans": {k: [list(v[0]), v[1], v[2]] for k, v in _parsed.items()},
                                                "distributions": _dists.get("saved")}).encode())
    _memo["dirty"] = False


def code_digest(roots: list[str]) -> str:
    """sha256 over (module name, file sha256) of every project module the roots import, transitively.

    Args:
        roots: dotted module names (e.g. "trtpipe.stages.build.plan", "passes.nms").

    Raises:
        ModuleNotFoundError: a root cannot be found.
    """
    files = import_closure(roots)
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{_scan(files[name])[0]}\n".encode())
    _save_memo()
    return h.hexdigest()


def import_closure(roots: list[str]) -> dict[str, Path]:
    """{module name: source file} of the roots and every project module they import, transitively
    (package `__init__.py` files on the way included).

    Raises:
        ModuleNotFoundError: a root cannot be found.
    """
    project = {r.split(".")[0] for r in roots} | {"trtpipe"}
    project |= _distribution_packages(project)
    found: dict[str, Path] = {}
    todo = list(roots)
    for root in roots:
        if module_file(root) is None:
            raise ModuleNotFoundError(f"no module named {root!r}", name=root)
    while todo:
        name = todo.pop()
        if name in found or _not_followed(name):
            continue
        path = module_file(name)
        if path is None:
            continue  # `from pkg import attr`: attr is no module; pkg itself is queued separately
        if name.split(".")[0] not in project and not _outside_installed(path):
            continue  # the standard library or an installed library: covered by the versions in the key
        found[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        todo += _imports(name, path)
    return found


@functools.lru_cache(maxsize=None)
def module_file(name: str) -> Path | None:
    """The source file of module `name` (a package's `__init__.py`), found without importing it
    (only its top-level package is looked up, which is already imported for project code)."""
    top, *rest = name.split(".")
    mod = sys.modules.get(top)  # None: an import of it is blocked
    if top in sys.modules and mod is None:
        return None
    spec = mod.__spec__ if mod is not None else importlib.util.find_spec(top)
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        p = Path(base).joinpath(*rest)
        if (p / "__init__.py").is_file():
            return p / "__init__.py"
        if p.with_suffix(".py").is_file():
            return p.with_suffix(".py")
    return None


# trt-pipeline's own top-level packages (setup.cfg [options.packages.find])
OWN_PACKAGES = frozenset({"trtpipe", "passes", "schemas"})


def _distribution_packages(tops: set[str]) -> set[str]:
    """Top-level import names shipped by the distributions that ship `tops` (a third-party pass
    package may import a sibling top-level module of its own wheel)."""
    if tops <= OWN_PACKAGES:  # only trt-pipeline's own: no scan of every installed distribution
        return set(OWN_PACKAGES)
    by_top = _packages_distributions()
    dists = {d for top in tops for d in by_top.get(top, [])}
    return {top for top, owners in by_top.items() if dists.intersection(owners)}


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    """importlib.metadata.packages_distributions(), read once per process (it reads every
    installed distribution's file list: 0.1 to 0.4 s here, and every stage key asks) and kept in
    the memo file between runs while no directory on sys.path changed (an install or removal
    changes its directory's mtime)."""
    from importlib import metadata
    stamp = []  # one per directory, however sys.path spells it ('' and the script's dir may be the cwd)
    for entry in sorted({os.path.abspath(e or ".") for e in sys.path}):
        try:
            stamp.append([entry, os.stat(entry).st_mtime_ns])
        except OSError:
            stamp.append([entry, None])
    saved = _dists.get("saved")
    if saved and saved.get("stamp") == stamp:
        return saved["by_top"]
    by_top = {k: list(v) for k, v in metadata.packages_distributions().items()}
    _dists["saved"] = {"stamp": stamp, "by_top": by_top}
    _memo["dirty"] = True
    return by_top


@functools.lru_cache(maxsize=None)
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return tuple(str(Path(r).resolve()) for r in roots if r)


@functools.lru_cache(maxsize=None)
def _outside_installed(path: Path) -> bool:
    """True for a module file outside the standard library and site-packages: code on the user's
    own path (PYTHONPATH, the working tree), which no library version in the key stands for."""
    resolved = str(path.resolve())
    return not any(resolved == r or resolved.startswith(r + "/") for r in _installed_roots())


def _not_followed(name: str) -> bool:
    return any(name == n or name.startswith(n + ".") for n in NOT_FOLLOWED)


def _imports(name: str, path: Path) -> list[str]:
    return _scan(path)[1] if not path.name == "__init__.py" else _scan(path, package=name)[1]


def _scan(path: Path, package: str | None = None) -> tuple[str, list[str]]:
    """(sha256 of the file, absolute names it imports, each `from x import y` as both x and x.y)."""
    st = path.stat()
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino, package)
    memo_key = f"{path}|{package or ''}"  # a package's __init__ is scanned as a file and as a package
    hit = _parsed.get(memo_key)
    if hit and tuple(hit[0]) == stamp:
        return hit[1], hit[2]
    data = path.read_bytes()
    module = package or _module_name(path)
    names: list[str] = []
    for node in _runtime_nodes(ast.parse(data, filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package=package is not None)
            if base:
                names.append(base)
                names += [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    value = (hashlib.sha256(data).hexdigest(), names)
    _parsed[memo_key] = (stamp, *value)
    _memo["dirty"] = True
    return value


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every statement of `tree` (at any depth: function bodies, branches, handlers) except those
    under `if TYPE_CHECKING:`: imports made only for type annotations never run, so they are no
    dependency of a stage's output. Expressions are not descended into (an import is a
    statement), which keeps a scan of ~300 modules at a few milliseconds each."""
    stack = list(getattr(tree, "body", []))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            stack.extend(getattr(node, field, None) or ())


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_name(path: Path) -> str:
    """Dotted name of a non-package module file, from the packages (folders with __init__.py) above it."""
    parts = [path.stem]
    parent = path.parent
    while (parent / "__init__.py").is_file():
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    if not node.level:
        return node.module
    parts = module.split(".")
    keep = len(parts) - node.level + (1 if is_package else 0)
    if keep < 1:
        return None
    return ".".join(parts[:keep] + ([node.module] if node.module else []))
