"""Plugin libraries and the check that every non-standard op in a graph has a plugin creator.

TensorRT's ONNX parser hands any op it does not import itself to the plugin registry, looking up
the op type as the plugin name (version/namespace from the node's `plugin_version` and
`plugin_namespace` attributes). Checking that up front gives one clear message per missing
plugin instead of the parser's "Plugin not found" assertion. Creators with their fields, for the
checks made before any conversion and `python pipeline.py plugins`, are in plugin_fields.py.

TensorRT objects (builder, parser, logger, plugin registries) are typed `Any`: they come from
whichever of `tensorrt` / `tensorrt_rtx` the Backend imported, and neither need be installed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from trtpipe.errors import BuildError
from trtpipe.fileguard import not_a_file

if TYPE_CHECKING:
    import onnx

    from trtpipe.backend import Backend

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training")


def registries(backend: Backend, builder: Any, logger: Any) -> list[Any]:
    """The global registry (where libraries are loaded and the parser looks) and, when different,
    the builder's (TensorRT-RTX keeps a child registry that searches its parent)."""
    trt = backend.trt
    if hasattr(trt, "init_libnvinfer_plugins"):
        # Registers the standard *_TRT plugins on tensorrt (a no-op on TensorRT-RTX).
        trt.init_libnvinfer_plugins(logger, "")
    regs = [trt.get_plugin_registry()]
    own = builder.get_plugin_registry() if hasattr(builder, "get_plugin_registry") else None
    if own is not None and own is not regs[0]:
        regs.append(own)
    return regs


def load_libraries(paths: Sequence[str], registry: Any, captured_errors: Callable[[], list[str]],
                   locate: Callable[[tuple], str] | None = None) -> None:
    """Load each plugin library explicitly; a failure names the file and the loader's reason.

    Raises:
        BuildError: a library does not exist or the registry cannot load it (dlopen's reason).
    """
    for i, path in enumerate(paths):
        where = location_prefix(locate, ("build", "plugins", i)) + f"build.plugins[{i}]: "
        if not os.path.isfile(path):  # a FIFO or device is named as such, never opened
            raise BuildError(f"{where}{not_a_file(path, 'plugin library') or f'plugin library {path} does not exist'}")
        if registry.load_library(path) is None:
            raise BuildError(f"{where}plugin library {path} could not be loaded: "
                             f"{dlopen_reason(path, captured_errors())}")


def dlopen_reason(path: str, errors: Sequence[str]) -> str:
    """Why a plugin library did not load: dlopen's own reason (e.g. a missing libcuda.so.1), else
    the last registry errors, else a generic word."""
    try:
        ctypes.CDLL(path)  # dlerror() is the precise reason (e.g. a missing libcuda.so.1)
    except OSError as exc:
        return str(exc)
    return "; ".join(errors[-3:]) or "the plugin registry rejected it (not a TensorRT plugin library?)"


def available_creators(regs: Iterable[Any]) -> dict[tuple[str, str], set[str]]:
    """{(name, namespace): set(versions)} over all registries."""
    out = {}
    for reg in regs:
        creators = (getattr(reg, "all_creators_recursive", None) or getattr(reg, "all_creators", None)
                    or getattr(reg, "plugin_creator_list", None) or [])
        for c in creators:
            key = (c.name, getattr(c, "plugin_namespace", "") or "")
            out.setdefault(key, set()).add(str(getattr(c, "plugin_version", "")))
    return out


def iter_nodes(graph: onnx.GraphProto, index_prefix: str = "") -> Iterator[tuple[str, onnx.NodeProto]]:
    """(index label, node) for every node, descending into Loop/If/Scan bodies."""
    import onnx.defs  # here: the no-op path imports this module, not onnx
    for i, node in enumerate(graph.node):
        label = f"{index_prefix}{i}"
        yield label, node
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
            for sub in subs:
                yield from iter_nodes(sub, f"{label}/{attr.name}/")


def plugin_ops(model: onnx.ModelProto, parser: Any) -> list[tuple[str, onnx.NodeProto]]:
    """Nodes the parser can only import as plugins: not a standard ONNX op, not a model-local
    function, and not an op the parser imports natively."""
    import onnx.defs  # here: the no-op path imports this module, not onnx
    local = {(f.domain, f.name) for f in model.functions}
    found = []
    for label, node in iter_nodes(model.graph):
        domain = node.domain or ""
        if (domain, node.op_type) in local:
            continue
        if domain in _STANDARD_DOMAINS and onnx.defs.has(node.op_type, "" if domain == "ai.onnx" else domain):
            continue  # standard op: if unsupported, the parser itself reports it
        if hasattr(parser, "supports_operator") and parser.supports_operator(node.op_type):
            continue
        found.append((label, node))
    return found


def check_plugins(model: onnx.ModelProto, parser: Any, regs: list[Any], backend: Backend) -> None:
    """BuildError listing every node the parser would import as a plugin that no registry in
    `regs` provides (op type = plugin name; version and namespace from the node's
    `plugin_version` / `plugin_namespace` attributes, as TensorRT's ONNX parser looks them up)."""
    import onnx.defs  # here: the no-op path imports this module, not onnx
    missing = []
    creators = available_creators(regs)
    for label, node in plugin_ops(model, parser):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute
                 if a.name in ("plugin_version", "plugin_namespace")}
        version = _text(attrs.get("plugin_version", ""))
        namespace = _text(attrs.get("plugin_namespace", ""))
        versions = creators.get((node.op_type, namespace), set())
        if not versions or (version and version not in versions):
            missing.append((label, node, version, namespace))
    if not missing:
        return
    lines = []
    for label, node, version, namespace in missing:
        extra = "".join([f", version {version}" if version else "",
                         f", namespace '{namespace}'" if namespace else ""])
        lines.append(f"graph needs plugin '{node.op_type}'{extra} (node '{node.name or '?'}', "
                     f"index {label}), which backend {backend.label} does not provide")
    have = ", ".join(f"{n}{f' ({ns})' if ns else ''} v{'/'.join(sorted(v))}"
                     for (n, ns), v in sorted(creators.items())) or "none"
    raise BuildError("\n".join(lines) + f"\navailable plugins: {have}",
                     hint="load a plugin library that provides it via build.plugins: [path/to/lib.so], "
                          "or replace the op with a graph-surgery pass")


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def location_prefix(locate: Callable[[tuple], str] | None, path: tuple) -> str:
    """'recipe.yaml:12:3: ' for a recipe key path, or '' without a locator or location."""
    if locate is None:
        return ""
    try:
        loc = locate(path)
    except Exception:  # a path the recipe does not have (defaults): no location
        return ""
    return f"{loc}: " if loc else ""

