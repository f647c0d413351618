"""What a pass changed in the graph (bisect names it for the first pass that diverges): nodes
added, removed and changed, initializers whose values changed."""

from __future__ import annotations

from pathlib import Path

SHOWN = 4  # nodes listed per kind (added, removed, changed) in a message


def node_changes(before: str | Path, after: str | Path) -> dict[str, list[str]]:
    """What a pass changed in the main graph: nodes added, removed and changed, and initializers
    whose values changed under the same name (weights are compared as stored, not loaded).

    Args:
        before: the model file before the pass.
        after: the model file after it.

    Returns:
        {"added": ["Mul 'scale'", ...], "removed": [...], "changed": ["Conv 'conv' (inputs)", ...],
        "initializers": ["w", ...]}; nodes are matched by name (unnamed ones by op type and outputs).
    """
    import onnx
    graphs = [onnx.load(str(p), load_external_data=False).graph for p in (before, after)]
    nodes = [{_node_key(n): n for n in g.node} for g in graphs]
    inits = [{i.name: i.SerializeToString() for i in g.initializer} for g in graphs]
    changed_inits = sorted(n for n in inits[0].keys() & inits[1].keys() if inits[0][n] != inits[1][n])
    show = lambda n: f"{n.op_type} '{n.name or ','.join(n.output)}'"  # noqa: E731
    added = [show(n) for k, n in nodes[1].items() if k not in nodes[0]]
    removed = [show(n) for k, n in nodes[0].items() if k not in nodes[1]]
    changed = []
    for key, b in nodes[1].items():  # in the graph's order
        a = nodes[0].get(key)
        if a is None:
            continue
        what = [label for label, x, y in (
            ("op", a.op_type, b.op_type), ("inputs", list(a.input), list(b.input)),
            ("outputs", list(a.output), list(b.output)),
            ("attributes", sorted(x.SerializeToString() for x in a.attribute),
             sorted(x.SerializeToString() for x in b.attribute))) if x != y]
        weights = [i for i in b.input if i in changed_inits]
        if weights:
            what.append(f"values of {', '.join(repr(w) for w in weights)}")
        if what:
            changed.append(f"{show(b)} ({', '.join(what)})")
    return {"added": added, "removed": removed, "changed": changed, "initializers": changed_inits}


def _node_key(node):
    return node.name or f"{node.op_type}:{','.join(node.output)}"


def describe_changes(nodes: dict[str, list[str]], limit: int = SHOWN) -> str:
    """One line for node_changes(): "added Mul 'bad'; changed Conv 'conv' (inputs)"; at most
    `limit` names per kind, then "(+N more)".

    Args:
        nodes: what node_changes() returned.
        limit: names listed per kind.

    Returns:
        The line, or "no node changed" when the graph is the same (the pass changed the context).
    """
    parts = []
    for kind in ("added", "removed", "changed"):
        names = nodes.get(kind) or []
        if names:
            more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
            parts.append(f"{kind} " + ", ".join(names[:limit]) + more)
    bare = [i for i in nodes.get("initializers") or [] if not any(f"'{i}'" in c for c in nodes.get("changed") or [])]
    if bare:
        parts.append("initializer values changed: " + ", ".join(bare[:limit]))
    return "; ".join(parts) or "no node changed (the pass changed only the input contract or output map)"

