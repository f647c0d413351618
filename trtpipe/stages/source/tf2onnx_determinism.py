"""Deterministic tf2onnx: the same SavedModel converts to the same ONNX bytes in every process.

Why: a recipe must give byte-identical artifacts in any process (README, "Reproducible"), and
tf2onnx on its own does not: its output depends on memory addresses and PYTHONHASHSEED.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import sys
from collections.abc import Iterator


class _OrderedSet(dict):
    """A set that iterates in insertion order: a dict underneath, so membership, len and
    iteration stay at C speed; pop() takes the newest element (a set's pop is arbitrary)."""
    __slots__ = ()
    __hash__ = None

    def __init__(self, items=()):
        if items:
            dict.update(self, zip(items, itertools.repeat(None)))

    def add(self, x):
        self[x] = None

    def discard(self, x):
        dict.pop(self, x, None)

    def remove(self, x):
        del self[x]

    def pop(self):
        if not self:
            raise KeyError("pop from an empty set")
        return self.popitem()[0]    # LIFO: O(1); popping the oldest would rescan the dict each time

    def update(self, *others):
        for other in others:
            dict.update(self, zip(other, itertools.repeat(None)))

    def union(self, *others):
        out = _OrderedSet(self)
        out.update(*others)
        return out

    def intersection(self, *others):
        out = _OrderedSet(self)
        for other in others:
            other = other if isinstance(other, (dict, set, frozenset)) else frozenset(other)
            out = _OrderedSet(x for x in out if x in other)
        return out

    def difference(self, *others):
        out = _OrderedSet(self)
        for other in others:
            for x in other:
                out.discard(x)
        return out

    def issubset(self, other):
        return all(x in other for x in self)

    def issuperset(self, other):
        return all(x in self for x in other)

    def isdisjoint(self, other):
        return not any(x in self for x in other)

    def copy(self):
        return _OrderedSet(self)

    __or__, __and__, __sub__, __le__, __ge__ = union, intersection, difference, issubset, issuperset

    def __ior__(self, other):
        self.update(other)
        return self

    def __iand__(self, other):
        keep = [x for x in self if x in other]
        self.clear()
        self.update(keep)
        return self

    def __isub__(self, other):
        for x in other:
            self.discard(x)
        return self

    def __eq__(self, other):
        if isinstance(other, (set, frozenset, _OrderedSet)):
            return len(self) == len(other) and all(x in other for x in self)
        return NotImplemented

    def __ne__(self, other):
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    def __repr__(self):
        return "{" + ", ".join(map(repr, self)) + "}" if self else "set()"

    def __reduce__(self):
        return _OrderedSet, (list(self),)

    def __deepcopy__(self, memo):  # tf2onnx's optimizer deep-copies the graph before every optimizer
        if all(type(x) is str for x in self):
            out = _OrderedSet(self)     # strings are immutable: deepcopy would return them as they are
        else:
            out = memo[id(self)] = _OrderedSet()
            out.update(copy.deepcopy(x, memo) for x in self)
        memo[id(self)] = out
        return out


@contextlib.contextmanager
def deterministic_tf2onnx() -> Iterator[None]:
    """Make tf2onnx's output a function of its input (same SavedModel -> same ONNX bytes).

    tf2onnx iterates Python sets while it rewrites and optimizes: sets of Node objects, ordered
    by memory address (TransposeOptimizer's `set(node.inputs)`, the node sets behind
    Graph.extract_sub_graph_nodes / delete_unused_nodes), and sets of tensor names, ordered by the
    per-process string hash (Graph._output_to_consumers). That order decides which of several
    equal constants MergeDuplicatedNodes keeps and which `const_fold_opt__N` name a folded weight
    gets, so two processes gave different graphs (onnx/tensorflow-onnx#1789, #2006). During the
    conversion every tf2onnx module's `set` is an insertion-ordered set, so the same input and
    sequence of operations give the same order whatever the addresses or PYTHONHASHSEED. Its
    generated-name counter (`make_name`, a module global) restarts, so an earlier conversion in
    the same process does not shift the names either."""
    from tf2onnx import utils
    mods = [m for n, m in list(sys.modules.items())
            if m is not None and (n == "tf2onnx" or n.startswith("tf2onnx."))]
    own = {m.__name__: m.__dict__["set"] for m in mods if "set" in m.__dict__}
    for mod in mods:
        mod.set = _OrderedSet
    utils.INTERNAL_NAME = 1
    try:
        yield
    finally:
        for mod in mods:
            if mod.__name__ in own:
                mod.set = own[mod.__name__]
            else:
                mod.__dict__.pop("set", None)
