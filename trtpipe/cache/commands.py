"""`python pipeline.py cache info|prune`: look into the stage cache, and empty it.

* `info [--verify]`: location, entries and size per stage, timing caches; `--verify` checks
  every entry's files against its manifest (discarding bad ones) without counting that as a use,
  so `prune --older-than` still goes by when runs last used an entry.
* `prune --older-than AGE` removes entries no run used for AGE; removing everything takes
  `prune --all`, or a yes at the prompt on a terminal: a bare `prune` never empties the cache
  unasked. `--dry-run` only says what would go. Prune waits for running builds.

Both refuse (exit 8, naming it) a directory that is not a stage cache: one that holds files but no
trt-pipeline-cache.json, the marker every run writes into the cache it opens (cache/store.py); and
they touch only entries in the cache's own layout (Cache.entries).
"""

from __future__ import annotations

import argparse
import sys
import time

from trtpipe.commands import command
from trtpipe.errors import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE


def _cache_dir_flag(parser):
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="stage cache directory (default: $TRTPIPE_CACHE_DIR, else $XDG_CACHE_HOME/trt-pipeline)")


@command("cache")
def cmd_cache(argv: list[str]) -> int:
    """`python pipeline.py cache info|prune ...`; returns 0, 2 (usage) or 8 (not a stage cache)."""
    parser = argparse.ArgumentParser(prog="python pipeline.py cache",
                                     description="Inspect or prune the stage cache (converted models, pass outputs, "
                                                 "validation results, plans, timing caches).")
    sub = parser.add_subparsers(dest="action", required=True)
    info = sub.add_parser("info", help="location, entries per stage, size")
    info.add_argument("--verify", action="store_true",
                      help="also check every entry's files (discarding bad ones); not counted as a use")
    _cache_dir_flag(info)
    prune = sub.add_parser("prune", help="remove entries unused for --older-than, or all of them with --all")
    which = prune.add_mutually_exclusive_group()
    which.add_argument("--older-than", metavar="AGE", help="only entries not used for AGE (e.g. 30d, 12h, 90m)")
    which.add_argument("--all", action="store_true", help="every entry (without it, a terminal asks first)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _cache_dir_flag(prune)
    args = parser.parse_args(argv)
    from trtpipe import cache
    from trtpipe.console import UI
    ui = UI()
    root, how = cache.resolve_dir(args.cache_dir)
    store = cache.Cache(root, warn=ui.warn)
    why = store.not_a_cache()
    if why:  # someone else's directory: never inspected, never pruned
        ui.error(f"{why} ({how})", EXIT_OUTPUT)
        return EXIT_OUTPUT
    if args.action == "info":
        return _info(ui, store, how, args.verify)
    try:
        age = cache.parse_age(args.older_than) if args.older_than else None
    except ValueError as err:
        ui.error(f"--older-than: {err}", EXIT_USAGE)
        return EXIT_USAGE
    if not (root / "entries").is_dir():
        ui.out.print(f"cache {root} ({how}) is empty", markup=False)
        return EXIT_OK
    if age is None and not args.all and not args.dry_run and not _confirmed(ui, store):
        return EXIT_USAGE
    count, freed = store.prune(age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    scope = f" unused for {args.older_than}" if args.older_than else ""
    ui.out.print(f"{verb} {count} entr{'y' if count == 1 else 'ies'}{scope} ({freed / 2**20:.1f} MiB) from {root}",
                 markup=False)
    return EXIT_OK


def _confirmed(ui, store):
    """A bare `prune` would empty the cache: ask on a terminal, refuse (usage) elsewhere."""
    data = store.info()
    total = sum(s["entries"] for s in data["stages"].values())
    what = f"all {total} entries ({data['bytes'] / 2**20:.1f} MiB) of {store.root}"
    if not sys.stdin.isatty():
        ui.error(f"`cache prune` without --older-than removes {what}: say `--all` to do that, or "
                 f"`--older-than AGE` (e.g. 30d) to keep what runs used recently", EXIT_USAGE)
        return False
    try:
        answer = input(f"Remove {what}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() in ("y", "yes"):
        return True
    ui.out.print("nothing removed", markup=False)
    return False


def _info(ui, store, how, verify):
    if not (store.root / "entries").is_dir():
        ui.out.print(f"cache: {store.root} ({how}): empty", markup=False)
        return EXIT_OK
    problems = store.verify_all() if verify else []
    data = store.info()
    when = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"  # noqa: E731
    ui.out.print(f"cache: {data['dir']} ({how})", markup=False)
    total = sum(s["entries"] for s in data["stages"].values())
    ui.out.print(f"  {total} entries, {data['bytes'] / 2**20:.1f} MiB; last used {when(data['newest_use'])}, "
                 f"least recently used {when(data['oldest_use'])}")
    for kind, s in sorted(data["stages"].items()):
        ui.out.print(f"  {kind:<10} {s['entries']:>5} entries  {s['bytes'] / 2**20:>9.1f} MiB")
    for name in data["timing_caches"]:
        ui.out.print(f"  timing cache {name}", markup=False)
    if data["temporary"]:
        ui.out.print(f"  {len(data['temporary'])} temporary entr{'y' if len(data['temporary']) == 1 else 'ies'} "
                     "(being written, or left by a killed run: the next run removes those)")
    if verify:
        for p in problems:
            ui.warn(p)
        verdict = "all entries intact" if not problems else f"{len(problems)} bad entries discarded"
        ui.out.print(f"  verified: {verdict} (last-use times unchanged)")
    return EXIT_OK
