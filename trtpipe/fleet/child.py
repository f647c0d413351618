"""`python -m trtpipe.fleet.child PARENT_PID ARGS...`: the ordinary command line (`trtpipe.cli`)
with ARGS, in a process that dies with PARENT_PID.

On Linux the process asks the kernel for SIGKILL when its parent exits (prctl PR_SET_PDEATHSIG),
then checks the parent is still the one that started it (it may have died before the request);
so a killed Ray worker or build-all never leaves a run behind. Elsewhere it is the plain command.
"""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Ask for SIGKILL when the parent exits (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGKILL)


def main(argv: list[str]) -> int:
    """Run `trtpipe.cli.main(argv[1:])` once `argv[0]` (the parent's pid) is watched; returns its exit code."""
    die_with_parent(int(argv[0]))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from trtpipe.cli import entry
    sys.argv = [sys.argv[0]] + argv[1:]
    entry()
    return 0  # entry() exits


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
