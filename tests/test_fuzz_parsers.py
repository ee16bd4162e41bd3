"""Every parser of model output against fuzzed and adversarial text (issue 10, item 4).

* 10,000 generated texts per run (seeded; ``TOOLRL_FUZZ_SEED`` picks another seed), each through
  every parser: toolrl_jax/toolcalls/parse.py, eval/calls.py, data/task.py, chat/hermes.py,
  rewards/encode.py (and rewards/math.extract_boxed). No parser may raise (except the documented
  BadRecord / DataError of ground-truth readers), and each text is time-bounded.
* The linear rewrites of the old regexes are compared with those regexes on the fuzzed texts
  (short texts, where the regexes are fast): same blocks, same think stripping, same fences.
* Adversarial inputs of 1,000,000 characters (the parsers' cap; 100 kB for the two made of
  thousands of well-formed calls) that made the old regexes quadratic (``"```" + "\\n" * N``, ``"<response>" * k``, ``"<tool_call>" * k``, ...) must each
  be parsed within a time linear code meets with a wide margin.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time

import pytest

from toolrl_jax.chat import hermes
from toolrl_jax.data import task as task_mod
from toolrl_jax.data.task import BadRecord
from toolrl_jax.errors import DataError
from toolrl_jax.eval import calls as eval_calls
from toolrl_jax.rewards import encode
from toolrl_jax.rewards.config import ToolRLRewardConfig
from toolrl_jax.rewards.math import extract_boxed
from toolrl_jax.toolcalls import parse

pytestmark = pytest.mark.timeout(120)

SEED = int(os.environ.get("TOOLRL_FUZZ_SEED", "20261201"))
N_TEXTS = 10_000
PER_TEXT_S = 0.5  # a generated text is at most a few thousand characters
PER_MB_S = 10.0  # linear parsers need 0.01-3 s per MB here (2 loaded cores); quadratic: hours

GT_CALL = '<think> t </think>\n<tool_call>\n{"name": "f", "parameters": {"a": 1, "b": "x"}}\n</tool_call>'
GT_RESPONSE = "<think> t </think>\n<response> hi </response>"
GT_BOTH = GT_CALL + "\n<response> done </response>"
CONFIGS = (ToolRLRewardConfig(), ToolRLRewardConfig(equality="lenient", syntax="auto"),
           ToolRLRewardConfig.compat_toolrl("original"))

FRAGMENTS = (
    "<think>", "</think>", "<tool_call>", "</tool_call>", "<response>", "</response>",
    "<tool_response>", "```", "```python\n", "```json", "\\boxed{", "\\boxed ", "\\fbox{",
    "{", "}", "[", "]", "(", ")", "\n", "\n\n", " ", "  ", "\t", ",", ":", ";", "=", "'", '"',
    "\\", '"name"', '"parameters"', '"arguments"', '{"name": "f", "parameters": {"a": 1, "b": "x"}}',
    '{"name": "f", "arguments": {"a": "1 ", "A": 1}}', '{"name": "g", "arguments": "{\\"x\\": [1, 2]}"}',
    '[{"name": "h", "arguments": {}}]', "f(a=1)", "[f(a=1, b='x'), mod.g(c=[1, 2])]", "f(1)",
    "f(**k)", "NaN", "Infinity", "-Infinity", "-0.0", "1e999", "9" * 40, "true", "null", "None",
    "\ud800", "\x00", "é", "💥", "\u2028", "**Available Tools**\n",
    '1. Name: f\nDescription: d\nParameters: {"a": {"type": "int"}}\n',
    "\n\n**Steps for Each Turn**", "[" * 30, "{" * 30, '{"a":' * 20, "lambda: 0", "__import__('os')",
)


def _text(rng: random.Random) -> str:
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 60))]
    if rng.random() < 0.1:
        parts.append("".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(1, 200))))
    return "".join(parts)


def _parsers(rotation: int | None = None):
    """(name, function of one text) for every parser of model output. With ``rotation`` the
    encoder runs under one of its configs (the i-th text under CONFIGS[i % 3]), else all."""
    out = []
    for syntax in parse.SYNTAXES:
        out.append((f"parse.parse_completion[{syntax}]", lambda t, s=syntax: parse.parse_completion(t, s)))
        out.append((f"parse.parse_tool_calls[{syntax}]", lambda t, s=syntax: parse.parse_tool_calls(t, s)))
    out += [
        ("parse.tool_call_blocks", parse.tool_call_blocks),
        ("parse.first_tool_call_block", parse.first_tool_call_block),
        ("parse.extract_tag", lambda t: (parse.extract_tag(t, "think"), parse.extract_tag(t, "response"))),
        ("hermes.parse_tool_calls", hermes.parse_tool_calls),
        ("task.parse_toolrl_tools", task_mod.parse_toolrl_tools),
        ("task.has_response", task_mod.has_response),
        ("task.strip_leading_think", task_mod.strip_leading_think),
        ("encode.think_word_count", encode.think_word_count),
        ("encode.format_ok", lambda t: [encode.format_ok(t.strip(), g) for g in (GT_CALL, GT_RESPONSE, GT_BOTH, "")]),
        ("math.extract_boxed", extract_boxed),
    ]
    for syntax in ("auto", "toolrl", "python"):
        out.append((f"calls.parse_calls[{syntax}]", lambda t, s=syntax: eval_calls.parse_calls(t, s)))
    for i, config in enumerate(CONFIGS):
        if rotation is not None and i != rotation % len(CONFIGS):
            continue
        out.append((f"encode.encode_batch[{i}]",
                    lambda t, c=config: encode.encode_batch([t], [GT_BOTH], c, return_reasons=True)))
    return out


def _ground_truth_readers():
    """Readers of ground-truth text that reject bad input with their documented error."""
    return [
        ("task.parse_ground_truth_calls", task_mod.parse_ground_truth_calls, BadRecord),
        *[(f"encode.parse_ground_truth[{i}]", lambda t, c=c: encode.parse_ground_truth(t, c), DataError)
          for i, c in enumerate(CONFIGS)],
    ]


def _check_result(name: str, value) -> None:
    if name.startswith("parse.parse_completion"):
        assert isinstance(value, parse.ParsedCompletion) and (value.ok or value.reason)
    elif name.startswith(("parse.parse_tool_calls",)):
        assert isinstance(value, parse.ToolCallParse) and (value.ok or value.reason)
        assert all(isinstance(c.name, str) and isinstance(c.arguments, dict) for c in value.calls)
    elif name.startswith("calls.parse_calls"):
        assert value is None or all(isinstance(c["name"], str) and isinstance(c["arguments"], dict)
                                    for c in value)
    elif name == "hermes.parse_tool_calls":
        assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in value)


def _run_all(text: str, budget_s: float, rotation: int | None = None) -> None:
    for name, fn in _parsers(rotation):
        start = time.perf_counter()
        try:
            value = fn(text)
        except Exception as exc:  # noqa: BLE001 - reported with the text that caused it
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc} on {text[:200]!r}") from exc
        elapsed = time.perf_counter() - start
        assert elapsed < budget_s, f"{name} took {elapsed:.2f} s on {text[:80]!r}... ({len(text)} chars)"
        _check_result(name, value)
    for name, fn, allowed in _ground_truth_readers():
        start = time.perf_counter()
        try:
            fn(text)
        except allowed:
            pass
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc} on {text[:200]!r}") from exc
        elapsed = time.perf_counter() - start
        assert elapsed < budget_s, f"{name} took {elapsed:.2f} s on {text[:80]!r}... ({len(text)} chars)"


# The regexes the linear scans replaced: the reference on short texts.
_OLD_BLOCKS = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_OLD_RESPONSE = re.compile(r"<response>(.*?)</response>", re.DOTALL)
_OLD_THINK = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)
_OLD_FENCE = re.compile(r"^```(?:python|json|tool_code)?\s*\n?(.*?)\n?```$", re.DOTALL)


def _old_strip_fence(text: str) -> str:
    s = text.strip()
    m = _OLD_FENCE.match(s)
    return m.group(1).strip() if m else s


def _check_against_old_regexes(text: str) -> None:
    assert list(parse.tool_call_blocks(text)[0]) == _OLD_BLOCKS.findall(text)
    assert task_mod.has_response(text) == bool(_OLD_RESPONSE.search(text))
    assert task_mod.strip_leading_think(text) == _OLD_THINK.sub("", text, count=1)
    assert eval_calls._strip_fence(text) == _old_strip_fence(text)


def test_fuzzed_texts_through_every_parser():
    rng = random.Random(SEED)
    start = time.perf_counter()
    for i in range(N_TEXTS):
        text = _text(rng)
        try:
            _run_all(text, PER_TEXT_S, rotation=i)
            _check_against_old_regexes(text)
        except AssertionError as exc:
            raise AssertionError(f"text {i} of seed {SEED}: {exc}") from None
    assert time.perf_counter() - start < 45.0


def test_fence_rewrite_matches_the_regex_on_fence_shapes():
    shapes = ["```python\nf(a=1)\n```", "```\n\n```", "``````", "```json [1] ```", "```f()```",
              "  ```tool_code\n g() \n```  ", "```pythonic\n```", "````", "```a``` b ```", "x```"]
    for text in shapes:
        assert eval_calls._strip_fence(text) == _old_strip_fence(text), text


MB = 1_000_000


@functools.lru_cache(maxsize=1)
def _adversarial() -> dict[str, str]:
    def fill(unit: str, head: str = "", tail: str = "", size: int = MB) -> str:
        body = unit * ((size - len(head) - len(tail)) // len(unit))
        return head + body + tail

    # Volume, not backtracking: thousands of well-formed calls cost ~0.1 ms each to decode, so
    # these two are 100 kB (1 MB of them takes seconds of linear work per parser).

    return {
        "fence_newlines": fill("\n", "```", "x"),
        "fence_spaces": fill(" ", "```python", "```"),
        "responses_unclosed": fill("<response>"),
        "tool_calls_unclosed": fill("<tool_call>"),
        "tool_call_closes": fill("</tool_call>", "<tool_call>"),
        "thinks_unclosed": fill("<think>"),
        "think_closes": fill("</think>\n", "<think>", "<tool_call>\n{}\n</tool_call>"),
        "leading_space": fill(" ", "", "<think>"),
        "tool_call_newlines": fill("\n", "<think>a</think>\n<tool_call>", "</tool_call>"),
        "deep_json": fill("[", "<tool_call>\n"),
        "deep_objects": fill('{"a":', "<tool_call>\n"),
        "python_parens": fill("f(", "[", "]"),
        "python_attributes": fill("a.", "", "b(x=1)"),
        "digits": fill("9", "<tool_call>\n{\"name\": \"f\", \"parameters\": {\"a\": ", "}}\n</tool_call>"),
        "boxes": fill("\\boxed{"),
        "many_small_calls": fill('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>',
                                 size=MB // 10),
        "many_json_lines": fill('{"name": "f", "parameters": {}}\n', "<tool_call>\n", "</tool_call>",
                                size=MB // 10),
        "tools_headers": fill("**Available Tools**\n1. Name: f\n"),
        "mixed_tags": fill("<think><tool_call><response></think>```\n"),
        "random": "".join(random.Random(SEED).choice(FRAGMENTS) for _ in range(MB // 8))[:MB],
    }


@pytest.mark.parametrize("name", sorted(_adversarial()))
def test_adversarial_megabyte_inputs_parse_in_linear_time(name):
    text = _adversarial()[name]
    assert len(text) <= MB
    _run_all(text, PER_MB_S)
