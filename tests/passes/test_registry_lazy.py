"""Built-in passes are known from their shipped schemas before their modules are imported (issue
13: checking a recipe, computing its keys and a fully cached run never import onnx-graphsurgeon,
onnx or numpy); the module is imported when the pass's function or precheck is used."""

import subprocess
import sys

from tests.helpers import REPO
from trtpipe import registry
from trtpipe.recipe.schema import load_schema


def test_builtin_pass_is_answered_from_its_schema_without_importing_it():
    code = (
        "import sys\n"
        "from trtpipe import registry\n"
        "info = registry.get('cleanup')\n"
        "assert info.origin == 'passes.cleanup', info.origin\n"
        "assert 'passes.cleanup' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules)\n"
        "assert info.schema['additionalProperties'] is False\n"
        "func = info.func\n"
        "assert 'passes.cleanup' in sys.modules and func.__name__ == 'cleanup'\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_builtin_file_registers_its_own_name_with_its_shipped_schema():
    """passes/<name>.py registers `name`: what lets get() answer before the import."""
    builtin = registry._builtin_modules()
    assert {"cleanup", "nms", "set_input", "fold_constants", "plugin"} <= set(builtin)
    for name, module in builtin.items():
        lazy = registry.get(name)
        assert lazy.origin == module
        func = lazy.func  # imports the module, which registers the pass
        assert registry._PASSES[name].func is func and func.__module__ == module
        assert lazy.schema == load_schema(f"passes/{name}.schema.json") == registry._PASSES[name].schema
        assert lazy.precheck is registry._PASSES[name].precheck
    assert registry.get("nms").precheck is not None and registry.get("cleanup").precheck is None
    assert registry.get("no_such_pass") is None
