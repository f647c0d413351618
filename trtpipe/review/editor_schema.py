"""The editor schema: schemas/recipe.schema.json with every pass's parameter schema folded in.

The recipe schema proper leaves `passes[].params` open (`type: object`), because the recipe
loader checks parameters against the pass registry, which also knows third-party passes, with
messages of its own. An editor has no registry, so for editors this module generates
`schemas/recipe.editor.schema.json` (`python pipeline.py docs` writes it; `docs --check` and the
tests fail when it is stale), which a recipe names on its first line:

    # yaml-language-server: $schema=../schemas/recipe.editor.schema.json

In it each pass item

* names its pass from an enum of the built-in passes, each with its one-line description
  (`enumDescriptions` / `markdownEnumDescriptions`, which VS Code's JSON and the YAML language
  server show at completion);
* validates `params` against that pass's own schema through `if: {pass: {const: NAME}} then:
  {params: {$ref: pass schema}}` (JSON Schema draft-07 conditionals), so completion offers a
  pass's parameters and a misspelled parameter is flagged as you type.

The schema is written as draft-07 (`definitions`), the draft editors' JSON Schema support covers
best; the recipe schema uses nothing newer. Third-party passes are not in the enum: a project with
its own passes can regenerate it with them (`editor_schema(schema, registry.all_passes())`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trtpipe.registry import PassInfo

FILE = "recipe.editor.schema.json"
DRAFT = "http://json-schema.org/draft-07/schema#"


def editor_schema(recipe_schema: dict, passes: Iterable[PassInfo]) -> dict[str, Any]:
    """The recipe schema with pass parameters folded in (see the module docstring).

    Args:
        recipe_schema: schemas/recipe.schema.json, loaded.
        passes: the passes to include (name, summary, parameter schema), e.g. the built-in ones.

    Returns:
        A new JSON Schema (draft-07); `recipe_schema` is not changed.
    """
    schema = copy.deepcopy(recipe_schema)
    schema["$schema"] = DRAFT
    schema["$id"] = schema.get("$id", "").rsplit("/", 1)[0] + "/" + FILE if schema.get("$id") else FILE
    schema["title"] = schema.get("title", "recipe") + " (editor schema: pass parameters included)"
    passes = sorted(passes, key=lambda info: info.name)
    definitions = schema.setdefault("definitions", {})
    item = schema["properties"]["passes"]["items"]
    names = [info.name for info in passes]
    item["properties"]["pass"].update({
        "enum": names,
        "enumDescriptions": [info.summary for info in passes],
        "markdownEnumDescriptions": [f"**{info.name}**: {info.summary}" for info in passes],
        "x-expected": "a registered pass name (`python pipeline.py passes` lists them)"})
    conditions = []
    for info in passes:
        key = f"pass.{info.name}"
        definitions[key] = _embedded(info.schema or {"type": "object", "additionalProperties": False},
                                     f"#/definitions/{key}")
        params = {"$ref": f"#/definitions/{key}",
                  "description": f"Parameters of `{info.name}`: {info.summary}",
                  "markdownDescription": f"Parameters of **{info.name}**: {info.summary}\n\n"
                                         f"`python pipeline.py passes {info.name}` documents them."}
        conditions.append({"if": {"properties": {"pass": {"const": info.name}}, "required": ["pass"]},
                           "then": {"properties": {"params": params}}})
    item["allOf"] = item.get("allOf", []) + conditions
    _never_valid(schema)
    return schema


def _never_valid(node):
    """`enum: []` (a key the recipe schema keeps only to explain why it is refused, e.g.
    `source.caffe`) as editors' validators accept it: `not: {}` (never valid), not offered at
    completion (`doNotSuggest`); its description says why, on hover."""
    if isinstance(node, dict):
        if node.get("enum") == []:
            del node["enum"]
            node["not"] = {}
            node["doNotSuggest"] = True
        for value in node.values():
            _never_valid(value)
    elif isinstance(node, list):
        for value in node:
            _never_valid(value)


def _embedded(schema, base):
    """A pass schema made a sub-schema of another document: its `$schema`/`$id` dropped and its
    local references (`#/$defs/x`) rewritten to point inside `base`."""
    out = copy.deepcopy(schema)
    out.pop("$schema", None)
    out.pop("$id", None)

    def rewrite(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref" and isinstance(v, str) and v.startswith("#"):
                    node[k] = base + v[1:]
                else:
                    rewrite(v)
        elif isinstance(node, list):
            for v in node:
                rewrite(v)
    rewrite(out)
    return out


def editor_schema_text(recipe_schema: dict, passes: Iterable[PassInfo]) -> str:
    """editor_schema() as the file holds it: JSON, 2-space indent, a final newline."""
    return json.dumps(editor_schema(recipe_schema, passes), indent=2, ensure_ascii=False) + "\n"
