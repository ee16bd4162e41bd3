"""ToolExecutor: every failure becomes observation text; deadlines hold; calls run concurrently;
per-trajectory state stays per trajectory."""

import random
import threading
import time
from types import SimpleNamespace

import pytest

from toolrl_jax.tools import ToolCall, ToolExecutor, function_tool
from toolrl_jax.tools.environments import BankEnvironment, FunctionCallingEnvironment


@function_tool
def echo(text: str, times: int = 1) -> str:
    """Repeat text.

    Args:
        text: What to repeat.
        times: How often.
    """
    return text * times


@function_tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: Error message.
    """
    raise ValueError(reason)


def make_sleeper(release: threading.Event):
    @function_tool
    def sleepy(seconds: float) -> str:
        """Sleeps (or blocks until released).

        Args:
            seconds: How long.
        """
        release.wait(seconds)
        return "awake"

    return sleepy


def test_ok_and_error_kinds_become_text():
    with ToolExecutor([echo, explode], timeout_s=2.0) as executor:
        results = executor.run("t0", [
            ToolCall("echo", {"text": "ab", "times": 2}),
            SimpleNamespace(name="echo", arguments='{"text": "x"}'),  # OpenAI: JSON string
            {"name": "explode", "arguments": {"reason": "boom"}},
            ToolCall("nope", {}),
            ToolCall("echo", {"text": 5}),
            ToolCall("echo", {"txt": "a"}),
            ToolCall("echo", "{not json"),
            ToolCall("echo", [1, 2]),
            SimpleNamespace(),  # no name, no arguments
        ])
    assert [r.ok for r in results] == [True, True] + [False] * 7
    assert [r.error_kind for r in results] == [
        None, None, "exception", "unknown_tool", "bad_arguments", "bad_arguments",
        "bad_arguments", "bad_arguments", "unknown_tool"]
    assert results[0].text == "abab" and results[1].text == "x"
    assert results[0].as_message() == {"role": "tool", "name": "echo", "content": "abab"}
    assert results[2].text == "Error: tool 'explode' raised ValueError: boom"
    assert results[3].text == "Error: unknown tool 'nope'. Available tools: echo, explode."
    assert results[4].text == ("Error: invalid arguments for tool 'echo': argument 'text' must be "
                               "string, got integer 5")
    assert results[5].text == ("Error: invalid arguments for tool 'echo': missing required "
                               "argument 'text'; unknown argument 'txt' (expected: text, times)")
    assert results[6].text.startswith("Error: invalid arguments for tool 'echo': arguments are "
                                      "not valid JSON")
    assert results[7].text == ("Error: invalid arguments for tool 'echo': arguments must be a "
                               "JSON object, got list")
    assert results[8].text.startswith("Error: unknown tool 'None'")


def test_hostile_exceptions_and_return_values():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    class BadValue:
        def __str__(self):
            raise RuntimeError("cannot render")

    @function_tool
    def nasty(kind: str):
        """Fails in odd ways.

        Args:
            kind: Which way.
        """
        if kind == "exit":
            raise SystemExit(2)
        if kind == "unprintable":
            raise Unprintable()
        return [BadValue()]

    with ToolExecutor([nasty], timeout_s=2.0) as executor:
        results = executor.run("t", [ToolCall("nasty", {"kind": k})
                                     for k in ("exit", "unprintable", "value")])
    assert [r.text for r in results] == [
        "Error: tool 'nasty' raised SystemExit: 2",
        "Error: tool 'nasty' raised Unprintable",
        "Error: tool 'nasty' raised RuntimeError: cannot render",
    ]
    assert [r.error_kind for r in results] == ["exception"] * 3


def test_timeout_returns_within_deadline_and_frees_the_slot():
    release = threading.Event()
    sleepy = make_sleeper(release)
    executor = ToolExecutor([sleepy, echo], timeout_s=0.3, max_workers=1)
    try:
        start = time.monotonic()
        [result] = executor.run("t", [ToolCall("sleepy", {"seconds": 60})])
        elapsed = time.monotonic() - start
        assert result.error_kind == "timeout" and not result.ok
        assert result.text == "Error: tool 'sleepy' timed out after 0.3 s"
        assert 0.3 <= elapsed < 0.3 + 0.25
        assert executor.abandoned_calls == 1
        # The only worker slot was given back: a new call runs although the hung one still does.
        [after] = executor.run("t", [ToolCall("echo", {"text": "hi"})])
        assert after.ok and after.text == "hi"
    finally:
        release.set()
    deadline = time.monotonic() + 2
    while executor.abandoned_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.abandoned_calls == 0  # the late result was discarded, the count drops


def test_concurrent_calls_take_max_not_sum_of_latencies():
    rng = random.Random(0)
    latencies = [rng.uniform(0.0, 0.2) for _ in range(16)]

    @function_tool
    def slow(index: int, seconds: float) -> int:
        """Sleeps then returns its index.

        Args:
            index: Returned value.
            seconds: Latency.
        """
        time.sleep(seconds)
        return index

    with ToolExecutor([slow], max_workers=16, timeout_s=5.0) as executor:
        calls = [ToolCall("slow", {"index": i, "seconds": s}) for i, s in enumerate(latencies)]
        start = time.monotonic()
        futures = [executor.submit(f"traj{i}", [call]) for i, call in enumerate(calls[:8])]
        batch = executor.run("one-trajectory", calls[8:])  # parallel inside one submit too
        results = [f.result()[0] for f in futures] + batch
        elapsed = time.monotonic() - start
    assert [r.text for r in results] == [str(i) for i in range(16)]
    assert elapsed < max(latencies) + 0.25 < sum(latencies)


def test_observation_truncation_and_rendering():
    @function_tool
    def big() -> str:
        """Long text."""
        return "y" * 50

    @function_tool
    def structured() -> dict:
        """A dict."""
        return {"a": [1, 2], "b": "é"}

    with ToolExecutor([big, structured], max_observation_chars=10) as executor:
        long, data = executor.run("t", [ToolCall("big"), ToolCall("structured")])
    assert long.text == "yyyyyyyyyy... [truncated 40 characters]"
    assert data.text == '{"a": [1, ... [truncated 13 characters]'
    with ToolExecutor([structured]) as executor:
        assert executor.run("t", [ToolCall("structured")])[0].text == '{"a": [1, 2], "b": "é"}'


def test_stateful_environment_keeps_state_per_trajectory_in_call_order():
    env = BankEnvironment()
    with ToolExecutor(environment=env, timeout_s=2.0) as executor:
        assert not executor.parallel_calls
        executor.start("alice", {"balances": {"checking": 10, "savings": 0}})
        r_alice = executor.run("alice", [
            ToolCall("deposit", {"account": "checking", "amount": 5}),
            ToolCall("transfer", {"from_account": "checking", "to_account": "savings",
                                  "amount": 12}),
            ToolCall("get_balance", {"account": "savings"}),
            ToolCall("transfer", {"from_account": "savings", "to_account": "checking",
                                  "amount": 100}),
            ToolCall("get_balance", {"account": "checking", "state": "hack"}),
        ])
        r_bob = executor.run("bob", [ToolCall("get_balance", {"account": "checking"})])
        alice, bob = executor.finish("alice"), executor.finish("bob")
    assert [r.text for r in r_alice[:3]] == [
        "new balance of checking: 15.00", "moved 12.00 from checking to savings", "12.00"]
    assert r_alice[3].text == "Error: tool 'transfer' raised ValueError: insufficient funds in savings"
    assert r_alice[4].error_kind == "bad_arguments"  # the model cannot pass the state itself
    assert alice.balances == {"checking": 3.0, "savings": 12.0}
    assert alice.log == ["deposit checking 5.00", "transfer checking savings 12.00"]
    assert r_bob[0].text == "100.00" and bob.balances == {"checking": 100.0, "savings": 50.0}


def test_function_calling_environment_tools():
    with ToolExecutor(environment=FunctionCallingEnvironment()) as executor:
        results = executor.run("t", [
            ToolCall("calculate", {"expression": "(3 + 4) * 2 ** 3 / 7"}),
            ToolCall("calculate", {"expression": "__import__('os').system('id')"}),
            ToolCall("convert_units", {"value": 100, "from_unit": "c", "to_unit": "f"}),
            ToolCall("convert_units", {"value": 1, "from_unit": "mi", "to_unit": "km"}),
            ToolCall("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "m"}),
            ToolCall("get_weather", {"city": "Tokyo", "unit": "fahrenheit"}),
        ])
    assert results[0].text == "8"
    assert results[1].error_kind == "exception" and "unsupported syntax" in results[1].text
    assert results[2].text == "212 f" and results[3].text == "1.60934 km"
    assert results[4].error_kind == "exception"
    assert results[5].text == ('{"city": "Tokyo", "temperature": 75.2, "unit": "fahrenheit", '
                               '"condition": "sunny"}')


def test_constructor_checks_and_closed_executor():
    with pytest.raises(ValueError, match="two tools"):
        ToolExecutor([echo, function_tool(name="echo")(lambda text: text)])
    with pytest.raises(ValueError, match="max_workers"):
        ToolExecutor([echo], max_workers=0)
    executor = ToolExecutor([echo])
    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.run("t", [ToolCall("echo", {"text": "a"})])
