"""Validation and bisect results for a terminal (rich tables); report.json keeps the full dicts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trtpipe.stages.validate import detections as det
from trtpipe.stages.validate import informative
from trtpipe.stages.validate.outputs import fmt

if TYPE_CHECKING:
    from rich.console import Console


def print_table(result: dict, console: Console) -> None:
    """The validation result for a terminal: one rich table per comparison that ran, each followed
    by the rule it applied; the detections with counts that add up and what "borderline" means."""
    from rich.markup import escape  # names and reasons come from the model and the recipe: never markup
    from rich.table import Table
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow", "inconclusive": "bold yellow"}
    badge = lambda status: f"[{style.get(status, '')}]{status}[/]"  # noqa: E731
    label = "NOT VALIDATED" if result["status"] == "skipped" else result["status"]
    console.print(f"[bold]validation:[/] [{style.get(result['status'], '')}]{label}[/]"
                  + (f" ({escape(result['reason'])})" if result["status"] != "failed" and result.get("reason") else ""),
                  highlight=False)
    for comp in result.get("comparisons", []):
        head = f"{escape(comp['name'])}: {badge(comp['status'])}"
        if not comp.get("outputs"):
            console.print(f"  {head}" + (f" ({escape(comp['reason'])})" if comp.get("reason") else ""), highlight=False)
            continue
        table = Table(title=head, title_justify="left", header_style="bold")
        table.add_column("output", overflow="fold")
        table.add_column("error abs / rel")
        table.add_column("tol abs / rel")
        table.add_column("held")
        table.add_column("status")
        table.add_column("note", overflow="fold", min_width=24)
        for e in comp["outputs"]:
            err = f"{e['statistic']} {fmt(e['value'])} / {fmt(e['value_rel'])}" if "value" in e else ""
            tol = f"{fmt(e['atol'])} / {fmt(e['rtol'])}" if "atol" in e else ""
            table.add_row(escape(e["output"]), err, tol, e.get("bound") or "", badge(e["status"]),
                          escape(e.get("reason") or ""))
        console.print(table)
        console.print(f"  rule: {informative.RULE}" + (f"; {informative.EXPLAIN}" if any(
            e["status"] == "inconclusive" for e in comp["outputs"]) else ""), highlight=False)
    d = result.get("detections")
    if d:
        console.print(f"  detections (IoU >= {d.get('iou_threshold')}, score atol {fmt(d.get('score_atol'))}): "
                      f"{badge(d['status'])}" + (f": {escape(d['reason'])}" if d.get("reason") else ""),
                      highlight=False)
        if "matched" in d:
            console.print(f"    {escape(det.counts_line(d))}", highlight=False)
            console.print(f"    {det.BORDERLINE}", highlight=False)


def print_bisect(result: dict, console: Console) -> None:
    """The bisect result for a terminal: one row per pass (label, pass, status, worst error, note),
    then the summary line (the first diverging pass, or that every pass agrees).

    Args:
        result: what bisect.bisect_passes() returned.
        console: where to print (rich).
    """
    from rich.table import Table
    from rich.text import Text
    style = {"passed": "green", "failed": "bold red", "skipped": "yellow", "error": "yellow", "not run": "dim"}
    table = Table(title="bisect: each pass's model vs the source model (ONNX Runtime)", title_justify="left",
                  header_style="bold")
    for col in ("pass", "status", "worst error", "note"):
        table.add_column(col, overflow="fold")
    for row in result["passes"]:
        label = Text(f"{row['label']} {row['pass']}")
        if row["where"]:
            label.append(f" ({row['where']})", style="dim")
        status = row["status"] + (" (same model)" if row.get("reused") else "")
        note = "" if row.get("reused") else (row.get("reason") or "")
        dets = row.get("detections")
        if dets and not note:
            note = (f"detections {dets['status']}: {dets.get('matched', 0)} matched, min IoU "
                    f"{fmt(dets.get('min_iou'))}, max score diff {fmt(dets.get('max_score_diff'))}"
                    if "matched" in dets else f"detections {dets['status']}: {dets.get('reason')}")
        table.add_row(label, Text(status, style=style.get(row["status"], "")), Text(row.get("worst") or ""),
                      Text(note))
    console.print(table)
    color = {"diverged": "bold red", "agreed": "green"}.get(result["status"], "yellow")
    console.print(Text.assemble(("bisect: ", color), result["summary"]))
