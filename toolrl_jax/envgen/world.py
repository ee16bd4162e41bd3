"""Executable environments from a spec: tool documents, a seeded world, one method per tool.

* :func:`tool_documents` -> JSON-schema function docs (``{"name", "description", "parameters":
  {"type": "object", "properties", "required"}}``) for the spec's operations and distractors.
* :func:`world_class` -> a Python class (one per spec, cached) whose instances are one
  trajectory's state: the entity tables seeded from ``world_seed``, one method per operation
  and distractor (``BankingWorld.deposit(account_id=..., amount=...)``), argument validation that
  raises :class:`ToolError` with a clear message, a call log, bounded work per call (tables
  capped at ``max_records`` rows, results at ``max_results``, strings at 200 characters).
* :class:`EnvgenEnvironment` -> the executor's ``ToolEnvironment``: ``reset(trajectory_id, task)``
  builds the task's own world (``task.meta["env"]``); each tool receives it as hidden parameter
  ``_envgen_world`` (see ``tools/base.py``), so concurrent trajectories never share state.

Determinism: the world is a function of ``(spec, world_seed)``; tool-output noise (extra
``_meta`` fields, shuffled result lists; knob ``noise`` = probability per call) is a function of
``(noise_seed, call index)``. No clock, no network, no global state.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from toolrl_jax.envgen.spec import JSON_TYPE, DomainSpec, EntitySpec, FieldSpec, OperationSpec, ParamSpec
from toolrl_jax.errors import DataError

__all__ = [
    "BUILTIN_DISTRACTORS", "EnvTool", "EnvgenEnvironment", "STATE_PARAM", "Snapshot", "ToolError",
    "World", "make_world", "tool_documents", "world_class",
]

STATE_PARAM = "_envgen_world"
MAX_STR = 200


class ToolError(ValueError):
    """A call the environment refuses (bad argument, unknown record, broken constraint)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Entity tables at one moment (``entity -> key -> record``) plus the keys of the seeded world."""

    tables: Mapping[str, Mapping[str, Mapping[str, Any]]]
    initial_keys: Mapping[str, frozenset]


# --------------------------------------------------------------------------- tool documents

def _param_schema(p: ParamSpec, spec: DomainSpec) -> dict:
    schema: dict[str, Any] = {"type": JSON_TYPE[p.type]}
    if p.values and (p.type == "enum" or (p.type == "str" and p.field is None)):
        schema["enum"] = list(p.values)
    desc = p.description or (spec.entities[p.entity].fields[p.field].description
                             if p.field and p.entity else "")
    if p.type == "date":
        desc = (desc + " " if desc else "") + "(YYYY-MM-DD)"
    if p.match in ("min", "max") and not p.description:
        desc = f"{'Minimum' if p.match == 'min' else 'Maximum'} {p.field}"
    if p.effect in ("add", "subtract") and not p.description:
        desc = f"Amount to {'add to' if p.effect == 'add' else 'subtract from'} {p.field}"
    schema["description"] = ("Required. " if p.required else "Optional. ") + desc
    if p.default is not None:
        schema["default"] = p.default
    return schema


def _doc(name: str, description: str, params: Mapping[str, ParamSpec], spec: DomainSpec) -> dict:
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {p.name: _param_schema(p, spec) for p in params.values()},
            "required": [p.name for p in params.values() if p.required],
        },
    }


BUILTIN_DISTRACTORS: dict[str, dict] = {
    "get_weather": {"description": "Current weather for a city.",
                    "params": {"city": ("str", True, "City name")}},
    "send_email": {"description": "Send an email message.",
                   "params": {"to": ("str", True, "Recipient address"), "subject": ("str", True, "Subject line"),
                              "body": ("str", False, "Message text")}},
    "translate_text": {"description": "Translate text into another language.",
                       "params": {"text": ("str", True, "Text to translate"),
                                  "target_language": ("str", True, "Language code such as 'fr'")}},
    "get_news": {"description": "Latest news headlines on a topic.",
                 "params": {"topic": ("str", True, "Topic"), "limit": ("int", False, "Headlines to return")}},
    "set_reminder": {"description": "Set a reminder for the user.",
                     "params": {"text": ("str", True, "What to remind"), "time": ("str", True, "When, e.g. '18:00'")}},
    "convert_currency": {"description": "Convert an amount between currencies.",
                         "params": {"amount": ("float", True, "Amount"), "from_currency": ("str", True, "Code"),
                                    "to_currency": ("str", True, "Code")}},
    "web_search": {"description": "Search the web.", "params": {"query": ("str", True, "Search query")}},
    "get_stock_price": {"description": "Latest stock price of a ticker.",
                        "params": {"symbol": ("str", True, "Ticker symbol")}},
}


def _builtin_params(name: str) -> dict[str, ParamSpec]:
    return {p: ParamSpec(name=p, type=t, required=r, description=d)
            for p, (t, r, d) in BUILTIN_DISTRACTORS[name]["params"].items()}


def distractor_params(spec: DomainSpec) -> dict[str, tuple[str, dict[str, ParamSpec]]]:
    """name -> (description, params) of every distractor of ``spec`` (its own, then built-ins)."""
    out = {d.name: (d.description, dict(d.params)) for d in spec.distractors.values()}
    for name, raw in BUILTIN_DISTRACTORS.items():
        if name not in spec.operations and name not in out:
            out[name] = (raw["description"], _builtin_params(name))
    return out


_DOCS: dict[tuple[str, str], dict[str, dict]] = {}


def tool_documents(spec: DomainSpec) -> dict[str, dict]:
    """name -> JSON-schema function doc, operations first, then distractors (cached per spec; treat
    the documents as read-only, copy them before changing anything)."""
    key = (spec.domain, spec.sha256)
    if key not in _DOCS:
        _DOCS[key] = _tool_documents(spec)
    return _DOCS[key]


def _tool_documents(spec: DomainSpec) -> dict[str, dict]:
    docs = {op.name: _doc(op.name, op.description, op.params, spec) for op in spec.operations.values()}
    for name, (desc, params) in distractor_params(spec).items():
        docs[name] = _doc(name, desc, params, spec)
    return docs


# --------------------------------------------------------------------------- the world

def _stable_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def generate_value(f: FieldSpec, rng: random.Random, world: "World | None" = None) -> Any:
    """A random value of field ``f`` (refs pick an existing key of the target entity)."""
    if f.ref is not None:
        keys = list(world.tables[f.ref]) if world is not None else []
        return rng.choice(keys) if keys else None
    if f.type in ("str", "enum"):
        return rng.choice(f.values)
    if f.type == "bool":
        return rng.random() < f.p_true
    if f.type == "int":
        return rng.randint(int(f.range[0]), int(f.range[1]))
    if f.type == "float":
        return round(rng.uniform(float(f.range[0]), float(f.range[1])), f.decimals)
    if f.type == "date":
        lo, hi = (datetime.date.fromisoformat(d) for d in f.range)
        return (lo + datetime.timedelta(days=rng.randint(0, (hi - lo).days))).isoformat()
    raise AssertionError(f.type)


def _normal(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 6)
    if isinstance(value, str):
        return value.strip().casefold()
    return value


def values_equal(a: Any, b: Any) -> bool:
    """Equality used by filters and sub-goals: numbers to 6 decimals, strings case-insensitive."""
    return _normal(a) == _normal(b)


_SEEDED: dict[tuple, tuple[dict, dict]] = {}  # seeded tables by (domain, spec sha, world seed)
_SEEDED_MAX = 4096


class World:
    """One trajectory's environment state (build with :func:`make_world`).

    Attributes:
      spec: the domain spec.
      tables: entity -> key -> record (field -> value); mutated by the operations.
      initial_keys: entity -> keys of the seeded world.
      allowed: tool names this trajectory may call (None: all of the spec's).
      noise: probability that a call's output carries noise; noise_seed seeds it.
      calls: number of calls made so far.
    """

    def __init__(self, spec: DomainSpec, world_seed: int, *, noise: float = 0.0, noise_seed: int = 0,
                 allowed: Sequence[str] | None = None):
        self.spec = spec
        self.world_seed = int(world_seed)
        self.noise = float(noise)
        self.noise_seed = int(noise_seed)
        self.allowed = frozenset(allowed) if allowed is not None else None
        self.calls = 0
        cache_key = (spec.domain, spec.sha256, self.world_seed)
        if cache_key not in _SEEDED:
            self.tables, self.next_n = {}, {}
            rng = random.Random(f"envgen-world:{spec.domain}:{world_seed}")
            for ename in spec.entity_order():
                self._seed_entity(spec.entities[ename], rng)
            if len(_SEEDED) >= _SEEDED_MAX:
                _SEEDED.pop(next(iter(_SEEDED)))
            _SEEDED[cache_key] = ({e: {k: dict(r) for k, r in t.items()} for e, t in self.tables.items()},
                                  dict(self.next_n))
        tables, next_n = _SEEDED[cache_key]
        self.tables = {e: {k: dict(r) for k, r in t.items()} for e, t in tables.items()}
        self.next_n = dict(next_n)
        self.initial_keys = {e: frozenset(t) for e, t in self.tables.items()}
        self._distractors = distractor_params(spec)

    def _seed_entity(self, e: EntitySpec, rng: random.Random) -> None:
        self.tables[e.name] = {}
        numbers = sorted(rng.sample(range(100, 100 + 40 * e.count), e.count))
        for n in numbers:
            key = e.fields[e.key].pattern.format(n=n)
            rec = {}
            for fname, f in e.fields.items():
                rec[fname] = key if fname == e.key else generate_value(f, rng, self)
            self.tables[e.name][key] = rec
        self.next_n[e.name] = numbers[-1] + 1 if numbers else 100

    def snapshot(self) -> Snapshot:
        return Snapshot(tables={e: {k: dict(r) for k, r in t.items()} for e, t in self.tables.items()},
                        initial_keys=self.initial_keys)

    # ------------------------------------------------------------------ dispatch
    def call(self, name: str, arguments: Mapping[str, Any]) -> Any:
        """Runs tool ``name``; raises ToolError for anything the environment refuses."""
        self.calls += 1
        if self.allowed is not None and name not in self.allowed:
            raise ToolError(f"unknown function '{name}'; available: {', '.join(sorted(self.allowed))}")
        method = getattr(self, name, None) if name in self.spec.operations or name in self._distractors else None
        if method is None:
            raise ToolError(f"unknown function '{name}'")
        return method(**dict(arguments))

    def effective_arguments(self, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validated arguments with defaults filled in (raises ToolError)."""
        if name in self.spec.operations:
            return self._check(name, self.spec.operations[name].params, arguments)
        if name in self._distractors:
            return self._check(name, self._distractors[name][1], arguments)
        raise ToolError(f"unknown function '{name}'")

    def _check(self, name: str, params: Mapping[str, ParamSpec], arguments: Mapping[str, Any]) -> dict:
        out: dict[str, Any] = {}
        for key in arguments:
            if key not in params:
                raise ToolError(f"{name}: unknown argument '{key}' (arguments: {', '.join(params) or 'none'})")
        for p in params.values():
            if p.name not in arguments or arguments[p.name] is None:
                if p.required:
                    raise ToolError(f"{name}: missing required argument '{p.name}'")
                if p.default is not None:
                    out[p.name] = p.default
                continue
            out[p.name] = self._check_value(name, p, arguments[p.name])
        return out

    def _check_value(self, name: str, p: ParamSpec, v: Any) -> Any:
        bad = f"{name}: argument '{p.name}' must be "
        if p.type in ("str", "enum", "date"):
            if not isinstance(v, str):
                raise ToolError(bad + f"a string, got {type(v).__name__}")
            if len(v) > MAX_STR:
                raise ToolError(bad + f"at most {MAX_STR} characters")
            v = v.strip()
            values = p.values
            if values and (p.type == "enum" or p.field is None):
                match = [x for x in values if values_equal(x, v)]
                if not match:
                    raise ToolError(bad + f"one of {list(values)}, got {v!r}")
                v = match[0]
            if p.type == "date":
                try:
                    v = datetime.date.fromisoformat(v).isoformat()
                except ValueError:
                    raise ToolError(bad + f"a date YYYY-MM-DD, got {v!r}") from None
            return v
        if p.type == "bool":
            if not isinstance(v, bool):
                raise ToolError(bad + f"true or false, got {v!r}")
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ToolError(bad + f"a number, got {type(v).__name__}")
        if p.type == "int":
            if float(v) != int(v):
                raise ToolError(bad + f"an integer, got {v!r}")
            v = int(v)
        if abs(v) > 1e12:
            raise ToolError(bad + "a number below 1e12 in size")
        if p.effect in ("add", "subtract") and v <= 0:
            raise ToolError(bad + f"positive, got {v!r}")
        return v

    # ------------------------------------------------------------------ operations
    def _record(self, e: EntitySpec, key: str) -> dict:
        rec = self.tables[e.name].get(key) if isinstance(key, str) else None
        if rec is None:
            raise ToolError(f"{e.noun} '{key}' not found")
        return rec

    def _view(self, op: OperationSpec, rec: Mapping[str, Any]) -> dict:
        return {f: rec[f] for f in op.returns}

    def _check_field_value(self, e: EntitySpec, f: FieldSpec, value: Any) -> None:
        if f.ref is not None and value is not None and value not in self.tables[f.ref]:
            raise ToolError(f"{self.spec.entities[f.ref].noun} '{value}' not found")
        if f.type in ("int", "float") and value is not None:
            if f.min is not None and value < f.min:
                raise ToolError(f"{e.noun} {f.name} cannot go below {f.min:g} (would be {value:g})")
            if f.max is not None and value > f.max:
                raise ToolError(f"{e.noun} {f.name} cannot exceed {f.max:g} (would be {value:g})")

    def _matches(self, op: OperationSpec, rec: Mapping[str, Any], args: Mapping[str, Any]) -> bool:
        for p in op.params.values():
            if p.name not in args or not p.field:
                continue
            have, want = rec[p.field], args[p.name]
            if p.match == "min" and not (have is not None and have >= want):
                return False
            if p.match == "max" and not (have is not None and have <= want):
                return False
            if p.match == "contains" and not (isinstance(have, str) and want.casefold() in have.casefold()):
                return False
            if p.match in ("eq", "key") and not values_equal(have, want):
                return False
        return True

    def run_operation(self, op_name: str, arguments: Mapping[str, Any]) -> Any:
        op = self.spec.operations[op_name]
        args = self._check(op.name, op.params, arguments)
        e = self.spec.entities[op.entity]
        table = self.tables[e.name]
        key_param = next((p.name for p in op.params.values() if p.match == "key"), None)
        if op.kind == "read":
            result: Any = self._view(op, self._record(e, args[key_param]))
        elif op.kind == "delete":
            key = args[key_param]
            self._record(e, key)
            del table[key]
            result = {"deleted": key}
        elif op.kind == "update":
            rec = self._record(e, args[key_param])
            new = dict(rec)
            for p in op.params.values():
                if p.name == key_param or p.name not in args:
                    continue
                value = args[p.name]
                if p.effect == "add":
                    value = rec[p.field] + value
                elif p.effect == "subtract":
                    value = rec[p.field] - value
                if isinstance(value, float):
                    value = round(value, e.fields[p.field].decimals)
                new[p.field] = value
            new.update(op.sets)
            for fname, value in new.items():
                self._check_field_value(e, e.fields[fname], value)
            rec.update(new)
            result = self._view(op, rec)
        elif op.kind == "create":
            if len(table) >= self.spec.max_records:
                raise ToolError(f"too many {e.noun} records (limit {self.spec.max_records})")
            key = e.fields[e.key].pattern.format(n=self.next_n[e.name])
            rec = {f: None for f in e.fields}
            rec[e.key] = key
            for p in op.params.values():
                if p.name in args:
                    rec[p.field] = args[p.name]
            rec.update(op.sets)
            rng = random.Random(f"envgen-create:{self.world_seed}:{key}")
            for fname, f in e.fields.items():
                if rec[fname] is None and not f.nullable:
                    rec[fname] = generate_value(f, rng, self) if f.type != "bool" else False
                self._check_field_value(e, f, rec[fname])
            self.next_n[e.name] += 1
            table[key] = rec
            result = self._view(op, rec)
        else:
            rows = [r for r in table.values() if self._matches(op, r, args)]
            if op.kind == "search":
                shown = rows[: self.spec.max_results]
                result = {"count": len(rows), "results": [self._view(op, r) for r in shown]}
            else:
                fn, field = op.aggregate
                values = [r[field] for r in rows if field and r[field] is not None]
                if fn == "count":
                    value: Any = len(rows)
                elif not values:
                    value = None
                elif fn == "sum":
                    value = round(sum(values), 2)
                elif fn == "mean":
                    value = round(sum(values) / len(values), 2)
                else:
                    value = min(values) if fn == "min" else max(values)
                result = {"result": value, "count": len(rows)}
        return self._noisy(result)

    def run_distractor(self, name: str, arguments: Mapping[str, Any]) -> Any:
        args = self._check(name, self._distractors[name][1], arguments)
        token = _stable_int(name, sorted(args.items())) % 10_000
        return self._noisy({"status": "ok", "tool": name, "reference": f"R{token:04d}"})

    def _noisy(self, result: Any) -> Any:
        if self.noise <= 0 or not isinstance(result, dict):
            return result
        rng = random.Random(f"envgen-noise:{self.noise_seed}:{self.calls}")
        if rng.random() >= self.noise:
            return result
        result = copy.deepcopy(result)
        if isinstance(result.get("results"), list):
            rng.shuffle(result["results"])
        result["_meta"] = {"request_id": f"{rng.getrandbits(32):08x}", "latency_ms": rng.randint(3, 900),
                           "server": rng.choice(["eu-1", "us-2", "ap-3"])}
        return result


_WORLD_CLASSES: dict[tuple[str, str], type] = {}


def _op_method(name: str):
    def method(self, **arguments):
        return self.run_operation(name, arguments)

    method.__name__ = name
    return method


def _distractor_method(name: str):
    def method(self, **arguments):
        return self.run_distractor(name, arguments)

    method.__name__ = name
    return method


def world_class(spec: DomainSpec) -> type:
    """``<Domain>World``: a :class:`World` subclass with one method per operation and distractor."""
    key = (spec.domain, spec.sha256)
    if key not in _WORLD_CLASSES:
        methods: dict[str, Any] = {n: _op_method(n) for n in spec.operations}
        methods.update({n: _distractor_method(n) for n in distractor_params(spec)})
        clash = [n for n in methods if hasattr(World, n)]
        if clash:
            raise DataError(f"{spec.path}: tool name '{clash[0]}' clashes with a World attribute; rename it")
        cls_name = "".join(w.capitalize() for w in spec.domain.split("_")) + "World"
        methods["__doc__"] = f"World of domain '{spec.domain}' ({spec.path}); one method per tool."
        _WORLD_CLASSES[key] = type(cls_name, (World,), methods)
    return _WORLD_CLASSES[key]


def make_world(spec: DomainSpec, world_seed: int, **kwargs) -> World:
    """A fresh seeded world of ``spec`` (keyword arguments as :class:`World`)."""
    return world_class(spec)(spec, world_seed, **kwargs)


# --------------------------------------------------------------------------- executor environment

@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvTool:
    """A spec tool for ``ToolExecutor``: runs on the trajectory's world (hidden ``_envgen_world``)."""

    name: str
    schema: dict
    state_param: str = STATE_PARAM

    def __call__(self, **arguments: Any) -> Any:
        world = arguments.pop(STATE_PARAM, None)
        if world is None:
            raise ToolError("no environment was started for this trajectory (start it with its task)")
        return world.call(self.name, arguments)


class EnvgenEnvironment:
    """``ToolEnvironment`` over one or more specs; ``reset`` builds the task's own world.

    Args:
      specs: spec path -> DomainSpec (tasks name their spec by ``meta["env"]["spec_path"]``).

    Raises:
      DataError: two specs define the same tool name with different documents.
    """

    def __init__(self, specs: Mapping[str, DomainSpec]):
        self.specs = dict(specs)
        docs: dict[str, dict] = {}
        for path, spec in self.specs.items():
            for name, doc in tool_documents(spec).items():
                if name in docs and docs[name] != doc:
                    raise DataError(f"tool '{name}' is defined differently by two specs ({path}); "
                                    "rename one of the operations")
                docs[name] = doc
        self.tools = tuple(EnvTool(name=n, schema=d) for n, d in docs.items())

    def reset(self, trajectory_id: Hashable, task: Any = None) -> World | None:
        """The task's fresh world (None without a task: every call is then an error)."""
        if task is None:
            return None
        meta = getattr(task, "meta", task)
        env = meta.get("env") if isinstance(meta, Mapping) else None
        if not isinstance(env, Mapping) or env.get("spec_path") not in self.specs:
            raise DataError(f"trajectory {trajectory_id!r}: task has no envgen meta for this environment "
                            "(load tasks with envgen.load_env_tasks and build it with env_for_tasks)")
        return make_world(self.specs[env["spec_path"]], env["world_seed"], noise=env.get("noise", 0.0),
                          noise_seed=env.get("noise_seed", 0), allowed=env.get("tools"))
