"""A hostile tester's findings against predict / bench / export: outputs that would replace what a
run published or read, huge images, unwritable places, tampered report.json, bad numbers, special
files. Each is a clear message, a documented exit code and no traceback."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from tests.helpers import REPO
from trtpipe import errors

pytestmark = pytest.mark.slow  # the effdet run converts a TensorFlow SavedModel (cached after the first)
DEMO = REPO / "models" / "demo.png"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    from trtpipe.cli import main
    o = tmp_path_factory.mktemp("effdet") / "O"
    assert main([str(REPO / "recipes" / "effdet.yaml"), "--output-dir", str(o), "--quiet"]) == 0
    return o


def _snapshot(o):
    return {p.name: (os.readlink(p) if p.is_symlink() else None, p.read_bytes() if p.is_file() else None)
            for p in sorted(o.iterdir()) if not p.name.startswith(".")}


def _refused(result, code, *needles):
    rc, _, err = result
    assert rc == code, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bench_json_never_replaces_what_the_run_published_or_read(out, run_cli):
    before = _snapshot(out)
    for dest, what in ((out / "effdet.plan", "the published artifact effdet.plan"),
                       (out / "report.json", "the published artifact report.json"),
                       (out / ".runs" / "current" / "x.json", "inside OUTPUT_DIR/.runs/"),
                       (REPO / "recipes" / "effdet.yaml", "the recipe"),
                       (REPO / "models" / "effdet_demo" / "saved_model" / "x.json", "read by the run")):
        _refused(run_cli("bench", out, "--json", dest, "--iterations", "1", "--warmup", "0"),
                 errors.EXIT_OUTPUT, f"{dest}: will not write here: it is {what}", "--json PATH")
    assert _snapshot(out) == before
    assert not (out / ".runs" / "current" / "x.json").exists()


def test_predict_out_never_replaces_artifacts_or_inputs(out, run_cli, tmp_path):
    before = _snapshot(out)
    for name in ("report.png", "effdet.detections.png"):
        shutil.copy(DEMO, tmp_path / name)
        stem = name[:-4]
        _refused(run_cli("predict", out, tmp_path / name, "--out", out), errors.EXIT_OUTPUT,
                 f"{out / stem}.", f"it is the published artifact {stem}.")
    _refused(run_cli("predict", out, DEMO, "--out", out / ".runs" / "current"), errors.EXIT_OUTPUT,
             "inside OUTPUT_DIR/.runs/")
    _refused(run_cli("predict", out, tmp_path / "report.png", "--out", tmp_path), errors.EXIT_OUTPUT,
             f"{tmp_path / 'report.png'}: will not write here: it is an input of this command")
    assert _snapshot(out) == before
    assert (tmp_path / "report.png").read_bytes() == DEMO.read_bytes()


def test_huge_image_is_refused_before_decoding(out, run_cli, tmp_path):
    from trtpipe.deploy.images import MAX_PIXELS
    big = tmp_path / "big.png"
    Image.new("1", (15000, 10000)).save(big)  # ~18 KB on disk, 150 MP decoded
    assert big.stat().st_size < 200_000 and 15000 * 10000 > MAX_PIXELS
    _refused(run_cli("predict", out, big, "--out", tmp_path / "p"), errors.EXIT_DEPLOY,
             f"{big}: the image is 15000x10000 pixels (150 MP), more than predict decodes (64 MP")
    assert not (tmp_path / "p").exists()


def test_predict_decodes_each_image_once(out, run_cli, tmp_path, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])
    rc, _, err = run_cli("predict", out, DEMO, "--out", tmp_path / "p")
    assert rc == 0, err
    assert opened.count(str(DEMO)) == 1
    res = json.loads((tmp_path / "p" / "demo.json").read_text())
    assert res["detections"] and (tmp_path / "p" / "demo.png").is_file()
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["demo.json", "demo.png"]  # no staging left


def test_unwritable_out_is_an_output_error(out, run_cli, tmp_path):
    _refused(run_cli("predict", out, DEMO, "--out", "/proc/self"), errors.EXIT_OUTPUT, "/proc/self: cannot write")
    (tmp_path / "file").write_text("x")
    _refused(run_cli("predict", out, DEMO, "--out", tmp_path / "file"), errors.EXIT_OUTPUT, "not a directory")
    if os.geteuid() != 0:  # root writes read-only directories
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        _refused(run_cli("predict", out, DEMO, "--out", ro), errors.EXIT_OUTPUT, f"{ro}: cannot write")


def test_disk_full_while_writing_is_an_output_error(tmp_path, monkeypatch):
    import errno

    from trtpipe.deploy.outputs import write_atomic
    from trtpipe.errors import OutputError

    def full(fh):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError) as info:
        write_atomic(tmp_path / "a.json", full, "--json PATH")
    assert "no space left on the device" in info.value.message and str(tmp_path / "a.json") in info.value.message
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def _tampered(out, dest, change):
    shutil.copytree(out, dest, symlinks=False, ignore=shutil.ignore_patterns(".runs", ".trt-pipeline*"))
    report = json.loads((dest / "report.json").read_text())
    change(report)
    (dest / "report.json").write_text(json.dumps(report))
    return dest


@pytest.mark.parametrize("change, needle", [
    (lambda r: r["deploy"].__setitem__("input_contract", {"x": "y"}), "deploy.input_contract.x: 'y' is not of type"),
    (lambda r: r["recipe"]["resolved"]["build"].__setitem__("workspace_bytes", "abc"),
     "recipe.resolved.build.workspace_bytes: 'abc' is not of type 'integer'"),
    (lambda r: r["recipe"]["resolved"]["build"].__setitem__("profiles", [{"name": "p", "inputs": {"a": {"min": 1}}}]),
     "recipe.resolved.build.profiles.0.inputs.a"),
    (lambda r: r["recipe"]["resolved"]["output"].__setitem__("plan", "/etc/passwd"),
     "the plan (output.plan) is '/etc/passwd', not a plain file name inside the output directory"),
    (lambda r: r["artifacts"].__setitem__("../x", r["artifacts"]["effdet.plan"]), "artifacts.../x: not a plain"),
    (lambda r: r["backend"].__setitem__("name", 3), "backend.name"),
])
def test_tampered_report_is_refused_by_every_command(out, run_cli, tmp_path, change, needle):
    bad = _tampered(out, tmp_path / "bad", change)
    for args in (("export", bad, "--for", "trtexec"), ("bench", bad, "--iterations", "1"),
                 ("predict", bad, DEMO, "--out", tmp_path / "p")):
        rc, stdout, err = run_cli(*args)
        _refused((rc, stdout, err), errors.EXIT_DEPLOY, needle)
        assert "/etc/passwd" not in stdout


def test_export_verifies_the_published_files(out, run_cli, tmp_path):
    changed = _tampered(out, tmp_path / "c", lambda r: None)
    (changed / "effdet.onnx").write_bytes(b"not the model")
    _refused(run_cli("export", changed, "--for", "polygraphy"), errors.EXIT_DEPLOY,
             "effdet.onnx is not the file the run published")


@pytest.mark.parametrize("args, needle", [
    (("bench", "O", "--iterations", "0"), "argument --iterations: must be >= 1"),
    (("bench", "O", "--warmup", "-1"), "argument --warmup: must be >= 0"),
    (("bench", "O", "--iterations", "x"), "argument --iterations: expected a whole number"),
    (("predict", "O", "i.png", "--min-score", "nan"), "argument --min-score: must be a finite number in [0, 1]"),
    (("predict", "O", "i.png", "--min-score", "1.5"), "argument --min-score: must be a finite number in [0, 1]"),
    (("predict", "O", "i.png", "--top-k", "0"), "argument --top-k: must be >= 1"),
])
def test_bad_numbers_are_usage_errors(run_cli, capsys, args, needle):
    with pytest.raises(SystemExit) as info:
        run_cli(*args)
    assert info.value.code == errors.EXIT_USAGE
    assert needle in capsys.readouterr().err


def test_bad_numbers_messages(capsys):
    from trtpipe.cli import main
    with pytest.raises(SystemExit) as info:
        main(["predict", "O", "i.png", "--min-score", "nan"])
    assert info.value.code == errors.EXIT_USAGE
    assert "argument --min-score: must be a finite number in [0, 1], got 'nan'" in capsys.readouterr().err


def test_special_files_say_what_they_are(out, run_cli, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    _refused(run_cli("predict", out, fifo), errors.EXIT_DEPLOY, f"{fifo} is a FIFO, not an image file")
    _refused(run_cli("predict", out, "/dev/null"), errors.EXIT_DEPLOY, "/dev/null is a character device")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    _refused(run_cli("predict", out, tmp_path / "gone.png"), errors.EXIT_DEPLOY, "is a broken symbolic link")
    _refused(run_cli("predict", out, tmp_path / "missing.png"), errors.EXIT_DEPLOY, "no such image file or directory")
