"""Guarding constant folding against graphsurgeon's shape-tensor cast elision.

onnx-graphsurgeon 0.6.1's `Graph.fold_constants` (with `fold_shapes=True`) first runs "shape tensor
cast elision" on the graph itself (`run_cast_elision` in onnx_graphsurgeon/ir/graph.py): around
Cast(int -> float) -> Add/Sub/Mul/Div/Max/Min/Equal/Greater/Less/Concat -> Cast(-> int) it drops
the casts and converts the op's constant inputs in place (`inp.values = inp.values.astype(...)`).
That truncates a 0.5 to 0 (`int(float(w) * 0.5)` becomes `w * 0`), retypes a constant that other
consumers share, and is done on data tensors and comparisons as well as on shape arithmetic. So
before each graphsurgeon call `tidy.fold_to_fixpoint` prepares the graph (`ElisionGuard`):

- an elision that is exact is left to graphsurgeon: the int source is a shape value (computed only
  from Shape/Size and constants), the op is Add/Sub/Mul/Max/Min/Concat or a Div by a non-zero
  constant, every constant input converts to the int type without loss, and each output feeds
  exactly one Cast to that type. Integer arithmetic then gives what float arithmetic followed by
  the truncating Cast gives (for the magnitudes float32 holds exactly, below 2**24: shape values).
  Every constant such a node shares with another consumer is first replaced by a private copy
  (graphsurgeon converts that one), and copies equal to the original or to each other after
  folding are merged back: the graph grows only by the int copies the other consumers need;
- every other candidate is hidden from the elision by an Identity between the op and its Casts
  (graphsurgeon elides only when all consumers are Casts), removed again right after folding.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtpipe.graph.names import unique_name

# graphsurgeon 0.6.1 `run_cast_elision`'s VALID_CAST_ELISION_OPS: the ops it may rewrite.
_GS_ELISION_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "Concat"})
# The ones whose int result equals the float result truncated by the Cast (Div: by a non-zero
# constant; ONNX Runtime's integer Div truncates toward zero, like Cast). Equal/Greater/Less yield
# bool, which graphsurgeon would write into the Cast's int tensor.
_EXACT_ELISION_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Concat"})
_INT_TYPES = {onnx.TensorProto.INT32: np.dtype(np.int32), onnx.TensorProto.INT64: np.dtype(np.int64)}
_SHAPE_WALK_LIMIT = 10_000  # tensors visited proving a value shape-derived before giving up (= not proven)


def fold_graphs(graph: gs.Graph) -> list[gs.Graph]:
    """Every graph graphsurgeon's fold_constants runs cast elision on: main graph, bodies, functions."""
    out = [graph, *graph.subgraphs(recursive=True)]
    for func in graph.functions:
        out += [func, *func.subgraphs(recursive=True)]
    return out


def _float_cast(tensor: gs.Tensor) -> gs.Node | None:
    """The Cast-to-float producing `tensor` (what graphsurgeon elides on an op's input), or None."""
    return next((p for p in tensor.inputs if p.op == "Cast" and p.attrs.get("to") == onnx.TensorProto.FLOAT),
                None)


def _constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a Constant tensor or of a Constant node's `value` output; None otherwise."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        if len(attrs) == 1 and isinstance(attrs.get("value"), gs.Constant):
            return np.asarray(attrs["value"].values)
    return None


def _lossless(values: np.ndarray, dtype: np.dtype) -> bool:
    """`values.astype(dtype)` (int) keeps every value."""
    if values.dtype.kind not in "fiu":
        return False
    wide = values.astype(np.float64)
    if not np.all(np.isfinite(wide)) or not np.all(wide == np.trunc(wide)):
        return False
    info = np.iinfo(dtype)
    return values.size == 0 or (wide.min() >= info.min and wide.max() <= info.max)


def np_dtype(dtype: object) -> np.dtype | None:
    """`dtype` as a numpy dtype, or None (no dtype, or one numpy does not know)."""
    try:
        return np.dtype(dtype) if dtype is not None else None
    except TypeError:
        return None


def _shape_derived(tensor: gs.Tensor) -> bool:
    """True when every value `tensor` depends on comes from Shape/Size outputs or constants."""
    todo, seen = [tensor], set()
    while todo:
        cur = todo.pop()
        if id(cur) in seen or isinstance(cur, gs.Constant) or not cur.name:
            continue
        seen.add(id(cur))
        if len(seen) > _SHAPE_WALK_LIMIT or len(cur.inputs) != 1:
            return False  # a graph input, a Loop-carried value, ...
        producer = cur.inputs[0]
        if producer.op in ("Shape", "Size", "Constant"):
            continue
        if any(isinstance(v, gs.Graph) for v in producer.attrs.values()):
            return False
        todo.extend(producer.inputs)
    return True


def _elision_candidate(node: gs.Node, graph_outputs: set[str]) -> bool:
    """graphsurgeon's `run_cast_elision` may rewrite `node` (a superset of when it does)."""
    if node.op not in _GS_ELISION_OPS or not node.outputs:
        return False
    for out in node.outputs:
        if out.name in graph_outputs or any(c.op != "Cast" for c in out.outputs):
            return False
    return (any(_float_cast(t) is not None for t in node.inputs)
            and any(c.attrs.get("to") in _INT_TYPES for out in node.outputs for c in out.outputs))


def _elision_exact(node: gs.Node) -> bool:
    """Eliding the casts around `node` computes exactly what the casts do (module docstring)."""
    if node.op not in _EXACT_ELISION_OPS or any(len(out.outputs) != 1 for out in node.outputs):
        return False
    targets = {c.attrs.get("to") for out in node.outputs for c in out.outputs}
    if len(targets) != 1 or next(iter(targets)) not in _INT_TYPES:
        return False
    int_dtype = _INT_TYPES[next(iter(targets))]
    for index, tensor in enumerate(node.inputs):
        divisor = node.op == "Div" and index == 1
        cast = _float_cast(tensor)
        if cast is not None:
            if divisor or np_dtype(cast.inputs[0].dtype) != int_dtype or not _shape_derived(cast.inputs[0]):
                return False
            continue
        values = _constant_values(tensor)
        if values is None or not _lossless(values, int_dtype) or (divisor and np.any(values == 0)):
            return False
    return True


class ElisionGuard:
    """Prepares a graph so that graphsurgeon's cast elision changes no value; `restore()` after
    `fold_constants` undoes the preparation (module docstring)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.blocked: list[tuple[gs.Node, gs.Variable, gs.Variable, gs.Node]] = []
        self.copies: list[tuple[gs.Tensor, gs.Constant]] = []
        graphs = fold_graphs(graph)
        self.taken = {name for g in graphs for name in g.tensors()} | {n.name for g in graphs for n in g.nodes}
        all_outputs = {t.name for g in graphs for t in g.outputs}
        for g in graphs:
            outputs = {t.name for t in g.outputs}
            for node in list(g.nodes):
                if not _elision_candidate(node, outputs):
                    continue
                if _elision_exact(node):
                    self._privatize(node, all_outputs)
                else:
                    self._block(g, node)

    def _unique(self, base: str) -> str:
        return unique_name(base, self.taken)

    def _privatize(self, node: gs.Node, all_outputs: set[str]) -> None:
        """Give `node` its own copy of every constant input another consumer also reads."""
        for index, tensor in enumerate(node.inputs):
            if _float_cast(tensor) is not None:
                continue
            if all(c is node for c in tensor.outputs) and tensor.name not in all_outputs:
                continue
            copy = gs.Constant(self._unique(f"{tensor.name}_private"), np.array(_constant_values(tensor)))
            node.inputs[index] = copy
            self.copies.append((tensor, copy))

    def _block(self, graph: gs.Graph, node: gs.Node) -> None:
        """Put an Identity between `node`'s first output and its Casts (graphsurgeon then leaves it)."""
        out = node.outputs[0]
        hidden = gs.Variable(self._unique(f"{out.name}_unelided"), dtype=out.dtype, shape=out.shape)
        node.outputs[0] = hidden
        identity = gs.Node("Identity", name=self._unique(f"{node.name or out.name}_unelided"),
                           inputs=[hidden], outputs=[out])
        position = next(i for i, n in enumerate(graph.nodes) if n is node)
        graph.nodes.insert(position + 1, identity)  # fold_constants wants the nodes sorted
        self.blocked.append((node, out, hidden, identity))

    def restore(self) -> None:
        """Remove the Identities (the op writes its output again) and merge equal constant copies."""
        for node, out, hidden, identity in self.blocked:
            unfolded = (identity.outputs and identity.inputs and identity.inputs[0] is hidden
                        and len(hidden.inputs) == 1 and hidden.inputs[0] is node)
            if unfolded:
                identity.inputs.clear()
                identity.outputs.clear()
                node.outputs[next(i for i, t in enumerate(node.outputs) if t is hidden)] = out
            elif not identity.outputs:  # `out` was folded into a constant
                identity.inputs.clear()
            # else: only the op's output was folded: Identity(constant) still computes `out`
        dropped = {id(identity) for *_, identity in self.blocked if not identity.outputs}
        if dropped:
            for g in fold_graphs(self.graph):
                g.nodes = [n for n in g.nodes if id(n) not in dropped]
        kept: dict[int, list[gs.Tensor]] = {}
        for original, copy in self.copies:
            if not copy.outputs:
                continue
            same = kept.setdefault(id(original), [original])
            target = next((t for t in same if isinstance(t, gs.Constant) and _same_constant(t, copy)), None)
            if target is None:
                same.append(copy)
                continue
            for consumer in {id(c): c for c in copy.outputs}.values():
                for i, tensor in enumerate(consumer.inputs):
                    if tensor is copy:
                        consumer.inputs[i] = target


def _same_constant(a: gs.Constant, b: gs.Constant) -> bool:
    va, vb = np.asarray(a.values), np.asarray(b.values)
    return va.dtype == vb.dtype and va.shape == vb.shape and va.tobytes() == vb.tobytes()
