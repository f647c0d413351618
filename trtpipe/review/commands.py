"""Commands for reviewing recipes without building: check, explain, diff, fmt, docs.

None of them imports TensorFlow or converts a model; all of them report recipe problems with the
`file:line:col: key.path: message` lines a run prints, and exit 3 for them.
"""

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from trtpipe.commands import command, guarded
from trtpipe.errors import EXIT_OK, EXIT_OUTPUT, EXIT_RECIPE, EXIT_USAGE, PipelineError, RecipeError

REPO = Path(__file__).resolve().parents[2]  # the checkout holding trtpipe/, schemas/ and docs/ (or site-packages)
DOCS = {"passes.md": "passes_md", "recipe.md": "recipe_md"}


def _ui(quiet=False):
    from trtpipe.console import UI
    return UI(quiet=quiet)


def _parser(name, description, epilog=None):
    return argparse.ArgumentParser(prog=f"python pipeline.py {name}", description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------------------ check

CHECK_EPILOG = textwrap.dedent("""\
    checks, without converting or building (no TensorFlow import; about a second per folder):
      - YAML syntax and duplicate keys, the recipe schema (unknown keys with did-you-mean)
      - pass names (did-you-mean) and each pass's parameters against its schema
      - build.profiles: min <= opt <= max, equal ranks, unique names
      - files: source model (ONNX file / SavedModel directory), build.plugins libraries,
        validate.data / precision.calibration .npz files and image folders
      - precision options (keys of another mode, BF16/FP8 vs build.compute_capabilities)
      - backend compatibility: each enabled pass's precheck against the backend a run would use on
        this machine (e.g. nms efficient_nms needs EfficientNMS_TRT, which TensorRT-RTX lacks)
      - with --format: the file is as `python pipeline.py fmt` writes it
    backend checks use the backend a run would use on this machine; --warn-backend turns those
    that depend on the machine (`backend: auto`, or a backend not installed here) into warnings

    messages are the ones a run prints: FILE:LINE:COL: key.path: message

    exit codes:
      0  every recipe is fine
      2  bad command-line usage
      3  at least one recipe has a problem (all recipes are checked; every problem is printed)""")


@command("check")
def cmd_check(argv: list[str]) -> int:
    parser = _parser("check", "Check recipes without converting or building.", CHECK_EPILOG)
    parser.add_argument("recipes", nargs="+", metavar="RECIPE",
                        help="recipe files, or directories (their *.yaml / *.yml files are checked)")
    parser.add_argument("--format", action="store_true",
                        help="also fail when a recipe is not canonically formatted (`python pipeline.py fmt`)")
    parser.add_argument("--warn-backend", action="store_true",
                        help="report backend problems that depend on this machine (`backend: auto` resolved "
                             "here, or a backend not installed here) as warnings, not errors: for CI machines "
                             "without the recipes' target backend")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from trtpipe.review.check import check_recipe, recipe_files
    ui, bad = _ui(args.quiet), 0
    paths = recipe_files(args.recipes)
    if not paths:
        ui.error("no recipe files found in " + ", ".join(args.recipes), EXIT_USAGE)
        return EXIT_USAGE
    for path in paths:
        try:
            result = check_recipe(path, check_format=args.format, warn_backend=args.warn_backend)
        except PipelineError as err:
            if args.debug:
                import traceback
                traceback.print_exc()
            ui.error(str(err), EXIT_RECIPE)
            bad += 1
            continue
        for problem in result.problems:
            ui.error(problem, EXIT_RECIPE)
        for warning in result.warnings:
            ui.err.print(f"warning (--warn-backend): {warning}", markup=False)
        for note in result.notes:
            ui.err.print(f"  note: {note}", markup=False)
        if result.problems:
            bad += 1
        else:
            from rich.markup import escape
            backend = result.backend or "no backend installed: " + ", ".join(result.skipped) + " skipped"
            extra = f"; {len(result.warnings)} backend warning(s)" if result.warnings else ""
            ui.info(f"ok {escape(str(path))} [dim]({escape(backend)}{extra})[/]")
        if result.skipped:  # printed even with --quiet: what was not checked matters as much as what was
            ui.err.print(f"{path}: {result.skipped_line}", markup=False)
    if len(paths) > 1 or bad:
        summary = f"checked {len(paths)} recipe(s): {len(paths) - bad} ok, {bad} with problems"
        (ui.err.print(summary, markup=False) if bad else ui.info(summary))
    return EXIT_RECIPE if bad else EXIT_OK


# ------------------------------------------------------------------------------ explain

@command("explain")
def cmd_explain(argv: list[str]) -> int:
    parser = _parser("explain", "Show the recipe as a run resolves it (every default filled in and marked "
                     "`# default`, computed values marked `# derived`) and the stage plan: what each stage "
                     "will do and whether it is cached or would run.",
                     "exit codes: 0 ok, 3 the recipe has errors (the same messages as a run)")
    parser.add_argument("recipe")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    ui = _ui()

    def job():
        from trtpipe.review.explain import explain
        ui.out.print(explain(args.recipe), markup=False, highlight=False)
    return guarded(job, ui, args.debug)


# ------------------------------------------------------------------------------ diff

DIFF_EPILOG = textwrap.dedent("""\
    Both recipes are compared as a run sees them: defaults filled in (writing a default explicitly
    is no change), comments, key order and formatting ignored, sizes compared in bytes, paths
    resolved. Passes are aligned by name: changed, added, removed, moved, enabled, disabled.

    examples:
      python pipeline.py diff recipes/effdet.yaml recipes/effdet-tensorrt.yaml
      python pipeline.py diff --git origin/main recipes/effdet.yaml
      git diff --name-only origin/main -- 'recipes/*.yaml' | xargs -r python pipeline.py diff --git origin/main

    exit codes: 0 (also when recipes differ), 2 bad usage, 3 a recipe cannot be read or parsed""")


@command("diff")
def cmd_diff(argv: list[str]) -> int:
    parser = _parser("diff", "Semantic diff of two recipes: what changed in which stage, and which stages "
                     "re-run and why.", DIFF_EPILOG)
    parser.add_argument("recipes", nargs="+", metavar="RECIPE",
                        help="OLD NEW, or with --git one or more recipes to compare with their REV version")
    parser.add_argument("--git", metavar="REV", help="compare each RECIPE as of git revision REV with the working file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    ui = _ui()
    if not args.git and len(args.recipes) != 2:
        parser.print_usage(sys.stderr)
        ui.error("diff needs two recipes, OLD and NEW (or --git REV and the recipes to compare with REV)", EXIT_USAGE)
        return EXIT_USAGE
    pairs = ([(args.recipes[0], args.recipes[1])] if not args.git else [(None, r) for r in args.recipes])
    outputs = []

    def job():
        from trtpipe.review.diff import diff_recipes, render, render_whole
        for old_path, new_path in pairs:
            if args.git:
                old_text, old_label = _git_show(args.git, new_path), f"{new_path}@{args.git}"
                old_dir = Path(new_path).resolve().parent
                new_text = _read(new_path, missing_ok=True)
                if old_text is None and new_text is None:
                    raise RecipeError(f"{new_path}: neither the working file nor {args.git}:{new_path} exists")
            else:
                old_text, old_label, old_dir = _read(old_path), old_path, Path(old_path).resolve().parent
                new_text = _read(new_path)
            if old_text is None:
                outputs.append(render_whole(_parse(new_text, new_path), f"(none) -> {new_path}",
                                            f"new recipe (not in {args.git}): every stage runs; "
                                            f"`python pipeline.py explain {new_path}` shows it resolved"))
                continue
            if new_text is None:
                outputs.append(render_whole(_parse(old_text, old_label), f"{old_label} -> (none)",
                                            "recipe deleted in the working tree; as it was:"))
                continue
            old, new = _parse(old_text, old_label), _parse(new_text, new_path)
            diff = diff_recipes(old, new, old_dir, Path(new_path).resolve().parent)
            outputs.append(render(diff, old_label, new_path))
        ui.out.print("\n\n".join(outputs), markup=False, highlight=False)
    return guarded(job, ui, args.debug)


def _read(path, missing_ok=False):
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read recipe: {err}") from err


def _parse(text, label):
    from trtpipe.recipe.yamlmarks import load_yaml_with_marks
    data, _ = load_yaml_with_marks(text, str(label))
    return data if isinstance(data, dict) else {}


def _git_show(rev, path):
    """The text of `path` at git revision `rev` (None when the file does not exist there)."""
    path = Path(os.path.abspath(path))
    cwd = path.parent if path.parent.is_dir() else Path.cwd()
    inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=cwd, capture_output=True, text=True)
    if inside.returncode:
        raise RecipeError(f"{path}: not inside a git work tree ({inside.stderr.strip()})")
    verify = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=cwd,
                            capture_output=True, text=True)
    if verify.returncode:
        raise RecipeError(f"--git {rev}: not a git revision here "
                          f"(try a branch, tag or commit, e.g. HEAD~1 or origin/main)")
    # `REV:./name` is resolved relative to the working directory, so symlinked checkouts work too
    shown = subprocess.run(["git", "show", f"{rev}:./{path.name}"], cwd=cwd, capture_output=True)
    if shown.returncode:
        return None
    try:
        return shown.stdout.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}@{rev}: cannot read recipe: {err}") from err


# ------------------------------------------------------------------------------ fmt

@command("fmt")
def cmd_fmt(argv: list[str]) -> int:
    parser = _parser("fmt", "Rewrite recipes in canonical form: keys in schema order (pass items: pass, params, "
                     "enabled, note; params in the pass schema's order), 2-space indentation, every "
                     "comment kept next to its key. Files are replaced atomically; running it twice changes "
                     "nothing.",
                     "exit codes: 0 ok (or, with --check, already formatted), 3 a recipe would change "
                     "(--check) or cannot be parsed")
    parser.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe files or directories")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 3 listing files that would change")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from trtpipe.review.check import check_formatting, recipe_files
    from trtpipe.review.fmt import format_text, write_atomically
    ui, code = _ui(), EXIT_OK
    for path in recipe_files(args.recipes):
        try:
            text = _read(path)
            if args.check:
                for problem in check_formatting(path, text):
                    ui.error(problem, EXIT_RECIPE)
                    code = EXIT_RECIPE
                continue
            formatted = format_text(text, path)
            if formatted != text:
                write_atomically(path, formatted)
                ui.out.print(f"formatted {path}", markup=False)
        except PipelineError as err:
            if args.debug:
                import traceback
                traceback.print_exc()
            ui.error(str(err), EXIT_RECIPE)
            code = EXIT_RECIPE
    return code


# ------------------------------------------------------------------------------ docs

def checkout() -> Path | None:
    """The checkout this code runs from (source tree or editable install), None for a plain install."""
    return REPO if (REPO / "setup.cfg").is_file() and (REPO / "trtpipe").is_dir() else None


def docs_root() -> Path:
    """The directory holding docs/: the checkout's, else (a plain install) the current directory."""
    return checkout() or Path.cwd()


def generated_docs(docs_dir: Path | None = None) -> dict[Path, str]:
    """{path: text} of the documentation generated from the schemas, in `docs_dir` (default: the
    checkout's docs/, else ./docs)."""
    from trtpipe import registry
    from trtpipe.recipe.schema import load_schema
    from trtpipe.review import docs
    builtin = [i for i in registry.all_passes() if i.origin.startswith("passes.")]  # not third-party plugins
    folder = docs_dir or docs_root() / "docs"
    return {folder / "passes.md": docs.passes_md(builtin),
            folder / "recipe.md": docs.recipe_md(load_schema("recipe.schema.json"))}


@command("docs")
def cmd_docs(argv: list[str]) -> int:
    parser = _parser("docs", "Regenerate docs/passes.md and docs/recipe.md from the JSON schemas and the pass "
                     "docstrings.", "exit codes: 0 ok (or, with --check, up to date), 3 stale (--check)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 3 when the docs are stale")
    parser.add_argument("--dir", metavar="DIR", help="the docs folder (default: the checkout's docs/; outside a "
                                                     "checkout required to write, so that no one's docs/ is "
                                                     "overwritten by accident)")
    args = parser.parse_args(argv)
    from trtpipe.review.fmt import write_atomically
    ui = _ui()
    if not args.check and not args.dir and checkout() is None:
        ui.error("not running from a trt-pipeline checkout: say where to write the generated docs with "
                 "`docs --dir DIR` (files: passes.md, recipe.md)", EXIT_USAGE)
        return EXIT_USAGE
    docs_dir = Path(args.dir).resolve() if args.dir else None
    wanted, root = generated_docs(docs_dir), docs_root()
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for p in stale:
            why = "is stale: the schemas or pass docstrings changed" if p.exists() else "is missing"
            ui.error(f"{_shown(p, root)} {why} (run `python pipeline.py docs`)", EXIT_RECIPE)
        return EXIT_RECIPE if stale else EXIT_OK
    for p in stale:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(p, wanted[p])
        except OSError as err:
            ui.error(f"cannot write {p}: {err.strerror or err}", EXIT_OUTPUT)
            return EXIT_OUTPUT
        ui.out.print(f"wrote {_shown(p, root)}", markup=False)
    if not stale:
        ui.out.print(f"up to date: {', '.join(_shown(p, root) for p in wanted)}", markup=False)
    return EXIT_OK


def _shown(path, root):
    return os.path.relpath(path, root) if path.is_relative_to(root) else str(path)
