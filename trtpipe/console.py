"""Progress and messages: rich on a terminal, plain readable lines in CI logs.

rich honours NO_COLOR and detects non-TTY output itself; we only choose how chatty to be.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from rich.console import Console, RenderableType
from rich.text import Text


class UI:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.out = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        if not self.out.is_terminal:  # CI logs: rich would assume 80 columns and squeeze tables
            self.out.width = max(self.out.width, 120)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self._stage_start = None
        self._phase_seen = {}

    # stages -----------------------------------------------------------
    def stage(self, name: str, detail: str = "") -> None:
        self._stage_start = time.perf_counter()
        if not self.quiet:
            self.out.print(f"[bold cyan]▶ {name}[/]" + (f" [dim]{detail}[/]" if detail else ""))

    def done(self, summary: str = "") -> float:
        took = time.perf_counter() - (self._stage_start or time.perf_counter())
        if not self.quiet:
            self.out.print(f"  [green]✓[/] {summary} [dim]({took:.2f}s)[/]")
        return took

    def step(self, label: str) -> None:
        if not self.quiet:
            self.out.print(f"  [dim]·[/] {label}")

    def phase(self, name: str, current: int, total: int) -> None:
        """Builder progress (IProgressMonitor): print each phase once, on start, when verbose."""
        if self.verbose and name not in self._phase_seen:
            self._phase_seen[name] = True
            self.out.print(f"    [dim]build phase: {name} ({total} steps)[/]")

    # messages ---------------------------------------------------------
    def info(self, msg: object) -> None:
        if not self.quiet:
            self.out.print(msg)

    def detail(self, msg: object) -> None:
        if self.verbose:
            self.out.print(Text("    " + str(msg), style="dim"))

    def warn(self, msg: object) -> None:
        """A warning on stderr, shown even with --quiet; `msg` is printed as text, never as markup."""
        self.err.print("[yellow]warning:[/] ", end="", markup=True)
        self.err.print(msg, markup=False, highlight=False)

    def error(self, msg: object, code: int) -> None:
        self.err.print(f"[bold red]error[/] [dim](exit {code})[/]: ", end="")
        self.err.print(msg, markup=False)

    def table(self, table: RenderableType) -> None:
        self.out.print(table)  # the final summary is shown even with --quiet
