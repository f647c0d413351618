"""Where a detector's post-processing starts, and the tensors the engine must end at to feed it.

Detector exports put very different graphs after the network: ONNX NonMaxSuppression (TF's NMS
ops), an argsort (a TopK with K = all anchors, often beyond TensorRT's 3840) followed by a
suppression tf.while_loop (keras-hub), per-class while-loops with nested loops and no NMS op at
all (Model Garden's `v2` NMS). What they share: the post-processing starts at the first TopK,
NonMaxSuppression, or Loop holding one of those (or a nested Loop) that the network's
convolutions do not depend on. Everything computed from those nodes ("the region") leaves the
engine; the tensors the region reads from the rest of the graph become the engine's outputs
("the cut").

The cut is then tidied so the engine ends at meaningful tensors: data-movement ops (Squeeze,
Transpose, Slice, Gather, Cast, Tile, ...) and ops reading only cut tensors move into the region
when only the region reads their result, so the engine ends at e.g. the decoded boxes and the
sigmoid scores rather than at their transposed slices. Tensors the region reads that come from
elsewhere before the cut (Model Garden's `image_info` from the preprocessing Loop, a shape) stay
cut tensors: extra engine outputs, never folded into constants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.graph.nms_match import PASS_THROUGH, node_inputs
from trtpipe.graph.shapes import infer_shapes

# Ops whose result the engine need not compute when only post-processing reads it (one data input).
MOVABLE = PASS_THROUGH | {"Tile", "Shape", "Size", "Squeeze", "Unsqueeze"}
NETWORK_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv"}
STARTERS = {"NonMaxSuppression", "TopK"}


@dataclasses.dataclass
class Cut:
    """A post-processing region and the tensors where the engine ends.

    Attributes:
        seeds: the first post-processing nodes (top level), as found by structure.
        region: ids of the top-level nodes that leave the engine.
        tensors: the cut tensors in a stable order (named ones first): post-processing inputs.
        named: {role: tensor name} for tensors the recipe named (boxes, scores, classes, anchors).
        outputs: graph outputs the region computes (they leave the engine).
        kept: graph outputs the engine keeps.
        extra: cut tensors that do not come from the network (e.g. Model Garden's image_info from
            the preprocessing Loop, a Shape of the input): read by the post-processing from before the
            cut, they are extra engine outputs.
    """

    seeds: list
    region: set
    tensors: list
    named: dict
    outputs: list
    kept: list

    extra: list = dataclasses.field(default_factory=list)

    def roles(self) -> dict[str, str]:
        """{tensor name: role}: the named roles, else a guess for the log (boxes: the first float
        tensor of last dim 4; scores: the next float tensor that is not an extra one)."""
        out = {name: role for role, name in self.named.items()}
        extra = {t.name for t in self.extra}
        floats = [t for t in self.tensors if t.name not in out and t.name not in extra and t.dtype is not None
                  and np.dtype(t.dtype).kind == "f"]
        boxes = next((t for t in floats if t.shape is not None and len(t.shape) >= 2 and t.shape[-1] == 4), None)
        if boxes is not None and "boxes" not in out.values():
            out[boxes.name] = "boxes"
        scores = next((t for t in floats if t is not boxes), None)
        if scores is not None and "scores" not in out.values():
            out[scores.name] = "scores"
        return out

    def describe(self) -> str:
        """One line for the log."""
        seeds = ", ".join(f"{n.op} '{n.name}'" for n in self.seeds) or "named tensors"
        roles = self.roles()
        extra = {t.name for t in self.extra}
        cut = ", ".join(f"{roles.get(t.name, 'extra' if t.name in extra else 'tensor')} '{t.name}' "
                        f"{list(t.shape) if t.shape is not None else '?'}" for t in self.tensors)
        return (f"post-processing starts at {seeds}; {len(self.region)} node(s) leave the engine; "
                f"engine ends at {cut}; post-processing outputs: {', '.join(t.name for t in self.outputs)}")


def _contains(graph: gs.Graph, ops: set[str], nested_loop: bool) -> bool:
    for node in graph.nodes:
        if node.op in ops or (nested_loop and node.op in ("Loop", "Scan")):
            return True
        if any(_contains(sub, ops, nested_loop) for sub in node.subgraphs()):
            return True
    return False


def is_starter(node: gs.Node) -> bool:
    """TopK, NonMaxSuppression, or a Loop/If/Scan whose bodies hold one of those or a nested Loop."""
    if node.op in STARTERS:
        return True
    return any(_contains(sub, STARTERS, nested_loop=node.op == "Loop") for sub in node.subgraphs())


def _readers(graph: gs.Graph) -> dict[str, list[gs.Node]]:
    """tensor name -> top-level nodes reading it (reads inside bodies count as the owner's)."""
    out: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        for t in node_inputs(node):
            out.setdefault(t.name, [])
            if node not in out[t.name]:
                out[t.name].append(node)
    return out


def _descendants(graph: gs.Graph, start: Iterable[gs.Node], readers) -> set[int]:
    seen, stack = set(), list(start)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for t in node.outputs:
            stack += readers.get(t.name, [])
    return seen


def _ancestors(tensors: Iterable[gs.Tensor]) -> set[int]:
    seen, stack = set(), list(tensors)
    while stack:
        for node in stack.pop().inputs:
            if id(node) not in seen:
                seen.add(id(node))
                stack += node_inputs(node)
    return seen


def _constant_only(t: gs.Tensor, memo: dict[str, bool]) -> bool:
    """True if `t` is computed from constants alone (the post-processing model can compute it)."""
    # iterative post-order (a recursion would overflow Python's stack on a backbone a few hundred
    # nodes deep): a tensor is decided once all the producer's inputs are
    stack = [(t, False)]
    while stack:
        cur, expanded = stack.pop()
        if isinstance(cur, gs.Constant) or cur.name in memo:
            continue
        if not cur.inputs:                      # a graph input
            memo[cur.name] = False
            continue
        inputs = node_inputs(cur.inputs[0])
        if expanded:
            memo[cur.name] = all(isinstance(i, gs.Constant) or memo.get(i.name, False) for i in inputs)
        else:
            stack.append((cur, True))
            stack += [(i, False) for i in inputs if not isinstance(i, gs.Constant) and i.name not in memo]
    return isinstance(t, gs.Constant) or memo[t.name]


def find_cut(graph: gs.Graph, named: dict[str, str] | None = None, what: str = "post-processing",
             seed: Callable[[gs.Node], bool] | None = None) -> Cut:
    """Find the post-processing region and the engine's last tensors.

    Args:
        graph: a top-level graph with shapes inferred where possible (not modified).
        named: {role: tensor name} the recipe names (e.g. {"boxes": "raw_boxes", "scores": ...}):
            the engine ends exactly there (plus whatever else the region reads).
        what: how messages call the region ("post-processing", "NMS").
        seed: which top-level nodes start the region (default: `is_starter` nodes the network's
            convolutions do not depend on); the first of them (no other before it) do.

    Returns:
        The Cut.

    Raises:
        PassError: a named tensor is missing, no post-processing is found, or a named tensor feeds
            none of it.
    """
    tensors = graph.tensors()
    named = {role: name for role, name in (named or {}).items() if name}
    for role, name in named.items():
        if name not in tensors:
            from trtpipe.errors import suggest
            raise PassError(f"{role} tensor '{name}' is not in the graph{suggest(name, list(tensors))}; graph "
                            f"outputs are: {', '.join(t.name for t in graph.outputs)}")
    # a constant (anchors, often) needs no engine: the post-processing model keeps its own copy
    named = {role: name for role, name in named.items() if not isinstance(tensors[name], gs.Constant)}
    inputs = {t.name for t in graph.inputs}
    for role, name in named.items():
        if name in inputs:
            raise PassError(f"{role} tensor '{name}' is a graph input; name a tensor the engine computes",
                            hint=f"graph outputs are: {', '.join(t.name for t in graph.outputs)}")
    same = [r for r in named if list(named.values()).count(named[r]) > 1]
    if same:
        raise PassError(f"{' and '.join(same)} are the same tensor '{named[same[0]]}'",
                        hint="name each role's own tensor")
    readers = _readers(graph)
    network = [n for n in graph.nodes if n.op in NETWORK_OPS or any(
        _contains(sub, NETWORK_OPS, False) for sub in n.subgraphs())]
    feeds_network = _ancestors([i for n in network for i in node_inputs(n)]) | {id(n) for n in network}
    candidates = [n for n in graph.nodes if seed(n)] if seed else \
        [n for n in graph.nodes if is_starter(n) and id(n) not in feeds_network]
    later = _descendants(graph, [o for n in candidates for t in n.outputs for o in readers.get(t.name, [])], readers)
    seeds = [n for n in candidates if id(n) not in later]
    fixed = {name: tensors[name] for name in named.values()}
    if seeds or fixed:  # from the first post-processing nodes, and from what reads the named tensors
        region = _descendants(graph, seeds + [r for name in fixed for r in readers.get(name, [])], readers)
    else:
        ops = sorted({n.op for n in graph.nodes})
        found = "no node it selects" if seed else \
            "no TopK, NonMaxSuppression or Loop holding one (or a nested Loop) after the network"
        raise PassError(f"found no {what} to split off: {found}; the graph's ops are: {', '.join(ops)}",
                        hint="name the tensors the engine should end at"
                             + ("" if seed else " with `boxes:` and `scores:`"))
    if fixed:  # nothing that computes a named tensor may leave the engine
        region -= _ancestors(fixed.values())
    outputs = [t for t in graph.outputs if t.inputs and id(t.inputs[0]) in region and t.name not in fixed]
    if not outputs:
        raise PassError(f"no graph output is computed by the {what} (starting at "
                        f"{', '.join(repr(n.name) for n in seeds) or 'the named tensors'}): nothing to split off")
    useful = _ancestors(outputs)
    region &= useful
    for role, name in named.items():
        if not any(id(r) in region for r in readers.get(name, [])):
            raise PassError(f"{role} tensor '{name}' is not read by the {what} that computes "
                            f"{', '.join(t.name for t in outputs)}")
    cut = _tidy(graph, region, fixed, readers)
    order = [tensors[n] for n in named.values()]
    cut = order + sorted((t for t in cut if t.name not in named.values()), key=lambda t: t.name)
    kept = [t for t in graph.outputs if all(t is not o for o in outputs)]
    from_network = _descendants(graph, network, readers)
    extra = [t for t in cut if t.name not in named.values() and not (t.inputs and id(t.inputs[0]) in from_network)]
    return Cut(seeds, region, cut, named, outputs, kept, extra)


def _boundary(graph, region, fixed):
    """Non-constant tensors region nodes read that are computed outside it (or are graph inputs)."""
    memo, found = {}, {}
    for node in graph.nodes:
        if id(node) not in region:
            continue
        for t in node_inputs(node):
            if not t.name or t.name in found or (t.inputs and id(t.inputs[0]) in region):
                continue
            if t.name in fixed or not _constant_only(t, memo):
                found[t.name] = t
    return list(found.values())


def _tidy(graph, region, fixed, readers):
    """Move nodes into the region while that does not add cut tensors (see the module docstring)."""
    outputs = {t.name for t in graph.outputs}
    memo = {}
    while True:
        cut = _boundary(graph, region, fixed)
        names = {t.name for t in cut} | set(fixed)
        moved = False
        for t in cut:
            if t.name in fixed or not t.inputs or t.name in outputs:
                continue
            nodes = _recompute(t, names, memo)
            if nodes is None:  # one data-movement op the engine need not run: end the engine before it
                node = t.inputs[0]
                variable = [i for i in node_inputs(node) if not _constant_only(i, memo)]
                if node.op in MOVABLE and len(variable) == 1 and variable[0] not in graph.inputs and \
                        not any(id(r) not in region for o in node.outputs for r in readers.get(o.name, [])):
                    nodes = [node]
            if nodes and not all(id(n) in region for n in nodes):
                region.update(id(n) for n in nodes)
                moved = True
                break  # the cut changed: compute it again
        if not moved:
            return cut


def _recompute(t, available, memo, limit=32):
    """The nodes computing `t` from `available` tensors (and constants) alone, at most `limit` of
    them, none of the network's (NETWORK_OPS) nor a Loop: cheap for the post-processing to redo
    (shapes, ConstantOfShape, index arithmetic); None when `t` needs anything else."""
    nodes, seen, stack = [], set(), [t]
    while stack:
        cur = stack.pop()
        if cur.name in seen or _constant_only(cur, memo) or (cur is not t and cur.name in available):
            continue
        seen.add(cur.name)
        if not cur.inputs:
            return None  # a graph input
        node = cur.inputs[0]
        if node.op in NETWORK_OPS or list(node.subgraphs()) or len(nodes) >= limit:
            return None
        if node not in nodes:
            nodes.append(node)
            stack += node_inputs(node)
    return nodes


def extract(graph: gs.Graph, inputs: Sequence[str], outputs: Sequence[str], name: str) -> onnx.ModelProto:
    """The subgraph from tensors `inputs` to `outputs` as a checked ModelProto (graph not modified).

    Raises:
        PassError: the extracted model fails onnx.checker or strict shape inference, or it still
            needs a tensor that is not among `inputs`.
    """
    sub = graph.copy()
    tensors = sub.tensors()
    for n in inputs:
        tensors[n].inputs.clear()  # cut the producer off: the tensor becomes a model input
    sub.inputs = [tensors[n] for n in inputs]
    sub.outputs = [tensors[n] for n in outputs]
    sub.cleanup(remove_unused_graph_inputs=False).toposort()
    missing = sorted({t.name for n in sub.nodes for t in node_inputs(n)
                      if isinstance(t, gs.Variable) and t.name and not t.inputs and t.name not in inputs})
    if missing:
        raise PassError(f"the post-processing model would still read {missing}, which are not cut tensors")
    sub.name = name
    if any(t.shape is None for t in sub.outputs):  # e.g. shapes forgotten by dynamic_batch: infer them again
        sub = infer_shapes(sub)
    model = gs.export_onnx(sub)
    try:
        onnx.checker.check_model(model)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise PassError(f"the extracted post-processing model is invalid: {str(err).splitlines()[0]}") from err
    return model
