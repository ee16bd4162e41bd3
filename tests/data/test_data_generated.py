"""Generated tool tasks: determinism, executable ground truth, hand-checked tool results."""

import collections
import hashlib
import json
import os
import subprocess
import sys

import pytest

from toolrl_jax.data.generated import (
    GENERATED_TOOLS,
    execute_call,
    generate_tasks,
    make_task,
    train_heldout_split,
)
from toolrl_jax.data.task import parse_ground_truth_calls, parse_toolrl_tools

JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


def _check_against_schema(call, schema):
    """Independent JSON-schema check (required, no extras, types, enums)."""
    params = schema["parameters"]
    for key in params["required"]:
        assert key in call["arguments"], (call, key)
    for key, value in call["arguments"].items():
        spec = params["properties"][key]
        assert isinstance(value, JSON_TYPES[spec["type"]]) and not isinstance(value, bool), (key, value)
        if "enum" in spec:
            assert value in spec["enum"]


def _digest(tasks):
    return hashlib.sha256(json.dumps([t.to_dict() for t in tasks], sort_keys=True).encode()).hexdigest()


def test_deterministic_and_prefix_stable():
    a = generate_tasks(40, seed=3)
    b = generate_tasks(40, seed=3)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.to_dict() for t in generate_tasks(10, seed=3)] == [t.to_dict() for t in a[:10]]
    assert [t.to_dict() for t in generate_tasks(5, seed=3, start=20)] == [t.to_dict() for t in a[20:25]]
    c = generate_tasks(40, seed=4)
    assert sum(x.user == y.user for x, y in zip(a, c)) < 10


def test_independent_of_hash_seed():
    code = (
        "import hashlib, json; from toolrl_jax.data.generated import generate_tasks;"
        "print(hashlib.sha256(json.dumps([t.to_dict() for t in generate_tasks(30, seed=7)], sort_keys=True).encode()).hexdigest())"
    )
    outs = set()
    for hs in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-1000:]
        outs.add(r.stdout.strip())
    assert outs == {_digest(generate_tasks(30, seed=7))}


def test_every_ground_truth_executes():
    tasks = generate_tasks(400, seed=0)
    kinds = collections.Counter(t.meta["kind"] for t in tasks)
    assert set(kinds) == {"single", "parallel", "multi", "no_tool"}
    for t in tasks:
        assert 2 <= len(t.tools) <= 4
        shown = {tool["name"]: tool for tool in t.tools}
        # the ToolRL prompt lists exactly the task's tools
        assert [x["name"] for x in parse_toolrl_tools(t.system)] == [x["name"] for x in t.tools]
        assert parse_ground_truth_calls(t.ground_truth) == t.ground_truth_calls
        assert t.ground_truth.startswith("<think> ") and "</think>\n" in t.ground_truth
        if t.meta["kind"] == "no_tool":
            assert t.ground_truth_calls == [] and "<response>" in t.ground_truth
            continue
        assert len(t.ground_truth_calls) == (1 if t.meta["kind"] == "single" else 2)
        if t.meta["kind"] == "parallel":
            a, b = t.ground_truth_calls
            assert a["name"] == b["name"] and a != b
        if t.meta["kind"] == "multi":
            assert t.ground_truth_calls[0]["name"] != t.ground_truth_calls[1]["name"]
        for call in t.ground_truth_calls:
            assert call["name"] in shown
            _check_against_schema(call, shown[call["name"]])
            result = execute_call(call)
            assert isinstance(result, dict) and result


def test_tool_results_hand_checked():
    assert execute_call({"name": "convert_units", "arguments": {"value": 1, "from_unit": "km", "to_unit": "m"}}) == {"value": 1000.0, "unit": "m"}
    assert execute_call({"name": "convert_units", "arguments": {"value": 2, "from_unit": "lb", "to_unit": "g"}})["value"] == pytest.approx(907.1847)
    assert execute_call({"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}})["amount"] == 92.0
    assert execute_call({"name": "calculate", "arguments": {"expression": "12 * (3 + 4)"}})["result"] == 84
    assert execute_call({"name": "day_of_week", "arguments": {"date": "2024-01-01"}})["weekday"] == "Monday"
    assert execute_call({"name": "add_days", "arguments": {"date": "2024-02-28", "days": 2}})["date"] == "2024-03-01"
    assert execute_call({"name": "get_capital", "arguments": {"country": "Japan"}})["capital"] == "Tokyo"
    w = execute_call({"name": "get_weather", "arguments": {"city": "Paris"}})
    wf = execute_call({"name": "get_weather", "arguments": {"city": "Paris", "unit": "fahrenheit"}})
    assert wf["temperature"] == round(w["temperature"] * 9 / 5 + 32)


@pytest.mark.parametrize(
    "call",
    [
        {"name": "calculate", "arguments": {"expression": "__import__('os').system('true')"}},
        {"name": "convert_units", "arguments": {"value": 1, "from_unit": "km", "to_unit": "kg"}},
        {"name": "convert_units", "arguments": {"value": "1", "from_unit": "km", "to_unit": "m"}},
        {"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}},
        {"name": "get_weather", "arguments": {}},
        {"name": "get_weather", "arguments": {"city": "Paris", "extra": 1}},
        {"name": "add_days", "arguments": {"date": "tomorrow", "days": 1}},
        {"name": "no_such_tool", "arguments": {}},
    ],
)
def test_bad_calls_raise_value_error(call):
    with pytest.raises(ValueError):
        execute_call(call)


def test_tools_follow_tool_protocol():
    from toolrl_jax.tools.base import Tool

    for tool in GENERATED_TOOLS.values():
        assert isinstance(tool, Tool)
        assert tool.schema["name"] == tool.name and tool.schema["parameters"]["type"] == "object"


def test_train_heldout_disjoint():
    train, held = train_heldout_split(200, 60, seed=1)
    assert len(train) == 200 and len(held) == 60
    assert not {t.user for t in train} & {t.user for t in held}
    assert len({t.user for t in train}) == 200
    kinds = collections.Counter(t.meta["kind"] for t in held)
    assert kinds["no_tool"] > 0 and kinds["single"] > 0


def test_compact_prompt_is_shorter_with_same_tools():
    full = make_task(0, 5)
    compact = make_task(0, 5, prompt_style="compact")
    assert compact.ground_truth == full.ground_truth and compact.tools == full.tools
    assert len(compact.system) < 0.6 * len(full.system)
    assert [x["name"] for x in parse_toolrl_tools(full.system)] == [x["name"] for x in full.tools]
    for tool in full.tools:
        assert f"Name: {tool['name']}\n" in compact.system
