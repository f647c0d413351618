"""Canonical recipe formatting: schema key order, 2-space indentation, comments kept.

Recipes are reviewed as diffs, so two people writing the same recipe should produce the same
bytes. PyYAML drops comments; ruamel.yaml's round-trip mode keeps them attached to their keys
while we reorder keys to the order the schema lists them in.
"""

import io

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from . import registry
from .schema_check import load_schema


def _yaml():
    y = YAML(typ="rt")
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never re-wrap long descriptions: wrapping changes make noisy diffs
    y.preserve_quotes = True
    return y


def format_text(text):
    """Return the canonical form of recipe `text` (raises ruamel errors on invalid YAML)."""
    y = _yaml()
    data = y.load(text)
    if not isinstance(data, CommentedMap):
        return text
    _reorder(data, load_schema("recipe.schema.json"))
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue().rstrip("\n") + "\n"


def _reorder(node, schema):
    if isinstance(node, CommentedMap):
        props = list(schema.get("properties", {}))
        rank = {k: i for i, k in enumerate(props)}
        for key in sorted(node, key=lambda k: (rank.get(k, len(rank)), list(node).index(k))):
            node.move_to_end(key)
        for key, value in node.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if key == "params" and isinstance(node.get("pass"), str):
                info = registry.get(node["pass"])
                sub = info.schema if info else None
            if sub:
                _reorder(value, sub)
    elif isinstance(node, CommentedSeq) and isinstance(schema.get("items"), dict):
        for item in node:
            _reorder(item, schema["items"])
