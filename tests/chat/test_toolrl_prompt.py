"""ToolRL prompt builders against ToolRL's own data files (byte-exact round trips)."""

import json
import re

import pytest

from toolrl_jax.chat.toolrl_prompt import (
    TOOLRL_SYSTEM_FOOTER,
    TOOLRL_SYSTEM_HEADER,
    build_toolrl_system_prompt,
    build_toolrl_user_message,
    format_toolrl_tool,
    parse_toolrl_system_prompt,
    parse_toolrl_user_message,
    render_toolrl_observation,
    toolrl_observation_payload,
    toolrl_tool_from_function,
)
from toolrl_jax.errors import DataError


@pytest.fixture(scope="module")
def sft_records(shared_data):
    return json.loads((shared_data / "toolrl" / "rlla_sft.json").read_text())


def test_system_prompt_round_trip_all_sft_records(sft_records):
    assert len(sft_records) == 400
    matched = 0
    for record in sft_records:
        text = record["instruction"]
        tools = parse_toolrl_system_prompt(text)
        # structure independent of our builder: one entry per "k. Name:" line, dict parameters
        assert len(tools) == len(re.findall(r"^\d+\. Name: ", text, flags=re.M))
        assert all(isinstance(t["parameters"], dict) for t in tools)
        matched += build_toolrl_system_prompt(tools) == text
    assert matched == 400


def test_system_prompt_from_example_tool(sft_records):
    """Hand-checked first record: tool 1 printed with json.dumps defaults (ASCII escapes)."""
    text = sft_records[0]["instruction"]
    tools = parse_toolrl_system_prompt(text)
    assert tools[0] == {
        "name": "Search Managers",
        "description": "Search for managers by name and retrieve their information",
        "parameters": {"name": {"description": "The name of the manager to search for",
                                "type": "string", "default": ""}},
    }
    assert "\\u00b1 7 days" in text  # "±" escaped, as json.dumps(ensure_ascii=True) prints it
    assert "\\u00b1 7 days" in format_toolrl_tool(2, tools[1])
    assert text.startswith(TOOLRL_SYSTEM_HEADER) and text.endswith(TOOLRL_SYSTEM_FOOTER)


def test_user_message_round_trip_all_sft_records(sft_records):
    for record in sft_records:
        text = record["input"]
        turns = parse_toolrl_user_message(text)
        assert build_toolrl_user_message(turns) == text
        assert turns[0]["role"] == "user"
        assert sum(t["role"] == "user" for t in turns) == text.count("<user> ")
        assert sum(t["role"] == "obs" for t in turns) == text.count("<obs> ")
        for t in turns:
            if t["role"] == "assistant":
                assert t["content"].startswith("<think>")


def test_observation_payload_reproduces_data(sft_records):
    seen = 0
    for record in sft_records:
        for obs in re.findall(r"<obs> (.*?) </obs>", record["input"], flags=re.S):
            items = json.loads(obs)
            payload = toolrl_observation_payload([(i["name"], i["results"]) for i in items])
            assert render_toolrl_observation([payload]) == f"<obs> {obs} </obs>"
            seen += 1
    assert seen == 52


def test_rl_test_split_and_apibank_round_trip(shared_data):
    pd = pytest.importorskip("pandas")
    table = pd.read_parquet(shared_data / "toolrl" / "rlla_test.parquet")
    for prompt in table["prompt"]:
        system, user = prompt[0]["content"], prompt[1]["content"]
        assert build_toolrl_system_prompt(parse_toolrl_system_prompt(system)) == system
        assert build_toolrl_user_message(parse_toolrl_user_message(user)) == user
    for level in (1, 2):
        records = json.loads((shared_data / "apibank" / f"level-{level}-api_processed.json").read_text())
        for r in records:
            tools = parse_toolrl_system_prompt(r["system"])
            assert all(isinstance(t["parameters"], dict) for t in tools)  # Python literals
            rebuilt = build_toolrl_system_prompt(tools, parameters_format="python")
            assert rebuilt == r["system"]


def test_tool_from_json_schema_function():
    fn = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now.",
            "parameters": {"type": "object",
                           "properties": {"city": {"type": "string", "description": "City"}},
                           "required": ["city"]},
        },
    }
    tool = toolrl_tool_from_function(fn)
    assert tool == {"name": "get_weather", "description": "Weather now.",
                    "parameters": {"city": {"type": "string", "description": "City"}}}
    prompt = build_toolrl_system_prompt([tool])
    assert ('1. Name: get_weather\nDescription: Weather now.\nParameters: '
            '{"city": {"type": "string", "description": "City"}}\n\n**Steps') in prompt
    no_params = toolrl_tool_from_function({"name": "now", "description": "Time."})
    assert no_params["parameters"] == {}


def test_empty_tools_and_bad_input():
    text = build_toolrl_system_prompt([])
    assert parse_toolrl_system_prompt(text) == []
    with pytest.raises(DataError):
        parse_toolrl_system_prompt("You are a pirate.")
    with pytest.raises(DataError):
        parse_toolrl_system_prompt(TOOLRL_SYSTEM_HEADER + "1. Name: x\nno description" + TOOLRL_SYSTEM_FOOTER)
    with pytest.raises(DataError):
        parse_toolrl_user_message("<user> hi </user>")
    with pytest.raises(DataError):
        build_toolrl_user_message([{"role": "narrator", "content": "x"}])


def test_user_message_builder_hand_example():
    turns = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '<think> call </think>\n<tool_call>\n{"name": "w", "parameters": {}}\n</tool_call>'},
        {"role": "obs", "content": '[{"name": "w", "results": 1}]'},
        {"role": "assistant", "content": "<think> done </think>\n<response> 1 </response>"},
        {"role": "user", "content": "Thanks"},
    ]
    expected = (
        "**Dialogue Records History**\n<user> Weather? </user>\n\n"
        '<think> call </think>\n<tool_call>\n{"name": "w", "parameters": {}}\n</tool_call>\n'
        '<obs> [{"name": "w", "results": 1}] </obs>\n\n'
        "<think> done </think>\n<response> 1 </response>\n\n<user> Thanks </user>"
    )
    assert build_toolrl_user_message(turns) == expected
    assert parse_toolrl_user_message(expected) == turns
