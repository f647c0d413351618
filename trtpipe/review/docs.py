"""Documentation generated from the JSON schemas: `passes` output, docs/passes.md, docs/recipe.md.

`python pipeline.py docs` writes the two files; `python pipeline.py docs --check` (and a test)
fails when they no longer match the schemas and pass docstrings. Key names in the recipe
reference follow the recipe's shape: `passes[].params`, `build.profiles[].inputs.<input>.min`,
`validate.outputs.<name>.atol`; `precision.*` lists the options of the mapping form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from trtpipe.registry import PassInfo


def _type_text(schema):
    if "enum" in schema:
        return ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    t = schema.get("type", "any")
    if t == "array" and isinstance(schema.get("items"), dict):
        return f"list of {_type_text(schema['items'])}"
    if t == "object" and isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties"):
        return f"mapping of name to {_type_text(schema['additionalProperties'])}"
    if isinstance(t, list):
        if "array" in t and isinstance(schema.get("items"), dict):
            t = [x if x != "array" else f"list of {_type_text(schema['items'])}" for x in t]
        return " or ".join(t)
    return t


def _cell(text):
    """Markdown table cells hold one line and no unescaped pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _constraints(schema):
    parts = []
    for key, word in (("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"),
                      ("exclusiveMaximum", "< {}"), ("minItems", "at least {} items"), ("maxItems", "at most {} items"),
                      ("minLength", "at least {} characters")):
        if key in schema and not (key in ("minItems", "minLength") and schema[key] == 0):
            parts.append(word.format(schema[key]))
    if schema.get("uniqueItems"):
        parts.append("unique")
    if "x-expected" in schema:
        parts.append(schema["x-expected"])
    return f" ({', '.join(parts)})" if parts else ""


def param_rows(schema: dict, prefix: str = "") -> list[tuple[str, str, str, bool, str]]:
    """(name, type, default, required, description) for each key, nested objects flattened: objects
    as `a.b`, list items as `a[].b`, mapping values as `a.<name>.b`, if/then/else branches merged."""
    rows = []
    required = set(schema.get("required", []))
    props = {}
    for branch in (schema, schema.get("then"), schema.get("else")):
        if isinstance(branch, dict):
            for name, sub in branch.get("properties", {}).items():
                props.setdefault(name, sub)
    for name, sub in props.items():
        full = f"{prefix}{name}"
        default = json.dumps(sub["default"]) if "default" in sub else ""
        desc = sub.get("description", "") + _constraints(sub)
        rows.append((full, _type_text(sub), default, name in required, desc))
        rows += _nested(sub, full)
    return rows


def _nested(sub, full):
    rows = []
    branches = [sub] + [sub[b] for b in ("then", "else") if isinstance(sub.get(b), dict)]
    if any(b.get("properties") for b in branches):
        rows += param_rows(sub, full + ".")
    items = sub.get("items")
    if isinstance(items, dict) and items.get("properties"):
        rows += param_rows(items, full + "[].")
    extra = sub.get("additionalProperties")
    if isinstance(extra, dict) and (extra.get("properties") or extra.get("additionalProperties")):
        rows += param_rows(extra, full + ".<name>.") if extra.get("properties") else _nested(extra, full + ".<name>")
    return rows


def _table(rows, first="parameter"):
    lines = [f"| {first} | type | default | description |", "|---|---|---|---|"]
    for n, t, d, r, desc in rows:
        default = f"`{_cell(d)}`" if d else ""
        lines.append(f"| `{n}`{' (required)' if r else ''} | {_cell(t)} | {default} | {_cell(desc)} |")
    return lines


def pass_markdown(info: PassInfo) -> str:
    lines = [f"### `{info.name}`", "", info.doc, ""]
    rows = param_rows(info.schema)
    lines += _table(rows) if rows else ["_No parameters._"]
    if info.precheck:
        lines += ["", "Checked before any conversion (`python pipeline.py check`): "
                  + _cell((info.precheck.__doc__ or "backend compatibility").strip().splitlines()[0])]
    return "\n".join(lines) + "\n"


def pass_names_table(infos: Iterable[PassInfo]) -> Table:
    table = Table(title="registered passes", header_style="bold")
    table.add_column("pass")
    table.add_column("what it does")
    table.add_column("parameters", overflow="fold")
    for info in infos:
        params = ", ".join(f"{n}{'*' if r else ''}" for n, _, _, r, _ in param_rows(info.schema)
                           if "." not in n and "[" not in n)
        table.add_row(info.name, info.summary, params or "-")
    return table


def passes_md(infos: Iterable[PassInfo]) -> str:
    infos = sorted(infos, key=lambda i: i.name)
    lines = ["# Passes", "",
             "Generated from `schemas/passes/*.schema.json` and the pass docstrings by `python pipeline.py docs`;",
             "do not edit by hand (`python pipeline.py docs --check` and the tests fail when it is stale).",
             "A recipe lists passes under `passes:`, each `{pass: NAME, params: {...}, enabled: true, note: ...}`;",
             "see [recipe.md](recipe.md).", "",
             "| pass | what it does |", "|---|---|"]
    lines += [f"| [`{i.name}`](#{i.name}) | {_cell(i.summary)} |" for i in infos]
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(pass_markdown(i) for i in infos)


def recipe_md(schema: dict) -> str:
    lines = ["# Recipe reference", "",
             "Generated from `schemas/recipe.schema.json` by `python pipeline.py docs`; do not edit by hand",
             "(`python pipeline.py docs --check` and the tests fail when it is stale). Pass parameters are in",
             "[passes.md](passes.md).", "", _cell(schema.get("description", "")), "",
             "Keys: `a.b` is key `b` inside mapping `a`; `a[].b` is key `b` of each item of list `a`;",
             "`a.<name>` is a mapping whose keys you choose (input or output names).",
             "`python pipeline.py explain RECIPE` shows a recipe with every default filled in.", ""]
    lines += _table(param_rows(schema), first="key")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ `passes NAME` in a terminal

def pass_text(info: PassInfo, width: int = 80) -> str:
    """One pass for a terminal: its docstring complete, reflowed to `width` columns (list items
    keep a hanging indent, words are never split, indented blocks stay as written), then its
    parameters, each with type, default and constraints on one line and its description below.

    Args:
        info: the registered pass.
        width: columns to wrap at (the terminal's width; at least 40 is used).

    Returns:
        Plain text (no markup), ending with a newline.
    """
    width = max(40, int(width))
    lines = _wrap(f"{info.name}: {info.summary}", width, "  ") + [""]
    previous = None
    for kind, block in _doc_blocks(info.doc):
        if previous and not (kind == previous == "item"):
            lines.append("")
        lines += block(width)
        previous = kind
    rows = param_rows(info.schema)
    lines += ["", "Parameters (* required):" if rows else "No parameters."]
    for name, type_text, default, required, desc in rows:
        head = f"{name}{' *' if required else ''}  {type_text.replace('`', '')}" + (
            f"  (default {default})" if default else "")
        lines += _wrap(head, width, "      ", "  ", collapse=False)
        if desc:
            lines += _wrap(desc, width, "      ", "      ")
    if info.precheck:
        first = (info.precheck.__doc__ or "backend compatibility").strip().splitlines()[0]
        lines += [""] + _wrap(f"Checked before any conversion (`python pipeline.py check`): {first}", width)
    return "\n".join(lines).rstrip() + "\n"


def _wrap(text, width, subsequent="", initial="", collapse=True):
    """`text` reflowed to `width`; long words (paths, tensor names) overflow rather than split."""
    import textwrap
    return textwrap.wrap(" ".join(text.split()) if collapse else text.strip(), width=width, initial_indent=initial,
                         subsequent_indent=subsequent, break_long_words=False, break_on_hyphens=False) or [""]


def _doc_blocks(doc):
    """The docstring after its summary line as (kind, renderer: width -> lines), kind "para",
    "item" (a `*`, `-` or `1.` list item with its continuation lines) or "verbatim"."""
    import re
    blocks, para, item, verbatim = [], [], None, []

    def flush():
        nonlocal para, item, verbatim
        if para:
            text = " ".join(para)
            blocks.append(("para", lambda w, t=text: _wrap(t, w)))
        if item:
            bullet, text = item
            blocks.append(("item", lambda w, b=bullet, t=text: _wrap(t, w, " " * (len(b) + 3), "  " + b + " ")))
        if verbatim:
            blocks.append(("verbatim", lambda w, v=list(verbatim): v))
        para, item, verbatim = [], None, []
    in_fence = False
    for raw in doc.splitlines()[1:]:
        line = raw.rstrip()
        if line.strip().startswith("```"):
            if in_fence:
                verbatim.append("    " + line.strip())
                in_fence = False
                flush()
            else:
                flush()
                in_fence = True
                verbatim.append("    " + line.strip())
            continue
        if in_fence:
            verbatim.append("    " + line)
            continue
        if not line.strip():
            flush()
            continue
        bullet = re.match(r"^(\s*)([*-]|\d+[.)])\s+(.*)$", line)
        if bullet and len(bullet.group(1)) <= 2:
            flush()
            item = (bullet.group(2), bullet.group(3))
        elif item is not None:
            item = (item[0], item[1] + " " + line.strip())
        elif line.startswith("    ") and not para:
            verbatim.append(line)
        else:
            para.append(line.strip())
    flush()
    return blocks
