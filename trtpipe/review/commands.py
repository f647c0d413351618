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
      - the model (read without its weights; a SavedModel's signature without TensorFlow): every
        input, tensor and node name in pass parameters, every profile input (and its rank and
        static dims), validation inputs and outputs, the SavedModel tag set and signature
      - precision options (keys of another mode, BF16/FP8 vs build.compute_capabilities)
      - backend compatibility: each enabled pass's precheck against the backend a run would use on
        this machine (e.g. nms efficient_nms needs EfficientNMS_TRT, which TensorRT-RTX lacks; plugin:
        the creator exists after loading build.plugins, and attrs fit its fields)
      - deprecated plugins (warnings): EfficientNMS_TRT, BatchedNMS_TRT, with what to use instead
      - with --fmt: the file is as `python pipeline.py fmt` writes it
    backend checks use the backend a run would use on this machine; where it is not installed they
    are skipped, with a warning saying so (--strict-backend: an error); --warn-backend turns the
    problems of `backend: auto`, which depend on what the machine has, into warnings

    output (--format): text (FILE:LINE:COL: key.path: message, as a run prints it), json, or
    github (workflow annotations: ::error file=F,line=L,col=C::message, shown inline in pull requests)

    exit codes:
      0  every recipe is fine (warnings and skipped checks do not fail it)
      2  bad command-line usage
      3  at least one recipe has a problem (all recipes are checked; every problem is printed)""")


def output_format(value: str) -> str:
    """argparse type of --format: text, json or github."""
    from trtpipe.review.annotations import FORMATS
    if value in FORMATS:
        return value
    moved = " (canonical formatting is checked with --fmt)" if value not in ("", "-") else ""
    raise argparse.ArgumentTypeError(f"{value!r} is not an output format: choose {', '.join(FORMATS)}{moved}")


def _format_flag(parser):
    parser.add_argument("--format", type=output_format, default="text", metavar="{text,json,github}",
                        help="output: text (default), json, or github (workflow annotations for pull requests)")


@command("check")
def cmd_check(argv: list[str]) -> int:
    parser = _parser("check", "Check recipes without converting or building.", CHECK_EPILOG)
    parser.add_argument("recipes", nargs="+", metavar="RECIPE",
                        help="recipe files, or directories (their *.yaml / *.yml files are checked)")
    _format_flag(parser)
    parser.add_argument("--fmt", action="store_true",
                        help="also fail when a recipe is not canonically formatted (`python pipeline.py fmt`)")
    parser.add_argument("--strict-backend", action="store_true",
                        help="a recipe whose backend is not installed here fails, instead of skipping the "
                             "backend checks with a warning")
    parser.add_argument("--warn-backend", action="store_true",
                        help="report backend problems that depend on this machine (`backend: auto` resolved "
                             "here) as warnings, not errors: for CI machines without the recipes' target backend")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems and warnings")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    from trtpipe.review.check import check_recipe, recipe_files
    from trtpipe.review.check_output import Checked, emit, summary
    ui = _ui(args.quiet)
    paths = recipe_files(args.recipes)
    if not paths:
        ui.error("no recipe files found in " + ", ".join(args.recipes), EXIT_USAGE)
        return EXIT_USAGE
    items = []
    for path in paths:
        try:
            item = Checked(path, check_recipe(path, check_format=args.fmt, warn_backend=args.warn_backend,
                                              strict_backend=args.strict_backend))
        except PipelineError as err:
            if args.debug:
                import traceback
                traceback.print_exc()
            item = Checked(path, error=str(err))
        items.append(item)
        emit(item, args.format, ui)
    return summary(items, args.format, ui)


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
    _format_flag(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    ui = _ui()
    if not args.git and len(args.recipes) != 2:
        parser.print_usage(sys.stderr)
        ui.error("diff needs two recipes, OLD and NEW (or --git REV and the recipes to compare with REV)", EXIT_USAGE)
        return EXIT_USAGE
    pairs = ([(args.recipes[0], args.recipes[1])] if not args.git else [(None, r) for r in args.recipes])
    outputs, records, notices = [], [], []

    def job():
        from trtpipe.review import diff as recipe_diff
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
            if old_text is None or new_text is None:
                state = (f"new recipe (not in {args.git}): every stage runs; `python pipeline.py explain {new_path}` "
                         "shows it resolved") if old_text is None else "recipe deleted in the working tree; as it was:"
                label = f"(none) -> {new_path}" if old_text is None else f"{old_label} -> (none)"
                whole = _parse(new_text, new_path) if old_text is None else _parse(old_text, old_label)
                outputs.append(recipe_diff.render_whole(whole, label, state))
                records.append({"old": None if old_text is None else old_label,
                                "new": None if new_text is None else new_path, "state": state.split(":")[0]})
                notices.append((new_path if new_text is not None else old_label, None, None, "recipe diff", state))
                continue
            (old, _), (new, marks) = _parse_marked(old_text, old_label), _parse_marked(new_text, new_path)
            diff = recipe_diff.diff_recipes(old, new, old_dir, Path(new_path).resolve().parent)
            outputs.append(recipe_diff.render(diff, old_label, new_path))
            records.append(recipe_diff.as_json(diff, old_label, new_path))
            notices.extend(recipe_diff.annotations(diff, str(new_path), lambda p, m=marks: _line_col(m, p)))
        if args.format == "json":
            import json
            ui.out.print(json.dumps(records, indent=2), markup=False, highlight=False, soft_wrap=True)
            return
        if args.format == "github":
            from trtpipe.review.annotations import Annotation
            for file, line, col, title, message in notices:
                ui.out.print(Annotation("notice", file, line, col, message).as_github(title), markup=False,
                             highlight=False, soft_wrap=True)
        ui.out.print("\n\n".join(outputs), markup=False, highlight=False)
    return guarded(job, ui, args.debug)


def _parse_marked(text, label):
    """(data, marks) of a recipe's text. Raises RecipeError (exit 3) for a document that is not a
    mapping (empty, a list, a value), as check, fmt and run refuse it."""
    from trtpipe.recipe.load import check_mapping
    from trtpipe.recipe.yamlmarks import load_yaml_with_marks
    data, marks = load_yaml_with_marks(text, str(label))
    check_mapping(data, str(label))
    return data, marks


def _line_col(marks, path):
    """(line, col) of the key path `path`, from `file:line:col`."""
    where = marks.locate(path).rsplit(":", 2)
    try:
        return int(where[1]), int(where[2])
    except (IndexError, ValueError):
        return None


def _read(path, missing_ok=False):
    """The recipe's text, read as a run reads it (regular files of at most 1 MiB, UTF-8)."""
    from trtpipe.recipe.load import read_recipe_text
    if missing_ok and not os.path.exists(path):
        return None
    return read_recipe_text(path)


def _parse(text, label):
    return _parse_marked(text, label)[0]


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
    listed = subprocess.run(["git", "ls-tree", rev, "--", f"./{path.name}"], cwd=cwd, capture_output=True,
                            text=True)
    if listed.stdout.startswith("120000 "):  # a symbolic link: `git show` prints its target, not a recipe
        target = shown.stdout.decode("utf-8", "replace")
        raise RecipeError(f"{path}@{rev}:1:1: a symbolic link in {rev} (to {target!r}), not a recipe: a recipe "
                          f"must be a YAML mapping with at least `name:` and `source:`",
                          hint=f"diff the file it points to: `python pipeline.py diff --git {rev} "
                               f"{path.parent / target}`")
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
    paths, changed, broken = recipe_files(args.recipes), [], []
    if not paths:
        ui.error("no recipe files found in " + ", ".join(args.recipes), EXIT_USAGE)
        return EXIT_USAGE
    for path in paths:
        try:
            text = _read(path)
            if args.check:
                for problem in check_formatting(path, text):
                    ui.error(problem, EXIT_RECIPE)
                    changed.append(path)
                continue
            formatted = format_text(text, path)
            if formatted != text:
                write_atomically(path, formatted)
                changed.append(path)
                ui.out.print(f"formatted {path}", markup=False)
        except PipelineError as err:
            if args.debug:
                import traceback
                traceback.print_exc()
            ui.error(str(err), EXIT_RECIPE)
            broken.append(path)
    # say what was looked at, also when all is well: a silent success reads like nothing was checked
    fine = len(paths) - len(changed) - len(broken)
    if args.check:
        line = (f"fmt --check: {len(paths)} recipe(s) checked, {fine} canonically formatted"
                + (f", {len(changed)} would change (run `python pipeline.py fmt`)" if changed else "")
                + (f", {len(broken)} unreadable" if broken else ""))
    elif not changed and not broken:  # each rewritten file was named above; here: that none needed it
        line = f"fmt: {len(paths)} recipe(s) already canonical; nothing rewritten"
    else:
        line = None
    if line:
        (ui.err.print if changed or broken else ui.out.print)(line, markup=False)
    return EXIT_RECIPE if broken or (args.check and changed) else code


# ------------------------------------------------------------------------------ docs

def checkout() -> Path | None:
    """The checkout this code runs from (source tree or editable install), None for a plain install."""
    return REPO if (REPO / "setup.cfg").is_file() and (REPO / "trtpipe").is_dir() else None


def docs_root() -> Path:
    """The directory holding docs/: the checkout's, else (a plain install) the current directory."""
    return checkout() or Path.cwd()


def generated_docs(docs_dir: Path | None = None) -> dict[Path, str]:
    """{path: text} of the documentation generated from the schemas, in `docs_dir` (default: the
    checkout's docs/, else ./docs); in a checkout (no `docs_dir`) also the editor schema,
    schemas/recipe.editor.schema.json (a plain install ships its own)."""
    from trtpipe import registry
    from trtpipe.recipe.schema import load_schema
    from trtpipe.review import docs
    from trtpipe.review.editor_schema import FILE, editor_schema_text
    builtin = [i for i in registry.all_passes() if i.origin.startswith("passes.")]  # not third-party plugins
    folder = docs_dir or docs_root() / "docs"
    out = {folder / "passes.md": docs.passes_md(builtin),
           folder / "recipe.md": docs.recipe_md(load_schema("recipe.schema.json"))}
    if docs_dir is None and checkout() is not None:
        out[checkout() / "schemas" / FILE] = editor_schema_text(load_schema("recipe.schema.json"), builtin)
    return out


@command("docs")
def cmd_docs(argv: list[str]) -> int:
    parser = _parser("docs", "Regenerate docs/passes.md and docs/recipe.md from the JSON schemas and the pass "
                     "docstrings, and (in a checkout) the editor schema schemas/recipe.editor.schema.json.",
                     "exit codes: 0 ok (or, with --check, up to date), 3 stale (--check)")
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
        if not stale:
            ui.out.print(f"docs --check: up to date: {', '.join(_shown(p, root) for p in wanted)}", markup=False)
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
