"""`check` against the model: every input, output, tensor and node name a recipe writes exists.

The source model's names are read without weights and without TensorFlow (model_names.py).
Then the passes are followed, by their parameters alone, for what they do to names (PASS_NAMES):
`set_input` may rename the input and change its shape, `rename` renames tensors, `set_outputs`
picks new outputs, `nms` replaces them, `reshape_helpers` adds a tensor, and so on. Each name
a pass parameter reads must exist at that point, each profile must name an input of the final
model with its rank, and validation settings must name source (or final) inputs and outputs.

Only certain misses are reported, never guesses:

* a name is reported missing when it is in no graph the recipe could produce: not in the
  source model, not created or renamed to by an earlier pass (any name an earlier pass's
  parameters spell counts as possibly created), or renamed away by one;
* a SavedModel's inner tensor names are known only after conversion (tf2onnx names them by
  TensorFlow scope, `StatefulPartitionedCall/.../Conv2D:0`, and generates `<op>__<n>` names),
  so there only names that are neither such paths nor generated are checked, against the
  signature; node names are checked for ONNX sources only;
* after a pass whose effect on names is not known (a third-party pass), inner names and the
  graph's inputs and outputs are not checked further.

Messages name the recipe line, the key, what the model has, and a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trtpipe.errors import suggest
from trtpipe.recipe.schema import key_path
from trtpipe.review.model_names import TF2ONNX_GENERATED, ModelNames, ModelReadError, TensorDesc, read_source

if TYPE_CHECKING:
    from trtpipe.recipe.load import Recipe

INPUT, TENSOR, NODE = "input", "tensor", "node"

# What each built-in pass's parameters name: (parameter path, role). In a path, "[]" is every
# item of a list and "{}" every key of a mapping, "{}=" every value; only string values count.
PASS_NAMES: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "set_input": [(("name",), INPUT)],
    "replace_preprocessing": [(("input",), INPUT), (("attach_to",), TENSOR)],
    "dynamic_batch": [(("inputs", "[]"), INPUT)],
    "fix_resize": [(("nodes", "[]"), NODE)],
    "nms": [(("boxes",), TENSOR), (("scores",), TENSOR)],
    "remove_nodes": [(("names", "[]"), NODE), (("replacements", "{}"), TENSOR), (("replacements", "{}="), TENSOR)],
    "rename": [(("tensors", "{}"), TENSOR), (("nodes", "{}"), NODE)],
    "reshape_helpers": [(("tensor",), TENSOR), (("consumers", "[]"), NODE)],
    "set_outputs": [(("outputs", "[]"), TENSOR), (("inputs", "[]"), TENSOR)],
    "plugin": [(("nodes", "[]"), NODE), (("between", "inputs", "[]"), TENSOR), (("between", "outputs", "[]"), TENSOR),
               (("inputs", "[]"), TENSOR), (("inputs", "[]", "tensor"), TENSOR), (("outputs", "[]"), TENSOR),
               (("outputs", "[]", "name"), TENSOR)],
    "split_postprocess": [(("nodes", "[]"), NODE), (("tensors", "[]"), TENSOR)],
    "fold_constants": [],
    "cleanup": [],
    "sanitize": [],
}


@dataclasses.dataclass
class _Graph:
    """The names of the graph as the passes leave it, as far as the recipe tells."""
    model: ModelNames
    inputs: dict | None                    # name -> TensorDesc; None: unknown (an opaque pass)
    outputs: list | None
    created: set = dataclasses.field(default_factory=set)         # tensors passes may have created
    created_nodes: set = dataclasses.field(default_factory=set)
    gone: dict = dataclasses.field(default_factory=dict)          # tensor renamed away -> why
    renamed_inputs: dict = dataclasses.field(default_factory=dict)  # source input -> final name
    opaque: str | None = None              # the pass after which names are not followed

    def has_tensor(self, name: str) -> bool | None:
        """True / False, or None when it cannot be known before conversion."""
        if name in self.gone:
            return False
        if name in self.created or name in (self.inputs or {}) or name in (self.outputs or []):
            return True
        if self.opaque:
            return None
        m = self.model
        if m.tensors is not None:
            return name in m.tensors
        if m.canonical(name) in m.inputs or m.canonical(name) in m.outputs:
            return True
        return None if _unknowable(name) else False

    def has_node(self, name: str) -> bool | None:
        if name in self.created_nodes:
            return True
        if self.opaque or self.model.nodes is None:
            return None
        return name in self.model.nodes


def _unknowable(name):
    """A SavedModel tensor name only conversion can confirm: a TF scope path or a tf2onnx name."""
    return "/" in name or ":" in name or bool(TF2ONNX_GENERATED.search(name))


def check_model_names(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the recipe's names against its source model; each message
    `file:line:col: key.path: ...`. A source that is missing or not a regular file gives nothing
    here (check_files reports it); one that cannot be read is a problem.

    Args:
        recipe: the loaded recipe (paths resolved).

    Returns:
        Problems: names that exist nowhere the recipe could make them (pass parameters, profile
        inputs and ranks, validation inputs and outputs, SavedModel signature and tag set).
        Warnings: none yet from names (kept for symmetry with the other checks).
    """
    src = recipe.data["source"]
    if not (src.get("onnx") or src.get("saved_model")):
        return [], []  # frozen graph / TFLite: names are known only after conversion (the run checks them)
    where_src = ("source", "onnx" if src.get("onnx") else "saved_model")
    model_file = src["onnx"] if src.get("onnx") else os.path.join(src["saved_model"], "saved_model.pb")
    if not os.path.isfile(model_file):  # missing, a directory, a FIFO (never opened): check_files says so
        return [], []
    try:
        model = read_source(src)
    except ModelReadError as err:
        key = ("source", "tag") if "tag set" in str(err) else ("source", "signature") if "signature" in str(err) \
            else where_src
        return [_at(recipe, key, str(err))], []
    except OSError:
        return [], []  # missing / unreadable: check_files says so, with the run's words
    problems = list(_source_names(recipe, model))
    graph = _Graph(model, dict(model.inputs), list(model.outputs))
    for index, item in enumerate(recipe.data["passes"]):
        if not item.get("enabled", True):
            continue
        problems += _pass_refs(recipe, graph, index, item)
        _apply(graph, index, item)
    problems += _profiles(recipe, graph)
    problems += _validation(recipe, graph)
    return problems, []


def _at(recipe, path, message):
    return f"{recipe.locate(path)}: {key_path(path)}: {message}"


def _listing(names, limit=8):
    names = list(names)
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return shown or "(none)"


def _source_names(recipe, model):
    """SavedModel: source.inputs/outputs and the tf2onnx name lists name signature entries."""
    if model.kind != "saved_model":
        return
    src = recipe.data["source"]
    opts = src.get("tf2onnx") or {}
    lists = [(("source", "inputs"), src.get("inputs"), model.inputs),
             (("source", "outputs"), src.get("outputs"), model.outputs),
             (("source", "tf2onnx", "inputs_as_nchw"), opts.get("inputs_as_nchw"), model.inputs),
             (("source", "tf2onnx", "outputs_as_nchw"), opts.get("outputs_as_nchw"), model.outputs)]
    for path, names, side in lists:
        for i, name in enumerate(names or []):
            if model.canonical(name) not in side:
                yield _at(recipe, path + (i,), f"{name!r}{suggest(name, list(side))} is not in the signature "
                                               f"{model.signature!r}; available: {_listing(side)}")
    for name in (opts.get("shape_override") or {}):
        if model.canonical(name) not in model.inputs:
            yield _at(recipe, ("source", "tf2onnx", "shape_override", name),
                      f"{name!r}{suggest(name, list(model.inputs))} is not an input of the signature "
                      f"{model.signature!r}; inputs: {_listing(model.inputs)}")


def _values(params, pattern, path=()) -> Iterator[tuple[tuple, str]]:
    """(key path, string) for each value of `params` matching `pattern` (see PASS_NAMES)."""
    if not pattern:
        if isinstance(params, str):
            yield path, params
        return
    head, rest = pattern[0], pattern[1:]
    if head == "[]" and isinstance(params, list):
        for i, item in enumerate(params):
            yield from _values(item, rest, path + (i,))
    elif head in ("{}", "{}=") and isinstance(params, dict):
        for key, value in params.items():
            if head == "{}":
                yield path + (key,), key
            else:
                yield from _values(value, rest, path + (key,))
    elif isinstance(params, dict) and head in params:
        yield from _values(params[head], rest, path + (head,))


def _pass_refs(recipe, graph, index, item):
    name, params = item["pass"], item.get("params") or {}
    label = f"passes[{index}] {name}"
    out = []
    for pattern, role in PASS_NAMES.get(name, []):
        for sub, value in _values(params, pattern):
            path = ("passes", index, "params") + sub
            if role == INPUT:
                message = _missing_input(graph, value)
            elif role == TENSOR:
                message = _missing_tensor(graph, value)
            else:
                message = _missing_node(graph, value)
            if message:
                out.append(f"{recipe.locate(path)}: {label}: {key_path(sub)}: {message}")
    if name in ("set_input", "replace_preprocessing"):
        key = "name" if name == "set_input" else "input"
        if not isinstance(params.get(key), str) and graph.inputs is not None and len(graph.inputs) > 1:
            out.append(f"{recipe.locate(('passes', index, 'pass'))}: {label}: the model has "
                       f"{len(graph.inputs)} inputs ({_listing(graph.inputs)}): say which with `{key}:`")
    return out


def _missing_input(graph, name):
    if graph.inputs is None or name in graph.inputs or graph.model.canonical(name) in graph.inputs:
        return None
    return (f"no graph input {name!r}{suggest(name, list(graph.inputs))} here{_renamed(graph, name)}; "
            f"inputs: {_listing(graph.inputs)}")


def _missing_tensor(graph, name):
    if graph.has_tensor(name) is not False:
        return None
    m = graph.model
    if name in graph.gone:
        return f"no tensor {name!r} here: {graph.gone[name]}"
    if m.tensors is not None:
        universe = sorted(m.tensors | graph.created)
        return f"no tensor {name!r}{suggest(name, universe)} in the source model {os.path.basename(m.path)}"
    known = list(m.inputs) + list(m.outputs) + sorted(graph.created)
    return (f"no tensor {name!r}{suggest(name, known)}: it is not in the SavedModel's signature {m.signature!r} "
            f"(inputs: {_listing(m.inputs)}; outputs: {_listing(m.outputs)}), and tf2onnx names inner tensors by "
            f"their TensorFlow scope (e.g. StatefulPartitionedCall/.../Conv2D:0)")


def _missing_node(graph, name):
    if graph.has_node(name) is not False:
        return None
    universe = sorted(graph.model.nodes | graph.created_nodes)
    return f"no node {name!r}{suggest(name, universe)} in the source model {os.path.basename(graph.model.path)}"


def _renamed(graph, name):
    new = graph.renamed_inputs.get(name)
    return f" (an earlier pass renamed it to {new!r})" if new and new != name else ""


def _apply(graph, index, item):
    """Follow what the pass does to the graph's names (parameters only)."""
    name, p = item["pass"], item.get("params") or {}
    label = f"passes[{index}] {name}"
    graph.created |= set(_all_strings(p))  # any name a pass spells may now exist (new outputs, renames, ...)
    if name not in PASS_NAMES:
        graph.opaque = graph.opaque or label
        graph.inputs = graph.outputs = None
        return
    if name == "set_input" and graph.inputs is not None:
        old = p.get("name") if isinstance(p.get("name"), str) else next(iter(graph.inputs), None)
        old = graph.model.canonical(old) if old not in graph.inputs else old
        desc = graph.inputs.get(old)
        if desc is None:
            return
        desc = TensorDesc(p.get("dtype") or desc.dtype, tuple(p["shape"]) if p.get("shape") else desc.shape)
        new = p.get("rename") or old
        graph.inputs = {(new if k == old else k): (desc if k == old else v) for k, v in graph.inputs.items()}
        if new != old:
            _rename(graph, old, new, label)
    elif name == "dynamic_batch" and graph.inputs is not None:
        chosen = p.get("inputs") or [k for k, d in graph.inputs.items() if d.shape and isinstance(d.shape[0], int)]
        for k in chosen:
            d = graph.inputs.get(k)
            if d is not None and d.shape:
                graph.inputs[k] = TensorDesc(d.dtype, (p.get("dim_name") or "batch",) + tuple(d.shape[1:]))
    elif name == "rename":
        for old, new in (p.get("tensors") or {}).items():
            if graph.inputs is not None and old in graph.inputs:
                graph.inputs = {(new if k == old else k): v for k, v in graph.inputs.items()}
            if graph.outputs is not None:
                graph.outputs = [new if o == old else o for o in graph.outputs]
            _rename(graph, old, new, label)
        graph.created_nodes |= set((p.get("nodes") or {}).values())
    elif name == "set_outputs":
        graph.outputs = list(p.get("outputs") or [])
        if p.get("inputs"):
            graph.inputs = {n: TensorDesc("?", None) for n in p["inputs"]}
    elif name == "nms":
        _apply_nms(graph, p)
    elif name == "split_postprocess":  # the engine's outputs: where the cut falls, known after the pass
        graph.outputs = None
    elif name == "reshape_helpers" and isinstance(p.get("tensor"), str):
        new = p.get("output_name") or f"{p['tensor']}_{p.get('op')}"
        graph.created.add(new)
        graph.created_nodes.add(p.get("node_name") or f"{new}/{p.get('op')}")
        if p.get("rewire_graph_output") and not p.get("consumers") and graph.outputs is not None:
            graph.outputs = [new if o == p["tensor"] else o for o in graph.outputs]
    elif name == "plugin":
        graph.created_nodes.add(p.get("name") or f"plugin/{p.get('op')}")


def _apply_nms(graph, p):
    mode = p.get("mode")
    if mode in ("efficient_nms", "batched_nms"):
        names = list((p.get("outputs") or {}).values())
        if graph.outputs is not None and names:
            kept = [o for o in graph.outputs if o not in names] if p.get("keep_other_outputs") else []
            graph.outputs = names + kept
    elif mode == "split":
        named = [p.get("boxes"), p.get("scores")]
        graph.outputs = [n for n in named if isinstance(n, str)] if all(isinstance(n, str) for n in named) else None


def _rename(graph, old, new, label):
    graph.gone[old] = f"{label} renamed it to {new!r}"
    graph.gone.pop(new, None)
    graph.created.discard(old)
    graph.created.add(new)
    for src, cur in list(graph.renamed_inputs.items()) + [(old, old)]:
        if cur == old:
            graph.renamed_inputs[src] = new


def _all_strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _all_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _all_strings(v)


def _profiles(recipe, graph):
    """Each profile names inputs of the final model, with their rank and static dims."""
    out = []
    if graph.inputs is None:
        return out
    for i, prof in enumerate(recipe.data["build"]["profiles"]):
        for name, dims in (prof.get("inputs") or {}).items():
            path = ("build", "profiles", i, "inputs", name)
            desc = graph.inputs.get(name)
            if desc is None:
                final = list(graph.inputs)
                hint = _renamed(graph, name) or (" (a source input)" if name in graph.model.inputs else "")
                out.append(f"{recipe.locate(path)}: {key_path(path)}: profile '{prof['name']}' names input "
                           f"{name!r}{suggest(name, final)}, which the final model does not have{hint}; its inputs "
                           f"after the passes: {_listing(final)}")
                continue
            out += _profile_dims(recipe, path, prof["name"], name, desc, dims)
    return out


def _profile_dims(recipe, path, prof, name, desc, dims):
    if desc.shape is None:
        return []
    rank = len(desc.shape)
    for key in ("min", "opt", "max"):
        given = dims.get(key)
        if isinstance(given, list) and len(given) != rank:
            return [f"{recipe.locate(path + (key,))}: {key_path(path + (key,))}: profile '{prof}' gives {len(given)} "
                    f"dims for input {name!r}, which has rank {rank} (shape {_shape(desc.shape)})"]
    for axis, dim in enumerate(desc.shape):
        if isinstance(dim, int) and dim > 0:
            for key in ("min", "opt", "max"):
                given = dims.get(key)
                if isinstance(given, list) and given[axis] != dim:
                    return [f"{recipe.locate(path + (key,))}: {key_path(path + (key,))}: profile '{prof}': axis "
                            f"{axis} of input {name!r} is static ({dim}) but {key} gives {given[axis]} (shape "
                            f"{_shape(desc.shape)}; `dynamic_batch` or `set_input` with a named dim makes it dynamic)"]
    return []


def _shape(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _validation(recipe, graph):
    """Validation names source inputs (or the final inputs derived from them) and outputs."""
    cfg, m, out = recipe.data.get("validate") or {}, graph.model, []
    data = cfg.get("data") or {}
    inputs_ok = set(m.inputs) | set(m.aliases) | set(graph.renamed_inputs.values()) | set(graph.inputs or {})
    for name in (data.get("inputs") or {}):
        if graph.inputs is not None and name not in inputs_ok:
            out.append(_at(recipe, ("validate", "data", "inputs", name),
                           f"no input {name!r}{suggest(name, sorted(inputs_ok))}: neither a source input "
                           f"({_listing(m.inputs)}) nor a final one ({_listing(graph.inputs)})"))
    image_input = (data.get("images") or {}).get("input")
    if isinstance(image_input, str) and m.canonical(image_input) not in m.inputs:
        out.append(_at(recipe, ("validate", "data", "images", "input"),
                       f"no source input {image_input!r}{suggest(image_input, list(m.inputs))}; the source "
                       f"model's inputs: {_listing(m.inputs)}"))
    outputs_ok = set(m.outputs) | set(m.aliases) | set(graph.outputs or []) | graph.created
    for key in ("outputs", "skip"):
        for name in (cfg.get(key) or {}):
            if graph.outputs is not None and name not in outputs_ok:
                out.append(_at(recipe, ("validate", key, name),
                               f"no output {name!r}{suggest(name, sorted(outputs_ok))}: neither a source output "
                               f"({_listing(m.outputs)}) nor a final one ({_listing(graph.outputs)})"))
    for final, source in (cfg.get("output_map") or {}).items():
        path = ("validate", "output_map", final)
        if graph.outputs is not None and final not in graph.outputs and final not in graph.created:
            out.append(_at(recipe, path, f"no final output {final!r}{suggest(final, list(graph.outputs))}; the "
                                         f"final model's outputs: {_listing(graph.outputs)}"))
        source_graph = _Graph(m, dict(m.inputs), list(m.outputs))
        if isinstance(source, str) and source_graph.has_tensor(source) is False:
            out.append(_at(recipe, path, _missing_tensor(source_graph, source)))
    for key in ("boxes", "scores", "classes", "num_detections"):
        name = (cfg.get("detections") or {}).get(key)
        if isinstance(name, str) and m.canonical(name) not in m.outputs:
            out.append(_at(recipe, ("validate", "detections", key),
                           f"no source output {name!r}{suggest(name, list(m.outputs))}; the source model's "
                           f"outputs: {_listing(m.outputs)}"))
    return out
