"""Progress and messages: rich on a terminal, plain readable lines in CI logs.

rich honours NO_COLOR and detects non-TTY output itself; we only choose how chatty to be.

User text is never markup. rich reads `[bold]`, `[/]` and `[link=...]` in any string it prints as
markup, and a recipe path, a source path, a tensor or file name may contain them: `a[b]c.yaml`
would print as `ac.yaml`, `x[/].onnx` would stop the run with a MarkupError. So:

* `stage(name, detail)`, `warn(msg)`, `error(msg)` and `detail(msg)` print their text literally;
* `done`, `step` and `info` take rich markup (callers style their own words); put user text in
  with `escape()` (rich.markup.escape), or pass a `rich.text.Text`;
* as a last resort, a string that is not valid markup prints as it is, literally, instead of
  raising (`UIConsole`).

Long steps (a tf2onnx conversion, a build) show a spinner with the elapsed time on a terminal
(`working`); in CI logs nothing is drawn, the stage's closing line gives the time. What other
libraries print or warn while a run works (Polygraphy's `[W] 'colored' module is not installed`,
numpy's RuntimeWarnings, anything else written to sys.stdout) goes to the verbose log
(`-v`), not between the run's own lines (`third_party_to_log`).
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.errors import MarkupError
from rich.text import Text


class UIConsole(Console):
    """A rich Console on which a string that is not valid markup (an unmatched `[/]` in a path)
    prints literally instead of raising MarkupError; valid markup in user text must still be
    escaped by the caller (see the module docstring)."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """rich's render_str; on a MarkupError, the same text without markup."""
        try:
            return super().render_str(text, **kwargs)
        except MarkupError:
            return super().render_str(text, **{**kwargs, "markup": False})


class _LineLog(io.TextIOBase):
    """A text stream that hands each complete line to `sink` (a library's print, while captured)."""

    def __init__(self, sink: Callable[[str], Any], label: str) -> None:
        super().__init__()
        self.sink, self.label, self.pending = sink, label, ""

    def writable(self) -> bool:
        """Always: it is an output stream."""
        return True

    def write(self, text: str) -> int:
        """Buffer `text`; send every complete line (blank lines dropped)."""
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.sink(f"{self.label}: {line.rstrip()}")
        return len(text)

    def flush(self) -> None:
        """Send a pending partial line."""
        if self.pending.strip():
            self.sink(f"{self.label}: {self.pending.rstrip()}")
        self.pending = ""


class UI:
    """Progress and messages of one command (see the module docstring)."""

    def __init__(self, quiet: bool = False, verbose: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.out = UIConsole(file=stream or sys.stdout, highlight=False, soft_wrap=True)
        if not self.out.is_terminal:  # CI logs: rich would assume 80 columns and squeeze tables
            self.out.width = max(self.out.width, 120)
        self.err = UIConsole(file=sys.stderr, highlight=False, soft_wrap=True)
        self._stage_start = None
        self._phase_seen = {}

    # stages -----------------------------------------------------------
    def stage(self, name: str, detail: str = "") -> None:
        """Start a stage: `▶ name detail`; both printed literally (detail is often a path)."""
        self._stage_start = time.perf_counter()
        if not self.quiet:
            line = Text(f"▶ {name}", style="bold cyan")
            if detail:
                line.append(" ").append(str(detail), style="dim")
            self.out.print(line)

    def done(self, summary: str = "") -> float:
        """End the stage: `✓ summary (seconds)`; `summary` is rich markup (escape user text).
        Returns the stage's wall time in seconds."""
        took = time.perf_counter() - (self._stage_start or time.perf_counter())
        if not self.quiet:
            self.out.print(f"  [green]✓[/] {summary} [dim]({took:.2f}s)[/]")
        return took

    def step(self, label: str) -> None:
        """One line inside a stage; `label` is rich markup (escape user text)."""
        if not self.quiet:
            self.out.print(f"  [dim]·[/] {label}")

    @contextlib.contextmanager
    def working(self, label: str) -> Iterator[None]:
        """While the block runs, a spinner with `label` and the elapsed time (a terminal only; it
        disappears when the block ends, the stage's own line then gives the time)."""
        if self.quiet or not self.out.is_terminal:
            yield
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                            console=self.out, transient=True, redirect_stdout=False, redirect_stderr=False)
        with progress:
            progress.add_task("  " + label, total=None)
            yield

    @contextlib.contextmanager
    def third_party_to_log(self) -> Iterator[None]:
        """While the block runs, Python warnings and what libraries print to sys.stdout (Polygraphy's
        logger prints there) go to the verbose log (`detail`, shown with -v), each line once,
        prefixed with where it came from. This UI's own output is unaffected (it holds the original
        streams); sys.stderr is left alone (errors, and the tests' pause marker, stay visible)."""
        seen = set()

        def log(line):
            if line not in seen:
                seen.add(line)
                self.detail(line)

        def show(message, category, filename, lineno, file=None, line=None):
            log(f"{category.__name__} ({filename.rsplit('/', 1)[-1]}:{lineno}): {message}")
        # Polygraphy prints a warning the first time it looks for the 'colored' module: no colors asked.
        # Only if it is imported already (a fully cached run never imports it); otherwise
        # run_state.quiet_libraries does it when a stage first runs the libraries.
        if "polygraphy.logger" in sys.modules:
            sys.modules["polygraphy.logger"].G_LOGGER.colors = False
        old_show, old_out = warnings.showwarning, sys.stdout
        warnings.showwarning = show
        sys.stdout = _LineLog(log, "library output")
        try:
            yield
        finally:
            sys.stdout.flush()
            warnings.showwarning, sys.stdout = old_show, old_out

    def phase(self, name: str, current: int, total: int) -> None:
        """Builder progress (IProgressMonitor): print each phase once, on start, when verbose."""
        if self.verbose and name not in self._phase_seen:
            self._phase_seen[name] = True
            self.out.print(Text(f"    build phase: {name} ({total} steps)", style="dim"))

    # messages ---------------------------------------------------------
    def info(self, msg: object) -> None:
        """A line on stdout unless quiet; a str is rich markup (escape user text), a Text is literal."""
        if not self.quiet:
            self.out.print(msg)

    def detail(self, msg: object) -> None:
        """A line of the verbose log (-v): dimmed, indented, printed literally."""
        if self.verbose:
            self.out.print(Text("    " + str(msg), style="dim"))

    def warn(self, msg: object) -> None:
        """A warning on stderr, shown even with --quiet; `msg` is printed as text, never as markup."""
        self.err.print("[yellow]warning:[/] ", end="", markup=True)
        self.err.print(msg, markup=False, highlight=False)

    def error(self, msg: object, code: int) -> None:
        """The error line `error (exit N): msg`; `msg` is printed as text, never as markup."""
        self.err.print(f"[bold red]error[/] [dim](exit {code})[/]: ", end="")
        self.err.print(msg, markup=False)

    def table(self, table: RenderableType) -> None:
        """A summary table, shown even with --quiet."""
        self.out.print(table)  # the final summary is shown even with --quiet
