"""Deterministic generator of small tool-use tasks, with executable tools.

Every tool has a JSON schema and a pure Python implementation (no network, no clock, no global
state), so tasks need no external data and every ground-truth call can be executed: the demo
trains on them, the multi-turn rollout engine can run them, and tests check them.

Tools: ``get_weather``, ``convert_units``, ``convert_currency``, ``calculate``,
``day_of_week``, ``add_days``, ``get_capital``, ``get_population``, ``get_stock_price``,
``get_timezone``. Values come from fixed tables or a stable hash of the inputs.

A task shows 2-4 tools (the needed ones plus distractors, in random order) in ToolRL's system
prompt, asks one short user question from a template, and has a ground truth in ToolRL's
format: ``<think> .. </think>\\n<tool_call>\\n{json lines}\\n</tool_call>`` with one call, two
parallel calls of the same tool, or two calls of different tools; about one task in eight
needs no tool and is answered with ``<response>`` only.

``generate_tasks(n, seed)`` is a pure function of ``(n, seed)``: task ``i`` depends only on
``(seed, i)`` (its own ``random.Random`` seeded with a string, which Python hashes with SHA-512,
so results do not depend on PYTHONHASHSEED or on ``n``). ``train_heldout_split`` gives two
lists with no user question in common.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import json
import operator
import random
import types
from typing import Any, Callable, Mapping, Sequence

from toolrl_jax.data.task import ToolTask, render_toolrl_output, dialogue_history, toolrl_system_prompt

# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

CITIES = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Cairo", "Sydney", "Toronto", "Chicago",
    "Seoul", "Mumbai", "Lima", "Oslo", "Dublin", "Vienna", "Lisbon", "Nairobi", "Bangkok", "Denver",
)
CITY_UTC_OFFSET = {
    "Paris": 1, "London": 0, "Tokyo": 9, "Berlin": 1, "Madrid": 1, "Rome": 1, "Cairo": 2, "Sydney": 10,
    "Toronto": -5, "Chicago": -6, "Seoul": 9, "Mumbai": 5.5, "Lima": -5, "Oslo": 1, "Dublin": 0,
    "Vienna": 1, "Lisbon": 0, "Nairobi": 3, "Bangkok": 7, "Denver": -7,
}
COUNTRY_CAPITAL = {
    "France": "Paris", "Japan": "Tokyo", "Germany": "Berlin", "Spain": "Madrid", "Italy": "Rome",
    "Egypt": "Cairo", "Canada": "Ottawa", "Brazil": "Brasilia", "Kenya": "Nairobi", "Peru": "Lima",
    "Norway": "Oslo", "Ireland": "Dublin", "Austria": "Vienna", "Portugal": "Lisbon",
    "Thailand": "Bangkok", "Australia": "Canberra", "India": "New Delhi", "Mexico": "Mexico City",
}
COUNTRY_POPULATION_MILLIONS = {
    "France": 68.2, "Japan": 124.5, "Germany": 84.5, "Spain": 48.3, "Italy": 58.9, "Egypt": 112.7,
    "Canada": 40.1, "Brazil": 216.4, "Kenya": 55.1, "Peru": 34.4, "Norway": 5.5, "Ireland": 5.3,
    "Austria": 9.1, "Portugal": 10.5, "Thailand": 71.8, "Australia": 26.6, "India": 1428.6,
    "Mexico": 128.5,
}
CURRENCY_PER_USD = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CNY": 7.2, "INR": 83.0, "CAD": 1.36}
UNIT_FACTORS = {  # to the dimension's base unit (meter, kilogram, liter)
    "km": ("length", 1000.0), "m": ("length", 1.0), "mi": ("length", 1609.344), "ft": ("length", 0.3048),
    "kg": ("mass", 1.0), "lb": ("mass", 0.45359237), "g": ("mass", 0.001),
    "l": ("volume", 1.0), "gal": ("volume", 3.785411784),
}
UNIT_WORDS = {"km": "kilometers", "m": "meters", "mi": "miles", "ft": "feet", "kg": "kilograms",
              "lb": "pounds", "g": "grams", "l": "liters", "gal": "gallons"}
STOCKS = ("AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "META", "IBM")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy")


def _stable_int(*parts: Any) -> int:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big")


# ----------------------------------------------------------------------------------------------
# tool implementations
# ----------------------------------------------------------------------------------------------


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    celsius = _stable_int("weather", city.strip().lower()) % 36 - 5
    temp = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    condition = CONDITIONS[_stable_int("cond", city.strip().lower()) % len(CONDITIONS)]
    return {"city": city, "temperature": temp, "unit": unit, "condition": condition}


def convert_units(value: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    dim_a, fa = UNIT_FACTORS[from_unit]
    dim_b, fb = UNIT_FACTORS[to_unit]
    if dim_a != dim_b:
        raise ValueError(f"cannot convert {dim_a} ({from_unit}) to {dim_b} ({to_unit})")
    return {"value": round(value * fa / fb, 4), "unit": to_unit}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    usd = amount / CURRENCY_PER_USD[from_currency]
    return {"amount": round(usd * CURRENCY_PER_USD[to_currency], 2), "currency": to_currency}


_ARITH_OPS: Mapping[type, Callable[[Any, Any], Any]] = types.MappingProxyType({
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv,
})


def _eval_arith(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval_arith(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_arith(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_OPS:
        return _ARITH_OPS[type(node.op)](_eval_arith(node.left), _eval_arith(node.right))
    raise ValueError("only numbers, parentheses and + - * / // % are allowed")


def calculate(expression: str) -> dict[str, Any]:
    if len(expression) > 200:
        raise ValueError("expression too long")
    result = _eval_arith(ast.parse(expression, mode="eval"))
    return {"expression": expression, "result": round(result, 6) if isinstance(result, float) else result}


def _date(s: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(s)
    except ValueError:
        raise ValueError(f"date must be YYYY-MM-DD, got {s!r}") from None


def day_of_week(date: str) -> dict[str, Any]:
    return {"date": date, "weekday": WEEKDAYS[_date(date).weekday()]}


def add_days(date: str, days: int) -> dict[str, Any]:
    return {"date": (_date(date) + datetime.timedelta(days=days)).isoformat()}


def get_capital(country: str) -> dict[str, Any]:
    if country not in COUNTRY_CAPITAL:
        raise ValueError(f"unknown country {country!r}")
    return {"country": country, "capital": COUNTRY_CAPITAL[country]}


def get_population(country: str) -> dict[str, Any]:
    if country not in COUNTRY_POPULATION_MILLIONS:
        raise ValueError(f"unknown country {country!r}")
    return {"country": country, "population_millions": COUNTRY_POPULATION_MILLIONS[country]}


def get_stock_price(symbol: str) -> dict[str, Any]:
    cents = 1000 + _stable_int("stock", symbol.upper()) % 90000
    return {"symbol": symbol.upper(), "price_usd": cents / 100}


def get_timezone(city: str) -> dict[str, Any]:
    if city not in CITY_UTC_OFFSET:
        raise ValueError(f"unknown city {city!r}")
    return {"city": city, "utc_offset_hours": CITY_UTC_OFFSET[city]}


# ----------------------------------------------------------------------------------------------
# tools (schema + implementation)
# ----------------------------------------------------------------------------------------------

_JSON_TYPES: Mapping[str, tuple[type, ...]] = types.MappingProxyType(
    {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GeneratedTool:
    """A tool with a JSON schema and a Python implementation.

    Satisfies ``toolrl_jax.tools.base.Tool`` (``name``, ``schema``, ``__call__(**arguments)``).
    Calling validates the arguments against the schema (required keys, no unknown keys, JSON
    types, enums) and raises ``ValueError`` on bad ones.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    fn: Callable[..., Any]

    @property
    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": _thaw(self.parameters)}

    def validate(self, arguments: Mapping[str, Any]) -> None:
        props = self.parameters["properties"]
        missing = [k for k in self.parameters.get("required", ()) if k not in arguments]
        if missing:
            raise ValueError(f"{self.name}: missing required argument(s) {missing}")
        for k, v in arguments.items():
            if k not in props:
                raise ValueError(f"{self.name}: unknown argument {k!r}")
            spec = props[k]
            ok_types = _JSON_TYPES.get(spec["type"], (object,))
            if isinstance(v, bool) and spec["type"] != "boolean" or not isinstance(v, ok_types):
                raise ValueError(f"{self.name}: argument {k!r} must be {spec['type']}, got {type(v).__name__}")
            if "enum" in spec and v not in spec["enum"]:
                raise ValueError(f"{self.name}: argument {k!r} must be one of {list(spec['enum'])}")

    def __call__(self, **arguments: Any) -> Any:
        self.validate(arguments)
        return self.fn(**arguments)


def _freeze(x: Any) -> Any:
    if isinstance(x, dict):
        return types.MappingProxyType({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


def _thaw(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _thaw(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [_thaw(v) for v in x]
    return x


def _tool(name: str, description: str, props: dict, required: list[str], fn) -> GeneratedTool:
    return GeneratedTool(
        name=name,
        description=description,
        parameters=_freeze({"type": "object", "properties": props, "required": required}),
        fn=fn,
    )


_S = lambda d: {"type": "string", "description": d}  # noqa: E731
GENERATED_TOOLS: Mapping[str, GeneratedTool] = types.MappingProxyType({t.name: t for t in (
    _tool("get_weather", "Current weather for a city.",
          {"city": _S("City name"), "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"}},
          ["city"], get_weather),
    _tool("convert_units", "Convert a length, mass or volume between units.",
          {"value": {"type": "number", "description": "Amount"},
           "from_unit": {"type": "string", "enum": sorted(UNIT_FACTORS), "description": "Unit to convert from"},
           "to_unit": {"type": "string", "enum": sorted(UNIT_FACTORS), "description": "Unit to convert to"}},
          ["value", "from_unit", "to_unit"], convert_units),
    _tool("convert_currency", "Convert money between currencies.",
          {"amount": {"type": "number", "description": "Amount of money"},
           "from_currency": {"type": "string", "enum": sorted(CURRENCY_PER_USD), "description": "Currency code"},
           "to_currency": {"type": "string", "enum": sorted(CURRENCY_PER_USD), "description": "Currency code"}},
          ["amount", "from_currency", "to_currency"], convert_currency),
    _tool("calculate", "Evaluate an arithmetic expression.",
          {"expression": _S("Expression such as '12 * (3 + 4)'")}, ["expression"], calculate),
    _tool("day_of_week", "Weekday of a date.", {"date": _S("Date as YYYY-MM-DD")}, ["date"], day_of_week),
    _tool("add_days", "Date a number of days after a date.",
          {"date": _S("Date as YYYY-MM-DD"), "days": {"type": "integer", "description": "Days to add"}},
          ["date", "days"], add_days),
    _tool("get_capital", "Capital city of a country.", {"country": _S("Country name")}, ["country"], get_capital),
    _tool("get_population", "Population of a country in millions.", {"country": _S("Country name")},
          ["country"], get_population),
    _tool("get_stock_price", "Latest stock price in USD.", {"symbol": _S("Ticker symbol")}, ["symbol"], get_stock_price),
    _tool("get_timezone", "UTC offset of a city.", {"city": _S("City name")}, ["city"], get_timezone),
)})


def execute_call(call: Mapping[str, Any]) -> Any:
    """Runs ``{"name", "arguments"}`` (or ``"parameters"``) with the generated tools' implementations."""
    tool = GENERATED_TOOLS.get(call.get("name", ""))
    if tool is None:
        raise ValueError(f"unknown tool {call.get('name')!r}")
    args = call.get("arguments", call.get("parameters", {}))
    if not isinstance(args, Mapping):
        raise ValueError("arguments must be an object")
    return tool(**args)


# ----------------------------------------------------------------------------------------------
# intents: (user phrasing, ground-truth call, short reasoning)
# ----------------------------------------------------------------------------------------------


def _date_str(rng: random.Random) -> str:
    d = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randrange(0, 730))
    return d.isoformat()


def _intent(rng: random.Random, tool: str) -> tuple[str, dict[str, Any]]:
    """One request for ``tool``: (clause the user says, call)."""
    if tool == "get_weather":
        city = rng.choice(CITIES)
        if rng.random() < 0.3:
            unit = rng.choice(["celsius", "fahrenheit"])
            return rng.choice([f"the weather in {city} in {unit}", f"how warm it is in {city}, in {unit}"]), \
                {"name": tool, "arguments": {"city": city, "unit": unit}}
        return rng.choice([f"the weather in {city}", f"what the weather is like in {city}"]), \
            {"name": tool, "arguments": {"city": city}}
    if tool == "convert_units":
        dim = rng.choice(["length", "mass", "volume"])
        units = [u for u, (d, _) in UNIT_FACTORS.items() if d == dim]
        a, b = rng.sample(units, 2)
        value = rng.choice([1, 2, 3, 5, 10, 12, 20, 25, 42, 100, 250])
        return f"{value} {UNIT_WORDS[a]} in {UNIT_WORDS[b]}", \
            {"name": tool, "arguments": {"value": value, "from_unit": a, "to_unit": b}}
    if tool == "convert_currency":
        a, b = rng.sample(sorted(CURRENCY_PER_USD), 2)
        amount = rng.choice([5, 10, 20, 50, 75, 100, 200, 500, 1000])
        return rng.choice([f"{amount} {a} in {b}", f"how much {amount} {a} is in {b}"]), \
            {"name": tool, "arguments": {"amount": amount, "from_currency": a, "to_currency": b}}
    if tool == "calculate":
        x, y = rng.randrange(2, 99), rng.randrange(2, 99)
        op = rng.choice(["+", "-", "*"])
        expr = f"{x} {op} {y}"
        return rng.choice([f"what {expr} is", f"the result of {expr}"]), {"name": tool, "arguments": {"expression": expr}}
    if tool == "day_of_week":
        d = _date_str(rng)
        return f"which weekday {d} is", {"name": tool, "arguments": {"date": d}}
    if tool == "add_days":
        d, n = _date_str(rng), rng.choice([3, 7, 10, 14, 30, 45, 90, 100])
        return f"the date {n} days after {d}", {"name": tool, "arguments": {"date": d, "days": n}}
    if tool == "get_capital":
        c = rng.choice(sorted(COUNTRY_CAPITAL))
        return rng.choice([f"the capital of {c}", f"what the capital of {c} is"]), {"name": tool, "arguments": {"country": c}}
    if tool == "get_population":
        c = rng.choice(sorted(COUNTRY_POPULATION_MILLIONS))
        return f"the population of {c}", {"name": tool, "arguments": {"country": c}}
    if tool == "get_stock_price":
        s = rng.choice(STOCKS)
        return rng.choice([f"the stock price of {s}", f"what {s} is trading at"]), {"name": tool, "arguments": {"symbol": s}}
    if tool == "get_timezone":
        c = rng.choice(sorted(CITY_UTC_OFFSET))
        return f"the time zone of {c}", {"name": tool, "arguments": {"city": c}}
    raise KeyError(tool)


_ASK = ("Can you tell me {q}?", "Please find {q}.", "I need {q}.", "What is {q}? Thanks.", "Look up {q} for me.")
_ASK2 = ("Can you tell me {a} and {b}?", "I need {a}, and also {b}.", "Please find {a} and {b}.")
_OPENERS = ("", "Hi! ", "Hello. ", "Good morning! ", "Hey, ", "Quick question: ")
_SMALL_TALK = (
    ("how are you today?", "I'm doing well, thank you! How can I help you?"),
    ("thanks, that's all I needed.", "You're welcome! Have a great day."),
    ("can you tell me a fun fact?", "Honey never spoils: edible honey has been found in ancient tombs."),
    ("what can you help me with?", "I can look up weather, convert units and currencies, do arithmetic and more."),
    ("who are you?", "I'm an assistant that can use tools to answer your questions."),
    ("how do I say hello in French?", "You say \"bonjour\"."),
    ("can you recommend a good book?", "You might enjoy \"The Hobbit\" by J. R. R. Tolkien."),
    ("what's a good name for a cat?", "How about Miso? It's short and friendly."),
    ("tell me a joke.", "Why did the scarecrow win an award? He was outstanding in his field."),
    ("how many days are in a week?", "There are seven days in a week."),
    ("what color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("can you write me a one-line poem?", "Morning light spills gold across the quiet sea."),
)


def _think_for(calls: Sequence[Mapping[str, Any]]) -> str:
    names = sorted({c["name"] for c in calls})
    if len(calls) == 1:
        return f"The user asks for something {names[0]} provides, so I call it with the given values."
    if len(names) == 1:
        return f"The user asks for two things {names[0]} provides, so I call it twice in parallel."
    return f"The user asks for two things, so I call {names[0]} and {names[1]}."


COMPACT_SYSTEM_HEAD = "You are an assistant that can call tools.\n\nTools:\n"
COMPACT_SYSTEM_TAIL = """

Reply in this format:
<think> your reasoning </think>
<tool_call>
{"name": "tool name", "parameters": {"argument": "value"}}
</tool_call>
Put one JSON call per line inside <tool_call>, several lines for several calls. If no tool is needed, reply with <think> your reasoning </think> and then <response> your answer </response> instead."""


def compact_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """A short system prompt with ToolRL's output format (for small models and CPU demos).

    Same tool listing as ToolRL's (``N. Name / Description / Parameters``), shorter fixed
    instructions: about 100 tokens instead of ToolRL's ~380. The answer format, and so the
    ToolRL reward, is unchanged.
    """
    lines = []
    for i, t in enumerate(tools, 1):
        props = {k: {kk: vv for kk, vv in v.items() if kk != "description"} for k, v in t["parameters"]["properties"].items()}
        lines.append(f"{i}. Name: {t['name']}\nDescription: {t['description']}\nParameters: {json.dumps(props)}")
    return COMPACT_SYSTEM_HEAD + "\n".join(lines) + COMPACT_SYSTEM_TAIL


def make_task(
    seed: int, index: int, *, min_tools: int = 2, max_tools: int = 4, prompt_style: str = "toolrl"
) -> ToolTask:
    """Task ``index`` of the stream ``seed`` (a pure function of the arguments).

    ``prompt_style``: ``"toolrl"`` (ToolRL's exact system prompt, ~450-780 SmolLM2 tokens) or
    ``"compact"`` (:func:`compact_system_prompt`, a few hundred tokens shorter).
    """
    if prompt_style not in ("toolrl", "compact"):
        raise ValueError(f"prompt_style must be 'toolrl' or 'compact', got {prompt_style!r}")
    rng = random.Random(f"toolrl-jax-generated:{seed}:{index}")
    names = sorted(GENERATED_TOOLS)
    kind = rng.choices(["single", "parallel", "multi", "no_tool"], weights=[45, 20, 22, 13])[0]
    calls: list[dict[str, Any]] = []
    response = None
    if kind == "single":
        tool = rng.choice(names)
        q, call = _intent(rng, tool)
        user = rng.choice(_ASK).format(q=q)
        calls = [call]
    elif kind == "parallel":
        tool = rng.choice(names)
        (qa, ca), (qb, cb) = _intent(rng, tool), _intent(rng, tool)
        while cb == ca:
            qb, cb = _intent(rng, tool)
        user = rng.choice(_ASK2).format(a=qa, b=qb)
        calls = [ca, cb]
    elif kind == "multi":
        ta, tb = rng.sample(names, 2)
        (qa, ca), (qb, cb) = _intent(rng, ta), _intent(rng, tb)
        user = rng.choice(_ASK2).format(a=qa, b=qb)
        calls = [ca, cb]
    else:
        opener = rng.choice(_OPENERS)
        question, response = rng.choice(_SMALL_TALK)
        user = opener + (question[0].upper() + question[1:] if not opener or opener.endswith((". ", "! ", ": ")) else question)
    needed = sorted({c["name"] for c in calls})
    n_tools = rng.randint(max(min_tools, len(needed)), max(max_tools, len(needed)))
    distractors = rng.sample([n for n in names if n not in needed], n_tools - len(needed))
    shown = needed + distractors
    rng.shuffle(shown)
    tools = [GENERATED_TOOLS[n].schema for n in shown]
    if calls:
        ground_truth = render_toolrl_output(calls, think=_think_for(calls))
    else:
        ground_truth = render_toolrl_output(
            response=response, think="The user is chatting and no tool is needed, so I reply directly."
        )
    return ToolTask(
        id=f"gen-{seed}-{index}",
        messages=[
            {"role": "system", "content": toolrl_system_prompt(tools) if prompt_style == "toolrl" else compact_system_prompt(tools)},
            {"role": "user", "content": dialogue_history([("user", user)])},
        ],
        tools=tools,
        ground_truth=ground_truth,
        ground_truth_calls=calls,
        meta={"source": "generated", "kind": kind, "seed": seed, "index": index, "query": user,
              "tool_names": shown, "prompt_style": prompt_style},
    )


def generate_tasks(
    n: int, seed: int = 0, *, start: int = 0, min_tools: int = 2, max_tools: int = 4, prompt_style: str = "toolrl"
) -> list[ToolTask]:
    """Tasks ``start .. start+n-1`` of the stream ``seed`` (see :func:`make_task`)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if not 1 <= min_tools <= max_tools <= len(GENERATED_TOOLS):
        raise ValueError(f"need 1 <= min_tools <= max_tools <= {len(GENERATED_TOOLS)}")
    return [
        make_task(seed, i, min_tools=min_tools, max_tools=max_tools, prompt_style=prompt_style)
        for i in range(start, start + n)
    ]


def train_heldout_split(n_train: int, n_heldout: int, seed: int = 0, **kwargs) -> tuple[list[ToolTask], list[ToolTask]]:
    """``n_train`` then ``n_heldout`` tasks of stream ``seed``, no user question in both lists.

    Duplicates (the same question drawn twice) are skipped, so the returned tasks are the
    first distinct ones of the stream; the result is a pure function of the arguments.
    """
    seen: set[str] = set()
    train: list[ToolTask] = []
    held: list[ToolTask] = []
    i = 0
    limit = 50 * (n_train + n_heldout) + 100
    while (len(train) < n_train or len(held) < n_heldout) and i < limit:
        t = make_task(seed, i, **kwargs)
        i += 1
        key = t.meta["query"]
        if key in seen:
            continue
        seen.add(key)
        (train if len(train) < n_train else held).append(t)
    if len(train) < n_train or len(held) < n_heldout:
        raise ValueError("could not draw enough distinct tasks; ask for fewer")
    return train, held
