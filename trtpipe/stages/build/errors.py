"""Turning parser and builder failures into messages that name the ONNX node, op and cause.

TensorRT reports parser errors as C++ assertions and builder errors by layer name; users think in
ONNX nodes. These helpers map one to the other so no failure reads "failed to build engine".

TensorRT objects (parser, network) are typed `Any` (tensorrt or tensorrt_rtx), as is `cap`: the
build's log capture (stages/build/capture.py), whose `error_list()` is read here.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from trtpipe.errors import BuildError
from trtpipe.stages.build import plugins as plugin_mod

if TYPE_CHECKING:
    import onnx

    from trtpipe.backend import Backend


@contextlib.contextmanager
def grab_stderr() -> Iterator[dict[str, str]]:
    """The parser prints some details (e.g. "Unsupported ONNX data type: STRING (8)") straight to
    the process's stderr instead of the logger: catch them so they reach the error message."""
    out = {}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved is None:
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out["text"] = tmp.read().decode(errors="replace")


def parser_failure(parser: Any, model: onnx.ModelProto, model_path: str, cap: Any, printed: str = "") -> str:
    """The message for a failed parse: each parser error with the ONNX node name, op type and
    index it names, the assertion's human text, plus new lines from the log and stderr."""
    nodes = list(model.graph.node)
    lines = [f"the ONNX parser rejected {model_path} ({parser.num_errors} error(s)):"]
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        idx = _call(err, "node", -1)
        node = nodes[idx] if isinstance(idx, int) and 0 <= idx < len(nodes) else None
        name = _call(err, "node_name", "") or (node.name if node is not None else "")
        op = _call(err, "node_operator", "") or (node.op_type if node is not None else "")
        code = str(_call(err, "code", "")).split(".")[-1]
        where = f"node '{name or '?'}' ({op or '?'}, node index {idx})" if idx != -1 else "model"
        lines.append(f"  - {where}: {_clean_desc(_call(err, 'desc', ''))} [{code}]")
    # The log adds detail (e.g. the offending data type) but also repeats the errors: keep the new lines.
    said = "\n".join(lines)
    details = [d for d in (_strip_src(e) for e in cap.error_list()
                           if not re.search(r"--- (Begin|End) node|While parsing node", e))
               if _clean_desc(d.split("] ", 1)[-1]) not in said]
    details += [ln.strip() for ln in printed.splitlines() if ln.strip()]
    if details:
        lines.append("  parser log:")
        lines += [f"    {d}" for d in details[:10]]
    return "\n".join(lines)


def _call(obj, attr, default):
    fn = getattr(obj, attr, None)
    try:
        return fn() if callable(fn) else default
    except Exception:
        return default


def _clean_desc(desc):
    # Parser messages are C++ assertions: `cond && "human text"`; the quoted text is the message.
    m = re.search(r'&&\s*"(.+)"\s*$', desc or "")
    # Adjacent C++ literals ("a " "b") survive stringification; join them.
    return re.sub(r'"\s+"', "", m.group(1)) if m else (desc or "no description")


def _strip_src(msg):
    return re.sub(r"^\S+\.cpp:\d+:\s*(ERROR:\s*)?", "", msg.strip()).replace("\n", " ")


def build_failure(cap: Any, network: Any, model: onnx.ModelProto, backend: Backend,
                  ccs: list[str] | None) -> BuildError:
    """The BuildError for a build that returned no plan: the builder's errors, each layer it names
    traced to its ONNX node through the parser's layer metadata ("[ONNX Layer: <node>]")."""
    errors = cap.error_list() or ["(the builder logged no error message)"]
    layers = _layer_origins(network, model)
    lines = [f"backend {backend.label} could not build the network"
             + (f" for compute capability {', '.join(ccs)}" if ccs else "") + ":"]
    for msg in errors[:10]:
        named = [name for name in layers
                 if name in msg and re.search(rf"(?<![\w/.]){re.escape(name)}(?![\w/.])", msg)]
        for name in named[:3]:
            ltype, node, op = layers[name]
            lines.append(f"  - layer '{name}' ({ltype}) from ONNX node '{node}' ({op}):")
        lines.append(f"    {msg.strip()}")
    hint = None
    if any("no runners" in e for e in errors):
        hint = (f"{backend.label} has no implementation of that layer for these targets; move the op out of "
                "the engine with a graph-surgery pass (e.g. NMS as post-processing) or use another backend")
    return BuildError("\n".join(lines), hint=hint)


def _layer_origins(network, model):
    """Layer name -> (layer type, ONNX node name, ONNX op), from the parser's layer metadata."""
    ops = {n.name: n.op_type for _, n in plugin_mod.iter_nodes(model.graph)}
    out = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        m = re.search(r"\[ONNX Layer: ([^\]]+)\]", getattr(layer, "metadata", "") or "")
        if m and layer.name:
            node = m.group(1)
            out[layer.name] = (str(layer.type).split(".")[-1], node, ops.get(node, "?"))
    return out
