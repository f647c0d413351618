"""Documentation generated from the JSON schemas: `passes` output, docs/passes.md, docs/recipe.md."""

import json

from rich.table import Table


def _type_text(schema):
    if "enum" in schema:
        return ", ".join(json.dumps(v) for v in schema["enum"])
    t = schema.get("type", "any")
    if t == "array" and isinstance(schema.get("items"), dict):
        return f"list of {_type_text(schema['items'])}"
    return " or ".join(t) if isinstance(t, list) else t


def param_rows(schema, prefix=""):
    """(name, type, default, required, description) for each parameter, nested objects flattened."""
    rows = []
    required = set(schema.get("required", []))
    for name, sub in schema.get("properties", {}).items():
        full = f"{prefix}{name}"
        default = json.dumps(sub["default"]) if "default" in sub else ""
        rows.append((full, _type_text(sub), default, name in required, sub.get("description", "")))
        if sub.get("type") == "object" and "properties" in sub:
            rows += param_rows(sub, full + ".")
    return rows


def pass_markdown(info):
    lines = [f"### `{info.name}`", "", info.doc, ""]
    rows = param_rows(info.schema)
    if rows:
        lines += ["| parameter | type | default | description |", "|---|---|---|---|"]
        lines += [f"| `{n}`{' (required)' if r else ''} | {t} | {('`' + d + '`') if d else ''} | {desc} |"
                  for n, t, d, r, desc in rows]
    else:
        lines.append("_No parameters._")
    return "\n".join(lines) + "\n"


def pass_names_table(infos):
    table = Table(title="registered passes", header_style="bold")
    table.add_column("pass")
    table.add_column("what it does")
    table.add_column("parameters", overflow="fold")
    for info in infos:
        params = ", ".join(f"{n}{'*' if r else ''}" for n, _, _, r, _ in param_rows(info.schema) if "." not in n)
        table.add_row(info.name, info.summary, params or "-")
    return table


def passes_md(infos):
    head = ["# Passes", "", "Generated from `schemas/passes/*.schema.json` and the pass docstrings by",
            "`python pipeline.py docs`. Do not edit by hand.", ""]
    return "\n".join(head) + "\n" + "\n".join(pass_markdown(i) for i in infos)


def recipe_md(schema):
    lines = ["# Recipe reference", "", "Generated from `schemas/recipe.schema.json` by `python pipeline.py docs`.",
             "Do not edit by hand.", "", schema.get("description", ""), "",
             "| key | type | default | description |", "|---|---|---|---|"]
    for name, t, d, r, desc in param_rows(schema):
        lines.append(f"| `{name}`{' (required)' if r else ''} | {t} | {('`' + d + '`') if d else ''} | {desc} |")
    return "\n".join(lines) + "\n"
