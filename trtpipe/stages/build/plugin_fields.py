"""Plugin creators as the backend's registry lists them, with their fields: for the checks made
before any conversion (`plugin` and `nms` prechecks, `check`), for `python pipeline.py plugins`,
and for writing plugin attributes in the type each field declares.

The registry is the backend's global one (`trt.get_plugin_registry()`), after loading the recipe's
`build.plugins` libraries into it (each once per process), exactly as the build does before it
parses the graph (stages/build/plan.py). Field collections come from `creator.field_names`
(IPluginCreator, IPluginCreatorV3One, creators registered from Python): name, type
(PluginFieldType) and length.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from trtpipe.errors import BuildError
from trtpipe.fileguard import not_a_file, special_kind
from trtpipe.graph.plugin_nodes import PluginCreatorSpec, PluginFieldSpec
from trtpipe.stages.build.errors import grab_stderr
from trtpipe.stages.build.plugins import dlopen_reason, location_prefix

if TYPE_CHECKING:
    from trtpipe.backend import Backend

_LOADED: dict[str, dict[tuple[str, str, str], str]] = {}  # library path -> the creators it added


def load_libraries(backend: Backend, paths: Sequence[str], locate: Callable[[tuple], str] | None = None,
                   what: str = "build.plugins") -> dict[tuple[str, str, str], str]:
    """Load `build.plugins` libraries into the backend's global plugin registry, each once per
    process, as the build does before parsing.

    Args:
        backend: the Backend whose registry receives them.
        paths: library paths (resolved, as `Recipe.data["build"]["plugins"]` holds them).
        locate: recipe key path -> "file:line:col", for messages.
        what: how messages name the list ("build.plugins", or "--library" on the command line).

    Returns:
        {(name, version, namespace): library path} of the creators the libraries registered.

    Raises:
        BuildError: a library does not exist, is no regular file (a FIFO, a device such as
            /dev/zero, a directory: said which), or cannot be loaded (the loader's reason, e.g. a
            missing libcuda.so.1).
    """
    registry = backend.trt.get_plugin_registry()
    added: dict[tuple[str, str, str], str] = {}
    for i, path in enumerate(paths):
        key = os.path.realpath(path)
        if key not in _LOADED:
            where = location_prefix(locate, ("build", "plugins", i)) + f"{what}[{i}]: "
            kind = special_kind(path)
            if kind == "missing":
                raise BuildError(f"{where}plugin library {path} does not exist")
            if kind is not None:
                raise BuildError(f"{where}{not_a_file(path, 'plugin library') or f'plugin library {path} is {kind}'}"
                                 f"; a plugin library is a shared object (.so)")
            before = set(_keys(registry))
            with grab_stderr() as printed:
                handle = registry.load_library(path)
            if handle is None:
                said = [ln for ln in printed.get("text", "").splitlines() if ln.strip()]
                raise BuildError(f"{where}plugin library {path} could not be loaded: {dlopen_reason(path, said)}",
                                 hint="the build loads it the same way; a library that needs a GPU driver "
                                      "(libcuda.so.1) loads only where one is installed")
            _LOADED[key] = {k: path for k in _keys(registry) if k not in before}
        added.update(_LOADED[key])
    return added


def _creators(registry):
    return list(getattr(registry, "all_creators", None) or getattr(registry, "plugin_creator_list", None) or [])


def _keys(registry):
    return [(c.name, str(c.plugin_version), c.plugin_namespace or "") for c in _creators(registry)]


def creator_specs(backend: Backend, libraries: Sequence[str] = (), locate: Callable[[tuple], str] | None = None,
                  what: str = "build.plugins") -> list[PluginCreatorSpec]:
    """Every creator the backend's registry holds once `libraries` are loaded, with its fields,
    sorted by name and version. Creators that fail to list their fields (TensorRT-RTX's
    parser-internal MyelinWeightsTransformPlugin raises "shall be used only in parser") are left out.

    Raises:
        BuildError: a library cannot be loaded (load_libraries).
    """
    trt = backend.trt
    if hasattr(trt, "init_libnvinfer_plugins"):  # tensorrt: registers the standard *_TRT plugins
        with grab_stderr():
            trt.init_libnvinfer_plugins(None, "")
    from_library = load_libraries(backend, libraries, locate, what)
    out = []
    for creator in _creators(trt.get_plugin_registry()):
        key = (creator.name, str(creator.plugin_version), creator.plugin_namespace or "")
        with grab_stderr() as printed:
            try:
                fields = tuple(PluginFieldSpec(f.name, f.type.name, int(f.size)) for f in creator.field_names)
            except Exception:  # a creator that cannot answer: listed without fields
                fields = None
        if "Error" in printed.get("text", "") and not fields:
            continue  # parser-internal creators say so when asked
        out.append(PluginCreatorSpec(*key, fields=fields,
                                     origin=from_library.get(key) or f"{backend.name} {backend.version}"))
    return sorted(out, key=lambda c: (c.name.lower(), c.version, c.namespace))


def find_creator(backend: Backend, name: str, version: str = "1", namespace: str = "",
                 libraries: Sequence[str] = (), locate: Callable[[tuple], str] | None = None) -> PluginCreatorSpec:
    """The creator a plugin node `name` / `version` / `namespace` reaches (after loading `libraries`).

    Args:
        backend: the backend a run builds with.
        name: the creator name (the node's op type), e.g. "ROIAlign_TRT".
        version: the creator version ("" accepts any: the highest is returned).
        namespace: the plugin namespace ("" is TensorRT's default).
        libraries: `build.plugins` library paths.
        locate: recipe key path -> "file:line:col", for library messages.

    Returns:
        The creator's PluginCreatorSpec (its fields, and where it came from).

    Raises:
        BuildError: the backend (plus libraries) has no such creator, or not that version or
            namespace; the message lists the versions it has, or close names, and what is available.
    """
    creators = creator_specs(backend, libraries, locate)
    same = [c for c in creators if c.name == name and c.namespace == namespace]
    match = [c for c in same if not version or c.version == str(version)]
    if match:
        return max(match, key=lambda c: c.version)
    where = f"backend {backend.label}" + (f" with build.plugins {list(libraries)}" if libraries else "")
    if same:
        have = ", ".join(sorted(c.version for c in same))
        raise BuildError(f"plugin '{name}' version {version} is not provided by {where}: it has version(s) {have}",
                         hint=f"set the plugin's version to {same[-1].version}, or load a library with "
                              f"version {version} via build.plugins")
    other_ns = [c for c in creators if c.name == name]
    if other_ns:
        spaces = ", ".join(repr(c.namespace) for c in other_ns)
        raise BuildError(f"plugin '{name}' in namespace '{namespace}' is not provided by {where}: it is registered "
                         f"in namespace(s) {spaces}", hint="set the plugin's namespace to one of those")
    names = sorted({c.name for c in creators})
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or difflib.get_close_matches(
        name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
    close = [n for n in names if n in close or n.lower() in close]
    hint = (("did you mean " + " or ".join(map(repr, close)) + "? ") if close else "") + \
        "`python pipeline.py plugins` lists them; load a library that provides it via build.plugins, " \
        "or choose a backend that ships it"
    raise BuildError(f"plugin '{name}' is not provided by {where} (it has: {', '.join(names) or 'none'})", hint=hint)


def describe(creator: PluginCreatorSpec) -> list[str]:
    """Text lines for one creator: name, version, namespace and origin, then one line per field."""
    head = f"{creator.name}  version {creator.version}" + (f"  namespace '{creator.namespace}'"
                                                          if creator.namespace else "") + f"  ({creator.origin})"
    if creator.fields is None:
        return [head, "    (does not list its fields)"]
    if not creator.fields:
        return [head, "    (no fields)"]
    width = max(len(f.name) for f in creator.fields)
    return [head] + [f"    {f.name:<{width}}  {f.type:<8} length {f.length}" for f in creator.fields]
