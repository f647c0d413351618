"""Semantic diff of two recipes: what changed, in which stage, and which stages will re-run.

Both sides are compared with schema defaults filled in, so writing a default explicitly is not
a change, while comments, key order and formatting never are.
"""

import difflib
import json

from .schema_check import fill_defaults, load_schema

# Stage order; a change in one stage re-runs it and every stage that consumes its output.
STAGES = ["source", "passes", "precision", "validate", "build", "publish"]
RERUNS = {
    "source": ["source", "passes", "precision", "validate", "build", "publish"],
    "passes": ["passes", "precision", "validate", "build", "publish"],
    "precision": ["precision", "validate", "build", "publish"],
    "validate": ["validate", "publish"],
    "build": ["build", "publish"],
    "output": ["publish"],
    "name": ["publish"],
    "description": [],
}


def normalized(raw):
    """Recipe data as compared: defaults filled, pass params with their own defaults."""
    from . import registry
    data = fill_defaults(raw or {}, load_schema("recipe.schema.json"))
    passes = []
    for item in data.get("passes") or []:
        item = dict(item)
        info = registry.get(item.get("pass"))
        if info:
            item["params"] = fill_defaults(item.get("params") or {}, info.schema)
        passes.append(item)
    data["passes"] = passes
    return data


def _flatten(value, prefix):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def _fmt(value):
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value


def diff_recipes(old_raw, new_raw):
    """Returns (changes, reruns): changes is a list of (stage, symbol, text), reruns stage names."""
    old, new = normalized(old_raw), normalized(new_raw)
    changes = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in RERUNS, list(RERUNS).index(k) if k in RERUNS else 0)):
        if key == "passes":
            changes += _diff_passes(old.get("passes", []), new.get("passes", []))
            continue
        a, b = _flatten(old.get(key), key), _flatten(new.get(key), key)
        for path in sorted(set(a) | set(b)):
            if a.get(path) != b.get(path):
                if path not in a:
                    changes.append((key, "+", f"{path}: {_fmt(b[path])}"))
                elif path not in b:
                    changes.append((key, "-", f"{path}: {_fmt(a[path])}"))
                else:
                    changes.append((key, "~", f"{path}: {_fmt(a[path])} -> {_fmt(b[path])}"))
    reruns = []
    for stage, _, _ in changes:
        for s in RERUNS.get(stage, STAGES):
            if s not in reruns:
                reruns.append(s)
    reruns.sort(key=STAGES.index)
    return changes, reruns


def _diff_passes(old, new):
    def key(item):
        return json.dumps(item, sort_keys=True)
    out = []
    matcher = difflib.SequenceMatcher(a=[p.get("pass") for p in old], b=[p.get("pass") for p in new],
                                      autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                if key(old[i]) != key(new[j]):
                    a = _flatten({k: v for k, v in old[i].items() if k != "pass"}, "")
                    b = _flatten({k: v for k, v in new[j].items() if k != "pass"}, "")
                    for path in sorted(set(a) | set(b)):
                        if a.get(path) != b.get(path):
                            out.append(("passes", "~", f"passes[{j}] {new[j]['pass']}: {path}: "
                                        f"{_fmt(a.get(path, '<unset>'))} -> {_fmt(b.get(path, '<unset>'))}"))
            continue
        for i in range(i1, i2):
            out.append(("passes", "-", f"passes[{i}] {old[i].get('pass')} removed (was {_fmt(old[i].get('params', {}))})"))
        for j in range(j1, j2):
            out.append(("passes", "+", f"passes[{j}] {new[j].get('pass')} added with {_fmt(new[j].get('params', {}))}"))
    return out


def render(changes, reruns, old_label, new_label):
    lines = [f"recipe diff: {old_label} -> {new_label}"]
    if not changes:
        lines.append("no semantic changes (formatting, comments or key order only); nothing re-runs")
        return "\n".join(lines)
    current = None
    for stage, symbol, text in changes:
        if stage != current:
            lines.append(f"{stage}:")
            current = stage
        lines.append(f"  {symbol} {text}")
    rerun_txt = ", ".join(reruns) if reruns else "nothing"
    lines.append(f"stages that re-run: {rerun_txt}")
    skipped = [s for s in STAGES if s not in reruns]
    if skipped:
        lines.append(f"stages reused: {', '.join(skipped)}")
    return "\n".join(lines)
