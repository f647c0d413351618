"""Command line: `python pipeline.py RECIPE` runs a recipe; `python pipeline.py passes` lists passes."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import NoReturn

from trtpipe.commands import COMMANDS, command, guarded
from trtpipe.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, PipelineError


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
              python pipeline.py cache info|prune       the stage cache (see README "Cache")
              python pipeline.py bisect RECIPE          the first pass whose outputs diverge from the source's
            """),
        epilog=_exit_code_help() + "\n\nRecipe reference: schemas/recipe.schema.json (see docs/).")
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/effdet.yaml")
    parser.add_argument("--no-validate", action="store_true", help="skip validation (recorded in the report)")
    parser.add_argument("-o", "--output-dir", metavar="DIR",
                        help="write artifacts here instead of the recipe's output.dir")
    parser.add_argument("--force", action="store_true", help="re-run every stage, ignoring cached outputs")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE",
                        help="re-run STAGE and every stage after it: source, passes, passes[N] or a pass name, "
                             "precision, validate, build")
    _cache_dir_flag(parser)
    _common(parser)
    return parser


def _cache_dir_flag(parser):
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="stage cache directory (default: $TRTPIPE_CACHE_DIR, else $XDG_CACHE_HOME/trt-pipeline)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from trtpipe.review import commands as review  # noqa: F401  (registers check, explain, diff, fmt, docs)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    args = _main_parser().parse_args(argv)
    from trtpipe.console import UI
    ui = UI(quiet=args.quiet, verbose=args.verbose)

    def job():
        from trtpipe.stages.run import RunOptions, run_recipe
        run_recipe(args.recipe, ui, RunOptions(validate=not args.no_validate, debug=args.debug,
                                                  output_dir=args.output_dir, cache_dir=args.cache_dir,
                                                  force=args.force, from_stage=args.from_stage))

    return guarded(job, ui, args.debug)


@command("passes")
def cmd_passes(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python pipeline.py passes",
                                     description="List registered graph-surgery passes with their parameters.")
    parser.add_argument("name", nargs="?", help="show one pass in full")
    args = parser.parse_args(argv)
    from trtpipe import registry
    from trtpipe.console import UI
    from trtpipe.review.docs import pass_markdown, pass_names_table
    ui = UI()
    try:
        registry.load_all()  # a broken third-party entry point: its message and exit code, as a run gives
    except PipelineError as err:
        ui.error(str(err), err.exit_code)
        return err.exit_code
    if args.name:
        info = registry.get(args.name)
        if info is None:
            from trtpipe.errors import suggest
            ui.error(f"unknown pass '{args.name}'{suggest(args.name, registry.names())}", EXIT_USAGE)
            return EXIT_USAGE
        from rich.markdown import Markdown
        ui.out.print(Markdown(pass_markdown(info)))
        return EXIT_OK
    ui.out.print(pass_names_table(registry.all_passes()))
    ui.out.print("\n`python pipeline.py passes NAME` shows one pass with its parameters.")
    return EXIT_OK


@command("bisect")
def cmd_bisect(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python pipeline.py bisect", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Find the guilty pass: run the recipe's source and passes through the stage cache (cached
            entries reused, nothing published), run ONNX Runtime on the model after each pass on the
            validation data (fed through the input contract as that pass left it) and compare its
            outputs with the source model's, with validation's tolerances. Prints per pass its status
            and worst error, then the first diverging pass with the nodes it changed.

            A failed validation runs this by itself when the graph is small (validate.bisect: auto,
            at most 20 passes and models of at most 64 MiB; always; never).
            """),
        epilog="exit codes:\n  0  no pass diverges\n  6  a pass diverges (the message names it)\n"
               "  2-5, 7, 8  as for a run (python pipeline.py --help)")
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--force", action="store_true",
                        help="re-run the source and every pass, ignoring cached outputs")
    _cache_dir_flag(parser)
    _common(parser)
    args = parser.parse_args(argv)
    from trtpipe.console import UI
    ui = UI(quiet=args.quiet, verbose=args.verbose)

    def job():
        from trtpipe.stages.run import RunOptions, bisect_recipe
        bisect_recipe(args.recipe, ui, RunOptions(debug=args.debug, cache_dir=args.cache_dir, force=args.force))

    return guarded(job, ui, args.debug)


@command("cache")
def cmd_cache(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python pipeline.py cache",
                                     description="Inspect or prune the stage cache (converted models, pass outputs, "
                                                 "validation results, plans, timing caches).")
    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="location, entries per stage, size")
    info.add_argument("--verify", action="store_true", help="also check every entry's files (discarding bad ones)")
    _cache_dir_flag(info)
    prune = sub.add_parser("prune", help="remove entries (all, or those unused for --older-than)")
    prune.add_argument("--older-than", metavar="AGE", help="only entries not used for AGE (e.g. 30d, 12h, 90m)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _cache_dir_flag(prune)
    args = parser.parse_args(argv)
    from trtpipe import cache
    from trtpipe.console import UI
    ui = UI()
    root, how = cache.resolve_dir(args.cache_dir)
    store = cache.Cache(root, warn=ui.warn)
    if args.action == "info":
        return _cache_info(ui, store, how, args.verify)
    try:
        age = cache.parse_age(args.older_than) if args.older_than else None
    except ValueError as err:
        ui.error(f"--older-than: {err}", EXIT_USAGE)
        return EXIT_USAGE
    if not (root / "entries").is_dir():
        ui.out.print(f"cache {root} ({how}) is empty")
        return EXIT_OK
    count, freed = store.prune(age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    scope = f" unused for {args.older_than}" if args.older_than else ""
    ui.out.print(f"{verb} {count} entr{'y' if count == 1 else 'ies'}{scope} ({freed / 2**20:.1f} MiB) from {root}")
    return EXIT_OK


def _cache_info(ui, store, how, verify):
    import time
    if not (store.root / "entries").is_dir():
        ui.out.print(f"cache: {store.root} ({how}): empty")
        return EXIT_OK
    problems = store.verify_all() if verify else []
    data = store.info()
    when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"  # noqa: E731
    ui.out.print(f"cache: {data['dir']} ({how})")
    total = sum(s["entries"] for s in data["stages"].values())
    ui.out.print(f"  {total} entries, {data['bytes'] / 2**20:.1f} MiB; last used {when(data['newest_use'])}, "
                 f"least recently used {when(data['oldest_use'])}")
    for kind, s in sorted(data["stages"].items()):
        ui.out.print(f"  {kind:<10} {s['entries']:>5} entries  {s['bytes'] / 2**20:>9.1f} MiB")
    for name in data["timing_caches"]:
        ui.out.print(f"  timing cache {name}")
    if data["temporary"]:
        ui.out.print(f"  {len(data['temporary'])} temporary entr{'y' if len(data['temporary']) == 1 else 'ies'} "
                     "(being written, or left by a killed run: the next run removes those)")
    if verify:
        for p in problems:
            ui.warn(p)
        verdict = "all entries intact" if not problems else f"{len(problems)} bad entries discarded"
        ui.out.print(f"  verified: {verdict}")
    return EXIT_OK


def entry() -> NoReturn:
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
