"""The process entry exits without the interpreter's teardown (issue 13: 0.5 s after a conversion)
but keeps what a normal exit gives: main()'s exit code, every line written, exit handlers, and
the profile a profiler writes at exit."""

import subprocess
import sys

from tests.helpers import REPO
from trtpipe.cli import main

PIPELINE = str(REPO / "pipeline.py")


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_exit_code_and_message_of_a_bad_recipe():
    proc = _run(PIPELINE, "check", "tests/fixtures/recipes/misspelled_pass.yaml")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "unknown pass" in proc.stderr and "Traceback" not in proc.stderr


def test_every_line_is_written(capsys):
    assert main(["passes"]) == 0
    expected = capsys.readouterr().out
    proc = _run(PIPELINE, "passes")
    assert proc.returncode == 0 and proc.stdout == expected and len(expected.splitlines()) > 10


def test_exit_handlers_run_and_a_profiler_gets_its_profile(tmp_path):
    marker, prof = tmp_path / "atexit-ran", tmp_path / "run.prof"
    code = (f"import atexit, pathlib, sys; sys.argv = ['pipeline.py', 'passes']; "
            f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes'); "
            f"sys.path.insert(0, {str(REPO)!r}); from trtpipe.cli import entry; entry()")
    proc = _run("-c", code)
    assert proc.returncode == 0 and marker.read_text() == "yes", proc.stderr
    proc = _run("-m", "cProfile", "-o", str(prof), PIPELINE, "passes")
    assert proc.returncode == 0 and prof.stat().st_size > 1000, proc.stderr
