"""Code contracts of trtpipe/ and passes/, checked statically (ast) where possible.

* the import graph has no cycles (every import counts, function-level ones too);
* no module imports a private name (`_x`) of another project module;
* a pass imports from the project only the pass-author API (`trtpipe`) and the graph toolkit
  (`trtpipe.graph.*`), never another pass or pipeline internals;
* every public function and method is fully annotated;
* stage entry points and the pass API document Args / Returns / Raises.

Failures name file:line so they can be fixed without re-deriving the rule.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("trtpipe", "passes")


# --------------------------------------------------------------------------------------------- modules

@dataclasses.dataclass
class Module:
    name: str          # dotted name; a package's __init__.py is the package itself
    path: Path
    is_package: bool
    tree: ast.Module

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _load_modules() -> dict[str, Module]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name, is_package = _module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            modules[name] = Module(name, path, is_package, tree)
    return modules


MODULES = _load_modules()


def test_modules_found() -> None:
    assert "trtpipe" in MODULES and "trtpipe.errors" in MODULES, sorted(MODULES)
    assert any(n.startswith("passes.") for n in MODULES), sorted(MODULES)


# --------------------------------------------------------------------------------------------- imports

@dataclasses.dataclass
class Import:
    importer: str
    target: str             # absolute dotted name of the imported module (project or not)
    names: tuple[str, ...]  # for `from target import a, b`: ("a", "b"); for `import target`: ()
    lineno: int


def _absolute(node: ast.ImportFrom, module: Module) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    keep = len(parts) - node.level + (1 if module.is_package else 0)
    assert keep >= 1, f"{module.rel}:{node.lineno}: relative import beyond the top-level package"
    return ".".join(parts[:keep] + ([node.module] if node.module else []))


def _imports(module: Module) -> list[Import]:
    """Every import statement of `module`, at any depth (function-level and TYPE_CHECKING ones too)."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [Import(module.name, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append(Import(module.name, _absolute(node, module), tuple(a.name for a in node.names),
                                node.lineno))
    return found


def _is_project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _edges(modules: dict[str, Module] = MODULES) -> dict[str, dict[str, int]]:
    """importer -> {imported project module: line}. Only the module named counts (not its parent
    packages, which Python also runs: counting those would make every package __init__ that imports
    its own submodules a trivial cycle); `from pkg import name` also counts pkg.name when that is a
    module."""
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for imp in _imports(module):
            targets = [imp.target] + [f"{imp.target}.{n}" for n in imp.names if n != "*"]
            for target in targets:
                if target in modules and target != module.name:
                    edges[module.name].setdefault(target, imp.lineno)
            if _is_project(imp.target) and imp.target not in modules:
                raise AssertionError(f"{module.rel}:{imp.lineno}: imports {imp.target!r}, "
                                     f"which is not a module of {PACKAGES}")
    return edges


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed node list) per non-trivial strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # a shortest cycle through the component's first node (BFS)
        members = set(comp)
        start = min(comp)
        parent: dict[str, str] = {}
        queue = [start]
        closed = None
        while queue and closed is None:
            v = queue.pop(0)
            for w in sorted(edges[v]):
                if w == start:
                    closed = v
                    break
                if w in members and w not in parent:
                    parent[w] = v
                    queue.append(w)
        path = [closed]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(list(reversed(path)) + [start])
    return cycles


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles() -> None:
    edges = _edges()
    problems = []
    for cycle in _cycles(edges):
        steps = [f"{MODULES[a].rel}:{edges[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:])]
        problems.append("import cycle " + " -> ".join(cycle) + ":\n    " + "\n    ".join(steps))
    assert not problems, "\n".join(problems)


def _project_module_aliases(module: Module, modules: dict[str, Module]) -> dict[str, str]:
    """Local names bound to project modules by imports: `import trtpipe.x as y`, `from trtpipe import registry`."""
    aliases = {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname and a.name in modules:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module)
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
    return aliases


def _private_uses(module: Module, modules: dict[str, Module] = MODULES) -> list[str]:
    """`from trtpipe.x import _y`, `import trtpipe._x`, and `x._y` where x names another project module."""
    problems = []
    for imp in _imports(module):
        if not _is_project(imp.target) or imp.target == module.name:
            continue
        for part in imp.target.split("."):
            if part.startswith("_"):
                problems.append(f"{module.rel}:{imp.lineno}: imports private module {imp.target}")
                break
        for name in imp.names:
            if name.startswith("_"):
                problems.append(f"{module.rel}:{imp.lineno}: imports private name {name!r} from {imp.target}")
    # `from trtpipe.stages.build import plugins; plugins._helper(...)` is the same thing spelled differently
    aliases = _project_module_aliases(module, modules)
    for node in ast.walk(module.tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and aliases[node.value.id] != module.name
                and node.attr.startswith("_") and not node.attr.endswith("__")):
            problems.append(f"{module.rel}:{node.lineno}: uses private name "
                            f"{aliases[node.value.id]}.{node.attr}")
    return problems


def test_no_private_names_across_modules() -> None:
    problems = [p for module in MODULES.values() for p in _private_uses(module)]
    assert not problems, "\n".join(problems)


def _synthetic(sources: dict[str, str]) -> dict[str, Module]:
    """Modules from source text, named like project files (`trtpipe/x.py`), for testing the checks."""
    modules = {}
    for rel, text in sources.items():
        name, is_package = _module_name(REPO / rel)
        modules[name] = Module(name, REPO / rel, is_package, ast.parse(text))
    return modules


def test_import_and_private_checks_catch_violations() -> None:
    modules = _synthetic({
        "trtpipe/__init__.py": "",
        "trtpipe/pkg/__init__.py": "",
        "trtpipe/pkg/a.py": "def f():\n    from trtpipe.pkg import b\n",   # function level, module by from-import
        "trtpipe/pkg/b.py": "import trtpipe.pkg.a as mod\nmod._hidden()\n",
        "trtpipe/c.py": "from trtpipe.pkg.a import _secret\n",
    })
    edges = _edges(modules)
    assert edges["trtpipe.pkg.a"] == {"trtpipe.pkg": 2, "trtpipe.pkg.b": 2}, edges
    assert "trtpipe" not in edges["trtpipe.c"], "parent packages must not count as imported"
    assert _cycles(edges) == [["trtpipe.pkg.a", "trtpipe.pkg.b", "trtpipe.pkg.a"]]
    assert _private_uses(modules["trtpipe.pkg.b"], modules) == [
        "trtpipe/pkg/b.py:2: uses private name trtpipe.pkg.a._hidden"]
    assert _private_uses(modules["trtpipe.c"], modules) == [
        "trtpipe/c.py:1: imports private name '_secret' from trtpipe.pkg.a"]


def _pass_may_import(target: str) -> bool:
    return target == "trtpipe" or target == "trtpipe.graph" or target.startswith("trtpipe.graph.")


def test_passes_import_only_the_pass_api_and_graph_toolkit() -> None:
    problems = []
    for module in MODULES.values():
        if not module.name.startswith("passes."):
            continue
        for imp in _imports(module):
            if _is_project(imp.target) and not _pass_may_import(imp.target):
                what = "another pass" if imp.target.startswith("passes") else "a pipeline internal"
                problems.append(f"{module.rel}:{imp.lineno}: imports {imp.target} ({what}); a pass may "
                                "import only `trtpipe` (the pass API) and `trtpipe.graph.*`")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------- type hints

def _public_functions(module: Module) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(function, is_method) for every public function of a module, not nested in another function."""
    found = []

    def walk(body: list[ast.stmt], in_class: bool, public_scope: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if public_scope and not node.name.startswith("_"):
                    found.append((node, in_class))
                # nested functions are exempt: not walked
            elif isinstance(node, ast.ClassDef):
                walk(node.body, True, public_scope and not node.name.startswith("_"))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    walk(getattr(node, block, []) or [], in_class, public_scope)
                for handler in getattr(node, "handlers", []):
                    walk(handler.body, in_class, public_scope)

    walk(module.tree.body, False, True)
    return found


def _missing_annotations(func: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    args = func.args
    positional = args.posonlyargs + args.args
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in func.decorator_list)
    if is_method and not static and positional and positional[0].arg in ("self", "cls"):
        positional = positional[1:]
    params = positional + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    missing = [a.arg for a in params if a.annotation is None]
    if func.returns is None:
        missing.append("return")
    return missing


def test_public_functions_are_annotated() -> None:
    problems = []
    count = 0
    for module in MODULES.values():
        if any(part.startswith("_") for part in module.name.split(".")):
            continue
        for func, is_method in _public_functions(module):
            count += 1
            missing = _missing_annotations(func, is_method)
            if missing:
                problems.append(f"{module.rel}:{func.lineno}: {func.name}() lacks annotations for "
                                + ", ".join(missing))
    assert count > 100, f"only {count} public functions found: is the walk broken?"
    assert not problems, f"{len(problems)} public functions lack type hints:\n" + "\n".join(problems)


def test_annotation_check_catches_gaps() -> None:
    tree = ast.parse("def f(a, b: int) -> int: ...\nclass C:\n    def m(self, x: int): ...\n"
                     "    @staticmethod\n    def s(self) -> None: ...\n")
    f, c = tree.body
    assert _missing_annotations(f, False) == ["a"]
    assert _missing_annotations(c.body[0], True) == ["return"]
    assert _missing_annotations(c.body[1], True) == ["self"]


# --------------------------------------------------------------------------------------------- docstrings

# Stage entry points and the pass API (what `trtpipe` exports for pass authors).
DOCUMENTED = [
    "trtpipe.stages.source.load:load_source",
    "trtpipe.stages.passes.runner:run_passes",
    "trtpipe.stages.passes.runner:run_pass",
    "trtpipe.stages.precision.mixed:apply_precision",
    "trtpipe.stages.validate.compare:validate_models",
    "trtpipe.stages.build.plan:build_plan",
    "trtpipe.stages.run:run_recipe",
    "trtpipe.recipe.load:load_recipe",
    "trtpipe.registry:register_pass",
    "trtpipe.registry:PassContext.require_plugin",
    "trtpipe.errors:suggest",
    "trtpipe.errors:did_you_mean",
]

SECTION = re.compile(r"^(Args|Returns|Yields|Raises):\s*$", re.M)


def _sections(doc: str) -> dict[str, str]:
    parts = SECTION.split(doc)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _resolve(spec: str) -> tuple[object, str, ast.FunctionDef]:
    module_name, qualname = spec.split(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    node: ast.AST = MODULES[module_name].tree
    for part in qualname.split("."):
        node = next(n for n in node.body  # type: ignore[attr-defined]
                    if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
    assert isinstance(node, ast.FunctionDef)
    return obj, f"{MODULES[module_name].rel}:{node.lineno}", node


def _raised_here(node: ast.FunctionDef) -> set[str]:
    """Names of the PipelineError subclasses `node` raises itself (`raise XError(...)`)."""
    from trtpipe import errors
    pipeline_errors = {n for n, c in vars(errors).items()
                       if isinstance(c, type) and issubclass(c, errors.PipelineError)}
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call) and isinstance(n.exc.func, ast.Name):
            if n.exc.func.id in pipeline_errors:
                found.add(n.exc.func.id)
    return found


@pytest.mark.parametrize("spec", DOCUMENTED)
def test_entry_points_document_args_returns_raises(spec: str) -> None:
    func, where, node = _resolve(spec)
    doc = inspect.getdoc(func) or ""
    sections = _sections(doc)
    sig = inspect.signature(func)
    params = [p for p in sig.parameters if p not in ("self", "cls")]
    problems = []
    if params:
        args = sections.get("Args", "")
        if not args:
            problems.append("no Args: section")
        for p in params:
            if not re.search(rf"^\s+\*{{0,2}}{re.escape(p)}\b.*:", args, re.M):
                problems.append(f"Args: does not describe {p!r}")
    returns = sig.return_annotation
    if returns not in (None, "None", inspect.Signature.empty) and "Returns" not in sections:
        problems.append(f"returns {returns} but has no Returns: section")
    raised = _raised_here(node)
    if raised or spec.startswith("trtpipe.stages.") or spec.startswith("trtpipe.recipe."):
        section = sections.get("Raises", "")
        if not section:
            problems.append("no Raises: section (a stage entry point names the PipelineError "
                            "subclasses it raises)")
        for name in sorted(raised):
            if not re.search(rf"\b{name}\b", section):
                problems.append(f"raises {name} but Raises: does not name it")
    assert not problems, f"{where}: {spec}: " + "; ".join(problems) + "\n--- docstring ---\n" + doc


def test_stages_are_listed_in_flow_order_and_exist():
    import importlib

    from trtpipe.stages import STAGES
    from trtpipe.stages.order import stage_labels
    names = [name for name, _ in STAGES]
    assert names == ["source", "passes", "precision", "validate", "build", "publish", "report"]
    # the cache/explain labels follow the same order (passes expand to passes[i])
    assert [s for s in stage_labels(1) if not s.startswith("passes")] == [n for n in names if n not in ("passes",
                                                                                                       "report")]
    for _, module in STAGES:
        importlib.import_module(module)
