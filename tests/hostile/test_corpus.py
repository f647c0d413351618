"""Every hostile input (tests/hostile/corpus.py) through `run`, `check` and `fmt`: the documented exit
code and message, no traceback, within 10 s and 1 GiB each, nothing outside the output directory
changed (special files stay special), nothing published on failure (issue 12)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.hostile.corpus import ANY, build_corpus
from trtpipe.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_OK

HERE = Path(__file__).resolve().parent
SECONDS, RSS_KIB = 10.0, 1 << 20
DOCUMENTED = set(EXIT_CODES) - {EXIT_OK, EXIT_INTERNAL}   # README's exit-code table, from errors.py
ARGV = {"run": lambda r: [r], "check": lambda r: ["check", r], "fmt": lambda r: ["fmt", r]}
PUBLISHED = (".plan", ".onnx", "report.json", "report.md")


def _signature(path: Path) -> tuple:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return ("symlink", os.readlink(path))
    if stat.S_ISFIFO(st.st_mode):
        return ("fifo",)
    if stat.S_ISDIR(st.st_mode):
        return ("dir",)
    return ("file", hashlib.sha256(path.read_bytes()).hexdigest())


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = _signature(p)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Write the corpus, run every (case, command) once in the fork driver, return
    {case name: (case, snapshot before, {command: result}, snapshot after)}."""
    root = tmp_path_factory.mktemp("hostile")
    cases = build_corpus(root / "cases")
    before = {c.name: _snapshot(root / "cases" / c.name) for c in cases}
    cache = root / "stage-cache"
    jobs = []
    for case in cases:
        for command in case.expect:
            jobs.append({"id": f"{case.name}:{command}", "cwd": str(root / "cases" / case.name),
                         "argv": [*ARGV[command](case.recipe), *case.extra_args], "timeout": 30,
                         "stdout": str(root / f"{case.name}.{command}.out"),
                         "stderr": str(root / f"{case.name}.{command}.err"),
                         "env": {"TRTPIPE_CACHE_DIR": str(cache), "COLUMNS": "200"}})
    (root / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(HERE / "driver.py"), str(root / "jobs.json"), str(root / "results.json")],
                   check=True, timeout=1200)
    results = {r["id"]: r for r in json.loads((root / "results.json").read_text())}
    runs = {c.name: (c, before[c.name], {cmd: results[f"{c.name}:{cmd}"] for cmd in c.expect},
                     _snapshot(root / "cases" / c.name)) for c in cases}
    return {"<root>": root / "cases", **runs}


def _names() -> list[str]:
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        return [c.name for c in build_corpus(Path(tmp))]


NAMES = _names()


def test_corpus_is_big_enough():
    assert len(NAMES) >= 80
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_hostile_input(name, corpus):
    case, before, results, after = corpus[name]
    corpus_root = corpus["<root>"]
    for command, (code, fragment) in case.expect.items():
        r = results[command]
        said = r["stdout"] + r["stderr"]
        where = f"{name} / {command} (exit {r['code']}, {r['seconds']} s):\n{said[-2000:]}"
        assert not r["timeout"] and r["seconds"] < SECONDS, f"too slow: {where}"
        assert r["max_rss_kib"] < RSS_KIB, f"{r['max_rss_kib'] // 1024} MiB: {where}"
        assert "Traceback" not in said, where
        assert not r["leaked_processes"], f"left processes behind: {where}"
        if code == ANY:
            assert r["code"] in DOCUMENTED | {EXIT_OK}, where
        elif code is None:
            assert r["code"] in DOCUMENTED, where
        else:
            assert r["code"] == code, where
        assert fragment.lower() in said.lower(), f"expected {fragment!r}: {where}"
    # nothing the run reads was written or replaced; special files stay special. fmt may rewrite
    # the recipe it formatted (exit 0), keeping what it says.
    formatted = "fmt" in results and results["fmt"]["code"] == EXIT_OK
    for rel, sig in before.items():
        if formatted and rel == case.recipe and after.get(rel, ("",))[0] == "file":
            rewritten = yaml.safe_load((corpus_root / name / rel).read_text())
            assert rewritten == yaml.safe_load(case.files[rel]), f"{name}: fmt changed what the recipe says"
            continue
        assert after.get(rel) == sig, f"{name}: {rel} changed: {sig} -> {after.get(rel)}"
    for rel in set(after) - set(before):
        top = rel.split(os.sep)[0]
        assert top == "out", f"{name}: wrote {rel} outside output.dir"
        if os.sep not in rel:
            continue
        assert not rel.endswith(PUBLISHED) or f"{os.sep}failed{os.sep}" in rel, f"{name}: published {rel}"
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
