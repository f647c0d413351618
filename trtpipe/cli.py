"""Command line: `python pipeline.py RECIPE` runs a recipe; `python pipeline.py passes` lists passes."""

import argparse
import os
import sys
import textwrap

from .errors import EXIT_CODES, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, PipelineError

COMMANDS = {}


def command(name):
    def wrap(func):
        COMMANDS[name] = func
        return func
    return wrap


def _exit_code_help():
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items()))


def _common(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pass notes and builder phases")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")


def _main_parser():
    parser = argparse.ArgumentParser(
        prog="python pipeline.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Build a TensorRT / TensorRT-RTX plan from a YAML recipe:
              recipe -> source (ONNX or SavedModel via tf2onnx) -> passes -> validate -> build -> report

            other commands:
              python pipeline.py passes [NAME]          list graph-surgery passes and their parameters
              python pipeline.py check RECIPE...        check recipes without converting or building
              python pipeline.py explain RECIPE         resolved recipe (defaults marked) and stage plan
              python pipeline.py diff OLD NEW           semantic recipe diff and the stages that re-run
              python pipeline.py diff --git REV RECIPE  the same against a git revision
              python pipeline.py fmt [--check] RECIPE...  canonical key order, comments kept
              python pipeline.py docs [--check]         regenerate docs/passes.md, docs/recipe.md
            """),
        epilog=_exit_code_help() + "\n\nRecipe reference: schemas/recipe.schema.json (see docs/).")
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/effdet.yaml")
    parser.add_argument("--no-validate", action="store_true", help="skip validation (recorded in the report)")
    parser.add_argument("-o", "--output-dir", metavar="DIR", help="write artifacts here instead of the recipe's output.dir")
    _common(parser)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    from . import review  # noqa: F401  (registers check, explain, diff, fmt, docs)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = _main_parser().parse_args(argv)
    from .console import UI
    ui = UI(quiet=args.quiet, verbose=args.verbose)

    def job():
        from .run import RunOptions, run_recipe
        run_recipe(args.recipe, ui, RunOptions(validate=not args.no_validate, debug=args.debug,
                                                  output_dir=args.output_dir))

    return guarded(job, ui, args.debug)


def guarded(job, ui, debug):
    """Run `job`, turning user errors into a message + documented exit code."""
    try:
        job()
        return EXIT_OK
    except PipelineError as err:
        if debug:
            import traceback
            traceback.print_exc()
        ui.error(str(err), err.exit_code)
        return err.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted; nothing was published", 130)
        return 130


@command("passes")
def cmd_passes(argv):
    parser = argparse.ArgumentParser(prog="python pipeline.py passes",
                                     description="List registered graph-surgery passes with their parameters.")
    parser.add_argument("name", nargs="?", help="show one pass in full")
    args = parser.parse_args(argv)
    from . import registry
    from .docs import pass_markdown, pass_names_table
    from .console import UI
    ui = UI()
    if args.name:
        info = registry.get(args.name)
        if info is None:
            from .schema_check import suggest
            ui.error(f"unknown pass '{args.name}'{suggest(args.name, registry.names())}", EXIT_USAGE)
            return EXIT_USAGE
        from rich.markdown import Markdown
        ui.out.print(Markdown(pass_markdown(info)))
        return EXIT_OK
    ui.out.print(pass_names_table(registry.all_passes()))
    ui.out.print("\n`python pipeline.py passes NAME` shows one pass with its parameters.")
    return EXIT_OK


def entry():
    try:
        code = main()
    except SystemExit:
        raise
    except Exception:  # a bug in this tool: show the traceback, exit 1
        import traceback
        traceback.print_exc()
        code = EXIT_INTERNAL
    sys.exit(code)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    entry()
