"""NMS settings (score/IoU thresholds, detection count) of a post-processing graph, found and changed.

After `nms: split` the post-processing model is the source's own graph, whatever its form. The
settings live in different places:

* ONNX NonMaxSuppression (TF's NMS ops, anywhere, Loop bodies included): inputs 2
  (max_output_boxes_per_class), 3 (iou_threshold), 4 (score_threshold);
* NMS written as loops (Model Garden `v2`, keras-hub): the IoU threshold is the scalar constant a
  comparison (Greater, Less, ...) checks an IoU against, the IoU being the result of a Div
  (intersection / union); the score threshold is the scalar constant compared with scores that
  come straight from a post-processing input through data movement, TopK values or a max over
  classes (a later `score > 0` on masked scores is padding logic, not a threshold);
* the detection count is the K of the last TopK the detection outputs come from (TF-OD,
  Model Garden, keras-hub all end with a top-k over the kept detections), else the
  NonMaxSuppression's max_output_boxes_per_class (single-class NMS, e.g. YOLO-style).

Each found place gets its own new constant (shared constants elsewhere stay as they were).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from trtpipe.errors import PassError
from trtpipe.graph.nms_match import PASS_THROUGH, constant_value

COMPARE = {"Greater", "GreaterOrEqual", "Less", "LessOrEqual"}
SCORE_PATH = PASS_THROUGH | {"TopK", "ReduceMax", "GlobalMaxPool"}
NMS_INPUT = {"max_detections": 2, "iou_threshold": 3, "score_threshold": 4}


@dataclasses.dataclass
class Place:
    """One spot holding a setting: input `index` of `node` in `graph`, its current value."""

    graph: gs.Graph
    node: gs.Node
    index: int
    value: float

    def label(self) -> str:
        return f"{self.node.op} '{self.node.name}' input {self.index} ({self.value:.6g})"


def _walk(graph: gs.Graph) -> Iterator[tuple[gs.Graph, gs.Node]]:
    for node in graph.nodes:
        yield graph, node
        for sub in node.subgraphs():
            yield from _walk(sub)


def _scalar(t: gs.Tensor) -> float | None:
    value = constant_value(t)
    if value is None or value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(-1)[0])


def _carried(graph: gs.Graph) -> dict[int, gs.Tensor]:
    """id(Loop body input) -> the Loop input it starts as (loop-carried values, bodies included)."""
    out = {}
    for _, node in _walk(graph):
        if node.op == "Loop":
            body = node.attrs["body"]
            for i in range(2, min(len(body.inputs), len(node.inputs))):
                out[id(body.inputs[i])] = node.inputs[i]
    return out


def _through(t: gs.Tensor, ops: set[str], carried: dict[int, gs.Tensor] | None = None,
             limit: int = 256) -> Iterator[gs.Tensor]:
    """`t` and the tensors upstream of it through `ops` (first input only), crossing from a Loop
    body's carried inputs to the Loop's inputs when `carried` is given."""
    seen, stack = set(), [t]
    while stack and len(seen) < limit:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        if not cur.inputs and carried and id(cur) in carried:
            stack.append(carried[id(cur)])
            continue
        if cur.inputs and cur.inputs[0].op in ops:
            node = cur.inputs[0]
            if node.op == "TopK" and cur is not node.outputs[0]:
                continue  # TopK indices are not scores
            stack += [i for i in node.inputs[:1] if not isinstance(i, gs.Constant)]


def find(post: gs.Graph, setting: str) -> list[Place]:
    """The places holding `setting` ("score_threshold", "iou_threshold", "max_detections")."""
    inputs = {id(t) for t in post.inputs}
    carried = _carried(post)
    places = []
    if setting == "max_detections":
        return _count_places(post)
    for graph, node in _walk(post):
        if node.op == "NonMaxSuppression":
            index = NMS_INPUT[setting]
            if len(node.inputs) > index and node.inputs[index].name:
                value = constant_value(node.inputs[index])
                if value is None:
                    raise PassError(f"NonMaxSuppression '{node.name}' computes its {setting} at run time")
                places.append(Place(graph, node, index, float(value.reshape(-1)[0])))
            else:
                places.append(Place(graph, node, index, 0.0))  # absent: ONNX's default 0
            continue
        if node.op not in COMPARE or len(node.inputs) != 2:
            continue
        for index in (0, 1):
            value, other = _scalar(node.inputs[index]), node.inputs[1 - index]
            if value is None or isinstance(other, gs.Constant):
                continue
            if setting == "iou_threshold" and any(t.inputs and t.inputs[0].op == "Div"
                                                  for t in _through(other, {"Cast", "Identity"})):
                places.append(Place(graph, node, index, value))
            if setting == "score_threshold" and not _is_iou(other) and \
                    any(id(t) in inputs for t in _through(other, SCORE_PATH, carried)):
                places.append(Place(graph, node, index, value))
    return places


def _count_places(post: gs.Graph) -> list[Place]:
    """Where the detection count lives: the last TopK's K; else the max_output_boxes_per_class of
    single-class NonMaxSuppression nodes (scores [B, 1, N]); else nothing (apply truncates)."""
    places = _last_topk(post)
    if places:
        return places
    for graph, node in _walk(post):
        if node.op != "NonMaxSuppression":
            continue
        classes = node.inputs[1].shape[1] if node.inputs[1].shape is not None and len(node.inputs[1].shape) == 3 \
            else None
        if classes != 1:
            return []  # per-class limits: the total is cut after the NMS (apply truncates the outputs)
        value = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        places.append(Place(graph, node, 2, float(value.reshape(-1)[0]) if value is not None else 0.0))
    return places


def _is_iou(t):
    return any(u.inputs and u.inputs[0].op == "Div" for u in _through(t, {"Cast", "Identity"}))


def _last_topk(post: gs.Graph) -> list[Place]:
    """TopK nodes of the top-level graph nearest the outputs: those no other found TopK depends on."""
    found, seen, stack = [], set(), list(post.outputs)
    while stack:
        t = stack.pop()
        if id(t) in seen or not t.inputs:
            continue
        seen.add(id(t))
        node = t.inputs[0]
        if node.op == "TopK":
            k = constant_value(node.inputs[1])
            if k is not None and node not in [p.node for p in found]:
                found.append(Place(post, node, 1, float(k.reshape(-1)[0])))
            continue
        stack += list(node.inputs)
    upstream = set()
    for p in found:  # a TopK feeding another one (an argsort, a pre-NMS top-k) is not the last
        stack, seen = list(p.node.inputs), set()
        while stack:
            t = stack.pop()
            if id(t) in seen or not t.inputs:
                continue
            seen.add(id(t))
            upstream.add(id(t.inputs[0]))
            stack += list(t.inputs[0].inputs)
    return [p for p in found if id(p.node) not in upstream]


def apply(post: gs.Graph, settings: dict[str, float | int | None], log: Callable[[str], Any]) -> dict[str, dict]:
    """Set each given setting at every place holding it; returns {setting: {"from", "to", "places"}}.

    Args:
        post: the post-processing graph (changed in place).
        settings: {"score_threshold", "iou_threshold", "max_detections"}: the new values (None: left).
        log: where to say what changed where.

    Raises:
        PassError: carrying `key` (the setting's name) when the graph has no place for it, places
            that disagree on its current value, or a detection count above what the graph can give.
    """
    done = {}
    for setting, value in settings.items():
        if value is None:
            continue
        places = find(post, setting)
        if not places and setting == "max_detections":
            done[setting] = _truncate(post, int(value))
            log(f"max_detections: {done[setting]['from']} -> {value}: outputs cut to the first {value} "
                f"detections ({', '.join(done[setting]['places'])})")
            continue
        if not places:
            err = PassError(f"cannot apply {setting}: the post-processing graph has no "
                            + {"score_threshold": "NonMaxSuppression or comparison of the scores with a constant",
                               "iou_threshold": "NonMaxSuppression or comparison of an IoU (a Div) with a constant",
                               "max_detections": "NonMaxSuppression or final TopK with a constant K"}[setting],
                            hint=f"remove `{setting}:` (the source's value stays), or change it in the source model")
            err.key = setting
            raise err
        values = sorted({p.value for p in places})
        if len(values) > 1:
            err = PassError(f"cannot apply {setting}: the places holding it disagree: "
                            + "; ".join(p.label() for p in places))
            err.key = setting
            raise err
        if setting == "max_detections":
            _check_count(places, int(value))
        for p in places:
            dtype = np.asarray(constant_value(p.node.inputs[p.index]) if p.index < len(p.node.inputs)
                               and p.node.inputs[p.index].name else
                               np.zeros(1, np.int64 if setting == "max_detections" else np.float32)).dtype
            shape = np.shape(constant_value(p.node.inputs[p.index])) if p.index < len(p.node.inputs) \
                and p.node.inputs[p.index].name else (1,)
            const = gs.Constant(f"{p.node.name}/{setting}", np.full(shape, value, dtype))
            while len(p.node.inputs) <= p.index:
                p.node.inputs.append(gs.Variable.empty())
            p.node.inputs[p.index] = const
        # the same value in the constant's own type (0.3 restated for a float32 0.3) changes nothing
        unchanged = np.asarray(value, dtype).item() == np.asarray(values[0], dtype).item()
        done[setting] = {"from": values[0], "to": value, "places": [p.label() for p in places],
                         "unchanged": unchanged}
        log(f"{setting}: {values[0]:.6g} -> {value:.6g} at " + "; ".join(p.label() for p in places))
    if "max_detections" in done:
        _forget_shapes(post)
    return done


def _truncate(post: gs.Graph, k: int) -> dict:
    """Keep the first `k` detections: outputs sharing a static detection axis K (dim 1 of [B, K, ...],
    or dim 0 of a single image's [K, ...]) are sliced, an output without it (num_detections) is
    clipped to `k`. The outputs are sorted by score (as TF's NMS outputs are)."""
    shapes = [list(t.shape) if t.shape is not None else None for t in post.outputs]
    axis, size = None, None
    for a in (1, 0):
        sizes = {sh[a] for sh in shapes if sh is not None and len(sh) > a and isinstance(sh[a], int)}
        counted = [sh for sh in shapes if sh is not None and len(sh) > a and sh[a] in sizes]
        if len(sizes) == 1 and len(counted) >= 2 and next(iter(sizes)) > 1:
            axis, size = a, sizes.pop()
            break
    if axis is None:
        err = PassError("cannot apply max_detections: the post-processing graph has no final TopK with a constant K, "
                        "no single-class NonMaxSuppression, and its outputs share no static detection axis "
                        f"(output shapes {shapes})", hint="remove `max_detections:`")
        err.key = "max_detections"
        raise err
    if k > size:
        err = PassError(f"cannot apply max_detections {k}: the post-processing model returns at most {size} "
                        f"detections (its outputs are padded to {size})")
        err.key = "max_detections"
        raise err
    changed = []
    for t, sh in zip(post.outputs, shapes):
        src = gs.Variable(f"{t.name}/before_max_detections", t.dtype, t.shape)
        t.inputs[0].outputs[t.inputs[0].outputs.index(t)] = src
        if sh is not None and len(sh) > axis and sh[axis] == size:
            args = [src] + [gs.Constant(f"{t.name}/max_detections/{n}", np.array([v], np.int64))
                            for n, v in (("starts", 0), ("ends", k), ("axes", axis))]
            post.nodes.append(gs.Node("Slice", f"{t.name}/max_detections", inputs=args, outputs=[t]))
        else:
            cap = gs.Constant(f"{t.name}/max_detections/k", np.array(k, dtype=t.dtype))
            post.nodes.append(gs.Node("Min", f"{t.name}/max_detections", inputs=[src, cap], outputs=[t]))
        changed.append(t.name)
    post.toposort()
    return {"from": size, "to": k, "places": changed}


_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Cast", "Identity", "Where", "Min", "Max", "Neg", "Abs"}


def _axis_len(t: gs.Tensor, axis: int) -> int | None:
    """Static length of `t` along `axis`, from its shape or, through element-wise ops, an operand's."""
    stack, seen = [t], set()
    while stack:
        cur = stack.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if cur.shape is not None and len(cur.shape) > (axis if axis >= 0 else -axis - 1):
            n = cur.shape[axis]
            if isinstance(n, int) and n > 1:
                return n
        if cur.inputs and cur.inputs[0].op in _ELEMENTWISE:
            stack += [i for i in cur.inputs[0].inputs if not isinstance(i, gs.Constant)]
    return None


def _check_count(places, k):
    for p in places:
        if p.node.op != "TopK":
            continue
        n = _axis_len(p.node.inputs[0], p.node.attrs.get("axis", -1))
        if n is not None and k > n:
            err = PassError(f"cannot apply max_detections {k}: TopK '{p.node.name}' picks the detections from "
                            f"{n} candidates")
            err.key = "max_detections"
            raise err


def _forget_shapes(post: gs.Graph) -> None:
    """Shapes downstream of a changed K are stale: drop every inferred shape (inputs keep theirs)."""
    inputs, outputs = {id(t) for t in post.inputs}, {id(t) for t in post.outputs}
    for t in post.tensors().values():
        if not isinstance(t, gs.Variable) or id(t) in inputs:
            continue
        if id(t) in outputs:  # outputs must stay typed: keep the rank, forget the sizes
            t.shape = [None] * len(t.shape) if t.shape is not None else None
        else:
            t.shape, t.dtype = None, None
