"""Defects found by adversarial testing of the tool layer (issue 10), one test per defect."""

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from toolrl_jax.tools import ToolCall, ToolExecutor, function_tool
from toolrl_jax.tools import python_sandbox as sandbox
from toolrl_jax.tools.environments import BankEnvironment, calculate

from tests.tools import _gil_tools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UID_MODE = sandbox.sandbox_mode() == "uid"


def _hanger(release: threading.Event):
    @function_tool
    def hang() -> str:
        """Blocks until released."""
        release.wait(60)
        return "late"

    @function_tool
    def ok() -> str:
        """Returns at once."""
        return "fine"

    return hang, ok


@pytest.mark.parametrize("hung", [1, 3])
def test_hung_calls_never_block_later_calls_of_one_submit(hung):
    """max_workers=1 and [hang]*k + [ok]: every hung call times out at its own deadline and the
    last call still runs (before the fix the submit never resolved)."""
    release = threading.Event()
    hang, ok = _hanger(release)
    executor = ToolExecutor([hang, ok], max_workers=1, timeout_s=0.3)
    try:
        start = time.monotonic()
        future = executor.submit("t", [ToolCall("hang")] * hung + [ToolCall("ok")])
        results = future.result(timeout=0.3 * (hung + 1) + 2.0)
        elapsed = time.monotonic() - start
        assert [r.error_kind for r in results] == ["timeout"] * hung + [None]
        assert results[-1].text == "fine"
        assert elapsed < 0.3 * hung + 1.0  # each hung call costs one deadline, no more
        assert executor.abandoned_calls == hung
    finally:
        release.set()


def test_hung_calls_across_trajectories_do_not_deadlock():
    """Two parallel submits whose later calls hold both slots: deadlines are enforced by the
    calls' own supervisors, not by the order in which callers wait."""
    release = threading.Event()
    hang, ok = _hanger(release)
    executor = ToolExecutor([hang, ok], max_workers=2, timeout_s=0.3)
    try:
        futures = [executor.submit(f"t{i}", [ToolCall("ok"), ToolCall("hang"), ToolCall("hang"),
                                             ToolCall("ok")]) for i in range(2)]
        for future in futures:
            kinds = [r.error_kind for r in future.result(timeout=5.0)]
            assert kinds == [None, "timeout", "timeout", None]
    finally:
        release.set()


def test_abandoned_threads_are_bounded():
    release = threading.Event()
    hang, ok = _hanger(release)
    executor = ToolExecutor([hang, ok], max_workers=2, timeout_s=0.2, max_abandoned=2)
    try:
        first = executor.run("t", [ToolCall("hang"), ToolCall("hang")])
        assert [r.error_kind for r in first] == ["timeout", "timeout"]
        start = time.monotonic()
        refused, = executor.run("t", [ToolCall("ok")])
        assert time.monotonic() - start < 0.1  # refused at once, no new thread leaked
        assert refused.error_kind == "timeout" and "still hung (max_abandoned=2)" in refused.text
    finally:
        release.set()
    deadline = time.monotonic() + 2
    while executor.abandoned_calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.run("t", [ToolCall("ok")])[0].text == "fine"  # the hung ones returned
    with ToolExecutor([ok], max_abandoned=0) as strict:  # none tolerated, none hung: calls run
        assert strict.run("t", [ToolCall("ok")])[0].text == "fine"


def test_deeply_nested_json_arguments_are_a_bad_arguments_result():
    @function_tool
    def take(x: list) -> str:
        """Takes a list.

        Args:
            x: Anything.
        """
        return "ran"

    deep = '{"x": ' + "[" * 10_000 + "]" * 10_000 + "}"
    nested: list = []
    for _ in range(10_000):
        nested = [nested]
    with ToolExecutor([take], timeout_s=2.0) as executor:
        from_text, from_dict = executor.run("t", [ToolCall("take", deep),
                                                  ToolCall("take", {"x": nested})])
    assert from_text.error_kind == "bad_arguments" and "nested too deeply" in from_text.text
    assert from_dict.ok and from_dict.text == "ran"  # a list schema does not look inside


def test_calculator_bounds_big_integer_work():
    """Run in a child process: before the fix this never returned (the GIL is held)."""
    code = ("import time\nfrom toolrl_jax.tools.environments import calculate\n"
            "for e in ['((9**999)**999)**999', '9**999*9**999*9**999', 'round(5, -10**7)']:\n"
            "    t = time.monotonic()\n"
            "    try:\n        calculate(expression=e)\n        print('computed')\n"
            "    except ValueError as exc:\n        print('refused', str(exc)[:24])\n"
            "    assert time.monotonic() - t < 0.5\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=20, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["refused result too large (more t"] * 2 + [
        "refused round() digits must be a"]
    assert calculate(expression="9**999") == str(9**999)  # large but bounded results still work
    assert calculate(expression="round(3.14159, 2)") == "3.14"


def test_sandboxed_tool_has_a_hard_deadline_for_gil_holding_work():
    tool = sandbox.sandboxed_tool(_gil_tools.big_power, timeout_s=1.5)
    failing = sandbox.sandboxed_tool(_gil_tools.fail_with, timeout_s=5.0)
    assert tool.schema == _gil_tools.big_power.schema
    with ToolExecutor([tool, failing], timeout_s=5.0) as executor:
        start = time.monotonic()
        small, huge, raised = executor.run("t", [
            ToolCall("big_power", {"exponent": 1000}),
            ToolCall("big_power", {"exponent": 10**9}),  # minutes of GIL-holding C code
            ToolCall("fail_with", {"message": "nope"}),
        ])
        elapsed = time.monotonic() - start
    assert small.ok and small.text == str((3**1000).bit_length())
    assert huge.error_kind == "exception" and "TimeoutError" in huge.text
    assert raised.text == "Error: tool 'fail_with' raised KeyError: 'nope'"
    assert elapsed < 1.5 + 2.0
    with pytest.raises(Exception, match="state"):
        sandbox.sandboxed_tool(BankEnvironment().tools[1])
    with pytest.raises(Exception, match="module-level"):
        sandbox.sandboxed_tool(function_tool(lambda x: x, name="f"))


@pytest.mark.parametrize("amount", [math.nan, math.inf, -math.inf])
def test_bank_refuses_non_finite_amounts(amount):
    env = BankEnvironment()
    with ToolExecutor(environment=env, timeout_s=2.0) as executor:
        executor.start("t")
        results = executor.run("t", [
            ToolCall("deposit", json.dumps({"account": "checking", "amount": amount})),
            ToolCall("transfer", {"from_account": "checking", "to_account": "savings",
                                  "amount": amount}),
        ])
        state = executor.finish("t")
    assert [r.error_kind for r in results] == ["exception", "exception"]
    assert all("positive finite" in r.text for r in results)
    assert state.balances == {"checking": 100.0, "savings": 50.0}


@pytest.mark.parametrize("status", ["timeout", "memory", "output_limit"])
def test_cut_observation_keeps_the_status_line(status):
    result = sandbox.SandboxResult("x" * 10_000, "", status, None, 1.0)
    text = result.observation(4096)
    note = {"timeout": "Error: execution timed out", "memory": "Error: memory limit exceeded",
            "output_limit": "Error: output limit exceeded; output truncated"}[status]
    assert text.endswith("\n" + note)
    assert text.startswith("x" * 100) and "[truncated " in text
    assert len(text) <= 4096 + len("... [truncated 10000 characters]")
    ok = sandbox.SandboxResult("y" * 5000, "", "ok", 0, 1.0).observation(100)
    assert ok == "y" * 100 + "... [truncated 4900 characters]"


def test_program_inherits_no_descriptor_but_its_stdio():
    """A program that lists /proc/self/fd sees stdin/stdout/stderr and, where the Python
    installation is in a private directory, read-only O_PATH handles of sys.path entries; never
    the reaper's handle of the real /tmp or its status pipe."""
    code = ("import os, sys\nfds = os.listdir('/proc/self/fd')\nfor fd in fds:\n"
            "    try:\n        print(fd, os.readlink('/proc/self/fd/' + fd))\n"
            "    except OSError:\n        pass\n")
    result = sandbox.run(code, timeout_s=10.0)
    assert result.status == "ok", result
    links = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert links.pop("0") == "/dev/null"
    assert links.pop("1").startswith("pipe:") and links.pop("2").startswith("pipe:")
    python_dirs = {os.path.realpath(p) for p in sys.path if p} | {
        os.path.realpath(os.path.join(p, "lib-dynload")) for p in sys.path if p}
    assert set(links.values()) <= python_dirs, links
    assert not any("pipe:" in target or target in ("/tmp", tempfile.gettempdir())
                   for target in links.values())


@pytest.mark.skipif(not UID_MODE, reason="private namespaces need root")
def test_import_dirs_under_tmp_stay_importable_and_read_only(monkeypatch, tmp_path_factory):
    """A virtual environment under /tmp: hidden by the private tmpfs before the fix."""
    site_dir = tempfile.mkdtemp(prefix="toolrl-fake-venv-", dir="/tmp")
    try:
        os.chmod(site_dir, 0o755)
        with open(os.path.join(site_dir, "toolrl_probe_pkg.py"), "w") as f:
            f.write("VALUE = 'imported from /tmp'\n")
        os.chmod(os.path.join(site_dir, "toolrl_probe_pkg.py"), 0o666)  # writable by anyone
        real = sandbox.site.getsitepackages
        monkeypatch.setattr(sandbox.site, "getsitepackages", lambda: [*real(), site_dir])
        code = ("import toolrl_probe_pkg\nprint(toolrl_probe_pkg.VALUE)\n"
                "try:\n    open(toolrl_probe_pkg.__file__, 'a').write('x')\n    print('wrote')\n"
                "except OSError as exc:\n    print('errno', exc.errno)\n")
        result = sandbox.run(code, timeout_s=10.0)
        if not result.namespaces:
            pytest.skip("mount namespaces not permitted here")
        assert result.stdout == "imported from /tmp\nerrno 30\n", result  # EROFS
    finally:
        import shutil

        shutil.rmtree(site_dir)
