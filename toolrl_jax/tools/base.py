"""Tools the policy can call: the `Tool` protocol, schemas derived from typed functions, argument
validation, and per-trajectory state for stateful environments.

A tool is anything with a `name`, an OpenAI-style function `schema`
(`{"name", "description", "parameters": {"type": "object", "properties", "required"}}`) and a
`__call__(**arguments)` returning the observation (a string, or any value the executor renders
as JSON). `function_tool` builds one from a typed Python function and its Google-style docstring:

    @function_tool
    def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        '''Current weather for a city.

        Args:
            city: City name, e.g. "Paris".
            unit: Temperature unit.
        '''

Stateful environments (VerlTool-style): a `ToolEnvironment` creates one state object per
trajectory with `reset(trajectory_id, task)`; a tool whose function has a parameter named `state`
receives that trajectory's object there (the parameter is hidden from the schema, so the model
can neither see nor pass it).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal, Protocol, Union, runtime_checkable

__all__ = [
    "FunctionTool",
    "Tool",
    "ToolEnvironment",
    "function_tool",
    "openai_tools",
    "parse_google_docstring",
    "type_to_schema",
    "validate_arguments",
]


@runtime_checkable
class Tool(Protocol):
    """Anything the executor can call.

    Attributes:
        name: the function name the model uses.
        schema: OpenAI/JSON-schema function description
            `{"name", "description", "parameters": {"type": "object", ...}}`.

    Optional attribute `state_param: str | None`: if set, the executor passes the trajectory's
    state object under that keyword (see `ToolEnvironment`).
    """

    name: str
    schema: dict

    def __call__(self, **arguments: Any) -> Any: ...


@runtime_checkable
class ToolEnvironment(Protocol):
    """A set of tools plus per-trajectory state.

    `reset(trajectory_id, task)` is called once per trajectory (before its first tool call) and
    returns a fresh state object; tools with a `state_param` receive it. Each trajectory owns its
    state, so concurrent trajectories never share mutable objects. The object returned by
    `ToolExecutor.finish(trajectory_id)` is the final state, for state-based rewards.
    """

    tools: Sequence[Tool]

    def reset(self, trajectory_id: Hashable, task: Any = None) -> Any: ...


# --------------------------------------------------------------------------- schema derivation

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Returns|Return|Yields|"
    r"Raises|Examples?|Notes?|Attributes|See Also|Warnings?|Todo)\s*:\s*$"
)
_ARG_LINE = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def parse_google_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Splits a Google-style docstring into (description, {argument name: description}).

    The description is all text before the first section header, whitespace-collapsed. Argument
    descriptions come from the `Args:` (or `Arguments:`/`Parameters:`) section; continuation lines
    (indented deeper than the argument name) are joined with single spaces. `name (type): text`
    is accepted; the type in parentheses is ignored (annotations are the source of types).
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    arg_indent: int | None = None
    for line in lines:
        stripped = line.strip()
        header = _SECTION.match(stripped) if line[:1] not in (" ", "\t") else None
        if header:
            section, current, arg_indent = header.group(1), None, None
            continue
        if section is None:
            description.append(stripped)
            continue
        if section not in ("Args", "Arguments", "Parameters", "Params", "Keyword Args",
                           "Keyword Arguments") or not stripped:
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARG_LINE.match(stripped)
        if match and (arg_indent is None or indent <= arg_indent):
            arg_indent = indent
            current = match.group(1)
            args[current] = match.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(" ".join(description).split()), args


def type_to_schema(tp: Any) -> dict:
    """JSON schema of a Python type annotation.

    int -> integer, float -> number, str -> string, bool -> boolean, None -> null,
    list[X] / tuple[X, ...] / set[X] / Sequence[X] -> array (items X), dict[str, X] / Mapping ->
    object (additionalProperties X), Literal[a, b] -> enum, Enum subclass -> enum of its values,
    Optional[X] / X | None -> X with "null" added to its type, other unions -> anyOf,
    Any / unannotated -> {} (anything).

    Raises:
        TypeError: for annotations with no JSON equivalent (e.g. a custom class).
    """
    if tp is inspect.Parameter.empty or tp is Any or tp is object:
        return {}
    origin, targs = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_to_schema(targs[0])
    if origin is Union or origin is types.UnionType:
        options = [a for a in targs if a is not type(None)]
        if len(options) == 1:
            schema = dict(type_to_schema(options[0]))
            if "type" in schema:
                kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
                schema["type"] = [*kinds, "null"]
            elif schema:
                schema = {"anyOf": [schema, {"type": "null"}]}
            return schema
        branches = [type_to_schema(a) for a in targs]
        return {"anyOf": branches}
    if origin is Literal:
        values = list(targs)
        kinds = {_json_type_of(v) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1:
            schema = {"type": kinds.pop(), "enum": values}
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        kinds = {_json_type_of(v) for v in values}
        return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 else {"enum": values}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is type(None):
        return {"type": "null"}
    container = origin or tp
    if container in (list, tuple, set, frozenset, Sequence, typing.Sequence, typing.List):
        schema = {"type": "array"}
        item_types = [a for a in targs if a is not Ellipsis]
        if len(set(item_types)) == 1:
            schema["items"] = type_to_schema(item_types[0])
        elif item_types:
            schema["items"] = {"anyOf": [type_to_schema(a) for a in item_types]}
        return schema
    if container in (dict, Mapping, typing.Mapping, typing.Dict):
        schema = {"type": "object"}
        if len(targs) == 2 and type_to_schema(targs[1]):
            schema["additionalProperties"] = type_to_schema(targs[1])
        return schema
    raise TypeError(f"cannot derive a JSON schema for annotation {tp!r}; use a JSON-like type")


def _json_type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if value is None:
        return "null"
    return "string"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionTool:
    """A `Tool` backed by a Python function (build it with `function_tool`).

    Attributes:
        name: function name shown to the model.
        schema: `{"name", "description", "parameters"}`.
        fn: the Python function.
        state_param: name of `fn`'s parameter that receives the per-trajectory state, or None.
    """

    name: str
    schema: dict
    fn: Callable[..., Any]
    state_param: str | None = None

    def __call__(self, **arguments: Any) -> Any:
        return self.fn(**arguments)


def function_tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    state_param: str = "state",
) -> Any:
    """Builds a `FunctionTool` from a typed function and its Google-style docstring.

    Usable as `@function_tool`, `@function_tool(name=...)` or `function_tool(fn)`. Parameter
    types come from annotations (see `type_to_schema`), descriptions from the docstring's `Args:`
    section; parameters with a default are optional, the rest are listed in `required`. A
    parameter named `state_param` (default "state") is not part of the schema: the executor fills
    it with the trajectory's state. `*args`/`**kwargs` are not allowed (the schema would lie).

    Raises:
        TypeError: for *args/**kwargs or an annotation with no JSON-schema equivalent.
    """

    def build(f: Callable[..., Any]) -> FunctionTool:
        signature = inspect.signature(f)
        hints = typing.get_type_hints(f)
        summary, arg_docs = parse_google_docstring(f.__doc__)
        properties: dict[str, dict] = {}
        required: list[str] = []
        uses_state = False
        for pname, param in signature.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {f.__name__!r}: *args/**kwargs cannot be described by a schema")
            if param.kind is param.POSITIONAL_ONLY:
                raise TypeError(f"tool {f.__name__!r}: positional-only parameter {pname!r}")
            if pname == state_param:
                uses_state = True
                continue
            prop = dict(type_to_schema(hints.get(pname, param.annotation)))
            if pname in arg_docs and arg_docs[pname]:
                prop["description"] = arg_docs[pname]
            if param.default is param.empty:
                required.append(pname)
            elif param.default is not None and _is_json_value(param.default):
                prop["default"] = param.default
            properties[pname] = prop
        parameters = {"type": "object", "properties": properties, "required": required}
        tool_name = name or f.__name__
        schema = {
            "name": tool_name,
            "description": description if description is not None else summary,
            "parameters": parameters,
        }
        return FunctionTool(name=tool_name, schema=schema, fn=f,
                            state_param=state_param if uses_state else None)

    return build if fn is None else build(fn)


def _is_json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def openai_tools(tools: Sequence[Tool]) -> list[dict]:
    """`[{"type": "function", "function": schema}, ...]`, the list chat templates take as `tools`."""
    return [{"type": "function", "function": tool.schema} for tool in tools]


# --------------------------------------------------------------------------- validation

_PY_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, (list, tuple)),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def validate_arguments(parameters: Mapping[str, Any], arguments: Any) -> list[str]:
    """Checks model-supplied arguments against a function's `parameters` schema.

    Supports the JSON-schema subset tool schemas use: type (string or list of types), enum,
    properties / required / additionalProperties, items, anyOf. Unknown top-level arguments are
    errors unless `additionalProperties` is true or a schema. Integers are accepted where a number
    is expected; booleans are never accepted as numbers.

    Returns:
        One human-readable message per problem (empty when the arguments are valid), e.g.
        "missing required argument 'city'", "unknown argument 'foo' (expected: city, unit)",
        "argument 'days' must be integer, got string '3'".
    """
    if not isinstance(arguments, Mapping):
        return [f"arguments must be a JSON object, got {_describe(arguments)}"]
    errors: list[str] = []
    _check_object(dict(parameters), arguments, "", errors, top_level=True)
    return errors


def _check_object(schema: dict, value: Mapping, path: str, errors: list[str], *,
                  top_level: bool) -> None:
    properties = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in value:
            errors.append(f"missing required argument '{path}{key}'")
    # Without "additionalProperties": a tool's arguments or an object with declared properties
    # accept no other keys; a nested object declared without properties accepts any.
    extra = schema.get("additionalProperties", not (top_level or properties))
    for key, item in value.items():
        if key in properties:
            _check_value(properties[key], item, f"{path}{key}", errors)
        elif isinstance(extra, dict):
            _check_value(extra, item, f"{path}{key}", errors)
        elif extra is not True:
            expected = ", ".join(properties) or "no arguments"
            errors.append(f"unknown argument '{path}{key}' (expected: {expected})")


def _check_value(schema: Any, value: Any, path: str, errors: list[str]) -> None:
    if not isinstance(schema, dict) or not schema:
        return
    if "anyOf" in schema:
        for branch in schema["anyOf"]:
            trial: list[str] = []
            _check_value(branch, value, path, trial)
            if not trial:
                break
        else:
            errors.append(f"argument '{path}' does not match any allowed form, got {_describe(value)}")
            return
    kinds = schema.get("type")
    if kinds is not None:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        known = [k for k in kinds if k in _PY_TYPES]
        if known and not any(_PY_TYPES[k](value) for k in known):
            errors.append(f"argument '{path}' must be {' or '.join(known)}, got {_describe(value)}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"argument '{path}' must be one of {schema['enum']!r}, got {value!r}")
        return
    if isinstance(value, (list, tuple)) and "items" in schema:
        for i, item in enumerate(value):
            _check_value(schema["items"], item, f"{path}[{i}]", errors)
    if isinstance(value, dict) and ("properties" in schema or "required" in schema
                                    or isinstance(schema.get("additionalProperties"), dict)):
        _check_object(schema, value, f"{path}.", errors, top_level=False)


def _describe(value: Any) -> str:
    kind = _json_type_of(value) if isinstance(value, (bool, int, float, str, type(None))) else {
        list: "array", tuple: "array", dict: "object"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}" if kind not in ("array", "object") else kind
