"""The editor schema (schemas/recipe.editor.schema.json): every pass's parameters, checked by an
editor as the recipe is typed.

The schema is checked with jsonschema (draft-07, as it declares) and with the real YAML language
server, `yaml-language-server` from the npm registry, run over stdio and spoken to in LSP
JSON-RPC as an editor does: a recipe with a misspelled pass parameter gets a diagnostic at that
line, a correct one none, and completion offers a pass's parameters. The server is installed
once into a cache directory (~/.cache/trt-pipeline-tests/, or $TRTPIPE_TEST_NPM_CACHE); the
tests skip, saying why, only when npm or its registry cannot be reached.
"""

import json
import os
import pathlib
import queue
import shutil
import subprocess
import tempfile
import threading
import time

import jsonschema
import pytest
import yaml

from trtpipe import registry
from trtpipe.recipe.schema import load_schema
from trtpipe.review.editor_schema import FILE, editor_schema, editor_schema_text

REPO = pathlib.Path(__file__).resolve().parents[2]
SCHEMA = REPO / "schemas" / FILE
SERVER_VERSION = "1.25.0"  # 2.x needs node >= 22.13
UNREACHABLE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
               "network request", "getaddrinfo", "proxy")


def _builtin():
    registry.load_all()
    return [i for i in registry.all_passes() if i.origin.startswith("passes.")]


def _typo(text):
    """effdet.yaml with the nms pass's `boxes` parameter misspelled `boxs`."""
    return text.replace("      boxes: raw_detection_boxes", "      boxs: raw_detection_boxes")


# ------------------------------------------------------------------------------ the schema itself

def test_editor_schema_is_generated_and_current():
    assert SCHEMA.read_text() == editor_schema_text(load_schema("recipe.schema.json"), _builtin()), \
        "schemas/recipe.editor.schema.json is stale: run `python pipeline.py docs`"
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert recipe.read_text().splitlines()[0] == f"# yaml-language-server: $schema=../schemas/{FILE}"


def test_editor_schema_checks_pass_parameters():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert not list(validator.iter_errors(yaml.safe_load(recipe.read_text()))), recipe.name
    data = yaml.safe_load(_typo((REPO / "recipes" / "effdet.yaml").read_text()))
    errors = list(validator.iter_errors(data))
    assert errors and all(list(e.absolute_path)[:3] == ["passes", 3, "params"] for e in errors)
    assert any("'boxs' was unexpected" in e.message for e in errors)
    data["passes"][3] = {"pass": "nmss"}
    assert any("'nmss' is not one of" in e.message for e in validator.iter_errors(data))
    # a parameter of the wrong type, and one of another nms mode
    data["passes"][3] = {"pass": "nms", "params": {"mode": "split", "max_candidates": 10}}
    assert list(validator.iter_errors(data))
    data["passes"][3] = {"pass": "fold_constants", "params": {"max_rounds": "many"}}
    assert any("'many' is not of type 'integer'" in e.message for e in validator.iter_errors(data))


def test_editor_schema_embeds_each_pass_schema_unchanged():
    """Every pass schema is folded in whole (its local $refs re-pointed), not re-typed."""
    infos = _builtin()
    schema = editor_schema(load_schema("recipe.schema.json"), infos)
    item = schema["properties"]["passes"]["items"]
    assert item["properties"]["pass"]["enum"] == sorted(i.name for i in infos)
    assert item["properties"]["pass"]["enumDescriptions"] == [i.summary for i in sorted(infos, key=lambda i: i.name)]
    conditions = {c["if"]["properties"]["pass"]["const"]: c for c in item["allOf"] if "if" in c}
    for info in infos:
        embedded = schema["definitions"][f"pass.{info.name}"]
        assert embedded["properties"].keys() == info.schema["properties"].keys()
        assert embedded.get("required") == info.schema.get("required")
        assert conditions[info.name]["if"]["required"] == ["pass"]
        assert conditions[info.name]["then"]["properties"]["params"]["$ref"] == f"#/definitions/pass.{info.name}"
        assert '"$ref": "#/$defs' not in json.dumps(embedded)  # re-pointed into the editor schema


# ------------------------------------------------------------------------------ the real language server

def _cache_root():
    base = os.environ.get("TRTPIPE_TEST_NPM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trt-pipeline-tests")
    return pathlib.Path(base)


@pytest.fixture(scope="module")
def language_server():
    """The path of yaml-language-server's entry script, installed once with npm into the cache."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are needed to install yaml-language-server from the npm registry")
    target = _cache_root() / f"yaml-language-server-{SERVER_VERSION}"
    script = target / "node_modules" / "yaml-language-server" / "bin" / "yaml-language-server"
    if not script.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # installed whole, then renamed in
            proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", tmp,
                                   f"yaml-language-server@{SERVER_VERSION}"], capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode:
                output = proc.stdout + proc.stderr
                if any(word in output for word in UNREACHABLE):
                    pytest.skip(f"the npm registry is unreachable: {output.strip().splitlines()[-1]}")
                raise AssertionError(f"npm install yaml-language-server@{SERVER_VERSION} failed:\n{output}")
            try:
                os.rename(tmp, target)
            except OSError:  # another run installed it meanwhile
                pass
            os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory cleans up what it made
    return node, script


class LanguageServer:
    """An LSP client over the server's stdin/stdout (Content-Length framed JSON-RPC 2.0)."""

    def __init__(self, node, script, root):
        self.proc = subprocess.Popen([node, str(script), "--stdio"], cwd=root, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages, self.next_id = queue.Queue(), 0
        threading.Thread(target=self._read, daemon=True).start()
        reply = self.request("initialize", {"processId": os.getpid(), "rootUri": pathlib.Path(root).as_uri(),
                                            "capabilities": {"workspace": {"configuration": True},
                                                             "textDocument": {"publishDiagnostics": {},
                                                                              "completion": {}}}})
        assert "capabilities" in reply
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration",
                    {"settings": {"yaml": {"validate": True, "completion": True, "schemaStore": {"enable": False}}}})

    def _read(self):
        stream = self.proc.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(stream.read(length)))

    def _send(self, message):
        body = json.dumps(message).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method, params):
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method, params, timeout=60):
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        reply = self.wait(lambda m, i=self.next_id: m.get("id") == i and "method" not in m, timeout)
        assert "error" not in reply, reply
        return reply["result"]

    def wait(self, wanted, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=0.2)
            except queue.Empty:
                continue
            if "id" in message and "method" in message:  # the server asks (configuration, registration)
                items = (message.get("params") or {}).get("items") or []
                result = [{"validate": True, "completion": True}] * len(items) \
                    if message["method"] == "workspace/configuration" else None
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
                continue
            if wanted(message):
                return message
        raise AssertionError("no answer from yaml-language-server in time")

    def diagnostics(self, path, text, version=1, opened=False):
        """Open (or change) the document and return the diagnostics the server publishes for it."""
        uri = pathlib.Path(path).as_uri()
        if opened:
            self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                   "contentChanges": [{"text": text}]})
        else:
            self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "yaml",
                                                                  "version": version, "text": text}})
        found = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                          and m["params"]["uri"] == uri and m["params"].get("version", version) == version)
        return found["params"]["diagnostics"]

    def close(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server(language_server, tmp_path_factory):
    node, script = language_server
    ls = LanguageServer(node, script, REPO)
    yield ls
    ls.close()


def _in_tmp(tmp_path, text, name="recipe.yaml"):
    """The recipe text moved to tmp_path: the schema and model paths made absolute."""
    text = text.replace(f"$schema=../schemas/{FILE}", f"$schema={SCHEMA}").replace("../", str(REPO) + "/")
    path = tmp_path / name
    path.write_text(text)
    return path, text


def test_language_server_flags_a_misspelled_pass_parameter(server, tmp_path):
    path, text = _in_tmp(tmp_path, _typo((REPO / "recipes" / "effdet.yaml").read_text()))
    found = server.diagnostics(path, text)
    line = next(i for i, s in enumerate(text.splitlines()) if s.strip().startswith("boxs:"))
    assert found, "no diagnostic for the misspelled parameter"
    assert {d["range"]["start"]["line"] for d in found} == {line}  # 0-based, at `boxs:` and nowhere else
    assert all(d["range"]["start"]["character"] == 6 for d in found)
    assert any("boxs" in d["message"] for d in found), found


def test_language_server_accepts_the_shipped_recipes(server):
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert server.diagnostics(recipe, recipe.read_text()) == [], recipe.name


def test_language_server_flags_as_you_type(server, tmp_path):
    """One document edited: a wrong parameter appears, then is fixed (didChange, as an editor sends)."""
    path, text = _in_tmp(tmp_path, (REPO / "recipes" / "zoo-resnet50.yaml").read_text(), "typing.yaml")
    assert server.diagnostics(path, text) == []
    typed = text.replace("params: {size_threshold: 1048576}", "params: {size_treshold: 1048576}")
    assert typed != text
    found = server.diagnostics(path, typed, version=2, opened=True)
    line = next(i for i, s in enumerate(typed.splitlines()) if "size_treshold" in s)
    assert found and {d["range"]["start"]["line"] for d in found} == {line}
    assert server.diagnostics(path, text, version=3, opened=True) == []


def test_language_server_completes_pass_names_and_parameters(server, tmp_path):
    text = (REPO / "recipes" / "zoo-resnet50.yaml").read_text()
    text = text.replace("  - pass: cleanup\n", "  - pass: cleanup\n  - pass: set_outputs\n    params:\n      \n")
    path, text = _in_tmp(tmp_path, text, "complete.yaml")
    server.diagnostics(path, text)
    line = text.splitlines().index("      ")
    result = server.request("textDocument/completion", {"textDocument": {"uri": path.as_uri()},
                                                        "position": {"line": line, "character": 6}})
    labels = {item["label"] for item in (result["items"] if isinstance(result, dict) else result)}
    assert {"outputs", "inputs", "remove_unused_inputs"} <= labels, labels
    line = next(i for i, s in enumerate(text.splitlines()) if s == "  - pass: set_outputs")
    result = server.request("textDocument/completion", {"textDocument": {"uri": path.as_uri()},
                                                        "position": {"line": line, "character": 10}})
    items = {item["label"]: item for item in (result["items"] if isinstance(result, dict) else result)}
    assert {"nms", "set_input", "fold_constants"} <= set(items), set(items)
