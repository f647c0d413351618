"""Recipes x targets -> tasks, and the order they may start in.

A target is what one plan is built for:

* a compute capability ("8.9"), or several joined with "+" ("8.6+8.9": one plan for both): the
  run's `build.compute_capabilities` is replaced by it (`python pipeline.py RECIPE
  --compute-capabilities 8.9`). TensorRT-RTX builds ahead of time, on any machine; with the
  `tensorrt` backend it means "a worker whose GPU has this compute capability". On Ray it is
  routed to nodes carrying the custom resource `sm_89` (each one for "8.6+8.9").
* a GPU kind ("A100", "L4", "A10G", "RTX4090"): a letter, then letters, digits, "_" or "-", with at
  least one digit (GPU_KIND_PATTERN; "nan" or "gpu" are refused). For the `tensorrt` backend,
  which builds for the GPU it runs on.
  Nothing in the recipe is replaced; on Ray it is routed to nodes carrying Ray's own
  `accelerator_type:A100` resource (Ray sets it on NVIDIA GPU nodes) with one GPU per task.

Each task publishes into its own directory: `<output.dir>/<target dir>/`, e.g.
`build/zoo-resnet50/sm89/` (`sm86_sm89` for "8.6+8.9", `a100` for a GPU kind); with
`build-all --output-dir BASE`: `BASE/<recipe name>/<target dir>/`.

Identical stages run once: the source, pass and validation keys do not depend on the target
(cache/keys.py; precision and build do), so one task of a recipe (its *leader*) converts and
the recipe's other targets (*followers*) find those stages cached. `Schedule` starts a recipe's
followers only once its leader finished, so two targets never convert the same model at once;
leaders rotate over the targets (the k-th recipe leads with its k-th target) so that on Ray they
start on different nodes. Locally it also keeps one task per recipe running at a time (runs of
one recipe share a lock in the stage cache and would only wait for each other), so `--jobs`
workers build different recipes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from trtpipe.errors import EXIT_OUTPUT, PipelineError, suggest

_CC = re.compile(r"^\d+\.\d+$")
GPU_KIND_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*[0-9][A-Za-z0-9_-]*$"  # A100, L4, A10G, RTX4090, H100-80GB
_GPU_KIND = re.compile(GPU_KIND_PATTERN)
# for did-you-mean only (Ray's accelerator_type names for NVIDIA GPUs); any name matching the pattern is taken
KNOWN_GPU_KINDS = ("A10G", "A100", "H100", "H200", "L4", "L40S", "T4", "V100", "P100", "K80")


class TargetError(ValueError):
    """A --targets / --compute-capabilities value that names no target (a usage error)."""


def supported_compute_capabilities() -> list[str]:
    """The compute capabilities a recipe may name (recipe.schema.json, build.compute_capabilities)."""
    from trtpipe.recipe.schema import load_schema
    build = load_schema("recipe.schema.json")["properties"]["build"]["properties"]
    return list(build["compute_capabilities"]["items"]["enum"])


def parse_compute_capabilities(text: str) -> list[str]:
    """"8.6,8.9" or "8.6+8.9" -> ["8.6", "8.9"], each checked against the schema's list.

    Args:
        text: compute capabilities separated by "," or "+".

    Returns:
        The compute capabilities, in the order given, without duplicates.

    Raises:
        TargetError: empty, or a value the recipe schema does not allow (with a did-you-mean).
    """
    allowed = supported_compute_capabilities()
    out: list[str] = []
    for part in re.split(r"[,+]", text):
        cc = part.strip()
        if cc not in allowed:
            raise TargetError(f"compute capability {cc!r} is not supported{suggest(cc, allowed)}; "
                              f"supported: {', '.join(allowed)}")
        if cc not in out:
            out.append(cc)
    return out


@dataclasses.dataclass(frozen=True)
class Target:
    """One build target: compute capabilities (`ccs`) or a GPU kind (`gpu`)."""

    label: str
    ccs: tuple[str, ...] = ()
    gpu: str | None = None

    @property
    def dirname(self) -> str:
        """The output subdirectory: sm89, sm86_sm89, a100."""
        if self.gpu:
            return self.gpu.lower()
        return "_".join("sm" + cc.replace(".", "") for cc in self.ccs)

    def ray_resources(self) -> dict[str, float]:
        """Ray resources a node must carry to build this target (see the module docstring)."""
        if self.gpu:
            return {f"accelerator_type:{self.gpu}": 0.001}
        return {"sm_" + cc.replace(".", ""): 0.001 for cc in self.ccs}


def parse_target(text: str) -> Target:
    """"8.9", "8.6+8.9" or a GPU kind "A100" -> Target.

    Raises:
        TargetError: neither compute capabilities (from the schema's list) nor a GPU kind name.
    """
    text = text.strip()
    if not text:
        raise TargetError("an empty target (e.g. `--targets \"\"` or `8.6,,8.9`): name compute capabilities "
                          "(8.6, 8.9, 8.6+8.9) or GPU kinds (A100)")
    if all(_CC.match(p.strip()) for p in text.split("+")):
        ccs = parse_compute_capabilities(text)
        return Target("+".join(ccs), tuple(ccs))
    sm = re.fullmatch(r"(?i)sm_?(\d)(\d+)", text)  # sm89: the output folder's name, not a target
    if sm:
        raise TargetError(f"target {text!r} is a folder name; targets are compute capabilities "
                          f"(did you mean '{sm[1]}.{sm[2]}'?)")
    if _GPU_KIND.match(text):
        return Target(text, gpu=text)
    allowed = supported_compute_capabilities()
    close = suggest(text, [*allowed, *KNOWN_GPU_KINDS]) or suggest(text.upper(), KNOWN_GPU_KINDS)
    raise TargetError(f"target {text!r} is neither a compute capability ({', '.join(allowed)}; 8.6+8.9 for one "
                      f"plan for both) nor a GPU kind (a name with a digit, matching {GPU_KIND_PATTERN}, e.g. "
                      f"A100, L4){close}")


def parse_targets(text: str) -> list[Target]:
    """"8.6,8.9,A100" -> Targets (duplicates dropped). Raises TargetError (see parse_target)."""
    out: list[Target] = []
    for part in text.split(","):
        target = parse_target(part)
        if target not in out:
            out.append(target)
    if not out:
        raise TargetError("--targets names no target")
    return out


@dataclasses.dataclass
class Task:
    """One recipe built for one target."""

    index: int
    recipe: str                  # absolute path of the recipe file
    name: str                    # the recipe's name (its file stem when it does not load)
    target: Target
    output_dir: str              # where this task publishes
    plan_name: str = ""
    error: tuple[int, str] | None = None  # (exit code, message): it fails without running
    same_name: int = 0           # recipes of this name before this one's (2nd, 3rd...: a distinct id)

    @property
    def id(self) -> str:
        """`<name>@<target>` (`<name>~2@<target>` for the second recipe of that name): names the
        task in progress, build-all.json and its log file."""
        return f"{self.name}{f'~{self.same_name + 1}' if self.same_name else ''}@{self.target.label}"

    def spec(self) -> dict[str, Any]:
        """What a worker needs to run the task (plain data: it travels to Ray workers)."""
        return {"id": self.id, "index": self.index, "recipe": self.recipe, "name": self.name,
                "target": self.target.label, "ccs": list(self.target.ccs), "gpu": self.target.gpu,
                "output_dir": self.output_dir, "plan_name": self.plan_name}


def recipe_paths(args: list[str]) -> list[Path]:
    """Recipe files named, folders expanded to their *.yaml / *.yml files (sorted), each once."""
    from trtpipe.review.check import recipe_files
    out: list[Path] = []
    for p in recipe_files(args):
        path = Path(p).resolve()
        if path not in out:
            out.append(path)
    return out


def expand(recipes: list[Path], targets: list[Target] | None, output_base: str | Path | None = None) -> list[Task]:
    """Recipes x targets -> tasks, recipe-major (every target of the first recipe, then the next).

    Args:
        recipes: recipe files (absolute).
        targets: the targets; None builds each recipe for its own build.compute_capabilities.
        output_base: `--output-dir`: tasks publish into BASE/<name>/<target dir>; None: into
            <output.dir>/<target dir>.

    Returns:
        The tasks. Some carry an `error` and fail alone, without a process: those of a recipe
        that does not load (its exit code, usually 3), and those that would publish into the
        directory of an earlier recipe's task (same output.dir, or the same name under
        --output-dir: exit 8, as a run refuses another recipe's output directory).
    """
    from trtpipe.recipe.load import load_recipe
    tasks: list[Task] = []
    for path in recipes:
        try:
            recipe = load_recipe(path)
        except PipelineError as err:
            for target in targets or [Target("as written")]:  # never run: no output directory
                tasks.append(Task(len(tasks), str(path), path.stem, target, "", error=(err.exit_code, str(err))))
            continue
        mine = targets or [parse_target("+".join(recipe.data["build"]["compute_capabilities"]))]
        base = Path(output_base) / recipe.name if output_base else Path(recipe.data["output"]["dir"])
        for target in mine:
            tasks.append(Task(len(tasks), str(path), recipe.name, target, str((base / target.dirname).resolve()),
                              plan_name=recipe.data["output"]["plan"]))
    files_of: dict[str, list[str]] = {}  # recipe name -> its files, in order
    for task in tasks:
        files = files_of.setdefault(task.name, [])
        if task.recipe not in files:
            files.append(task.recipe)
        task.same_name = files.index(task.recipe)
    seen: dict[str, Task] = {}
    for task in (t for t in tasks if t.error is None):
        other = seen.setdefault(task.output_dir, task)
        if other is not task:
            task.error = (EXIT_OUTPUT, f"{task.recipe}: output.dir: {task.output_dir} is where {other.recipe} "
                                       f"publishes {other.target.label}; give the recipes different output.dir "
                                       f"(or names, with --output-dir)")
    return tasks


def raise_task_error(tasks: list[Task]) -> None:
    """Raise the first task's error, if any task carries one (a recipe that does not load: its
    own exit code, 3; two recipes sharing an output directory: 8). `--emit-matrix` uses it: a
    matrix must not list tasks that cannot run.

    Raises:
        PipelineError: with that task's exit code, naming the recipe file.
    """
    for task in tasks:
        if task.error:
            code, message = task.error
            err = PipelineError(message if task.recipe in message else f"{task.recipe}: {message}")
            err.exit_code = code
            raise err


def matrix(tasks: list[Task], base: str | Path | None = None) -> dict[str, Any]:
    """The task list as a GitHub Actions matrix: `{"include": [{recipe, name, target, output_dir}]}`;
    paths relative to `base` (the working directory) when under it."""
    def rel(p: str) -> str:
        try:
            return Path(p).relative_to(Path(base or Path.cwd()).resolve()).as_posix()
        except ValueError:
            return p
    return {"include": [{"recipe": rel(t.recipe), "name": t.name, "target": t.target.label,
                         "output_dir": rel(t.output_dir)} for t in tasks]}


def matrix_json(tasks: list[Task]) -> str:
    """matrix() as one line of JSON (what `echo "matrix=..." >> $GITHUB_OUTPUT` needs)."""
    return json.dumps(matrix(tasks), separators=(",", ":"))


class Schedule:
    """Which tasks may start now (see the module docstring): a recipe's leader before its other
    tasks; with `one_per_recipe`, never two tasks of one recipe at once. Leaders of all recipes
    come before any follower, so conversions of different recipes run side by side."""

    def __init__(self, tasks: list[Task], one_per_recipe: bool) -> None:
        self.one_per_recipe = one_per_recipe
        groups: dict[str, list[Task]] = {}
        for t in tasks:
            groups.setdefault(t.recipe, []).append(t)
        # the k-th recipe leads with its k-th target (round robin): leaders spread over the targets,
        # so on Ray they start on different nodes instead of queueing for the first target's
        leaders = {recipe: group[k % len(group)] for k, (recipe, group) in enumerate(groups.items())}
        self.leader = {t.index: leaders[t.recipe].index for t in tasks}
        self.pending = [t for t in tasks if leaders[t.recipe] is t] + [t for t in tasks if leaders[t.recipe] is not t]
        self.running: set[int] = set()
        self.finished: set[int] = set()
        self._recipe = {t.index: t.recipe for t in tasks}

    def ready(self) -> list[Task]:
        """Pending tasks that may start now, in start order (leaders first)."""
        out: list[Task] = []
        busy = {self._recipe[i] for i in self.running}
        for t in self.pending:
            if self.leader[t.index] != t.index and self.leader[t.index] not in self.finished:
                continue
            if self.one_per_recipe and t.recipe in busy:
                continue
            out.append(t)
            busy.add(t.recipe)
        return out

    def start(self, task: Task) -> None:
        self.pending.remove(task)
        self.running.add(task.index)

    def retry(self, task: Task) -> None:
        """Put a running task back at the front (its worker died)."""
        self.running.discard(task.index)
        self.pending.insert(0, task)

    def finish(self, task: Task) -> None:
        self.running.discard(task.index)
        self.finished.add(task.index)

    def done(self) -> bool:
        return not self.pending and not self.running
