"""`python pipeline.py build-all RECIPE_OR_DIR... [--targets 8.6,8.9] [--jobs N] [--executor local|ray]
[--address ADDR]`: every recipe for every target, each task the ordinary run in its own process."""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from pathlib import Path

from trtpipe.commands import command, guarded
from trtpipe.errors import EXIT_OK, EXIT_TASKS

DEFAULT_JOBS = max(1, min(4, os.cpu_count() or 1))
MAX_JOBS = 1024   # --jobs above this is refused (a usage error): no machine runs that many builds at once


def jobs_arg(text: str) -> int:
    """argparse type of --jobs: an integer from 1 to MAX_JOBS.

    Raises:
        argparse.ArgumentTypeError: not an integer, or outside 1..MAX_JOBS (exit 2).
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"{text} is outside 1..{MAX_JOBS} (tasks at a time; the pool never "
                                         f"holds more workers than there are tasks)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python pipeline.py build-all", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Build every recipe for every target. A task is one recipe for one target, run as
            `python pipeline.py RECIPE -o <output.dir>/<target dir> --compute-capabilities TARGET`
            in its own process; a failed task never stops the others. Writes build-all.json (per
            task: recipe, target, exit code, stage cache hits, plan path and sha256, worker, time),
            build-all.md and build-all-logs/ into --report-dir.

            targets: compute capabilities (8.6, 8.9, 12.0; 8.6+8.9 is one plan for both), each
            published into <output.dir>/sm86, sm89, sm86_sm89; or GPU kinds (A100) for the
            tensorrt backend, routed to workers with such a GPU, published into <output.dir>/a100.
            Without --targets each recipe is built for its own build.compute_capabilities.
            A recipe's first target runs before its others, which then find its conversion,
            passes and validation in the stage cache.

            executors: local (default) runs --jobs processes here; ray runs Ray tasks on a local
            Ray (loopback only) or on the cluster at --address, routed by target resources
            (sm_89, accelerator_type:A100), retried once if their worker dies. Share the stage
            cache between machines with --remote-cache (a shared directory or an fsspec URL).
            """),
        epilog="exit codes:\n  0  every task succeeded\n  2  bad usage (a target, no recipes, Ray missing or "
               "unreachable)\n  3  a recipe does not load (--emit-matrix; a build records it per task)\n"
               "  8  --report-dir cannot be written (or --emit-matrix: two recipes share an output directory)\n"
               "  11 one or more tasks failed (build-all.json has each task's exit code)\n"
               "  130 interrupted")
    parser.add_argument("recipes", nargs="+", metavar="RECIPE_OR_DIR", help="recipe files, or folders of them")
    parser.add_argument("--targets", metavar="LIST", help="comma-separated targets, e.g. 8.6,8.9,12.0")
    parser.add_argument("--jobs", "-j", type=jobs_arg, metavar="N",
                        help=f"tasks at a time, 1..{MAX_JOBS}, at most the number of tasks (local default "
                             f"{DEFAULT_JOBS}; ray default: as the cluster takes)")
    parser.add_argument("--executor", choices=("local", "ray"), help="local (default) or ray")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to connect to (ray://HOST:10001, HOST:6379); implies --executor ray")
    parser.add_argument("-o", "--output-dir", metavar="BASE",
                        help="publish into BASE/<recipe name>/<target dir> instead of <output.dir>/<target dir>")
    parser.add_argument("--report-dir", metavar="DIR", default="build",
                        help="where build-all.json, build-all.md and build-all-logs/ go (default: build)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="each worker's local stage cache (default: $TRTPIPE_CACHE_DIR, else the XDG cache "
                             "directory); {node} is replaced by the Ray node id, for nodes sharing a filesystem")
    parser.add_argument("--remote-cache", metavar="URL", default=os.environ.get("TRTPIPE_REMOTE_CACHE") or None,
                        help="shared remote tier of the stage cache: a directory every worker reaches, or an "
                             "fsspec URL (file://, s3://, gs://); default $TRTPIPE_REMOTE_CACHE")
    parser.add_argument("--emit-matrix", action="store_true",
                        help="print the tasks as a GitHub Actions matrix (JSON) and build nothing")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    return parser


@command("build-all")
def cmd_build_all(argv: list[str]) -> int:
    """`python pipeline.py build-all ...` (see _parser); returns 0, 2, 3, 8, 11 or 130."""
    parser = _parser()
    args = parser.parse_args(argv)
    from trtpipe.console import UI
    from trtpipe.fleet import tasks as fleet_tasks
    ui = UI(quiet=args.quiet)
    executor = args.executor or ("ray" if args.address else "local")
    if args.address and executor != "ray":
        parser.error("--address needs --executor ray")
    try:
        targets = fleet_tasks.parse_targets(args.targets) if args.targets is not None else None
    except fleet_tasks.TargetError as err:
        parser.error(f"--targets: {err}")
    paths = fleet_tasks.recipe_paths(args.recipes)
    if not paths:
        parser.error(f"no recipes (*.yaml, *.yml) in {', '.join(args.recipes)}")
    code = EXIT_OK

    def job():
        nonlocal code
        tasks = fleet_tasks.expand(paths, targets, args.output_dir)
        if args.emit_matrix:
            fleet_tasks.raise_task_error(tasks)  # a matrix of tasks that cannot run is no matrix
            print(fleet_tasks.matrix_json(tasks))
            return
        from trtpipe.fleet.report import prepare
        prepare(args.report_dir)  # before any task runs: a report that cannot be written is known now
        code = _build(tasks, args, argv, executor, ui)

    result = guarded(job, ui, args.debug)
    return result if result != EXIT_OK else code


def _build(tasks, args, argv, executor, ui):
    from trtpipe.fleet import report
    from trtpipe.fleet.progress import BuildProgress
    from trtpipe.fleet.runner import PAUSE_ONCE_ENV
    cache_dir = str(Path(args.cache_dir).expanduser().absolute()) if args.cache_dir else None
    options = {"cache_dir": cache_dir, "remote_cache": _remote(args.remote_cache),
               "pause_once": os.environ.get(PAUSE_ONCE_ENV)}
    jobs = args.jobs or (DEFAULT_JOBS if executor == "local" else None)
    if jobs:
        jobs = max(1, min(jobs, len(tasks)))  # never more workers than tasks
    started, t0 = time.time(), time.perf_counter()
    meta = {"argv": ["build-all", *argv], "executor": executor, "address": args.address,
            "targets": list(dict.fromkeys(t.target.label for t in tasks)), "jobs": jobs, "cache_dir": cache_dir,
            "remote_cache": options["remote_cache"], "started": round(started, 3)}
    if not args.quiet:
        ui.out.print(f"build-all: {len(tasks)} task(s), {executor} executor"
                     + (f" at {args.address}" if args.address else "") + (f", {jobs} at a time" if jobs else ""))
    results: dict = {}
    interrupted = False
    with BuildProgress(ui.out, len(tasks), quiet=args.quiet) as progress:
        try:
            if executor == "ray":
                from trtpipe.fleet.ray_cluster import run_ray
                meta["cluster"] = run_ray(tasks, options, args.address, args.jobs, progress, results)
            else:
                from trtpipe.fleet.local import run_local
                run_local(tasks, options, jobs, progress, results)
        except KeyboardInterrupt:
            interrupted = True
    records = [results.get(t.index) or report.cancelled_record(t, executor) for t in tasks]
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    json_path, md_path = report.write(args.report_dir, records, meta)
    ui.table(report.summary_table(records))
    ok = sum(r["status"] == "succeeded" for r in records)
    ui.out.print(f"{ok}/{len(records)} task(s) succeeded in {meta['seconds']:.1f} s; report {json_path} and {md_path}")
    if interrupted:
        ui.error("interrupted; the tasks that were running published nothing", 130)
        return 130
    return EXIT_OK if ok == len(records) else EXIT_TASKS


def _remote(url):
    """A remote tier path made absolute (workers may start elsewhere); URLs pass through."""
    if not url or "://" in url:
        return url
    return str(Path(url).expanduser().resolve())
