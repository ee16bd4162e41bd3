"""The deterministic FTRL environment builder: spec + seed -> tool documents, tasks, manifest.

Complexity levels (FTRL's "complexity scaling", arXiv 2508.08791):

==============  ========================================================================
single          one call
parallel        2-3 independent calls in one turn
sequential      an output feeds a later input: a search that finds exactly one record, or a
                create, then an operation on that record ("..., then freeze that account")
multihop        a record's reference field leads to another entity, 2-3 hops ("look up
                card CRD-0104, then check the balance of the account of that card")
missing_info    the query leaves out a required parameter: the answer is a question to the
                user (sub-goal ``ask``), the operation must not be called (guards)
==============  ========================================================================

Each task's ground truth is built by executing it on the task's own seeded world, then verified
by :func:`verify_task` (a fresh world, the replay of every ground-truth turn): every sub-goal must
be reached, none may hold before the first call, guards must hold. Tasks that fail are
discarded and counted by level and reason (``BuildResult.discarded``).

Knobs (:class:`BuildOptions`): ``distractors`` (extra tools shown per task: other operations of
the domain and distractor tools), ``paraphrase`` (random phrase and connector templates instead of
the first of each), ``noise`` (probability per call of noisy tool output).

Everything is a pure function of ``(spec, options)``: task ``i`` of a level draws from
``random.Random("envgen:{domain}:{seed}:{level}:{attempt}")``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolrl_jax.envgen.episode import Guard, SubGoal, TurnInput, score_episode
from toolrl_jax.envgen.spec import DomainSpec, OperationSpec, ParamSpec, Piece, load_spec
from toolrl_jax.envgen.world import ToolError, World, distractor_params, generate_value, make_world, tool_documents
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.toolcalls.types import ToolCall

__all__ = [
    "BuildOptions", "BuildResult", "BuiltTask", "LEVELS", "build_env_dir", "build_tasks", "check_env_dir",
    "gt_turn_inputs", "read_env_dir", "task_world", "verify_task",
]

LEVELS = ("single", "parallel", "sequential", "multihop", "missing_info")
FORMAT_VERSION = 1

WRAPPERS = ("{q}.", "Please {q}.", "Could you {q}?", "I'd like you to {q}.", "Hi, can you {q}?",
            "I need you to {q}.")
PARALLEL = ("{a} and {b}", "{a}, and also {b}", "both {a} and {b}")
SEQUENCE = ("{a}, then {b}", "first {a} and then {b}", "{a}; after that, {b}")
ASK = ("To {clause}, I need to know {ask}. Could you tell me?",
       "I can {clause} once I know {ask}. Could you tell me?")


class Discard(Exception):
    """A task attempt that cannot become a task (``reason`` is counted)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuildOptions:
    num_tasks: int = 250
    seed: int = 0
    levels: tuple[str, ...] = LEVELS
    distractors: int = 3
    paraphrase: bool = True
    noise: float = 0.0

    def __post_init__(self):
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ConfigError(f"unknown level '{bad[0]}'; use some of: {', '.join(LEVELS)}")
        if not self.levels:
            raise ConfigError(f"no levels given; use some of: {', '.join(LEVELS)}")
        if self.num_tasks < 1:
            raise ConfigError(f"--num-tasks must be >= 1, got {self.num_tasks}")
        if not 0.0 <= self.noise <= 1.0:
            raise ConfigError(f"noise must be in [0, 1], got {self.noise}")
        if self.distractors < 0:
            raise ConfigError(f"distractors must be >= 0, got {self.distractors}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BuiltTask:
    """One task. ``turns``: ground-truth assistant turns, each ``{"calls": [{"name", "arguments"}]}``
    or ``{"response": text}``; ``tools``: names of the tools shown (needed + distractors)."""

    id: str
    level: str
    query: str
    tools: tuple[str, ...]
    turns: tuple[Mapping[str, Any], ...]
    subgoals: tuple[SubGoal, ...]
    guards: tuple[Guard, ...]
    world_seed: int
    noise: float = 0.0
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return {"id": self.id, "level": self.level, "query": self.query, "tools": list(self.tools),
                "turns": [dict(t) for t in self.turns], "subgoals": [g.to_dict() for g in self.subgoals],
                "guards": [g.to_dict() for g in self.guards],
                "env": {"world_seed": self.world_seed, "noise": self.noise, "noise_seed": self.noise_seed}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BuiltTask":
        env = d.get("env", {})
        return cls(id=str(d["id"]), level=str(d["level"]), query=str(d["query"]), tools=tuple(d["tools"]),
                   turns=tuple(d["turns"]), subgoals=tuple(SubGoal.from_dict(g) for g in d["subgoals"]),
                   guards=tuple(Guard.from_dict(g) for g in d.get("guards", [])),
                   world_seed=int(env["world_seed"]), noise=float(env.get("noise", 0.0)),
                   noise_seed=int(env.get("noise_seed", 0)))


@dataclasses.dataclass(frozen=True)
class BuildResult:
    tasks: tuple[BuiltTask, ...]
    discarded: Mapping[str, Mapping[str, int]]  # level -> reason -> count

    def counts(self) -> dict[str, int]:
        return dict(Counter(t.level for t in self.tasks))


# --------------------------------------------------------------------------- rendering

def _render_value(spec: DomainSpec, op: OperationSpec, p: ParamSpec, value: Any) -> str:
    if p.field:
        e = spec.entities[op.entity]
        f = e.fields[p.field]
        target = op.entity if p.field == e.key else f.ref
        if target:
            return f"{spec.entities[target].noun} {value}"
    if isinstance(p.render, dict):
        return str(p.render.get(value, value))
    if isinstance(p.render, str):
        return p.render.format(value=value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _clause(pieces: Sequence[Piece], texts: Mapping[str, str]) -> str:
    out = []
    for piece in pieces:
        if piece.param is None:
            out.append(piece.text)
        elif piece.param in texts:
            out.append(piece.before + texts[piece.param] + piece.after)
        elif not piece.optional:
            raise AssertionError(f"placeholder {piece.param} without a value")
    return " ".join("".join(out).split())


def _pick(rng: random.Random, options: Sequence[Any], paraphrase: bool) -> Any:
    return rng.choice(list(options)) if paraphrase else options[0]


def _query(rng: random.Random, core: str, paraphrase: bool) -> str:
    q = _pick(rng, WRAPPERS, paraphrase).format(q=core)
    return q[0].upper() + q[1:]


def _join(rng: random.Random, clauses: Sequence[str], table: Sequence[str], paraphrase: bool) -> str:
    if len(clauses) == 1:
        return clauses[0]
    if len(clauses) == 2:
        return _pick(rng, table, paraphrase).format(a=clauses[0], b=clauses[1])
    if table is PARALLEL:
        return ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return ", then ".join(clauses)


# --------------------------------------------------------------------------- steps

@dataclasses.dataclass
class _Step:
    op: OperationSpec
    args: dict[str, Any]
    clause: str
    result: Any = None
    goal: SubGoal | None = None
    key: str | None = None  # the record a create / update / delete step touched
    written: tuple[str, ...] = ()


class _Context:
    """One task attempt: the build world, the rng, keys already used by earlier steps."""

    def __init__(self, spec: DomainSpec, rng: random.Random, world: World, paraphrase: bool):
        self.spec, self.rng, self.world, self.paraphrase = spec, rng, world, paraphrase
        self.used: dict[str, set[str]] = {e: set() for e in spec.entities}
        self.steps: list[_Step] = []
        self.ask: SubGoal | None = None  # missing_info: the question sub-goal
        self.needed_extra: list[str] = []  # tools to show that the ground truth does not call

    # ---------------------------------------------------------------- argument sampling
    def _anchor(self, op: OperationSpec, forced: Mapping[str, Any]) -> dict | None:
        e = self.spec.entities[op.entity]
        table = self.world.tables[e.name]
        key_param = next((p for p in op.params.values() if p.match == "key"), None)
        if key_param is not None:
            if key_param.name in forced:
                return table.get(forced[key_param.name])
            free = [k for k in table if k not in self.used[e.name]]
            if not free:
                raise Discard("no_candidate")
            key = self.rng.choice(free)
            return table[key]
        if op.kind in ("search", "compute"):
            rows = [r for r in table.values() if all(
                op.params[p].field is None or r[op.params[p].field] == v for p, v in forced.items())]
            rows = rows or list(table.values())
            return self.rng.choice(rows) if rows else None
        return None

    def _value(self, op: OperationSpec, p: ParamSpec, anchor: dict | None) -> Any:
        rng, e = self.rng, self.spec.entities[op.entity]
        f = e.fields.get(p.field) if p.field else None
        if f is None:
            if p.values:
                return rng.choice(p.values)
            if p.range:
                lo, hi = p.range
                return rng.randint(int(lo), int(hi)) if p.type == "int" else round(rng.uniform(lo, hi), 2)
            if p.default is not None:
                return p.default
            raise Discard("no_candidate")
        if op.kind == "create":
            return generate_value(f, rng, self.world)
        if op.kind == "update" and p.match != "key":
            current = anchor[p.field] if anchor else None
            if p.effect == "add":
                return rng.randint(1, 20) if p.type == "int" else round(rng.uniform(5, 200), 2)
            if p.effect == "subtract":
                if current is None or current < 2:
                    raise Discard("no_candidate")
                return rng.randint(1, int(current) // 2) if p.type == "int" else round(rng.uniform(1, current / 2), 2)
            for _ in range(20):
                value = generate_value(f, rng, self.world)
                if value != current:
                    return value
            raise Discard("no_candidate")
        if anchor is None or anchor.get(p.field) is None:
            raise Discard("no_candidate")
        have = anchor[p.field]
        if p.match == "contains":
            words = [w for w in str(have).split() if len(w) >= 3]
            return rng.choice(words) if words else str(have)
        if p.match in ("min", "max") and p.type in ("int", "float"):
            slack = max(1, abs(have) * 0.1)
            value = have - slack if p.match == "min" else have + slack
            return int(math.floor(value) if p.match == "min" else math.ceil(value)) if p.type == "int" \
                else float(math.floor(value) if p.match == "min" else math.ceil(value))
        return have

    def sample(self, op: OperationSpec, forced: Mapping[str, tuple[Any, str]] | None = None,
               drop: str | None = None, pieces: Sequence[Piece] | None = None) -> tuple[dict, str]:
        """(arguments, clause) for ``op``; ``forced`` param -> (value, text); ``drop``: left out."""
        forced = dict(forced or {})
        pieces = pieces if pieces is not None else _pick(self.rng, op.phrases, self.paraphrase)
        named = [pc.param for pc in pieces if pc.param]
        missing = [p for p in forced if p not in named]
        if missing:
            raise Discard("no_candidate")
        include = []
        for pc in pieces:
            if pc.param is None or pc.param == drop:
                continue
            p = op.params[pc.param]
            if not pc.optional or pc.param in forced or p.required or self.rng.random() < 0.5:
                include.append(pc.param)
        writes = [n for n in include if op.params[n].match != "key"]
        if op.kind == "update" and not writes and not op.sets and drop is None:
            optional = [pc.param for pc in pieces if pc.optional and pc.param != drop and pc.param not in include]
            if not optional:
                raise Discard("no_candidate")
            include.append(optional[0])
        if op.kind == "search" and not include:
            raise Discard("no_candidate")
        anchor = self._anchor(op, {p: v for p, (v, _) in forced.items()})
        args, texts = {}, {}
        for name in include:
            p = op.params[name]
            if name in forced:
                args[name], texts[name] = forced[name]
                continue
            args[name] = self._value(op, p, anchor)
            texts[name] = _render_value(self.spec, op, p, args[name])
        if anchor is not None and op.kind in ("read", "update", "delete"):
            self.used[op.entity].add(anchor[self.spec.entities[op.entity].key])
        return args, _clause(pieces, texts)

    # ---------------------------------------------------------------- execution
    def run(self, op: OperationSpec, args: dict, clause: str) -> _Step:
        """Executes a step on the build world and derives its sub-goal."""
        world, e = self.world, self.spec.entities[op.entity]
        try:
            effective = world.effective_arguments(op.name, args)
            result = world.call(op.name, args)
        except ToolError:
            raise Discard("call_failed") from None
        step = _Step(op=op, args=args, clause=clause, result=result)
        index = len(self.steps)
        if op.kind in ("read", "search", "compute"):
            step.goal = SubGoal(kind="call", tool=op.name, arguments=effective, step=index)
        elif op.kind == "delete":
            key = next(v for n, v in args.items() if op.params[n].match == "key")
            step.goal = SubGoal(kind="record", entity=e.name, where={e.key: key}, exists=False, step=index)
            step.key = key
        else:
            key = result[e.key] if op.kind == "create" else next(
                v for n, v in args.items() if op.params[n].match == "key")
            rec = world.tables[e.name][key]
            fields = [op.params[n].field for n in args if op.params[n].match != "key"] + list(op.sets)
            where = {f: rec[f] for f in dict.fromkeys(fields)}
            if op.kind == "update":
                where = {e.key: key, **where}
            step.goal = SubGoal(kind="record", entity=e.name, where=where, exists=True,
                                new=op.kind == "create", step=index)
            step.key, step.written = key, tuple(where)
        self.steps.append(step)
        return step


# --------------------------------------------------------------------------- levels

def _ops(spec: DomainSpec, *kinds: str) -> list[OperationSpec]:
    return [op for op in spec.operations.values() if not kinds or op.kind in kinds]


def _consumers(spec: DomainSpec, target: str, *, allow_delete: bool = True) -> list[tuple[OperationSpec, str]]:
    """(op, param) pairs whose param takes a key of entity ``target``."""
    out = []
    for op in spec.operations.values():
        e = spec.entities[op.entity]
        for p in op.params.values():
            if not p.field:
                continue
            if p.field == e.key and op.entity == target and op.kind in ("read", "update", "delete"):
                if op.kind == "delete" and not allow_delete:
                    continue
                out.append((op, p.name))
            elif e.fields[p.field].ref == target and p.match in ("eq", "key"):
                out.append((op, p.name))
    return out


def _phrases_with(op: OperationSpec, param: str) -> list[tuple[Piece, ...]]:
    return [ph for ph in op.phrases if any(pc.param == param for pc in ph)]


def _consume(ctx: _Context, target: str, key: str, text: str, allow_delete: bool = True) -> _Step:
    options = _consumers(ctx.spec, target, allow_delete=allow_delete)
    if not options:
        raise Discard("no_candidate")
    op, param = ctx.rng.choice(options)
    phrases = _phrases_with(op, param)
    args, clause = ctx.sample(op, forced={param: (key, text)}, pieces=ctx.rng.choice(phrases))
    return ctx.run(op, args, clause)


def _level_single(ctx: _Context) -> tuple[list[list[_Step]], str, list[Guard], str | None]:
    op = ctx.rng.choice(_ops(ctx.spec))
    step = ctx.run(op, *ctx.sample(op))
    return [[step]], step.clause, [], None


def _level_parallel(ctx: _Context):
    n = ctx.rng.choice((2, 2, 3))
    steps = []
    for _ in range(n):
        op = ctx.rng.choice(_ops(ctx.spec))
        args, clause = ctx.sample(op)
        if any(s.op.name == op.name and s.args == args for s in steps):
            raise Discard("duplicate_call")
        steps.append(ctx.run(op, args, clause))
    return [steps], _join(ctx.rng, [s.clause for s in steps], PARALLEL, ctx.paraphrase), [], None


def _level_sequential(ctx: _Context):
    spec, rng = ctx.spec, ctx.rng
    sources = [op for op in _ops(spec, "search", "create")
               if spec.entities[op.entity].key in op.returns and _consumers(spec, op.entity)]
    if not sources:
        raise Discard("no_candidate")
    src = rng.choice(sources)
    e = spec.entities[src.entity]
    first = ctx.run(src, *ctx.sample(src))
    if src.kind == "search":
        if first.result["count"] != 1:
            raise Discard("ambiguous_search")
        key = first.result["results"][0][e.key]
    else:
        key = first.result[e.key]
    second = _consume(ctx, e.name, key, f"that {e.noun}", allow_delete=src.kind != "create")
    core = _join(rng, [first.clause, second.clause], SEQUENCE, ctx.paraphrase)
    return [[first], [second]], core, [], None


def _hop_sources(spec: DomainSpec, entity: str | None = None) -> list[tuple[OperationSpec, str]]:
    """(read op, returned ref field) pairs, optionally on ``entity``."""
    out = []
    for op in _ops(spec, "read"):
        if entity is not None and op.entity != entity:
            continue
        for f in op.returns:
            ref = spec.entities[op.entity].fields[f].ref
            if ref and ref != op.entity:
                out.append((op, f))
    return out


def _level_multihop(ctx: _Context):
    spec, rng = ctx.spec, ctx.rng
    sources = [s for s in _hop_sources(spec) if _consumers(spec, spec.entities[s[0].entity].fields[s[1]].ref)]
    if not sources:
        raise Discard("no_candidate")
    op, ref_field = rng.choice(sources)
    steps = [ctx.run(op, *ctx.sample(op))]
    hops = 2 if rng.random() < 0.5 else 3
    while len(steps) < hops:
        last = steps[-1]
        e1 = spec.entities[last.op.entity]
        target = e1.fields[ref_field].ref
        key = last.result[ref_field]
        if key is None:
            raise Discard("no_candidate")
        text = f"the {spec.entities[target].noun} of that {e1.noun}"
        options = _consumers(spec, target)
        if len(steps) + 1 < hops:  # prefer a read that can hop again
            onward = [(o, p) for o, p in options if o.kind == "read" and o.entity == target
                      and _hop_sources(spec, target)]
            options = onward or options
        o2, param = rng.choice(options)
        args, clause = ctx.sample(o2, forced={param: (key, text)}, pieces=rng.choice(_phrases_with(o2, param)))
        steps.append(ctx.run(o2, args, clause))
        nxt = [f for f in o2.returns if o2.kind == "read" and spec.entities[o2.entity].fields[f].ref
               and spec.entities[o2.entity].fields[f].ref != o2.entity
               and _consumers(spec, spec.entities[o2.entity].fields[f].ref)]
        if not nxt:
            break
        ref_field = rng.choice(nxt)
    if len(steps) < 2:
        raise Discard("no_candidate")
    core = _join(rng, [s.clause for s in steps], SEQUENCE, ctx.paraphrase)
    return [[s] for s in steps], core, [], None


def _ask_keywords(spec: DomainSpec, op: OperationSpec, p: ParamSpec) -> tuple[str, tuple[str, ...]]:
    words = p.name.replace("_", " ")
    ask = p.ask or f"the {words}"
    keywords = list(p.keywords) or [words, p.name]
    if p.field and p.field != p.name:
        keywords.append(p.field.replace("_", " "))
    return ask, tuple(dict.fromkeys(keywords))


def _level_missing(ctx: _Context):
    spec, rng = ctx.spec, ctx.rng
    options = [(op, ph, pc.param) for op in spec.operations.values() for ph in op.phrases
               for pc in ph if pc.optional and pc.param and op.params[pc.param].required]
    if not options:
        raise Discard("no_candidate")
    op, pieces, missing = rng.choice(options)
    _, clause = ctx.sample(op, drop=missing, pieces=pieces)
    turns: list[list[_Step]] = []
    clauses = [clause]
    if rng.random() < 0.5:
        companions = [o for o in _ops(spec, "read", "search", "compute") if o.name != op.name]
        if companions:
            comp = rng.choice(companions)
            step = ctx.run(comp, *ctx.sample(comp))
            turns.append([step])
            clauses = [step.clause, clause]
    ask, keywords = _ask_keywords(spec, op, op.params[missing])
    response = _pick(rng, ASK, ctx.paraphrase).format(clause=clause, ask=ask)
    guards = [Guard(kind="not_called", tool=op.name)]
    if op.kind in ("create", "update", "delete"):
        guards.append(Guard(kind="unchanged", entity=op.entity))
    ctx.ask = SubGoal(kind="ask", keywords=keywords, step=len(ctx.steps))
    ctx.needed_extra = [op.name]
    return turns, _join(rng, clauses, PARALLEL, ctx.paraphrase), guards, response


LEVEL_BUILDERS = {"single": _level_single, "parallel": _level_parallel, "sequential": _level_sequential,
                  "multihop": _level_multihop, "missing_info": _level_missing}


# --------------------------------------------------------------------------- tasks

def _seed_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big") >> 1


def task_world(spec: DomainSpec, task: BuiltTask) -> World:
    """The fresh world a task starts from."""
    return make_world(spec, task.world_seed, noise=task.noise, noise_seed=task.noise_seed, allowed=task.tools)


def gt_turn_inputs(task: BuiltTask) -> list[TurnInput]:
    """The ground-truth turns as replay inputs (a response turn carries its text)."""
    out = []
    for turn in task.turns:
        calls = tuple(ToolCall(c["name"], dict(c["arguments"])) for c in turn.get("calls", ()))
        text = f"<response> {turn['response']} </response>" if "response" in turn else ""
        out.append(TurnInput(calls=calls, text=text))
    return out


def verify_task(spec: DomainSpec, task: BuiltTask) -> str | None:
    """None if the ground truth reaches every sub-goal from a fresh world (and none holds before
    the first call, and the guards hold); else the discard reason."""
    world = task_world(spec, task)
    initial = world.snapshot()
    if any(g.holds(initial) for g in task.subgoals):
        return "trivial_subgoal"
    score = score_episode(world, gt_turn_inputs(task), task.subgoals, task.guards, turn_rewards=False)
    if not all(score.solved):
        return "subgoal_unreached"
    if not score.guards_ok:
        return "guard_broken"
    return None


def _final_goals(spec: DomainSpec, steps: Sequence[_Step]) -> list[SubGoal]:
    """Step goals, with record fields that a later step on the same record rewrites left out
    (so each goal still holds in the final state)."""
    goals = []
    for i, s in enumerate(steps):
        goal = s.goal
        if goal.kind == "record" and goal.exists and s.key is not None:
            key_field = spec.entities[goal.entity].key
            later = {f for t in steps[i + 1:] if t.op.entity == goal.entity and t.key == s.key for f in t.written}
            goal = dataclasses.replace(goal, where={f: v for f, v in goal.where.items()
                                                    if f == key_field or f not in later})
        goals.append(goal)
    return goals


def _attempt(spec: DomainSpec, options: BuildOptions, level: str, attempt: int, index: int) -> BuiltTask:
    rng = random.Random(f"envgen:{spec.domain}:{options.seed}:{level}:{attempt}")
    world_seed = _seed_int(spec.domain, options.seed, level, attempt)
    noise_seed = _seed_int("noise", spec.domain, options.seed, level, attempt)
    ctx = _Context(spec, rng, make_world(spec, world_seed), options.paraphrase)
    turns, core, guards, response = LEVEL_BUILDERS[level](ctx)
    goals = _final_goals(spec, ctx.steps) + ([ctx.ask] if ctx.ask else [])
    gt_turns = [{"calls": [{"name": s.op.name, "arguments": s.args} for s in turn]} for turn in turns]
    if response is not None:
        gt_turns.append({"response": response})
    needed = list(dict.fromkeys([s.op.name for s in ctx.steps] + ctx.needed_extra))
    pool = [n for n in list(spec.operations) + list(distractor_params(spec)) if n not in needed]
    shown = needed + rng.sample(pool, min(options.distractors, len(pool)))
    rng.shuffle(shown)
    return BuiltTask(id=f"{spec.domain}-{level}-s{options.seed}-{index:04d}", level=level,
                     query=_query(rng, core, options.paraphrase), tools=tuple(shown), turns=tuple(gt_turns),
                     subgoals=tuple(goals), guards=tuple(guards), world_seed=world_seed,
                     noise=options.noise, noise_seed=noise_seed)


def build_tasks(spec: DomainSpec, options: BuildOptions = BuildOptions()) -> BuildResult:
    """``options.num_tasks`` tasks split evenly over ``options.levels`` (module docstring)."""
    levels = list(options.levels)
    quotas = {lv: options.num_tasks // len(levels) + (i < options.num_tasks % len(levels))
              for i, lv in enumerate(levels)}
    tasks: list[BuiltTask] = []
    discarded: dict[str, Counter] = {lv: Counter() for lv in levels}
    for level in levels:
        made, attempt = 0, 0
        while made < quotas[level] and attempt < 20 * quotas[level] + 20:
            attempt += 1
            try:
                task = _attempt(spec, options, level, attempt, made)
            except Discard as d:
                discarded[level][d.reason] += 1
                continue
            reason = verify_task(spec, task)
            if reason is not None:
                discarded[level][reason] += 1
                continue
            tasks.append(task)
            made += 1
    return BuildResult(tasks=tuple(tasks), discarded={lv: dict(c) for lv, c in discarded.items()})


# --------------------------------------------------------------------------- directories

def build_env_dir(spec_path: str | os.PathLike, out: str | os.PathLike,
                  options: BuildOptions = BuildOptions()) -> dict:
    """Builds ``out/{spec.yaml, tools.json, tasks.jsonl, manifest.json}``; returns the manifest."""
    spec = load_spec(spec_path)
    result = build_tasks(spec, options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, out / "spec.yaml")
    docs = tool_documents(spec)
    (out / "tools.json").write_text(json.dumps(list(docs.values()), indent=1, ensure_ascii=False) + "\n")
    with open(out / "tasks.jsonl", "w", encoding="utf-8") as f:
        for t in result.tasks:
            f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
    manifest = {
        "format_version": FORMAT_VERSION, "domain": spec.domain, "spec": "spec.yaml",
        "spec_source": os.fspath(spec_path), "spec_sha256": spec.sha256,
        "options": {**dataclasses.asdict(options), "levels": list(options.levels)},
        "num_tasks": len(result.tasks), "tasks_per_level": result.counts(),
        "discarded": result.discarded, "tools": list(docs),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_env_dir(path: str | os.PathLike) -> tuple[DomainSpec, list[BuiltTask], dict]:
    """(spec, tasks, manifest) of a built directory.

    Raises:
      DataError: a file is missing or malformed, or spec.yaml no longer matches the manifest.
    """
    path = Path(path)
    for name in ("manifest.json", "spec.yaml", "tasks.jsonl"):
        if not (path / name).is_file():
            raise DataError(f"{path}: no {name}; build it with 'toolrl-jax envs build --spec S --out {path}'")
    manifest = json.loads((path / "manifest.json").read_text())
    spec = load_spec(path / "spec.yaml")
    if manifest.get("spec_sha256") != spec.sha256:
        raise DataError(f"{path}/spec.yaml changed since the build (sha256 differs from manifest.json); rebuild")
    tasks = []
    with open(path / "tasks.jsonl", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tasks.append(BuiltTask.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path}/tasks.jsonl:{n}: malformed task ({type(e).__name__}: {e}); rebuild") from None
    return spec, tasks, manifest


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """Per level: tasks, ground truths that reach every sub-goal, sub-goals reached / total."""

    per_level: Mapping[str, Mapping[str, int]]
    failures: tuple[tuple[str, str], ...]  # (task id, why)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_env_dir(path: str | os.PathLike) -> CheckReport:
    """Re-executes every task's ground truth on a fresh world and counts sub-goal completion."""
    spec, tasks, _ = read_env_dir(path)
    per_level: dict[str, dict[str, int]] = {}
    failures = []
    for t in tasks:
        row = per_level.setdefault(t.level, {"tasks": 0, "complete": 0, "subgoals": 0, "reached": 0})
        try:
            score = score_episode(task_world(spec, t), gt_turn_inputs(t), t.subgoals, t.guards,
                                  turn_rewards=False)
        except (KeyError, TypeError, ValueError) as e:
            failures.append((t.id, f"ground truth does not run ({type(e).__name__})"))
            row["tasks"] += 1
            row["subgoals"] += len(t.subgoals)
            continue
        row["tasks"] += 1
        row["subgoals"] += len(score.solved)
        row["reached"] += sum(score.solved)
        if score.success:
            row["complete"] += 1
        else:
            missed = [g.kind + (f":{g.tool or g.entity}") for g, ok in zip(t.subgoals, score.solved) if not ok]
            failures.append((t.id, "unreached sub-goals " + ", ".join(missed) if missed else "guard broken"))
    return CheckReport(per_level=per_level, failures=tuple(failures))
