"""The pass registry: name -> (function, parameter schema, docs).

Built-in passes live one per file in `passes/`; their parameter schemas in
`schemas/passes/<name>.schema.json`. Third-party packages add passes through the entry-point
group `trt_pipeline.passes` (each entry point is a module or callable that calls
`register_pass` when loaded).
"""

import dataclasses
import importlib
import inspect
import json
import pkgutil
from importlib import metadata
from pathlib import Path

from .errors import PassError

ENTRY_POINT_GROUP = "trt_pipeline.passes"
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "passes"

_PASSES = {}
_loaded = False


@dataclasses.dataclass
class PassInfo:
    name: str
    func: object
    schema: dict
    origin: str  # module that registered it
    precheck: object = None  # optional precheck(params, ctx): raise PassError before any conversion

    @property
    def summary(self):
        return (self.doc.splitlines() or [""])[0]

    @property
    def doc(self):
        return inspect.cleandoc(self.func.__doc__ or inspect.getmodule(self.func).__doc__ or "")

    @property
    def version(self):
        """Hash of the pass's source module, so caches notice code changes."""
        import hashlib
        source = inspect.getsource(inspect.getmodule(self.func))
        return hashlib.sha256(source.encode()).hexdigest()[:16]


def register_pass(name, schema=None, precheck=None):
    """Decorator: register `func(graph, params, ctx) -> graph` under `name`.

    `schema` is the parameter JSON Schema; built-ins leave it None and keep it in
    schemas/passes/<name>.schema.json. `precheck(params, ctx)` may refuse a configuration that
    cannot work with the chosen backend (e.g. a plugin it lacks) before any conversion starts.
    """

    def wrap(func):
        if schema is None:
            path = SCHEMA_DIR / f"{name}.schema.json"
            if not path.exists():
                raise RuntimeError(f"pass '{name}' has no parameter schema at {path}")
            with open(path) as f:
                resolved = json.load(f)
        else:
            resolved = schema
        existing = _PASSES.get(name)
        if existing and existing.func is not func:
            raise RuntimeError(f"pass '{name}' registered twice ({existing.origin} and {func.__module__})")
        _PASSES[name] = PassInfo(name, func, resolved, func.__module__, precheck)
        return func

    return wrap


def load_all():
    """Import built-in passes and entry-point plugins once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import passes  # the built-in package
    for mod in pkgutil.iter_modules(passes.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"passes.{mod.name}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not take the tool down silently
            raise PassError(f"third-party pass entry point '{ep.name}' ({ep.value}) failed to load: {err}")


def get(name):
    load_all()
    return _PASSES.get(name)


def names():
    load_all()
    return sorted(_PASSES)


def all_passes():
    load_all()
    return [_PASSES[n] for n in sorted(_PASSES)]


@dataclasses.dataclass
class PassContext:
    """What a pass may know about the run besides its graph and parameters."""

    name: str = "model"             # recipe name, for artifact file names
    backend: str = "tensorrt_rtx"
    backend_version: tuple = None
    recipe_dir: Path = None
    plugin_libraries: list = dataclasses.field(default_factory=list)  # build.plugins, resolved
    stage_dir: Path = None
    # new input name -> how to derive it from the source model's input (set_input, replace_preprocessing)
    input_contract: dict = dataclasses.field(default_factory=dict)
    # final output name -> source output name (rename, set_outputs)
    output_map: dict = dataclasses.field(default_factory=dict)
    # artifact name -> path, published next to the plan (e.g. the NMS post-processing model)
    artifacts: dict = dataclasses.field(default_factory=dict)
    # set by an NMS `split`: how the post-processing model completes the engine (see docs/architecture.md)
    postprocess: dict = None
    notes: list = dataclasses.field(default_factory=list)
    logger: object = None

    def log(self, msg):
        self.notes.append(msg)
        if self.logger:
            self.logger(msg)

    def add_artifact(self, name, path):
        self.artifacts[name] = Path(path)
