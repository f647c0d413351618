"""`check`: everything that can be verified about a recipe without converting or building.

The same prechecks run at the start of a real run, so a recipe that cannot work on the chosen
backend fails in a second, before minutes of conversion.
"""

from pathlib import Path

from . import registry
from .errors import PipelineError
from .recipe import load_recipe


def precheck_passes(recipe, ctx):
    """Run each enabled pass's precheck; returns the errors, each message prefixed with its location."""
    problems = []
    for index, item in recipe.enabled_passes():
        info = registry.get(item["pass"])
        if info and info.precheck:
            try:
                info.precheck(item["params"], ctx)
            except PipelineError as err:
                err.message = f"{recipe.locate(('passes', index, 'pass'))}: passes[{index}] {item['pass']}: {err.message}"
                problems.append(err)
    return problems


def raise_first(problems):
    """One error carrying every message, with the first one's class (and so exit code)."""
    if problems:
        first = problems[0]
        raise type(first)("\n".join(p.message for p in problems), hint=first.hint)


def check_sources(recipe):
    src, problems = recipe.data["source"], []
    if "onnx" in src and not Path(src["onnx"]).is_file():
        problems.append(f"{recipe.locate(('source', 'onnx'))}: source.onnx: no such file {src['onnx']}")
    if "saved_model" in src:
        sm = Path(src["saved_model"])
        if not (sm / "saved_model.pb").is_file():
            problems.append(f"{recipe.locate(('source', 'saved_model'))}: source.saved_model: "
                            f"{sm} is not a SavedModel directory (no saved_model.pb)")
    for i, plugin in enumerate(recipe.data["build"]["plugins"]):
        if not Path(plugin).is_file():
            problems.append(f"{recipe.locate(('build', 'plugins', i))}: build.plugins[{i}]: no such file {plugin}")
    return problems


def check_recipe(path, check_format=False):
    """Problems found in one recipe (empty when fine). Recipe load errors raise RecipeError."""
    from .backend import resolve_backend
    recipe = load_recipe(path)
    problems = check_sources(recipe)
    backend = resolve_backend(recipe.data["build"]["backend"])
    ctx = registry.PassContext(name=recipe.name, backend=backend.name, backend_version=backend.version_tuple,
                               recipe_dir=recipe.dir, plugin_libraries=recipe.data["build"]["plugins"])
    problems += [str(err) for err in precheck_passes(recipe, ctx)]
    if check_format:
        from .fmt import format_text
        if format_text(recipe.text) != recipe.text:
            problems.append(f"{path}: not canonically formatted (run `python pipeline.py fmt {path}`)")
    return problems
