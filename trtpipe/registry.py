"""The pass registry: name -> (function, parameter schema, docs), and the PassContext a pass gets.

Built-in passes live one per file in `passes/`; their parameter schemas in
`schemas/passes/<name>.schema.json`. Third-party packages add passes through the entry-point
group `trt_pipeline.passes` (each entry point is a module or callable that calls
`register_pass` when loaded). Pass authors import all of this from `trtpipe` itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from trtpipe.errors import PassError

ENTRY_POINT_GROUP = "trt_pipeline.passes"

_PASSES = {}
_loaded = False
# a pass: (graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph
PassFunc = TypeVar("PassFunc", bound=Callable[..., Any])


class PassInfo:
    """A registered pass: its function, parameter schema and the module that registered it.

    A built-in pass is known from its shipped schema before its module is imported (see `get`):
    `func` and `precheck` import the module on first use, so checking a recipe, computing cache
    keys and a fully cached run never load onnx-graphsurgeon, onnx or numpy (issue 13).
    """

    def __init__(self, name: str, func: Callable | None, schema: dict, origin: str,
                 precheck: Callable | None = None) -> None:
        self.name, self.schema, self.origin = name, schema, origin
        self._func, self._precheck = func, precheck

    @property
    def func(self) -> Callable:
        """The pass function `(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph`."""
        self._import()
        return self._func

    @property
    def precheck(self) -> Callable | None:
        """`precheck(params, ctx)`, raising a PipelineError for a configuration the backend cannot
        build, or None."""
        self._import()
        return self._precheck

    def _import(self) -> None:
        if self._func is None:  # a built-in known from its schema: its module registers it on import
            importlib.import_module(self.origin)
            if self.name not in _PASSES:
                raise RuntimeError(f"built-in pass module {self.origin} did not register a pass named '{self.name}'")
            self._func, self._precheck = _PASSES[self.name]._func, _PASSES[self.name]._precheck

    @property
    def summary(self) -> str:
        """First line of the pass's docs."""
        return (self.doc.splitlines() or [""])[0]

    @property
    def doc(self) -> str:
        """The pass's documentation: the function's docstring, else its module's (built-in passes
        document the graph problem they solve in the module docstring)."""
        module = inspect.getmodule(self.func)
        return inspect.cleandoc(self.func.__doc__ or (module.__doc__ if module else None) or "")


def register_pass(name: str, schema: dict | None = None,
                  precheck: Callable[[dict, PassContext], None] | None = None) -> Callable[[PassFunc], PassFunc]:
    """Decorator: register `func(graph: gs.Graph, params: dict, ctx: PassContext) -> gs.Graph`
    under `name`.

    Args:
        name: the name recipes use (`- pass: <name>`).
        schema: the parameters' JSON Schema (strict: `additionalProperties: false`); built-in
            passes leave it None and keep it in schemas/passes/<name>.schema.json.
        precheck: `precheck(params, ctx)` may refuse, by raising a PipelineError, a configuration
            that cannot work with the chosen backend (e.g. a plugin it lacks) before any
            conversion starts; `check` runs it too.

    Returns:
        The decorator; it registers the function when applied (at import of the pass module) and
        returns it unchanged.

    Raises:
        RuntimeError: (when the decorator is applied) no schema was given or shipped, or `name` is
            taken by another function. A programming error in the pass package, not a user error.
    """
    from trtpipe.recipe.schema import has_schema, load_schema

    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise RuntimeError(f"register_pass: pass name {name!r} must be a word (letters, digits, _ . -), as "
                           f"recipes write it after `pass:`")

    def wrap(func):
        if schema is None:
            where = f"passes/{name}.schema.json"
            if not has_schema(where):
                raise RuntimeError(f"pass '{name}' has no parameter schema: pass one to register_pass "
                                   f"(built-in passes ship schemas/{where})")
            resolved = load_schema(where)
        else:
            resolved = schema
        if schema is not None:  # a third-party schema; the shipped ones are checked by the tests, not at start-up
            check_pass_schema(name, resolved, func)
        existing = _PASSES.get(name)
        if existing and existing.func is not func:
            raise RuntimeError(f"pass '{name}' registered twice ({existing.origin} and {func.__module__})")
        _PASSES[name] = PassInfo(name, func, resolved, func.__module__, precheck)
        return func

    return wrap


def check_pass_schema(name: str, schema: object, func: Callable) -> None:
    """A pass's parameter schema must be a valid, strict JSON Schema whose defaults validate, so that
    recipe checks never fail on the schema itself.

    Raises:
        RuntimeError: naming the pass and its module (a bug of the pass, not of a recipe).
    """
    import jsonschema

    where = f"pass '{name}' ({getattr(func, '__module__', '?')})"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise RuntimeError(f"{where}: its parameter schema must be a JSON Schema object with \"type\": \"object\"")
    if schema.get("additionalProperties") is not False:
        raise RuntimeError(f"{where}: its parameter schema must set \"additionalProperties\": false (strict: "
                           f"a misspelled parameter must be an error, not ignored)")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        problems = [f"default of '{key}': {err.message}" for key, prop in (schema.get("properties") or {}).items()
                    if isinstance(prop, dict) and "default" in prop
                    for err in jsonschema.Draft202012Validator(prop).iter_errors(prop["default"])]
    except (jsonschema.SchemaError, jsonschema.exceptions.RefResolutionError, re.error, TypeError) as err:
        raise RuntimeError(f"{where}: invalid parameter schema: {str(err).splitlines()[0]}") from err
    except Exception as err:  # jsonschema raises unknown-format/ref errors of several kinds
        raise RuntimeError(f"{where}: invalid parameter schema: {type(err).__name__}: {err}") from err
    if problems:
        raise RuntimeError(f"{where}: a default in its parameter schema does not validate: {problems[0]}")


def load_all() -> None:
    """Import built-in passes and entry-point plugins once.

    Raises:
        PassError: a third-party entry point failed to import (its name, value and error).
    """
    global _loaded
    if _loaded:
        return
    from trtpipe.recipe.schema import own_top_level_package
    passes = own_top_level_package("passes")  # the built-in package (not a user's `passes/` folder)
    for mod in pkgutil.iter_modules(passes.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"passes.{mod.name}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except (Exception, SystemExit) as err:  # a broken plugin must not take the tool down silently
            raise PassError(f"third-party pass entry point '{ep.name}' ({ep.value}) failed to load: "
                            f"{type(err).__name__}: {err}") from err
    _loaded = True  # only once everything loaded: a failure is reported again, not hidden next time


def get(name: str) -> PassInfo | None:
    """The registered pass `name`, or None.

    Without third-party entry points installed, a built-in pass is answered from its shipped
    schema (schemas/passes/<name>.schema.json beside passes/<name>.py) and its module imported
    only when its function or precheck is used; with any installed, everything is loaded first
    (a plugin may register, or collide with, any name).
    """
    if _loaded or name in _PASSES:
        return _PASSES.get(name)
    if not _has_entry_points() and name in _builtin_modules():
        from trtpipe.recipe.schema import load_schema
        return PassInfo(name, None, load_schema(f"passes/{name}.schema.json"), _builtin_modules()[name])
    load_all()
    return _PASSES.get(name)


@functools.lru_cache(maxsize=1)
def _has_entry_points() -> bool:
    """Whether any installed distribution declares a `trt_pipeline.passes` entry point (read once
    per process, like the passes themselves)."""
    return bool(metadata.entry_points(group=ENTRY_POINT_GROUP))


@functools.lru_cache(maxsize=1)
def _builtin_modules() -> dict[str, str]:
    """{pass name: module} of the built-in passes, from the file names: passes/<name>.py registers
    `name` with schemas/passes/<name>.schema.json (tests/passes/test_registry_lazy.py holds them to it)."""
    from trtpipe.recipe.schema import has_schema, own_top_level_package
    passes = own_top_level_package("passes")
    return {mod.name: f"passes.{mod.name}" for mod in pkgutil.iter_modules(passes.__path__)
            if not mod.name.startswith("_") and has_schema(f"passes/{mod.name}.schema.json")}


def names() -> list[str]:
    """Sorted names of every registered pass."""
    load_all()
    return sorted(_PASSES)


def all_passes() -> list[PassInfo]:
    """Every registered pass, sorted by name."""
    load_all()
    return [_PASSES[n] for n in sorted(_PASSES)]


@dataclasses.dataclass
class PassContext:
    """What a pass may know about the run besides its graph and parameters, and what it hands on
    to later stages (input contract, output map, artifacts, NMS post-processing)."""

    name: str = "model"             # recipe name, for artifact file names
    backend: str = "tensorrt_rtx"
    backend_version: tuple | None = None
    recipe_dir: Path | None = None
    plugin_libraries: list = dataclasses.field(default_factory=list)  # build.plugins, resolved
    stage_dir: Path | None = None
    # new input name -> how to derive it from the source model's input (set_input, replace_preprocessing)
    input_contract: dict = dataclasses.field(default_factory=dict)
    # final output name -> source output name (rename, set_outputs)
    output_map: dict = dataclasses.field(default_factory=dict)
    # artifact name -> path, published next to the plan (e.g. the NMS post-processing model)
    artifacts: dict = dataclasses.field(default_factory=dict)
    # set by an NMS `split`: how the post-processing model completes the engine (see docs/architecture.md)
    postprocess: dict | None = None
    notes: list = dataclasses.field(default_factory=list)
    logger: Callable[[str], Any] | None = None
    # what a pass could not do that may make the plan wrong at some shapes or inputs
    warnings: list = dataclasses.field(default_factory=list)
    warner: Callable[[str], Any] | None = None

    def log(self, msg: str) -> None:
        """A note for the report and `-v` output."""
        self.notes.append(msg)
        if self.logger:
            self.logger(msg)

    def warn(self, msg: str) -> None:
        """Something the pass could not do (e.g. a part it could not make batch-generic): shown by
        default, recorded in report.json/report.md under the pass, and kept in `notes` too."""
        self.warnings.append(msg)
        self.notes.append(msg)
        if self.warner:
            self.warner(msg)
        elif self.logger:
            self.logger(msg)

    def add_artifact(self, name: str, path: str | Path) -> None:
        """Publish `path` (a file the pass wrote inside `stage_dir`) next to the plan as `name`."""
        self.artifacts[name] = Path(path)

    def require_plugin(self, plugin: str, version: str = "1", namespace: str = "") -> None:
        """Refuse, before any conversion, when the run's backend (plus `plugin_libraries`, loaded
        as the build loads them) has no creator for `plugin`.

        Args:
            plugin: the plugin creator's name as the TensorRT plugin registry lists it
                (e.g. "EfficientNMS_TRT").
            version: the creator version required ("" accepts any).
            namespace: the creator's plugin namespace ("" is TensorRT's default namespace).

        Raises:
            BuildError: the registry lacks it (the message lists close names and the versions it
                has), a plugin library cannot be loaded, or the backend is not installed.
        """
        self.plugin_creator(plugin, version, namespace)

    def plugin_creator(self, plugin: str, version: str = "1", namespace: str = "") -> Any:
        """The creator a plugin node reaches in the run's backend, after loading `plugin_libraries`
        (trtpipe/stages/build/plugin_fields.py): a `trtpipe.graph.plugin_nodes.PluginCreatorSpec`
        with its fields' names, types and lengths, for `plugin_nodes.check_attrs` and
        `plugin_nodes.add_plugin_node`.

        Args:
            plugin: the creator name (the node's op type), e.g. "ROIAlign_TRT".
            version: the creator version ("" accepts any).
            namespace: the plugin namespace ("" is TensorRT's default namespace).

        Returns:
            The PluginCreatorSpec.

        Raises:
            BuildError: as require_plugin.
        """
        from trtpipe.backend import resolve_backend
        from trtpipe.stages.build.plugin_fields import find_creator
        return find_creator(resolve_backend(self.backend), plugin, version, namespace, self.plugin_libraries)
