"""`python pipeline.py plugins [NAME]`: the TensorRT plugin creators a backend provides (plus plugin
libraries, as `build.plugins` loads them), with their fields (stages/build/plugin_fields.py)."""

from __future__ import annotations

import argparse

from trtpipe.errors import EXIT_OK, EXIT_USAGE, suggest
from trtpipe.stages.build.plugin_fields import creator_specs, describe

BACKENDS = ("auto", "tensorrt", "tensorrt_rtx")  # build.backend's values (recipe.schema.json)
PLUGINS_EPILOG = """\
Field types are TensorRT's PluginFieldType; a recipe writes integers for INT*, numbers for
FLOAT*/BF16 and strings for CHAR (the `plugin` pass writes each attribute in the declared type).
A declared length above 1 is the exact number of values the field takes; 0 or 1 is not enforced
(creators declare 1 for array fields too).

exit codes: 0 ok, 2 unknown NAME or bad usage, 3 the recipe cannot be read, 7 the backend is not
installed or a plugin library cannot be loaded"""


def close_name(name: str, names: list[str]) -> str:
    """A did-you-mean suffix for a plugin name (errors.suggest), compared case-insensitively:
    "roialign" -> " (did you mean 'ROIAlign_TRT'?)"; "" when nothing is close."""
    by_lower = {n.lower(): n for n in sorted(set(names))}
    exact = by_lower.get(name.lower())
    if exact:
        return f" (did you mean '{exact}'?)"
    hit = suggest(name.lower(), list(by_lower)) or suggest(name.lower(), [n.removesuffix("_trt") for n in by_lower])
    if not hit:
        return ""
    low = hit.split("'")[1]
    return f" (did you mean '{by_lower.get(low) or by_lower.get(low + '_trt')}'?)"


def plugins_command(argv: list[str]) -> int:
    """The command: the plugin creators the chosen backend (plus declared
    libraries) provides, with their fields.

    Args:
        argv: the command's arguments (after `plugins`).

    Returns:
        The exit code (0; 2 for an unknown NAME; a PipelineError's code otherwise).
    """
    parser = argparse.ArgumentParser(prog="python pipeline.py plugins", epilog=PLUGINS_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="List the TensorRT plugin creators a backend provides (plus "
                                                 "plugin libraries), with their fields.")
    parser.add_argument("name", nargs="?", help="show only this plugin (all its versions)")
    parser.add_argument("--backend", default=None, choices=BACKENDS, help="auto (default), tensorrt or tensorrt_rtx")
    parser.add_argument("--library", action="append", default=[], metavar="PATH",
                        help="also load this plugin library (repeatable), as build.plugins does")
    parser.add_argument("--recipe", metavar="RECIPE", help="take the backend and build.plugins from this recipe")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from trtpipe.commands import guarded
    from trtpipe.console import UI
    ui, code = UI(), [EXIT_OK]

    def job():
        from trtpipe.backend import resolve_backend
        libraries, locate, name, what = list(args.library), None, args.backend or "auto", "--library"
        if args.recipe:
            from trtpipe.recipe.load import load_recipe
            recipe = load_recipe(args.recipe)
            libraries = list(recipe.data["build"]["plugins"]) + libraries
            name, locate, what = args.backend or recipe.data["build"]["backend"], recipe.locate, "build.plugins"
        backend = resolve_backend(name)
        creators = creator_specs(backend, libraries, locate, what)
        shown = [c for c in creators if not args.name or c.name == args.name]
        if args.name and not shown:
            ui.error(f"backend {backend.label} provides no plugin '{args.name}'"
                     + close_name(args.name, [c.name for c in creators]) + "; plugins: "
                     + (", ".join(sorted({c.name for c in creators})) or "none"), EXIT_USAGE)
            code[0] = EXIT_USAGE
            return
        ui.out.print(f"plugin creators of {backend.label}" + (f" + {', '.join(libraries)}" if libraries else "")
                     + f": {len(shown)}", markup=False, highlight=False)
        for creator in shown:
            ui.out.print("\n".join(describe(creator)), markup=False, highlight=False)

    return guarded(job, ui, args.debug) or code[0]

