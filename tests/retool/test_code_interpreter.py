"""The code-interpreter environment on the real process sandbox."""

from __future__ import annotations

import pytest

from toolrl_jax.errors import ConfigError
from toolrl_jax.tools.code_interpreter import (
    STATE_PARAM,
    InterpreterLimits,
    code_interpreter_environment,
    interpreter_status,
    interpreter_text,
    run_cell,
)
from toolrl_jax.tools.executor import ToolExecutor
from toolrl_jax.tools.python_sandbox import SandboxResult


def _run(env, state, code):
    return env.tools[0](code=code, **{STATE_PARAM: state})


def test_stateless_cells_do_not_share_variables():
    env = code_interpreter_environment(stateful=False, timeout_s=5, memory_mb=256, max_output_chars=500)
    state = env.reset("t0")
    assert _run(env, state, "x = 6 * 7\nprint(x)") == "42"
    text = _run(env, state, "print(x + 1)")
    assert "NameError: name 'x' is not defined" in text
    assert text.splitlines()[-1] == "Error: the cell failed (exit code 1)"
    assert [c.status for c in state.cells] == ["ok", "error"]


def test_stateful_cells_see_earlier_variables_functions_and_imports():
    env = code_interpreter_environment(stateful=True, timeout_s=5, memory_mb=256, max_output_chars=500)
    state = env.reset("t1")
    assert _run(env, state, "import math\nx = 6\nprint('first output')") == "first output"
    assert _run(env, state, "def f(n):\n    return math.factorial(n) + x\nprint(f(5))") == "126"
    # a failing cell is reported, and it is not replayed later (its assignment is lost)
    failed = _run(env, state, "y = 1\nraise ValueError('boom')")
    assert "ValueError: boom" in failed and 'File "<cell>", line 2' in failed
    assert interpreter_status(failed) == "error"
    # earlier output is not repeated: only this cell's print shows
    assert _run(env, state, "print(f(3), x, 'y' in globals())") == "12 6 False"
    # another trajectory has its own state
    other = env.reset("t2")
    assert "NameError" in _run(env, other, "print(x)")


def test_stateful_replay_through_the_executor_per_trajectory():
    env = code_interpreter_environment(stateful=True, timeout_s=5, memory_mb=256, max_output_chars=200)
    with ToolExecutor(environment=env, timeout_s=env.executor_timeout_s(4)) as ex:
        ex.start(0)
        ex.start(1)
        assert ex.run(0, [{"name": "python", "arguments": {"code": "a = 2"}}])[0].text == ""
        assert ex.run(1, [{"name": "python", "arguments": {"code": "a = 10"}}])[0].text == ""
        r0 = ex.run(0, [{"name": "python", "arguments": {"code": "print(a ** 3)"}}])[0]
        r1 = ex.run(1, [{"name": "python", "arguments": {"code": "print(a ** 3)"}}])[0]
        assert (r0.ok, r0.text, r1.text) == (True, "8", "1000")
        final = ex.finish(0)
        assert [c.code for c in final.cells] == ["a = 2", "print(a ** 3)"]


def test_timeout_memory_and_syntax_errors_become_interpreter_text():
    limits = InterpreterLimits(timeout_s=1.0, memory_mb=128, max_output_chars=400)
    t = run_cell("print('start', flush=True)\nwhile True:\n    pass", limits)
    assert t.status == "timeout"
    assert t.text == "start\nError: execution timed out after 1 s"
    m = run_cell("x = bytearray(400 * 1024 * 1024)", limits)
    assert m.status == "memory" and m.text.splitlines()[-1] == "Error: memory limit of 128 MB exceeded"
    s = run_cell("def (:", limits)
    assert s.status == "error" and "SyntaxError" in s.text
    assert s.text.splitlines()[-1] == "Error: the cell failed (exit code 1)"
    for cell in (t, m, s):
        assert interpreter_status(cell.text) == "error"


def test_long_output_is_cut_in_the_middle_and_the_status_line_is_kept():
    limits = InterpreterLimits(timeout_s=5, memory_mb=256, max_output_chars=120)
    code = "for i in range(200):\n    print(f'line {i:03d}')\nraise RuntimeError('at the end')"
    cell = run_cell(code, limits)
    lines = cell.text.splitlines()
    assert lines[0] == "line 000"
    assert lines[-1] == "Error: the cell failed (exit code 1)"
    assert lines[-2] == "RuntimeError: at the end"  # the tail (traceback end) is kept
    marker = [line for line in lines if line.startswith("... [output cut: ")]
    assert len(marker) == 1
    shown = cell.text.replace(marker[0], "").replace(lines[-1], "")
    assert len(shown) <= 120 + 4
    # the hidden count is exact: full text length minus what is shown
    full = interpreter_text(SandboxResult("".join(f"line {i:03d}\n" for i in range(200)), "", "ok", 0, 0.1),
                            InterpreterLimits(max_output_chars=10**6))
    assert len(full) == 200 * 9 - 1
    cut = interpreter_text(SandboxResult(full + "\n", "", "ok", 0, 0.1), InterpreterLimits(max_output_chars=100))
    n_hidden = int(cut.split("[output cut: ")[1].split(" ")[0])
    head, tail = cut.split("\n... [output cut")[0], cut.split("not shown] ...\n")[1]
    assert n_hidden == len(full) - 50 - 50 and full.startswith(head) and full.endswith(tail)
    assert interpreter_status(cut) == "ok"


def test_output_limit_status():
    limits = InterpreterLimits(timeout_s=5, memory_mb=256, max_output_chars=100, max_output_bytes=1000)
    cell = run_cell("print('z' * 5000)", limits)
    assert cell.status == "output_limit"
    assert cell.text.splitlines()[-1] == "Error: output limit exceeded; the run was stopped"


def test_status_of_texts_and_bad_limits():
    assert interpreter_status("42") == "ok"
    assert interpreter_status("Error: the cell failed (exit code 2)") == "error"
    assert interpreter_status("Error: something I printed myself") == "ok"
    assert interpreter_status(None) == "error"
    with pytest.raises(ConfigError, match="timeout_s"):
        InterpreterLimits(timeout_s=0)
