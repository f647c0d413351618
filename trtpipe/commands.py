"""The command registry (`python pipeline.py <command>`) and the guard that turns user errors
into a message and a documented exit code. cli.py dispatches; review/commands.py and cli.py
register commands here, so neither imports the other."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trtpipe.errors import EXIT_INTERRUPTED, EXIT_OK, PipelineError

Command = Callable[[list[str]], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Decorator: register `func(argv) -> exit code` as `python pipeline.py <name>`."""
    def wrap(func: Command) -> Command:
        COMMANDS[name] = func
        return func
    return wrap


def guarded(job: Callable[[], Any], ui: Any, debug: bool) -> int:
    """Run `job`; returns 0, or prints a user error (traceback only with `debug`) and returns its
    exit code (errors.EXIT_CODES; 130 on Ctrl-C). Other exceptions propagate: they are bugs."""
    try:
        job()
        return EXIT_OK
    except PipelineError as err:
        if debug:
            import traceback
            traceback.print_exc()
        ui.error(str(err), err.exit_code)
        return err.exit_code
    except KeyboardInterrupt:
        ui.error("interrupted; nothing was published", EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
