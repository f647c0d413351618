"""Command line: `python pipeline.py RECIPE` runs a recipe; `python pipeline.py passes` lists passes."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import NoReturn

from trtpipe.commands import COMMANDS, command, guarded
from trtpipe.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_OK, EXIT_OUTPUT, EXIT_PIPE, EXIT_USAGE, PipelineError


def _exit_code_help():
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in sorted(EXIT_CODES.items()))


def _common(parser):
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print pass notes, builder phases, and what libraries print or warn (Polygraphy, numpy)")
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
              python pipeline.py plugins [NAME]         list the backend's plugin creators and their fields
              python pipeline.py check RECIPE...        check recipes without converting or building
              python pipeline.py explain RECIPE         resolved recipe (defaults marked) and stage plan
              python pipeline.py diff OLD NEW           semantic recipe diff and the stages that re-run
              python pipeline.py diff --git REV RECIPE  the same against a git revision
              python pipeline.py fmt [--check] RECIPE...  canonical key order, comments kept
              python pipeline.py docs [--check]         regenerate docs/passes.md, docs/recipe.md
              python pipeline.py cache info|prune       the stage cache (see README "Cache")
              python pipeline.py bisect RECIPE          the first pass whose outputs diverge from the source's
              python pipeline.py predict OUTPUT_DIR IMAGE_OR_DIR... [--runtime auto|engine|onnxruntime]
                                                        run the published model on images: JSON + PNG per image
              python pipeline.py bench OUTPUT_DIR       latency percentiles and throughput (engine, ONNX Runtime)
              python pipeline.py export OUTPUT_DIR --for trtexec|polygraphy  the line that builds the same plan
              python pipeline.py refit PLAN --onnx FINAL.onnx  weights back into a refittable/stripped plan
              python pipeline.py build-all RECIPE_OR_DIR... --targets 8.6,8.9  every recipe for every target
            """),
        epilog=_exit_code_help() + "\n\nRecipe reference: schemas/recipe.schema.json (see docs/).")
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/effdet.yaml")
    parser.add_argument("--no-validate", action="store_true", help="skip validation (recorded in the report)")
    parser.add_argument("-o", "--output-dir", metavar="DIR",
                        help="write artifacts here instead of the recipe's output.dir")
    parser.add_argument("--force", action="store_true", help="re-run every stage, ignoring cached outputs (also "
                                                                 "implies --take-over)")
    parser.add_argument("--take-over", action="store_true",
                        help="publish into an output directory that holds another recipe's artifacts, replacing "
                             "them (cached stages stay cached)")
    parser.add_argument("--from", dest="from_stage", metavar="STAGE",
                        help="re-run STAGE and every stage after it: source, passes, passes[N] or a pass name, "
                             "precision, validate, build")
    parser.add_argument("--compute-capabilities", metavar="LIST",
                        help="build for these compute capabilities (e.g. 8.6 or 8.6,8.9) instead of the recipe's "
                             "build.compute_capabilities (TensorRT-RTX; build-all's targets)")
    _cache_dir_flag(parser)
    _common(parser)
    return parser


def _cache_dir_flag(parser):
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="stage cache directory (default: $TRTPIPE_CACHE_DIR, else $XDG_CACHE_HOME/trt-pipeline)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from trtpipe.cache import commands as cache  # noqa: F401  (registers cache)
    from trtpipe.deploy import commands as deploy  # noqa: F401  (registers predict, bench, export, refit)
    from trtpipe.fleet import command as fleet  # noqa: F401  (registers build-all)
    from trtpipe.review import commands as review  # noqa: F401  (registers check, explain, diff, fmt, docs)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    parser = _main_parser()
    args = parser.parse_args(argv)
    ccs = None
    if args.compute_capabilities:
        from trtpipe.fleet.tasks import TargetError, parse_compute_capabilities
        try:
            ccs = parse_compute_capabilities(args.compute_capabilities)
        except TargetError as err:
            parser.error(f"--compute-capabilities: {err}")
    from trtpipe.console import UI
    ui = UI(quiet=args.quiet, verbose=args.verbose)

    def job():
        from trtpipe.stages.run import RunOptions, run_recipe
        with ui.third_party_to_log():  # library prints and warnings: the -v log, not between the stage lines
            run_recipe(args.recipe, ui, RunOptions(validate=not args.no_validate, debug=args.debug,
                                                      output_dir=args.output_dir, cache_dir=args.cache_dir,
                                                      force=args.force, take_over=args.take_over,
                                                      from_stage=args.from_stage,
                                                      compute_capabilities=ccs))

    return guarded(job, ui, args.debug)


@command("passes")
def cmd_passes(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python pipeline.py passes",
                                     description="List registered graph-surgery passes with their parameters.")
    parser.add_argument("name", nargs="?", help="show one pass in full")
    args = parser.parse_args(argv)
    from trtpipe import registry
    from trtpipe.console import UI
    from trtpipe.review.docs import pass_names_table, pass_text
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
        # plain text wrapped here, at the terminal's width: every docstring line shown, no word split
        import shutil
        width = ui.out.width if ui.out.is_terminal else shutil.get_terminal_size((100, 24)).columns  # COLUMNS
        ui.out.print(pass_text(info, width), markup=False, highlight=False, soft_wrap=True, end="")
        return EXIT_OK
    ui.out.print(pass_names_table(registry.all_passes()))
    ui.out.print("\n`python pipeline.py passes NAME` shows one pass with its parameters.")
    return EXIT_OK


@command("plugins")
def cmd_plugins(argv: list[str]) -> int:
    from trtpipe.stages.build.plugin_list import plugins_command
    return plugins_command(argv)


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
        with ui.third_party_to_log():
            bisect_recipe(args.recipe, ui, RunOptions(debug=args.debug, cache_dir=args.cache_dir, force=args.force))

    return guarded(job, ui, args.debug)


def entry() -> NoReturn:
    """The process entry (`python pipeline.py`, the `trt-pipeline` script): main(), then exit."""
    try:
        code = main()
    except BaseException as exc:
        code = _failure_code(exc)
    _exit(code)


def _failure_code(exc: BaseException) -> int:
    """The exit code for what escaped main(), said on stderr; re-raises what is no failure of ours
    (SystemExit, KeyboardInterrupt outside a run)."""
    from trtpipe.fileguard import is_disk_full
    if _closed_pipe(exc):  # the reader went away (`| head`): stop quietly, as a SIGPIPE'd tool would
        _stdout_gone()
        return EXIT_PIPE
    if isinstance(exc, OSError) and is_disk_full(exc):
        # a run's own files say so as output errors: what reaches here is the standard output
        _stdout_gone()
        print(f"error (exit {EXIT_OUTPUT}): cannot write to standard output: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_OUTPUT
    if not isinstance(exc, Exception):
        raise exc
    import traceback  # a bug in this tool: show the traceback, exit 1
    traceback.print_exception(exc)
    return EXIT_INTERNAL


def _closed_pipe(exc: BaseException | None) -> bool:
    """Whether `exc` or what it was raised while handling is a BrokenPipeError (rich answers one
    with SystemExit(1), or fails in its own handler when stdout is being captured)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, BrokenPipeError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False




def _stdout_gone() -> None:
    """Point the standard output at /dev/null: what is still buffered for it is dropped instead of
    failing again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _exit(code: int) -> NoReturn:
    """Exit without the interpreter's teardown when nothing needs it: after a conversion, tearing
    down TensorFlow's modules and objects took 0.5-0.6 s of every run (issue 13), and everything the
    tool writes is closed by then. The exit handlers still run (logging, multiprocessing, temporary
    directories, Ray), then the streams are flushed. The normal exit is taken instead while a
    non-daemon thread runs (it joins it) and under a profiler or tracer (cProfile, coverage: they
    write their results at exit)."""
    import threading
    busy = any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate())
    if not isinstance(code, int) or busy or sys.getprofile() or sys.gettrace():
        sys.exit(code)
    import atexit
    import ctypes
    atexit._run_exitfuncs()  # what the normal exit runs first (CPython's own name for it)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can be said
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # what native libraries printed through C stdio
    except (OSError, AttributeError):
        pass
    os._exit(code)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    entry()
