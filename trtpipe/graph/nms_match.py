"""Helpers for the `nms` pass: find the NMS of a detection export and the tensors feeding it.

tf2onnx turns TF's NMS flavours into different ONNX structures: one batched NonMaxSuppression
(combined_non_max_suppression), one NonMaxSuppression per class (TF-OD's multiclass NMS), or a
NonMaxSuppression inside a Loop body (tf.map_fn over classes). In all of them the boxes and
scores reach the NMS through pure data-movement ops (Slice, Squeeze, Unsqueeze, Transpose, Gather
of a pre-NMS TopK, ...). Walking back through those ops to the most upstream [B,N,4] / [B,N,C]
tensors finds the raw head outputs whatever the node names or Loop input order are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.recipe.schema import suggest

# Ops that only move/select data: boxes and scores pass through them unchanged in meaning.
PASS_THROUGH = {"Reshape", "Squeeze", "Unsqueeze", "Transpose", "Gather", "GatherND",
                "GatherElements", "Slice", "Identity", "Flatten", "Expand", "Cast"}


@dataclasses.dataclass
class Match:
    nms: list            # [(owning graph, NonMaxSuppression node)], bodies included
    boxes: gs.Tensor     # [B, N, 4] (or [B, N, 1|C, 4] when named explicitly)
    scores: gs.Tensor    # [B, N, C]
    nms_outputs: list    # graph outputs computed from an NMS (what the modes replace or move)
    other_outputs: list  # graph outputs that do not depend on the NMS

    def describe(self) -> str:
        return (f"{len(self.nms)} NonMaxSuppression node(s); boxes '{self.boxes.name}' "
                f"{_shape(self.boxes)}, scores '{self.scores.name}' {_shape(self.scores)}; NMS outputs: "
                f"{', '.join(t.name for t in self.nms_outputs) or 'none'}")


def _shape(t):
    return list(t.shape) if t.shape is not None else "[unknown shape]"


def find_nms(graph: gs.Graph, scope: Sequence[tuple[gs.Node, gs.Graph]] = ()
             ) -> list[tuple[gs.Graph, gs.Node, list[tuple[gs.Node, gs.Graph]]]]:
    """[(graph owning it, node, enclosing [(loop node, body)])] for every NonMaxSuppression."""
    found = []
    for node in graph.nodes:
        if node.op == "NonMaxSuppression":
            found.append((graph, node, list(scope)))
        for body in node.subgraphs():
            found += find_nms(body, [*scope, (node, body)])
    return found


def node_inputs(node: gs.Node) -> list:
    """Explicit inputs plus the outer tensors a Loop/If body reads (its implicit captures)."""
    extra = [t for sub in node.subgraphs() for t in outer_reads(sub).values()]
    return list(node.inputs) + extra


def outer_reads(graph: gs.Graph) -> dict:
    """{name: tensor} a (sub)graph reads from enclosing scopes, its nested bodies included: every
    node input that is neither produced in it, nor one of its inputs, nor a constant (ONNX's
    outer-scope references, IR spec "Names Within a Graph"). Public-API twin of graphsurgeon's
    private Graph._foreign_tensors."""
    local = {t.name for node in graph.nodes for t in node.outputs if not t.is_empty()}
    local |= {t.name for t in graph.inputs}
    local |= {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    found = {}
    for node in graph.nodes:
        found.update({t.name: t for t in node.inputs if t.name not in local})
        for sub in node.subgraphs():
            found.update({name: t for name, t in outer_reads(sub).items() if name not in local})
    return found


def _contains_nms(node):
    return node.op == "NonMaxSuppression" or any(find_nms(sub) for sub in node.subgraphs())


def depends_on_nms(tensor: gs.Tensor, memo: dict[int, bool]) -> bool:
    """True if `tensor` is computed (transitively) from a NonMaxSuppression."""
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        for node in t.inputs:
            if id(node) in memo:
                if memo[id(node)]:
                    return True
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            if _contains_nms(node):
                memo[id(node)] = True
                return True
            stack += node_inputs(node)
    return False


def trace_back(tensor: gs.Tensor, scope: Sequence[tuple[gs.Node, gs.Graph]]) -> list[gs.Tensor]:
    """Tensors from `tensor` upstream through PASS_THROUGH ops (data input only), crossing from a
    Loop body's carried inputs to the Loop's inputs."""
    chain, scope = [tensor], list(scope)
    while True:
        t = chain[-1]
        if t.inputs:
            producer = t.inputs[0]
            if producer.op not in PASS_THROUGH:
                return chain
            chain.append(producer.inputs[0])
            continue
        for depth in range(len(scope) - 1, -1, -1):
            loop, body = scope[depth]
            # body inputs: (iteration, cond, carried...) <-> Loop inputs (M, cond, initial...)
            i = next((k for k, x in enumerate(body.inputs) if x is t), None)
            if loop.op == "Loop" and i is not None and 2 <= i < len(loop.inputs):
                del scope[depth:]
                chain.append(loop.inputs[i])
                break
        else:
            return chain


def _dims_match(a, b):
    return not (isinstance(a, int) and isinstance(b, int) and a >= 0 and b >= 0 and a != b)


def _is_boxes(t):
    s = t.shape
    return s is not None and len(s) == 3 and s[2] == 4


def _is_scores(t, boxes):
    s, b = t.shape, boxes.shape
    return s is not None and len(s) == 3 and _dims_match(s[0], b[0]) and _dims_match(s[1], b[1])


def lookup(graph: gs.Graph, name: str, what: str) -> gs.Tensor:
    tensors = graph.tensors()
    if name not in tensors:
        raise PassError(f"{what} tensor '{name}' is not in the graph{suggest(name, list(tensors))}; "
                        f"graph outputs are: {', '.join(t.name for t in graph.outputs)}")
    return tensors[name]


def locate(graph: gs.Graph, params: dict, require_nms: bool = True) -> Match:
    """Find the NMS nodes, the boxes/scores tensors (parameters win over structure) and split the
    graph outputs into NMS-derived and other ones."""
    nms = find_nms(graph)
    boxes = lookup(graph, params["boxes"], "boxes") if params.get("boxes") else None
    scores = lookup(graph, params["scores"], "scores") if params.get("scores") else None
    if not nms and (require_nms or boxes is None or scores is None):
        ops = sorted({n.op for n in graph.nodes})
        raise PassError("expected a NonMaxSuppression node (directly or inside a Loop/If body) "
                        f"but the graph has none; its ops are: {', '.join(ops)}",
                        hint="if the NMS was already replaced or cut off, name the tensors "
                             "with `boxes:` and `scores:` (efficient_nms / batched_nms modes)")
    chains = [(trace_back(n.inputs[0], sc), trace_back(n.inputs[1], sc)) for _, n, sc in nms]
    if boxes is None:
        boxes = _agree([next((t for t in reversed(c[0]) if _is_boxes(t)), None) for c in chains],
                       "boxes [B,N,4]", chains, 0)
    _check_boxes(boxes)
    if scores is None:
        scores = _agree([next((t for t in reversed(c[1]) if _is_scores(t, boxes)), None)
                         for c in chains], f"scores [B,N,C] with B,N of '{boxes.name}'", chains, 1)
    _check_scores(boxes, scores)
    memo = {}
    derived = [t for t in graph.outputs if depends_on_nms(t, memo)]
    other = [t for t in graph.outputs if t not in derived]
    return Match([(g, n) for g, n, _ in nms], boxes, scores, derived, other)


def _agree(found, what, chains, index):
    names = {t.name for t in found if t is not None}
    if any(t is None for t in found) or len(names) != 1:
        seen = "; ".join(" <- ".join(f"{t.name}{list(t.shape) if t.shape else ''}" for t in c[index])
                         for c in chains[:3])
        raise PassError(f"could not find the {what} tensor feeding NonMaxSuppression input "
                        f"{index} by structure (found: {sorted(names) or 'none'}); traced: {seen}",
                        hint="name it with the `boxes:` / `scores:` parameter")
    return next(t for t in found if t is not None)


def _check_boxes(boxes):
    b = boxes.shape
    if b is None or not (len(b) == 3 and b[2] == 4 or len(b) == 4 and b[3] == 4):
        raise PassError(f"boxes tensor '{boxes.name}' must be [B,N,4] or [B,N,1|C,4], found {_shape(boxes)}")


def _check_scores(boxes, scores):
    if boxes is scores:
        raise PassError(f"boxes and scores are the same tensor '{boxes.name}'",
                        hint="name both with `boxes:` and `scores:`")
    b, s = boxes.shape, scores.shape
    if s is None or len(s) != 3 or not (_dims_match(s[0], b[0]) and _dims_match(s[1], b[1])):
        raise PassError(f"scores tensor '{scores.name}' must be [B,N,C] matching boxes "
                        f"'{boxes.name}' {list(b)}, found {_shape(scores)}")


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """numpy value of a Constant tensor or a Constant node's output, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if tensor.inputs and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return np.asarray(value.values) if isinstance(value, gs.Constant) else None
    return None


def nms_setting(nms: list[tuple[gs.Graph, gs.Node]], index: int, what: str) -> float | None:
    """The value all NMS nodes agree on for input `index` (2 max boxes, 3 IoU, 4 score), or None
    when the input is absent; PassError when they differ or it is computed at run time."""
    values = set()
    for _, node in nms:
        if len(node.inputs) <= index or not node.inputs[index].name:
            continue
        value = constant_value(node.inputs[index])
        if value is None or value.size != 1:
            raise PassError(f"NonMaxSuppression '{node.name}' computes its {what} at run time "
                            f"('{node.inputs[index].name}'); give `{what}:` explicitly")
        values.add(value.item())
    if len(values) > 1:
        raise PassError(f"the NonMaxSuppression nodes use different {what} values {sorted(values)}; "
                        f"give `{what}:` explicitly")
    return values.pop() if values else None
