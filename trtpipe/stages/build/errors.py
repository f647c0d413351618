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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

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


def parser_failure(parser: Any, model: onnx.ModelProto, model_path: str, cap: Any, printed: str = "",
                   backend_label: str | None = None) -> str:
    """The message for a failed parse: each parser error with the ONNX node name, op type and
    index it names, the assertion's human text, plus new lines from the log and stderr. An op the
    backend has no importer for ("plugin not found in plugin registry", a bare "false") is said so,
    with the TF node it came from and the pass that moves it out of the engine (split_postprocess)."""
    nodes = list(model.graph.node)
    lines = [f"the ONNX parser rejected {model_path} ({parser.num_errors} error(s)):"]
    unsupported = {}
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        idx = _call(err, "node", -1)
        node = nodes[idx] if isinstance(idx, int) and 0 <= idx < len(nodes) else None
        name = _call(err, "node_name", "") or (node.name if node is not None else "")
        op = _call(err, "node_operator", "") or (node.op_type if node is not None else "")
        code = str(_call(err, "code", "")).split(".")[-1]
        where = f"node '{name or '?'}' ({op or '?'}, node index {idx})" if idx != -1 else "model"
        desc = _clean_desc(_call(err, "desc", ""))
        # One error's text can span lines, some of them the CUDA runtime's (no GPU here): keep the rest.
        parts = [_SRC_AT.sub("", ln).strip() for ln in desc.splitlines() if ln.strip() and not _unrelated(ln)]
        desc = "\n      ".join(dict.fromkeys(p for p in parts if p)) or desc
        if desc.strip().lower() in ("false", "no description"):  # a bare assertion: say which check refused it
            func = _call(err, "func", "")
            desc = f"the parser does not support this node{f' (its check {func} refused it)' if func else ''}"
        if "Could not create the plugin" in desc:
            # here the CUDA probing IS the cause: some creators (ROIAlign_TRT in TensorRT-RTX) query
            # the device when they create the plugin, even for an ahead-of-time build
            cuda = [_strip_src(ln) for ln in [*cap.error_list(), *printed.splitlines()] if _unrelated(ln)]
            if cuda:
                desc += f" (the plugin's creator needs a CUDA device: {cuda[0]})"
        if code == "UNSUPPORTED_NODE" and op and _NO_IMPORTER.search(desc):
            unsupported.setdefault(op, name)
            tf = f"; it comes from the TF node '{name}'" if model.producer_name == "tf2onnx" and name else ""
            desc = f"ONNX op {op} is not supported by {backend_label or 'this backend'} ({desc}){tf}"
        line = f"  - {where}: {desc} [{code}]"
        if line not in lines:  # the parser may report one failure once per attempt
            lines.append(line)
    # The log adds detail (e.g. the offending data type) but also repeats the errors: keep the new lines.
    said = "\n".join(lines)
    details = [d for d in (_strip_src(e) for e in cap.error_list()
                           if not re.search(r"--- (Begin|End) node|While parsing node", e))
               if _clean_desc(d.split("] ", 1)[-1]) not in said and not _unrelated(d)
               and not re.search(r"In function check\w+: \[\d+\] false$", d)]  # said above, as words
    details += [ln.strip() for ln in printed.splitlines() if ln.strip() and not _unrelated(ln)]
    details = list(dict.fromkeys(details))
    if details:
        lines.append("  parser log:")
        lines += [f"    {d}" for d in details[:10]]
    if unsupported:
        ops = ", ".join(unsupported)
        lines.append(f"  to build, move {ops} and what is computed from it out of the engine: the `split_postprocess` "
                     f"pass with `ops: [{ops}]` (ONNX Runtime runs that part after the engine, next to the plan), "
                     f"or end the engine before it with `set_outputs`")
    return "\n".join(lines)


# Parser causes that mean "no importer for this op here" (not a wrong attribute or type of a supported op).
_NO_IMPORTER = re.compile(r"not found in plugin registry|the parser does not support this node|"
                          r"No importer registered for op", re.IGNORECASE)


# Lines that say nothing about the model: the CUDA runtime probing for a GPU on a machine without
# one (or with an older driver) while the parser or builder runs ahead of time.
_UNRELATED = re.compile(r"CUDA driver version is insufficient|CUDA driver not found|no CUDA-capable device|"
                        r"libcuda\.so|cudaGetDevice|cuInit|catchCudaError", re.IGNORECASE)


_SRC_AT = re.compile(r"\s*In \w+ at /_src/\S+?:\d+")  # "In checkType at /_src/optimizer/...cpp:456"


def _unrelated(line):
    return bool(_UNRELATED.search(line))


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
    return _SRC_AT.sub("", re.sub(r"^\S+\.cpp:\d+:\s*(ERROR:\s*)?", "", msg.strip())).replace("\n", " ")


def build_failure(cap: Any, network: Any, model: onnx.ModelProto, backend: Backend,
                  ccs: list[str] | None) -> BuildError:
    """The BuildError for a build that returned no plan: the builder's errors, each layer it names
    traced to its ONNX node through the parser's layer metadata ("[ONNX Layer: <node>]")."""
    # CUDA probing lines only when nothing else was said (then they may be the cause)
    errors = [e for e in cap.error_list() if not _unrelated(e)] or cap.error_list() or \
        ["(the builder logged no error message)"]
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
    if any("K exceeds the maximum value allowed" in e for e in errors):
        hint = ("TensorRT's TopK takes K <= 3840: move that TopK and what is computed from it out of the engine with "
                "the `split_postprocess` pass (ONNX Runtime runs it after the engine), or `nms` with `mode: split` "
                "when it is part of a detector's NMS")
    elif any("no runners" in e for e in errors):
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


def missing_profiles(dynamic: list[dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> tuple[str, str]:
    """(message, hint) for a network with dynamic or shape-tensor inputs and no build.profiles.

    A shape tensor (an input whose values decide shapes inside the network: Reshape's `shape`,
    TopK's `K`, Pad's `pads`, ...) is given VALUES in a profile, not a shape (TensorRT's
    IOptimizationProfile.set_shape_input): the message says which inputs are which.

    Args:
        dynamic: the network inputs that need a profile ({"name", "shape" (-1 = dynamic),
            "dtype", "is_shape_tensor"}).
        describe: input -> how messages show it ("x [N, 3] float32").

    Returns:
        The message (without the recipe location) and the hint with a YAML example.
    """
    shaped = [t for t in dynamic if not t["is_shape_tensor"]]
    valued = [t for t in dynamic if t["is_shape_tensor"]]
    parts = []
    if shaped:
        parts.append("min/opt/max shapes for each dynamic input: " + "; ".join(describe(t) for t in shaped))
    if valued:
        parts.append("min/opt/max VALUES (not shapes) for each shape-tensor input, whose values decide shapes "
                     "inside the network (Reshape's shape, TopK's K, Pad's pads, ...): "
                     + "; ".join(f"{describe(t)} ({_count(t['shape'])} value(s))" for t in valued))
    lines = ["build:", "  profiles:", "    - name: default", "      inputs:"]
    for t in shaped:
        pick = lambda dyn, t=t: [dyn if d < 0 else d for d in t["shape"]]  # noqa: E731
        lines.append(f"        {t['name']}: {{min: {pick(1)}, opt: {pick(1)}, max: {pick(8)}}}")
    for t in valued:
        n = _count(t["shape"]) if isinstance(_count(t["shape"]), int) else 1
        lines.append(f"        {t['name']}: {{min: {[1] * n}, opt: {[1] * n}, max: {[8] * n}}}  # values")
    hint = ("add to the recipe (the 1/1/8 are placeholders: use the shapes" + (" and values" if valued else "")
            + " you will run):\n" + "\n".join("    " + ln for ln in lines))
    return ("the network has dynamic inputs but build.profiles is empty; TensorRT needs an optimization profile "
            "giving " + ", and ".join(parts)), hint


def _count(shape):
    """Number of values of a shape tensor of this shape, or '?' when its shape is dynamic."""
    return "?" if any(d < 0 for d in shape) else int(np.prod(shape, dtype=np.int64))
