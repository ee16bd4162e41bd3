"""Scenario specs (FTRL's "scenario decomposition", arXiv 2508.08791): a domain, its entities with
typed fields, and the operations on them. Format reference: docs/envgen.md.

``load_spec(path)`` reads the YAML with line numbers and validates it; every mistake is a
:class:`~toolrl_jax.errors.DataError` of one line ``FILE:LINE: what is wrong; fix: what to do``,
e.g. ``banking.yaml:41: operation 'deposit' param 'amount': unknown field 'balanse' of entity
'account' (fields: account_id, ...); fix: did you mean 'balance'?``.

Field types: ``str int float bool enum date`` (dates are ``YYYY-MM-DD`` strings at run time). A
``str`` field with ``ref: ENTITY`` holds keys of another entity (multi-hop tasks follow these).
Operation kinds: ``create read update delete search compute``.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from toolrl_jax.envgen.yamlmarks import MarkedYaml, load_marked, loads_marked
from toolrl_jax.errors import DataError

__all__ = [
    "DomainSpec", "EntitySpec", "FieldSpec", "OperationSpec", "ParamSpec", "DistractorSpec",
    "FIELD_TYPES", "OP_KINDS", "Piece", "load_spec", "loads_spec", "parse_phrase",
]

FIELD_TYPES = ("str", "int", "float", "bool", "enum", "date")
OP_KINDS = ("create", "read", "update", "delete", "search", "compute")
MATCHES = ("eq", "min", "max", "contains")
EFFECTS = ("set", "add", "subtract")
AGGREGATES = ("sum", "count", "mean", "min", "max")
JSON_TYPE = {"str": "string", "enum": "string", "date": "string", "int": "integer",
             "float": "number", "bool": "boolean"}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One entity field. ``range`` (numbers, dates) and ``values`` (str pools, enums) drive the
    seeded world; ``min``/``max`` are hard bounds writes must respect; ``pattern`` makes keys
    (``"ACC-{n:04d}"``); ``ref`` names the entity whose keys a str field holds."""

    name: str
    type: str
    description: str = ""
    values: tuple[Any, ...] = ()
    range: tuple[Any, Any] | None = None
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    ref: str | None = None
    decimals: int = 2
    p_true: float = 0.5
    nullable: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class EntitySpec:
    name: str
    key: str
    noun: str
    count: int
    fields: Mapping[str, FieldSpec]
    description: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamSpec:
    """One operation parameter: bound to an entity ``field`` (type and values inherited) or typed
    on its own. ``match`` (search / compute filters) and ``effect`` (update writes) say how it
    reads or writes the field. ``ask`` / ``keywords``: how to ask the user for it when it is
    missing, and the words that show a question asked for it."""

    name: str
    type: str
    field: str | None = None
    entity: str | None = None
    required: bool = False
    default: Any = None
    description: str = ""
    values: tuple[Any, ...] = ()
    range: tuple[Any, Any] | None = None
    match: str = "eq"
    effect: str = "set"
    ask: str = ""
    keywords: tuple[str, ...] = ()
    render: Any = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Piece:
    """A piece of a phrase: literal ``text``, or a placeholder for ``param``; ``optional`` pieces
    (written ``[ ... {param} ... ]``) are dropped when the param is left out."""

    text: str = ""
    param: str | None = None
    optional: bool = False
    before: str = ""
    after: str = ""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperationSpec:
    name: str
    kind: str
    entity: str
    description: str
    params: Mapping[str, ParamSpec]
    returns: tuple[str, ...]
    phrases: tuple[tuple[Piece, ...], ...]
    sets: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    aggregate: tuple[str, str | None] | None = None

    @property
    def reads(self) -> tuple[str, ...]:
        """Entity fields the operation reads (lookup keys, filters, aggregated field)."""
        if self.kind == "create":
            return ()
        out = [p.field for p in self.params.values() if p.field and (
            self.kind in ("read", "delete", "search", "compute") or p.effect != "set" or p.match == "key")]
        if self.aggregate and self.aggregate[1]:
            out.append(self.aggregate[1])
        return tuple(dict.fromkeys(out))

    @property
    def writes(self) -> tuple[str, ...]:
        """Entity fields the operation writes."""
        if self.kind == "create":
            return tuple(dict.fromkeys([p.field for p in self.params.values() if p.field] + list(self.sets)))
        if self.kind == "update":
            return tuple(dict.fromkeys([p.field for p in self.params.values()
                                        if p.field and p.match != "key"] + list(self.sets)))
        return ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistractorSpec:
    name: str
    description: str
    params: Mapping[str, ParamSpec]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainSpec:
    domain: str
    description: str
    entities: Mapping[str, EntitySpec]
    operations: Mapping[str, OperationSpec]
    distractors: Mapping[str, DistractorSpec]
    path: str
    sha256: str
    max_results: int = 10
    max_records: int = 500

    def entity_order(self) -> list[str]:
        """Entities with referenced ones first (world generation order)."""
        done: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            for f in self.entities[name].fields.values():
                if f.ref and f.ref != name:
                    visit(f.ref)
            done.append(name)

        for name in self.entities:
            visit(name)
        return done


# --------------------------------------------------------------------------- phrase parsing

def parse_phrase(text: str) -> tuple[Piece, ...]:
    """``"open a[ {kind}] account for {owner}"`` -> pieces; raises ValueError on bad brackets."""
    pieces: list[Piece] = []
    i, n = 0, len(text)
    literal = ""
    while i < n:
        ch = text[i]
        if ch == "[":
            end = text.find("]", i)
            if end < 0 or "[" in text[i + 1:end]:
                raise ValueError("unbalanced '[' (write optional parts as '[ text {param} ]')")
            inner = text[i + 1:end]
            names = re.findall(r"\{(\w+)\}", inner)
            if len(names) != 1:
                raise ValueError(f"optional part '[{inner}]' must hold exactly one {{param}}")
            before, _, after = inner.partition("{" + names[0] + "}")
            if literal:
                pieces.append(Piece(text=literal))
                literal = ""
            pieces.append(Piece(param=names[0], optional=True, before=before, after=after))
            i = end + 1
        elif ch == "]":
            raise ValueError("']' without '['")
        elif ch == "{":
            end = text.find("}", i)
            name = text[i + 1:end] if end > 0 else ""
            if not _NAME_RE.match(name or "-"):
                raise ValueError("placeholders are '{param_name}'")
            if literal:
                pieces.append(Piece(text=literal))
                literal = ""
            pieces.append(Piece(param=name))
            i = end + 1
        else:
            literal += ch
            i += 1
    if literal:
        pieces.append(Piece(text=literal))
    return tuple(pieces)


# --------------------------------------------------------------------------- validation

class _Checker:
    """Validation helpers that raise DataError naming the file and line."""

    def __init__(self, doc: MarkedYaml):
        self.doc = doc

    def fail(self, path, message: str, fix: str):
        raise DataError(f"{self.doc.where(path)}: {message}; fix: {fix}")

    def mapping(self, value, path, what: str) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"{what} must be a mapping, got {type(value).__name__}",
                      f"write {what} as 'key: value' lines")
        return value

    def keys(self, value: dict, allowed: tuple[str, ...], path, what: str) -> None:
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(allowed)}"
                self.fail(path + (key,), f"{what}: unknown key '{key}'", fix)

    def choice(self, value, allowed, path, what: str) -> str:
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(map(str, allowed))}"
            self.fail(path, f"{what} '{value}' is not valid", fix)
        return value

    def name(self, value, path, what: str) -> str:
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.fail(path, f"{what} {value!r} is not an identifier", "use letters, digits and '_'")
        return value


def _date(value) -> datetime.date | None:
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value))
    except ValueError:
        return None


def _value_ok(ftype: str, value, values: tuple) -> bool:
    if ftype == "str":
        return isinstance(value, str)
    if ftype == "enum":
        return value in values
    if ftype == "date":
        return _date(value) is not None
    if ftype == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if ftype == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ftype == "bool":
        return isinstance(value, bool)
    return False


_FIELD_KEYS = ("type", "description", "values", "range", "min", "max", "pattern", "ref", "decimals",
               "p_true", "nullable")


def _field(c: _Checker, ename: str, fname: str, raw, path) -> FieldSpec:
    raw = c.mapping(raw, path, f"field '{ename}.{fname}'")
    c.keys(raw, _FIELD_KEYS, path, f"field '{ename}.{fname}'")
    if "type" not in raw:
        c.fail(path, f"field '{ename}.{fname}' has no type", f"add 'type: <{'|'.join(FIELD_TYPES)}>'")
    ftype = c.choice(raw["type"], FIELD_TYPES, path + ("type",), f"field '{ename}.{fname}': type")
    values = raw.get("values", ())
    if not isinstance(values, list) and values != ():
        c.fail(path + ("values",), f"field '{ename}.{fname}': values must be a list", "write values: [a, b, c]")
    values = tuple(str(v) if ftype in ("str", "enum") else v for v in values)
    if ftype == "enum" and not values:
        c.fail(path, f"enum field '{ename}.{fname}' lists no values", "add 'values: [a, b, ...]'")
    rng = raw.get("range")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2):
            c.fail(path + ("range",), f"field '{ename}.{fname}': range must be [low, high]", "write range: [0, 100]")
        if ftype == "date":
            lo, hi = _date(rng[0]), _date(rng[1])
            if lo is None or hi is None or lo > hi:
                c.fail(path + ("range",), f"field '{ename}.{fname}': bad date range {rng}",
                       "write range: [2025-01-01, 2025-12-31]")
            rng = (lo.isoformat(), hi.isoformat())
        elif ftype in ("int", "float"):
            if not all(_value_ok(ftype if ftype == "float" else "int", v, ()) for v in rng) or rng[0] > rng[1]:
                c.fail(path + ("range",), f"field '{ename}.{fname}': range {rng} is not [low, high] of {ftype}",
                       f"write two {ftype} numbers, low first")
            rng = tuple(rng)
        else:
            c.fail(path + ("range",), f"field '{ename}.{fname}': range is for int, float and date fields",
                   "remove it or use 'values' for str/enum")
    for bound in ("min", "max"):
        if bound in raw and not _value_ok("float", raw[bound], ()):
            c.fail(path + (bound,), f"field '{ename}.{fname}': {bound} must be a number", f"write {bound}: 0")
    pattern = raw.get("pattern")
    if pattern is not None and (not isinstance(pattern, str) or "{n" not in pattern):
        c.fail(path + ("pattern",), f"field '{ename}.{fname}': pattern must contain {{n}}",
               "write pattern: \"ACC-{n:04d}\"")
    ref = raw.get("ref")
    if ref is not None and ftype != "str":
        c.fail(path + ("ref",), f"field '{ename}.{fname}': only str fields can ref another entity",
               "set type: str")
    if ftype == "str" and not values and pattern is None and ref is None:
        c.fail(path, f"str field '{ename}.{fname}' needs values, a pattern or a ref to generate a world",
               "add 'values: [...]', 'pattern: \"X-{n}\"' or 'ref: ENTITY'")
    if ftype in ("int", "float", "date") and rng is None:
        c.fail(path, f"{ftype} field '{ename}.{fname}' has no range", "add 'range: [low, high]'")
    return FieldSpec(name=fname, type=ftype, description=str(raw.get("description", "")), values=values,
                     range=rng, min=raw.get("min"), max=raw.get("max"), pattern=pattern, ref=ref,
                     decimals=int(raw.get("decimals", 2)), p_true=float(raw.get("p_true", 0.5)),
                     nullable=bool(raw.get("nullable", False)))


def _entity(c: _Checker, ename: str, raw, path) -> EntitySpec:
    c.name(ename, path, "entity name")
    raw = c.mapping(raw, path, f"entity '{ename}'")
    c.keys(raw, ("description", "key", "noun", "count", "fields"), path, f"entity '{ename}'")
    fields_raw = c.mapping(raw.get("fields"), path + ("fields",), f"entity '{ename}' fields")
    fields = {}
    for fname, fraw in fields_raw.items():
        c.name(fname, path + ("fields", fname), "field name")
        fields[fname] = _field(c, ename, fname, fraw, path + ("fields", fname))
    key = raw.get("key")
    if key not in fields:
        c.fail(path + ("key",), f"entity '{ename}': key {key!r} is not one of its fields ({', '.join(fields)})",
               "set 'key:' to the id field")
    if fields[key].type != "str" or fields[key].pattern is None:
        c.fail(path + ("fields", key), f"entity '{ename}': key field '{key}' must be a str with a pattern",
               "add 'pattern: \"ID-{n:04d}\"' to the key field")
    count = raw.get("count", 12)
    if not isinstance(count, int) or not 1 <= count <= 200:
        c.fail(path + ("count",), f"entity '{ename}': count {count!r} must be an int in 1..200", "write count: 12")
    return EntitySpec(name=ename, key=key, noun=str(raw.get("noun", ename.replace("_", " "))), count=count,
                      fields=fields, description=str(raw.get("description", "")))


_PARAM_KEYS = ("field", "type", "required", "default", "description", "values", "range", "match",
               "effect", "ask", "keywords", "render")


def _param(c: _Checker, op: str, kind: str, entity: EntitySpec, pname: str, raw, path) -> ParamSpec:
    c.name(pname, path, "param name")
    raw = c.mapping(raw, path, f"operation '{op}' param '{pname}'")
    c.keys(raw, _PARAM_KEYS, path, f"operation '{op}' param '{pname}'")
    fname = raw.get("field")
    where = f"operation '{op}' param '{pname}'"
    if fname is not None:
        if fname not in entity.fields:
            close = difflib.get_close_matches(str(fname), list(entity.fields), n=1)
            fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(entity.fields)}"
            c.fail(path + ("field",), f"{where}: unknown field '{fname}' of entity '{entity.name}' "
                   f"(fields: {', '.join(entity.fields)})", fix)
        fspec = entity.fields[fname]
        ptype, values, rng = fspec.type, fspec.values, fspec.range
        if "type" in raw and raw["type"] != ptype:
            c.fail(path + ("type",), f"{where}: type '{raw['type']}' differs from field '{fname}' ({ptype})",
                   "remove 'type' (it comes from the field)")
    else:
        if "type" not in raw:
            c.fail(path, f"{where}: give 'field: <entity field>' or 'type: <{'|'.join(FIELD_TYPES)}>'",
                   f"bind it to a field of '{entity.name}' or give its type")
        ptype = c.choice(raw["type"], FIELD_TYPES, path + ("type",), f"{where}: type")
        values = tuple(raw.get("values", ()))
        rng = tuple(raw["range"]) if isinstance(raw.get("range"), list) else None
        if ptype == "enum" and not values:
            c.fail(path, f"{where}: enum param lists no values", "add 'values: [a, b]'")
    required = raw.get("required", False)
    if not isinstance(required, bool):
        c.fail(path + ("required",), f"{where}: required must be true or false, got {required!r}",
               "write required: true")
    if "default" in raw and not _value_ok(ptype, raw["default"], values):
        c.fail(path + ("default",), f"{where}: default {raw['default']!r} is not a valid {ptype}",
               f"give a {ptype} value" + (f" from {list(values)}" if values else ""))
    match = c.choice(raw.get("match", "eq"), MATCHES, path + ("match",), f"{where}: match")
    effect = c.choice(raw.get("effect", "set"), EFFECTS, path + ("effect",), f"{where}: effect")
    if match in ("min", "max") and ptype not in ("int", "float", "date"):
        c.fail(path + ("match",), f"{where}: match '{match}' needs an int, float or date", "use match: eq")
    if match == "contains" and ptype != "str":
        c.fail(path + ("match",), f"{where}: match 'contains' needs a str", "use match: eq")
    if effect != "set" and (kind != "update" or ptype not in ("int", "float")):
        c.fail(path + ("effect",), f"{where}: effect '{effect}' is for int/float params of update operations",
               "use effect: set")
    if fname is None and kind in ("create", "update") and effect == "set":
        c.fail(path, f"{where}: a {kind} param must be bound to a field", f"add 'field: <{entity.name} field>'")
    keywords = raw.get("keywords", ())
    if not isinstance(keywords, (list, tuple)):
        c.fail(path + ("keywords",), f"{where}: keywords must be a list", "write keywords: [word, word]")
    return ParamSpec(name=pname, type=ptype, field=fname, entity=entity.name, required=required,
                     default=raw.get("default"), description=str(raw.get("description", "")),
                     values=values, range=rng, match=match, effect=effect, ask=str(raw.get("ask", "")),
                     keywords=tuple(str(k) for k in keywords), render=raw.get("render"))


_OP_KEYS = ("kind", "entity", "description", "params", "returns", "phrases", "sets", "aggregate")


def _operation(c: _Checker, name: str, raw, entities: Mapping[str, EntitySpec], path) -> OperationSpec:
    c.name(name, path, "operation name")
    raw = c.mapping(raw, path, f"operation '{name}'")
    c.keys(raw, _OP_KEYS, path, f"operation '{name}'")
    kind = c.choice(raw.get("kind"), OP_KINDS, path + ("kind",), f"operation '{name}': kind")
    ename = raw.get("entity")
    if ename not in entities:
        close = difflib.get_close_matches(str(ename), list(entities), n=1)
        fix = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(entities)}"
        c.fail(path + ("entity",), f"operation '{name}': unknown entity {ename!r}", fix)
    entity = entities[ename]
    params_raw = raw.get("params") or {}
    params_raw = c.mapping(params_raw, path + ("params",), f"operation '{name}' params")
    params = {p: _param(c, name, kind, entity, p, praw, path + ("params", p)) for p, praw in params_raw.items()}
    key_params = [p for p in params.values() if p.field == entity.key]
    if kind in ("read", "update", "delete"):
        if not key_params or not key_params[0].required:
            c.fail(path + ("params",), f"operation '{name}' ({kind}) needs a required param bound to the key "
                   f"'{entity.key}'", f"add '{entity.key}: {{field: {entity.key}, required: true}}'")
        if kind in ("read", "delete") and len(params) != 1:
            c.fail(path + ("params",), f"operation '{name}' ({kind}) takes only the key param", "remove the others")
        key_name = key_params[0].name
        params[key_name] = dataclasses.replace(params[key_name], match="key")
    if kind == "create" and key_params:
        c.fail(path + ("params", key_params[0].name), f"operation '{name}': create makes the key "
               f"'{entity.key}' itself", "remove that param")
    returns = raw.get("returns", [])
    if kind in ("read", "search", "create", "update"):
        if not isinstance(returns, list) or not returns:
            c.fail(path + ("returns",), f"operation '{name}' ({kind}) returns no fields",
                   f"write returns: [{entity.key}, ...]")
        for i, f in enumerate(returns):
            if f not in entity.fields:
                close = difflib.get_close_matches(str(f), list(entity.fields), n=1)
                fix = f"did you mean '{close[0]}'?" if close else f"use fields of '{ename}': {', '.join(entity.fields)}"
                c.fail(path + ("returns", i), f"operation '{name}' returns unknown field '{f}' of entity '{ename}'", fix)
        if kind == "create" and entity.key not in returns:
            c.fail(path + ("returns",), f"operation '{name}' (create) must return the key '{entity.key}'",
                   f"add {entity.key} to returns")
    sets = raw.get("sets") or {}
    sets = c.mapping(sets, path + ("sets",), f"operation '{name}' sets")
    for f, v in sets.items():
        if f not in entity.fields:
            c.fail(path + ("sets", f), f"operation '{name}' sets unknown field '{f}' of entity '{ename}'",
                   f"use fields of '{ename}': {', '.join(entity.fields)}")
        if not _value_ok(entity.fields[f].type, v, entity.fields[f].values):
            c.fail(path + ("sets", f), f"operation '{name}' sets '{f}' to {v!r}, not a valid "
                   f"{entity.fields[f].type}", "give a value of the field's type")
    if sets and kind not in ("create", "update"):
        c.fail(path + ("sets",), f"operation '{name}': 'sets' is for create/update", "remove it")
    if kind == "update" and len(params) == 1 and not sets:
        c.fail(path + ("params",), f"operation '{name}' (update) writes nothing", "add a param bound to a field or 'sets:'")
    aggregate = None
    if kind == "compute":
        agg = c.mapping(raw.get("aggregate"), path + ("aggregate",), f"operation '{name}' aggregate")
        c.keys(agg, ("fn", "field"), path + ("aggregate",), f"operation '{name}' aggregate")
        fn = c.choice(agg.get("fn"), AGGREGATES, path + ("aggregate", "fn"), f"operation '{name}': aggregate fn")
        afield = agg.get("field")
        if fn != "count":
            if afield not in entity.fields or entity.fields[afield].type not in ("int", "float"):
                c.fail(path + ("aggregate", "field"), f"operation '{name}': aggregate field {afield!r} is not an "
                       f"int/float field of '{ename}'", "name a numeric field")
        aggregate = (fn, afield)
    phrases_raw = raw.get("phrases")
    if not isinstance(phrases_raw, list) or not phrases_raw:
        c.fail(path + ("phrases",), f"operation '{name}' has no phrases",
               "add 'phrases: [\"look up {param}\"]' (imperative clauses, one per paraphrase)")
    phrases = []
    for i, text in enumerate(phrases_raw):
        ppath = path + ("phrases", i)
        try:
            pieces = parse_phrase(str(text))
        except ValueError as e:
            c.fail(ppath, f"operation '{name}' phrase {i}: {e}", "fix the phrase")
        used = [p.param for p in pieces if p.param]
        for u in used:
            if u not in params:
                c.fail(ppath, f"operation '{name}' phrase {i} uses unknown param '{{{u}}}'",
                       f"use params of '{name}': {', '.join(params) or 'none'}")
        for p in params.values():
            if p.required and p.name not in used:
                c.fail(ppath, f"operation '{name}' phrase {i} omits required param '{p.name}'",
                       f"add {{{p.name}}} (or [ ... {{{p.name}}} ] to allow asking the user for it)")
        phrases.append(pieces)
    return OperationSpec(name=name, kind=kind, entity=ename, description=str(raw.get("description", "")),
                         params=params, returns=tuple(returns or ()), phrases=tuple(phrases), sets=sets,
                         aggregate=aggregate)


def _distractor(c: _Checker, name: str, raw, path) -> DistractorSpec:
    c.name(name, path, "distractor name")
    raw = c.mapping(raw, path, f"distractor '{name}'")
    c.keys(raw, ("description", "params"), path, f"distractor '{name}'")
    params = {}
    for pname, praw in c.mapping(raw.get("params") or {}, path + ("params",), f"distractor '{name}' params").items():
        praw = c.mapping(praw, path + ("params", pname), f"distractor '{name}' param '{pname}'")
        ptype = c.choice(praw.get("type"), FIELD_TYPES, path + ("params", pname, "type"),
                         f"distractor '{name}' param '{pname}': type")
        params[pname] = ParamSpec(name=pname, type=ptype, required=bool(praw.get("required", False)),
                                  description=str(praw.get("description", "")),
                                  values=tuple(praw.get("values", ())))
    return DistractorSpec(name=name, description=str(raw.get("description", "")), params=params)


def _build(doc: MarkedYaml, sha: str) -> DomainSpec:
    c = _Checker(doc)
    raw = c.mapping(doc.data, (), "the spec")
    c.keys(raw, ("domain", "description", "entities", "operations", "distractors", "max_results",
                 "max_records"), (), "spec")
    domain = c.name(raw.get("domain"), ("domain",), "domain")
    entities = {e: _entity(c, e, r, ("entities", e))
                for e, r in c.mapping(raw.get("entities"), ("entities",), "entities").items()}
    for e in entities.values():
        for f in e.fields.values():
            if f.ref is not None and f.ref not in entities:
                c.fail(("entities", e.name, "fields", f.name, "ref"),
                       f"field '{e.name}.{f.name}' refs unknown entity '{f.ref}'", f"use one of: {', '.join(entities)}")
    ops = {o: _operation(c, o, r, entities, ("operations", o))
           for o, r in c.mapping(raw.get("operations"), ("operations",), "operations").items()}
    distractors = {d: _distractor(c, d, r, ("distractors", d))
                   for d, r in c.mapping(raw.get("distractors") or {}, ("distractors",), "distractors").items()}
    for d in distractors:
        if d in ops:
            c.fail(("distractors", d), f"distractor '{d}' has the name of an operation", "rename it")
    spec = DomainSpec(domain=domain, description=str(raw.get("description", "")), entities=entities,
                      operations=ops, distractors=distractors, path=doc.source, sha256=sha,
                      max_results=int(raw.get("max_results", 10)), max_records=int(raw.get("max_records", 500)))
    try:
        spec.entity_order()
    except RecursionError:
        c.fail(("entities",), "entity refs form a cycle", "break the cycle of 'ref:' fields")
    return spec


def loads_spec(text: str, source: str = "<string>") -> DomainSpec:
    """Validated spec from YAML text (``source`` names it in errors)."""
    return _build(loads_marked(text, source), hashlib.sha256(text.encode()).hexdigest())


def load_spec(path: str | os.PathLike) -> DomainSpec:
    """Validated spec from a YAML file (errors name ``path:line`` and the fix)."""
    doc = load_marked(path)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    return _build(doc, sha)
