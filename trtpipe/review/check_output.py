"""How `check` prints its results: `--format text` (default, for people), `json` (for scripts) or
`github` (workflow annotations, shown inline in a pull request's diff; annotations.py).

Every format carries the same content: per recipe its problems (errors), warnings (deprecated
plugins, `--warn-backend` backend problems, checks skipped for lack of a backend) and notes
(context for a problem, e.g. what `backend: auto` resolved to), each located `file:line:col`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from trtpipe.errors import EXIT_RECIPE
from trtpipe.review.annotations import Annotation, parse

if TYPE_CHECKING:
    from trtpipe.console import UI
    from trtpipe.review.check import CheckResult

TITLE = "trt-pipeline check"


@dataclasses.dataclass
class Checked:
    """One recipe's outcome: its CheckResult, or the error that stopped it from loading."""
    path: str
    result: CheckResult | None = None
    error: str | None = None       # a recipe that does not load: the loader's message(s)

    @property
    def ok(self) -> bool:
        """Loaded and without problems."""
        return self.error is None and self.result is not None and self.result.ok

    def annotations(self) -> list[Annotation]:
        """Every message of this recipe, located, errors first."""
        path, out = self.path, []
        if self.error is not None:
            return parse(self.error, "error", path, path)
        r = self.result
        for text in r.problems:
            out += parse(text, "error", path, path)
        for text in r.warnings:
            out += parse(text, "warning", path, path)
        for text in r.backend_warnings:
            out += [dataclasses.replace(a, message=a.message + " (--warn-backend: a warning here)")
                    for a in parse(text, "warning", path, path)]
        if r.skipped:
            out.append(Annotation("warning", path, None, None, r.skipped_line))
        for text in r.notes:
            out += parse(text, "notice", path, path)
        return out


def emit(item: Checked, fmt: str, ui: UI) -> None:
    """Print one recipe's outcome as it is checked (text and github; json prints at the end)."""
    if fmt == "json":
        return
    if fmt == "github":
        for a in item.annotations():
            ui.out.print(a.as_github(TITLE), markup=False, highlight=False, soft_wrap=True)
        if item.ok:
            ui.out.print(f"ok {item.path}{_backend(item.result)}", markup=False, highlight=False)
        return
    if item.error is not None:
        ui.error(item.error, EXIT_RECIPE)
        return
    r = item.result
    for problem in r.problems:
        ui.error(problem, EXIT_RECIPE)
    for warning in r.warnings:
        ui.warn(warning)
    for warning in r.backend_warnings:
        ui.err.print(f"warning (--warn-backend): {warning}", markup=False)
    for note in r.notes:
        ui.err.print(f"  note: {note}", markup=False)
    if r.ok:
        from rich.text import Text
        ui.info(Text(f"ok {item.path}") + Text(_backend(r), style="dim"))
    if r.skipped:  # shown even with --quiet: what was not checked matters as much as what was
        ui.warn(f"{item.path}: {r.skipped_line}")


def _backend(result):
    reason = result.skipped_reason or ""
    missing = "no backend installed" if not reason or reason.startswith("no ") else reason.split(" is not ")[0] + \
        " not installed"
    backend = result.backend or f"{missing}: " + ", ".join(result.skipped) + " skipped"
    extra = f"; {len(result.backend_warnings)} backend warning(s)" if result.backend_warnings else ""
    warned = f"; {len(result.warnings)} warning(s)" if result.warnings else ""
    return f" ({backend}{extra}{warned})"


def summary(items: list[Checked], fmt: str, ui: UI) -> int:
    """Print the closing summary (json: everything); returns the exit code (0, or 3 when any
    recipe has a problem)."""
    bad = sum(not i.ok for i in items)
    code = EXIT_RECIPE if bad else 0
    if fmt == "json":
        ui.out.print(json.dumps(as_json(items, code), indent=2), markup=False, highlight=False, soft_wrap=True)
        return code
    if len(items) > 1 or bad:
        line = f"checked {len(items)} recipe(s): {len(items) - bad} ok, {bad} with problems"
        if bad:
            ui.err.print(line, markup=False)
        elif fmt == "github":
            ui.out.print(line, markup=False)
        else:
            ui.info(line)
    return code


def as_json(items: list[Checked], code: int) -> dict[str, Any]:
    """`check --format json`: {"exit_code", "checked", "ok", "with_problems", "recipes": [{"path",
    "ok", "backend", "skipped", "errors", "warnings", "notes"}]}; each message {"severity",
    "file", "line", "col", "message"} (line/col null for the file as a whole)."""
    recipes = []
    for item in items:
        found = item.annotations()
        r = item.result
        recipes.append({"path": item.path, "ok": item.ok, "backend": r.backend if r else None,
                        "skipped": list(r.skipped) if r else [],
                        "errors": [a.as_dict() for a in found if a.severity == "error"],
                        "warnings": [a.as_dict() for a in found if a.severity == "warning"],
                        "notes": [a.as_dict() for a in found if a.severity == "notice"]})
    bad = sum(not i.ok for i in items)
    return {"exit_code": code, "checked": len(items), "ok": len(items) - bad, "with_problems": bad,
            "recipes": recipes}
