"""Validation around TensorRT plugin nodes, which ONNX Runtime cannot run.

When the final model has plugin nodes (an op of a non-standard domain, or `*_TRT`; see
trtpipe.graph.plugin_nodes.is_plugin_node) and the recipe gives no ONNX Runtime implementation of
them (`validate.ort_custom_ops`), ONNX Runtime runs a cut of the final model instead:

* every node that depends on a plugin node (forward from its outputs, through Loop/If bodies'
  outer reads too) is removed, and so are the plugin nodes;
* the final outputs that depended on them are **engine only**: reported skipped with the reason,
  compared against the source's outputs where a GPU runs the plan (engine vs source-ort), never
  counted as passed;
* what reaches each plugin is compared instead: each plugin input, or, where the input is made
  by nodes the source does not have (the `plugin` pass's adapter steps), the tensors those read,
  walking back to tensors the source model computes under the same name. Graph inputs (fed the
  same data) and weights are not compared.

With `validate.ort_custom_ops` the whole final model runs in ONNX Runtime with those libraries
registered (`SessionOptions.register_custom_ops_library`), and every output is compared as usual;
that validates the libraries' implementation of the plugins, not TensorRT's.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import onnx

from trtpipe.cache.files import save_model
from trtpipe.errors import RecipeError, ValidationError
from trtpipe.graph.plugin_nodes import is_plugin_node, node_attr


@dataclasses.dataclass
class PluginView:
    """What ONNX Runtime runs for the final model, and what that means for the comparison."""

    model_path: str                     # the final model, or its cut without the plugins
    custom_ops: list[str]               # ONNX Runtime custom-op libraries to register
    nodes: list[dict]                   # plugin nodes: {"name", "op", "version"}
    engine_only: dict[str, str]         # final output -> why only the engine can compute it
    compare: dict[str, str]             # tensor compared with the source's -> which plugin input it feeds
    not_compared: dict[str, str]        # plugin input -> why nothing compares it

    def as_result(self) -> dict[str, Any] | None:
        """The `plugins` section of the validation result (None without plugin nodes)."""
        if not self.nodes:
            return None
        return {"nodes": self.nodes, "custom_ops": self.custom_ops, "engine_only": self.engine_only,
                "inputs_compared": self.compare, "inputs_not_compared": self.not_compared}


def ort_view(final_path: str | Path, custom_ops: Collection[str], source_tensors: Collection[str], *,
             base_dir: str | Path | None = None, locate: Callable[[tuple], str] | None = None) -> PluginView:
    """What ONNX Runtime runs for the final model: the model itself, or, when plugin nodes have no
    custom-op implementation, its cut, written to a temporary directory that is removed when the
    returned view is no longer referenced (weakref.finalize; at exit at the latest).

    Args:
        final_path: the final model (or what ONNX Runtime runs for it, e.g. an fp32 twin).
        custom_ops: `validate.ort_custom_ops` (relative to `base_dir`).
        source_tensors: names of the tensors the source model computes (its outputs included).
        base_dir: the recipe's directory.
        locate: recipe key path -> "file:line:col".

    Returns:
        The PluginView.

    Raises:
        RecipeError: a custom-op library does not exist.
        ValidationError: every output depends on a plugin and nothing before it can be compared.
    """
    libs = []
    for i, lib in enumerate(custom_ops):
        path = lib if os.path.isabs(lib) else os.path.join(str(base_dir or "."), lib)
        if not os.path.isfile(path):
            where = f"{locate(('validate', 'ort_custom_ops', i))}: " if locate else ""
            raise RecipeError(f"{where}validate.ort_custom_ops[{i}]: ONNX Runtime custom-op library {path} does not "
                              f"exist")
        libs.append(path)
    graph_only = onnx.load(str(final_path), load_external_data=False)
    local = {(f.domain, f.name) for f in graph_only.functions}
    plugins = [i for i, n in enumerate(graph_only.graph.node) if is_plugin_node(n, local)]
    nodes = [{"name": n.name, "op": n.op_type, "version": str(node_attr(n, "plugin_version", "1"))}
             for n in (graph_only.graph.node[i] for i in plugins)]
    if not plugins or libs:
        return PluginView(str(final_path), libs, nodes, {}, {}, {})
    view, keep = _plan(graph_only, plugins, set(source_tensors))
    tmp = tempfile.mkdtemp(prefix="trtpipe-plugin-cut-")
    weakref.finalize(view, shutil.rmtree, tmp, True)
    view.model_path = str(Path(tmp) / "final.ort-cut.onnx")
    _write_cut(final_path, keep, view, graph_only, view.model_path)
    return view


def around_plugins(view: PluginView, pairs: dict[str, str],
                   entries: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Validation's pairs and entries (outputs.plan_outputs) adjusted for the plugins: engine-only
    outputs are not compared (skipped with the reason, flagged `engine_only`), and each tensor
    compared before a plugin is paired with the source's tensor of the same name (flagged
    `plugin_input`, saying which input it feeds)."""
    pairs = {f: s for f, s in pairs.items() if f not in view.engine_only}
    out = []
    for entry in entries:
        if entry["output"] in view.engine_only:
            entry = {k: v for k, v in entry.items() if k != "unverified"}
            entry.update(status="skipped", reason=view.engine_only[entry["output"]], engine_only=True)
        out.append(entry)
    for tensor, what in view.compare.items():
        same = next((e for e in out if e["output"] == tensor), None)
        if same is not None:  # a final output compared anyway (e.g. boxes the model also returns)
            same["plugin_input"] = what
            continue
        pairs[tensor] = tensor
        out.append({"output": tensor, "source_output": tensor, "status": "pending", "reason": None,
                    "plugin_input": what})
    return pairs, out


def _reads(node):
    """Names a node reads: its inputs and what its Loop/If/Scan bodies read from outside them."""
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            inside = {i.name for i in sub.input} | {i.name for i in sub.initializer} | \
                {o for n in sub.node for o in n.output}
            names += [name for n in sub.node for name in _reads(n) if name not in inside]
    return names


def _plan(model, plugins, source_tensors):
    """(PluginView without model_path, indices of the nodes ONNX Runtime keeps). `plugins`: the
    indices of the plugin nodes in the main graph (protobuf wrappers have no stable identity)."""
    graph = model.graph
    nodes = list(graph.node)
    label = {i: f"'{nodes[i].name}' ({nodes[i].op_type} v{node_attr(nodes[i], 'plugin_version', '1')})"
             for i in plugins}
    depends: dict[str, set[str]] = {}     # tensor -> plugin nodes it depends on
    tainted = set()
    for i, node in enumerate(nodes):      # ONNX graphs are topologically sorted
        via = {label[i]} if i in label else set().union(*(depends.get(t, set()) for t in _reads(node)))
        if via:
            tainted.add(i)
            for out in node.output:
                depends[out] = via
    view = PluginView("", [], [], {}, {}, {})
    view.nodes = [{"name": nodes[i].name, "op": nodes[i].op_type,
                   "version": str(node_attr(nodes[i], "plugin_version", "1"))} for i in plugins]
    for out in graph.output:
        if out.name in depends:
            via = ", ".join(sorted(depends[out.name]))
            view.engine_only[out.name] = (f"engine only: depends on plugin node {via}, which ONNX Runtime cannot run "
                                          f"(no validate.ort_custom_ops); compared with the source where a GPU runs "
                                          f"the plan")
    producer = {o: n for n in nodes for o in n.output}
    fed = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for i in plugins:
        for k, name in enumerate(x for x in nodes[i].input if x):
            what = f"input {k} of plugin node {label[i]}"
            found = _to_source(name, producer, fed, source_tensors, depends, set())
            for tensor in found:
                view.compare.setdefault(tensor, what)
            if not found:
                why = ("a graph input or weight: the same data reaches both models" if name in fed else
                       "depends on another plugin" if name in depends else
                       "no tensor on its way from the graph inputs has a counterpart (same name) in the source")
                view.not_compared[f"{name} ({what})"] = why
    keep = {i for i in range(len(nodes)) if i not in tainted}
    if not view.compare and len(view.engine_only) == len(graph.output):
        raise ValidationError(f"ONNX Runtime can run nothing of the final model: every output depends on plugin "
                              f"node(s) {', '.join(label.values())}, and nothing before them has a source "
                              f"counterpart to compare",
                              hint="name an ONNX Runtime implementation of the plugin under validate.ort_custom_ops, "
                                   "or set validate.enabled: false (the report then says NOT VALIDATED)")
    return view, keep


def _to_source(name, producer, fed, source_tensors, depends, seen):
    """Tensors at or before `name` that the source computes (same name), walking back through
    nodes the source does not have; graph inputs, weights and plugin outputs end the walk."""
    if name in seen or name in fed or name in depends:
        return []
    seen.add(name)
    if name in source_tensors:
        return [name]
    node = producer.get(name)
    if node is None:
        return []
    out = []
    for read in _reads(node):
        out += [t for t in _to_source(read, producer, fed, source_tensors, depends, seen) if t not in out]
    return out


def _write_cut(final_path, keep, view, graph_only, path):
    """The final model without the plugin nodes and what depends on them; outputs: the final
    outputs that do not depend on a plugin, and the tensors compared before the plugins."""
    types = _value_types(graph_only)
    model = onnx.load(str(final_path))  # with its weights
    graph = model.graph
    kept = [n for i, n in enumerate(graph.node) if i in keep]  # same order as the graph-only copy
    del graph.node[:]
    graph.node.extend(kept)
    outputs = [o for o in graph.output if o.name not in view.engine_only]
    for name in list(view.compare):
        info = types.get(name)
        if info is None:
            view.not_compared[f"{name} ({view.compare.pop(name)})"] = "its type is unknown to ONNX shape inference"
            continue
        outputs.append(info)
    del graph.output[:]
    graph.output.extend(outputs)
    save_model(model, path)


def _value_types(model: onnx.ModelProto) -> Mapping[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a convenience here; unknown ones are reported per tensor
        inferred = model
    return {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
            if v.type.tensor_type.elem_type}


def session_loader(model: Any, graph_optimization_level: Any, custom_ops: Collection[str]) -> Callable[[], Any]:
    """A Polygraphy-style session loader (OnnxrtRunner accepts any callable returning an
    InferenceSession) for `model` (a path, bytes, or a Polygraphy loader of bytes) with the
    custom-op libraries registered; CPU execution provider, as Polygraphy's SessionFromOnnx."""
    def load() -> Any:
        import onnxruntime
        data = model() if callable(model) else model
        options = onnxruntime.SessionOptions()
        if graph_optimization_level is not None:
            options.graph_optimization_level = graph_optimization_level
        for lib in custom_ops:
            options.register_custom_ops_library(str(lib))
        return onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    return load
