"""Semantic diff of two recipes: what changed, in which stage, and which stages will re-run.

Both sides are compared as a run sees them: schema defaults and each pass's parameter defaults
filled in, `precision: fp16` read as `{mode: fp16, ...defaults}`, sizes compared in bytes
(`2GiB` == `2048MiB`), `<name>` placeholders expanded, and paths equal when they are written
the same or resolve to the same file. So writing a default explicitly, reordering keys,
reformatting or editing comments is never a change.

Passes are aligned by name (difflib), so a pass whose parameters changed reads as changed, an
inserted one as added, and one that moved as moved, not as a removal plus an addition.

Stages and what re-runs: `source -> passes[0] -> ... -> passes[n-1] -> precision -> validate,
build -> publish`. A change re-runs its stage and every stage downstream of it:

* `source.*`                       -> everything;
* a pass added/removed/moved/changed at passes[i] (enabled on either side) -> passes[i..],
  precision, validate, build, publish; a change to a pass disabled on both sides, or to a
  pass's `note`, re-runs nothing but the report;
* `precision`                      -> precision, validate, build, publish;
* `validate.*`                     -> validate, publish (and precision too when it calibrates or
  guards overflow on the validation data: int8/fp8 without `calibration`, fp16 with the guard);
* `build.*`                        -> build, publish (on a GPU machine validation also compares
  the engine, so it re-runs there too);
* `name`, `description`, `output.*` -> publish (file names and the report).
"""

import copy
import dataclasses
import difflib
import os

import yaml

from .recipe import parse_size, resolve_path
from .schema_check import fill_defaults, key_path, load_schema, schema_errors

FIXED_BEFORE = ["source"]
FIXED_AFTER = ["precision", "validate", "build", "publish"]
_PATH_KEYS = {("source", "onnx"), ("source", "saved_model"), ("build", "timing_cache"), ("output", "dir"),
              ("validate", "data", "npz"), ("validate", "data", "images", "dir"),
              ("precision", "calibration", "npz"), ("precision", "calibration", "images", "dir")}


@dataclasses.dataclass
class Change:
    section: str        # top-level key: source, passes, precision, validate, build, output, name, ...
    kind: str           # changed, added, removed, moved, disabled, enabled
    subject: str        # key path (`build.workspace`) or pass (`passes[3] nms`)
    detail: str         # what changed, for a reviewer (`2GiB -> 4GiB`)
    start: object       # first stage it re-runs: "source", ("passes", i), "precision", ... or None

    @property
    def text(self):
        return f"{self.subject}: {self.detail}" if self.detail else self.subject


@dataclasses.dataclass
class Diff:
    changes: list
    reruns: list        # stage labels in run order
    reused: list
    n_passes: int       # passes in the new recipe
    warnings: list = dataclasses.field(default_factory=list)
    validate_enabled: bool = True

    @property
    def empty(self):
        return not self.changes


# ------------------------------------------------------------------------------ normalization

def _pass_info(name):
    from . import registry
    return registry.get(name) if isinstance(name, str) else None


def normalized(raw):
    """Recipe data as a run sees it (defaults filled); tolerant of recipes that do not validate."""
    raw = raw if isinstance(raw, dict) else {}
    data = fill_defaults(copy.deepcopy(raw), load_schema("recipe.schema.json"))
    passes = []
    for item in data.get("passes") if isinstance(data.get("passes"), list) else []:
        item = dict(item) if isinstance(item, dict) else {"pass": item}
        info = _pass_info(item.get("pass"))
        params = item.get("params") if isinstance(item.get("params"), dict) else {}
        item["params"] = fill_defaults(params, info.schema) if info else params
        item.setdefault("enabled", True)
        passes.append(item)
    data["passes"] = passes
    data["precision"] = _precision(data.get("precision"))
    name = data.get("name") if isinstance(data.get("name"), str) else ""
    out = data.get("output") if isinstance(data.get("output"), dict) else {}
    for key in ("dir", "plan", "onnx"):
        if isinstance(out.get(key), str):
            out[key] = out[key].replace("<name>", name)
    src = data.get("source") if isinstance(data.get("source"), dict) else {}
    if "onnx" in src:  # SavedModel settings mean nothing for an ONNX source (the run drops them)
        for key in ("signature", "tag", "opset", "large_model"):
            src.pop(key, None)
    return data


def _precision(value):
    """`fp16` and `{mode: fp16}` are the same; options of other modes are dropped like a run does."""
    try:
        from .precision import normalize
        return normalize(value)
    except Exception:  # invalid precision (check reports it) or no precision module: compare as written
        return {"mode": value} if isinstance(value, str) else value


def _flatten(value, prefix=()):
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, prefix + (k,)))
        return out
    return {prefix: value}


def _lookup(data, path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


_MISSING = object()


def show(value):
    """A value as a reviewer reads it: YAML flow style (`[1, 256, 256, 3]`, `{mode: split}`)."""
    if value is _MISSING:
        return "(unset)"
    if isinstance(value, str) and value and yaml.safe_load(value) == value and "\n" not in value:
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.replace("\n...", "")


def _same(path, a, b, ctx):
    if a == b:
        return True
    if path == ("build", "workspace") and parse_size(a) is not None:
        return parse_size(a) == parse_size(b)
    if path in _PATH_KEYS and isinstance(a, str) and isinstance(b, str) and ctx.get("dirs"):
        old_dir, new_dir = ctx["dirs"]
        return os.path.normpath(resolve_path(a, old_dir)) == os.path.normpath(resolve_path(b, new_dir))
    return False


def _value_text(path, value, raw):
    """`value`, marked `(default)` when the recipe did not write it."""
    text = show(value)
    written = _lookup(raw, path)
    if value is not _MISSING and written is _MISSING:
        text += " (default)"
    elif isinstance(written, str) and written != value and "<name>" in written:
        text += f" (written {show(written)})"
    return text


# ------------------------------------------------------------------------------ the diff

SECTION_START = {"source": "source", "precision": "precision", "validate": "validate", "build": "build",
                 "output": "publish", "name": "publish", "description": "publish"}


def diff_recipes(old_raw, new_raw, old_dir=None, new_dir=None):
    """Diff two recipes as parsed from YAML (plain data). Directories resolve relative paths."""
    old_raw = old_raw if isinstance(old_raw, dict) else {}
    new_raw = new_raw if isinstance(new_raw, dict) else {}
    old, new = normalized(old_raw), normalized(new_raw)
    ctx = {"dirs": (old_dir, new_dir) if old_dir and new_dir else None}
    schema_order = list(load_schema("recipe.schema.json")["properties"])
    keys = sorted(set(old) | set(new), key=lambda k: (schema_order.index(k) if k in schema_order else 99, str(k)))
    changes = []
    for key in keys:
        if key == "passes":
            changes += _diff_passes(old["passes"], new["passes"], old_raw, new_raw)
            continue
        changes += _diff_section(key, old, new, old_raw, new_raw, ctx)
    _validation_feeds_precision(changes, new)
    warnings = [f"{label} recipe has {len(errs)} recipe error(s), e.g. {errs[0]}; "
                f"`python pipeline.py check` lists them" for label, errs in
                (("old", _errors(old_raw)), ("new", _errors(new_raw))) if errs]
    enabled = _validate_enabled(new)
    reruns, reused = _plan(changes, len(new["passes"]), enabled)
    return Diff(changes, reruns, reused, len(new["passes"]), warnings, enabled)


def _validate_enabled(data):
    v = data.get("validate")
    return v.get("enabled", True) is not False if isinstance(v, dict) else True


def _errors(raw):
    if not raw:
        return []
    out = [f"{key_path(p)}: {m}" for p, m in schema_errors(raw, load_schema("recipe.schema.json"))]
    for i, item in enumerate(raw.get("passes") or []):
        if isinstance(item, dict) and isinstance(item.get("pass"), str) and _pass_info(item["pass"]) is None:
            out.append(f"passes[{i}].pass: unknown pass '{item['pass']}'")
    return out


def _diff_section(key, old, new, old_raw, new_raw, ctx):
    start = SECTION_START.get(key, "publish")
    a, b = old.get(key, _MISSING), new.get(key, _MISSING)
    if key == "precision" and isinstance(a, dict) and isinstance(b, dict) and a.get("mode") != b.get("mode"):
        # another mode: its options are new, not changed; name the mode and what is written
        return [Change(key, "changed", "precision", f"{_mode_text(a, old_raw)} -> {_mode_text(b, new_raw)}", start)]
    fa = _flatten(a, (key,)) if a is not _MISSING else {}
    fb = _flatten(b, (key,)) if b is not _MISSING else {}
    out = []
    for path in sorted(set(fa) | set(fb), key=lambda p: _order(p, fa, fb)):
        va, vb = fa.get(path, _MISSING), fb.get(path, _MISSING)
        if va is _MISSING and path not in fa:
            va = _lookup(old, path)
        if vb is _MISSING and path not in fb:
            vb = _lookup(new, path)
        if _same(path, va, vb, ctx):
            continue
        if {} in (va, vb) and (isinstance(va, dict) and va or isinstance(vb, dict) and vb):
            continue  # {} on one side, keys on the other: the keys are listed one by one
        what = f"{_value_text(path, va, old_raw)} -> {_value_text(path, vb, new_raw)}"
        if path[:2] == ("validate", "enabled") and vb is False:
            what += " (validation will be skipped)"
        out.append(Change(key, "changed", key_path(path), what, start))
    return out


def _mode_text(cfg, raw):
    written = raw.get("precision", _MISSING)
    if written is _MISSING:
        return f"{cfg.get('mode')} (default)"
    if isinstance(written, dict):
        options = {k: v for k, v in written.items() if k != "mode"}
        return f"{cfg.get('mode')}" + (f" with {show(options)}" if options else "")
    return show(written)


def _order(path, fa, fb):
    seq = list(fb) + [p for p in fa if p not in fb]
    return seq.index(path)


def _validation_feeds_precision(changes, new):
    """The precision stage calibrates / guards overflow on the validation data when it has no
    data of its own: then a change of validate.data changes the precision stage's output too."""
    p = new.get("precision") if isinstance(new.get("precision"), dict) else {}
    mode = p.get("mode")
    uses = (mode in ("int8", "fp8") and not p.get("calibration")) or (mode == "fp16" and p.get("overflow_guard", True))
    if not uses:
        return
    for c in changes:
        if c.section == "validate" and c.subject.startswith("validate.data"):
            c.start = "precision"
            c.detail += f" (precision {mode} uses the validation data)"


def _diff_passes(old, new, old_raw, new_raw):
    raw_old = old_raw.get("passes") if isinstance(old_raw.get("passes"), list) else []
    raw_new = new_raw.get("passes") if isinstance(new_raw.get("passes"), list) else []
    matcher = difflib.SequenceMatcher(a=[str(p.get("pass")) for p in old], b=[str(p.get("pass")) for p in new],
                                      autojunk=False)
    pairs, removed, added = [], [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs += list(zip(range(i1, i2), range(j1, j2)))
        else:
            removed += list(range(i1, i2))
            added += list(range(j1, j2))
    moved = []
    for i in list(removed):  # a pass removed here and added there with the same name has moved
        j = next((j for j in added if new[j].get("pass") == old[i].get("pass")), None)
        if j is not None:
            removed.remove(i)
            added.remove(j)
            moved.append((i, j))
    # new index where old index i's successor now sits (where a removed pass's output was consumed)
    after = {i: j for i, j in pairs + moved}

    def where_removed(i):
        later = [after[k] for k in range(i + 1, len(old)) if k in after]
        return min(later) if later else len(new)

    events = []  # (sort key, Change)
    for i, j in pairs + moved:
        a, b = old[i], new[j]
        label = f"passes[{j}] {b.get('pass')}"
        live = a.get("enabled", True) or b.get("enabled", True)
        if (i, j) in moved:
            # the first pass whose input differs: the moved one, or the one now where it was
            first = min(j, where_removed(i))
            events.append(((j, 0), Change("passes", "moved", label, f"from passes[{i}], {_neighbours(new, j)}",
                                          ("passes", first) if live and first < len(new) else
                                          ("precision" if live else None))))
        for path, va, vb in _item_changes(a, b):
            raw_a = raw_old[i] if i < len(raw_old) and isinstance(raw_old[i], dict) else {}
            raw_b = raw_new[j] if j < len(raw_new) and isinstance(raw_new[j], dict) else {}
            if path == ("enabled",):
                kind = "enabled" if vb else "disabled"
                events.append(((j, 1), Change("passes", kind, label, f"enabled: {show(va)} -> {show(vb)}",
                                              ("passes", j))))
                continue
            text = f"{key_path(path)}: {_value_text(path, va, raw_a)} -> {_value_text(path, vb, raw_b)}"
            start = ("passes", j) if live and path[0] != "note" else None
            if path[0] == "note":
                text += " (documentation only)"
            elif not live:
                text += " (pass disabled: nothing re-runs)"
            events.append(((j, 1), Change("passes", "changed", label, text, start)))
    for i in removed:
        a, j = old[i], where_removed(i)
        start = (("passes", j) if j < len(new) else "precision") if a.get("enabled", True) else None
        params = {k: v for k, v in (raw_old[i].get("params") or {}).items()} if i < len(raw_old) and \
            isinstance(raw_old[i], dict) and isinstance(raw_old[i].get("params"), dict) else {}
        detail = _neighbours(old, i).replace("now ", "was ") + (f", had params {show(params)}" if params else "")
        detail += "" if a.get("enabled", True) else " (it was disabled)"
        events.append(((j, -1), Change("passes", "removed", f"passes[{i}] {a.get('pass')}", detail, start)))
    for j in added:
        b = new[j]
        params = raw_new[j].get("params") if j < len(raw_new) and isinstance(raw_new[j], dict) else None
        detail = (_neighbours(new, j) + (f", params {show(params)}" if params else ", default params")
                  + ("" if b.get("enabled", True) else " (disabled)"))
        events.append(((j, 0), Change("passes", "added", f"passes[{j}] {b.get('pass')}", detail,
                                      ("passes", j) if b.get("enabled", True) else None)))
    return [c for _, c in sorted(events, key=lambda e: e[0])]


def _neighbours(passes, j):
    before = passes[j - 1].get("pass") if j > 0 else None
    after = passes[j + 1].get("pass") if j + 1 < len(passes) else None
    if before and after:
        return f"now between {before} and {after}"
    if before:
        return f"now last, after {before}"
    if after:
        return f"now first, before {after}"
    return "the only pass"


def _item_changes(a, b):
    fa = _flatten({k: v for k, v in a.items() if k != "pass"})
    fb = _flatten({k: v for k, v in b.items() if k != "pass"})
    order = list(fb) + [p for p in fa if p not in fb]
    return [(p, fa.get(p, _MISSING), fb.get(p, _MISSING)) for p in order if fa.get(p, _MISSING) != fb.get(p, _MISSING)]


# ------------------------------------------------------------------------------ stage plan

def _stage_index(start, n):
    """Position of a start stage in [source, passes[0..n-1], precision, validate, build, publish]."""
    if isinstance(start, tuple):
        return 1 + start[1]
    if start == "source":
        return 0
    return 1 + n + FIXED_AFTER.index(start)


def stage_labels(n):
    return FIXED_BEFORE + [f"passes[{i}]" for i in range(n)] + FIXED_AFTER


def downstream(start, n, validate_enabled=True):
    """Stage labels `start` re-runs, in run order."""
    labels = stage_labels(n)
    if start == "build":
        out = ["build", "publish"]
    elif start == "validate":
        out = ["validate", "publish"]
    elif start == "publish":
        out = ["publish"]
    else:
        out = labels[_stage_index(start, n):]
    return [s for s in out if validate_enabled or s != "validate"]


def compress(labels):
    """['passes[2]', 'passes[3]', 'passes[4]'] -> ['passes[2..4]']."""
    out, run = [], []

    def flush():
        if run:
            out.append(f"passes[{run[0]}]" if len(run) == 1 else f"passes[{run[0]}..{run[-1]}]")
            run.clear()
    for label in labels:
        if label.startswith("passes["):
            index = int(label[7:-1])
            if run and index != run[-1] + 1:
                flush()
            run.append(index)
            continue
        flush()
        out.append(label)
    flush()
    return out


def _plan(changes, n, enabled):
    rerun = set()
    for c in changes:
        if c.start is not None:
            rerun |= set(downstream(c.start, n, enabled))
    if changes and not rerun:
        rerun = {"publish"}  # documentation-only changes still rewrite the report
    order = stage_labels(n)
    reruns = [s for s in order if s in rerun]
    reused = [s for s in order if s not in rerun and (enabled or s != "validate")]
    return reruns, reused


def render(diff, old_label, new_label):
    lines = [f"recipe diff: {old_label} -> {new_label}"]
    lines += [f"warning: {w}" for w in diff.warnings]
    if diff.empty:
        lines.append("no semantic changes (comments, key order, formatting or defaults written out only); "
                     "nothing re-runs")
        return "\n".join(lines)
    section = None
    for c in diff.changes:
        if c.section != section:
            section = c.section
            lines.append(f"{section}:")
        lines.append(f"  {c.kind:<8} {c.text}")
    lines.append("why stages re-run:")
    groups = {}  # (what, start) -> subjects; passes one line each, other sections grouped
    for c in diff.changes:
        if c.start is None:
            continue
        key = (c.subject if c.section == "passes" else c.section, c.kind if c.section == "passes" else "changed",
               str(c.start))
        groups.setdefault(key, (c, []))[1].append(c.subject)
    for (_, kind, _), (c, subjects) in groups.items():
        stages = ", ".join(compress(downstream(c.start, diff.n_passes, diff.validate_enabled)))
        lines.append(f"  {', '.join(dict.fromkeys(subjects))} {kind} -> re-runs {stages}")
    if not groups:
        lines.append("  documentation only (pass notes, disabled passes) -> re-runs publish (the report)")
    lines.append(f"stages that re-run: {', '.join(compress(diff.reruns)) or 'nothing'}")
    lines.append(f"stages reused (unchanged inputs): {', '.join(compress(diff.reused)) or 'none'}")
    return "\n".join(lines)


def render_whole(raw, label, state):
    """A recipe that exists on one side only: what it says, as written (`state`: new / deleted)."""
    lines = [f"recipe diff: {label}", state]
    order = list(load_schema("recipe.schema.json")["properties"])
    raw = raw if isinstance(raw, dict) else {}
    for key in sorted(raw, key=lambda k: order.index(k) if k in order else len(order)):
        if key == "passes" and isinstance(raw[key], list):
            lines.append("  passes:")
            for i, item in enumerate(raw[key]):
                item = item if isinstance(item, dict) else {"pass": item}
                extra = {k: v for k, v in item.items() if k != "pass"}
                lines.append(f"    passes[{i}] {item.get('pass')}" + (f" {show(extra)}" if extra else ""))
        else:
            lines.append(f"  {key}: {show(raw[key])}")
    return "\n".join(lines)
