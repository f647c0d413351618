"""`explain`: the resolved recipe with defaults marked, and the stage plan a run would execute."""

import json

import yaml

from .recipe import load_recipe


def _scalar(value):
    """YAML text for a scalar; strings that would read back as something else are quoted."""
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value and ": " not in value and not value.startswith("#")
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)
    return json.dumps(value)


def _render(value, path, defaults, indent, lines):
    pad = "  " * indent
    if isinstance(value, dict):
        for key, sub in value.items():
            mark = "   # default" if path + (key,) in defaults else ""
            if key == "workspace_bytes":
                mark = "   # derived from workspace"
            if isinstance(sub, (dict, list)) and sub:
                lines.append(f"{pad}{key}:{mark}")
                _render(sub, path + (key,), defaults if not mark else set(), indent + 1, lines)
            else:
                lines.append(f"{pad}{key}: {_scalar(sub) if not isinstance(sub, (dict, list)) else json.dumps(sub)}{mark}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict) and item:
                sub_lines = []
                _render(item, path + (i,), defaults, indent + 1, sub_lines)
                first = sub_lines[0].lstrip()
                lines.append(f"{pad}- {first}")
                lines += sub_lines[1:]
            else:
                lines.append(f"{pad}- {_scalar(item) if not isinstance(item, (dict, list)) else json.dumps(item)}")


def stage_plan(recipe, backend):
    data = recipe.data
    src = data["source"]
    steps = [("source", f"ONNX file {src['onnx']}" if "onnx" in src else
              f"tf2onnx SavedModel {src['saved_model']} (signature {src['signature']}, opset {src['opset']})")]
    for index, item in enumerate(data["passes"]):
        state = "" if item.get("enabled", True) else " (disabled: skipped)"
        steps.append((f"passes[{index}]", f"{item['pass']}{state}"))
    precision = data["precision"] if isinstance(data["precision"], str) else data["precision"].get("mode")
    steps.append(("precision", precision))
    steps.append(("validate", "ONNX Runtime: source vs final (Polygraphy); engine vs ORT where a GPU can run the plan"))
    build = data["build"]
    ccs = ", ".join(build["compute_capabilities"]) if backend.name == "tensorrt_rtx" else "the local GPU"
    steps.append(("build", f"{backend.name} {backend.version}, workspace {build['workspace']}, targets {ccs}"))
    out = data["output"]
    steps.append(("publish", f"{out['dir']}/{{{out['onnx']}, {out['plan']}, report.json, report.md}}"))
    return steps


def explain(path):
    from .backend import resolve_backend
    recipe = load_recipe(path)
    backend = resolve_backend(recipe.data["build"]["backend"])
    lines = [f"# resolved recipe: {recipe.path} (sha256 {recipe.sha256[:16]})",
             "# values marked `# default` are not written in the recipe"]
    _render(recipe.data, (), recipe.defaults, 0, lines)
    lines += ["", "# stage plan (no stage cache yet: every stage runs)"]
    lines += [f"{i + 1}. {name}: {what}" for i, (name, what) in enumerate(stage_plan(recipe, backend))]
    return "\n".join(lines)
