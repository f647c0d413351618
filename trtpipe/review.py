"""Commands for reviewing recipes without building: check, explain, diff, fmt, docs."""

import argparse
import subprocess
import sys
from pathlib import Path

from .cli import command, guarded
from .errors import EXIT_OK, EXIT_RECIPE, EXIT_USAGE, PipelineError, RecipeError

REPO = Path(__file__).resolve().parent.parent


def _ui():
    from .console import UI
    return UI()


@command("check")
def cmd_check(argv):
    parser = argparse.ArgumentParser(
        prog="python pipeline.py check",
        description="Check recipes without converting or building: schema, pass names and parameters, "
                    "source paths, profiles, backend/plugin compatibility (and formatting with --format).")
    parser.add_argument("recipes", nargs="+", help="recipe files")
    parser.add_argument("--format", action="store_true", help="also fail when a recipe is not canonically formatted")
    args = parser.parse_args(argv)
    from .checks import check_recipe
    ui, worst = _ui(), EXIT_OK
    for path in args.recipes:
        try:
            problems = check_recipe(path, check_format=args.format)
        except PipelineError as err:
            ui.error(str(err), err.exit_code)
            worst = worst or err.exit_code
            continue
        if problems:
            for p in problems:
                ui.error(p, EXIT_RECIPE)
            worst = worst or EXIT_RECIPE
        else:
            ui.info(f"[green]ok[/] {path}")
    return worst


@command("explain")
def cmd_explain(argv):
    parser = argparse.ArgumentParser(prog="python pipeline.py explain",
                                     description="Show the resolved recipe (defaults marked) and the stage plan.")
    parser.add_argument("recipe")
    args = parser.parse_args(argv)
    ui = _ui()

    def job():
        from .explain import explain
        ui.out.print(explain(args.recipe), markup=False)
    return guarded(job, ui, False)


@command("diff")
def cmd_diff(argv):
    parser = argparse.ArgumentParser(
        prog="python pipeline.py diff",
        description="Semantic diff of two recipes: what changed in which stage and which stages re-run. "
                    "Comments, key order and formatting are ignored.")
    parser.add_argument("old", help="old recipe (or, with --git, the recipe to compare with its REV version)")
    parser.add_argument("new", nargs="?", help="new recipe")
    parser.add_argument("--git", metavar="REV", help="compare OLD as of git revision REV with the working file")
    args = parser.parse_args(argv)
    ui = _ui()

    def job():
        from .recipe_diff import diff_recipes, render
        if args.git:
            if args.new:
                raise RecipeError("with --git give one recipe: it is compared with its version at REV")
            old_text, old_label = _git_show(args.git, args.old), f"{args.old}@{args.git}"
            new_text, new_label, new_path = Path(args.old).read_text(), args.old, args.old
        else:
            if not args.new:
                raise RecipeError("diff needs two recipes (or one with --git REV)")
            old_text, old_label = _read(args.old), args.old
            new_text, new_label, new_path = _read(args.new), args.new, args.new
        old_raw, new_raw = _parse(old_text, old_label), _parse(new_text, new_path)
        changes, reruns = diff_recipes(old_raw, new_raw)
        ui.out.print(render(changes, reruns, old_label, new_label), markup=False)
    return guarded(job, ui, False)


def _read(path):
    try:
        return Path(path).read_text()
    except OSError as err:
        raise RecipeError(f"{path}: cannot read: {err.strerror or err}")


def _parse(text, label):
    from .yamlmarks import load_yaml_with_marks
    data, _ = load_yaml_with_marks(text, str(label))
    return data if isinstance(data, dict) else {}


def _git_show(rev, path):
    path = Path(path).resolve()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True, text=True)
    if top.returncode:
        raise RecipeError(f"{path}: not inside a git repository ({top.stderr.strip()})")
    rel = path.relative_to(Path(top.stdout.strip()).resolve())
    shown = subprocess.run(["git", "show", f"{rev}:{rel.as_posix()}"], cwd=top.stdout.strip(),
                           capture_output=True, text=True)
    if shown.returncode:
        raise RecipeError(f"{path}: no version at git revision {rev!r}: {shown.stderr.strip()}")
    return shown.stdout


@command("fmt")
def cmd_fmt(argv):
    parser = argparse.ArgumentParser(prog="python pipeline.py fmt",
                                     description="Rewrite recipes in canonical key order, keeping comments.")
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--check", action="store_true", help="only report files that would change (exit 3)")
    args = parser.parse_args(argv)
    from .fmt import format_text
    from .publish import atomic_write_bytes
    ui, code = _ui(), EXIT_OK
    for path in args.recipes:
        text = _read_or_report(ui, path)
        if text is None:
            code = EXIT_RECIPE
            continue
        formatted = format_text(text)
        if formatted == text:
            continue
        if args.check:
            ui.error(f"{path}: not canonically formatted (run `python pipeline.py fmt {path}`)", EXIT_RECIPE)
            code = EXIT_RECIPE
        else:
            atomic_write_bytes(path, formatted.encode())
            ui.info(f"formatted {path}")
    return code


def _read_or_report(ui, path):
    try:
        return Path(path).read_text()
    except OSError as err:
        ui.error(f"{path}: cannot read: {err.strerror or err}", EXIT_RECIPE)
        return None


@command("docs")
def cmd_docs(argv):
    parser = argparse.ArgumentParser(prog="python pipeline.py docs",
                                     description="Regenerate docs/passes.md and docs/recipe.md from the schemas.")
    parser.add_argument("--check", action="store_true", help="fail (exit 2) when the docs are stale")
    args = parser.parse_args(argv)
    from . import registry
    from .docs import passes_md, recipe_md
    from .publish import atomic_write_bytes
    from .schema_check import load_schema
    wanted = {REPO / "docs" / "passes.md": passes_md(registry.all_passes()),
              REPO / "docs" / "recipe.md": recipe_md(load_schema("recipe.schema.json"))}
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"stale: {p} (run `python pipeline.py docs`)", file=sys.stderr)
        return EXIT_USAGE if stale else EXIT_OK
    for p in stale:
        atomic_write_bytes(p, wanted[p].encode())
        print(f"wrote {p}")
    return EXIT_OK
