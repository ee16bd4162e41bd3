"""The Python sandbox against hostile programs.

Every program runs once, concurrently with the others (threads), in a module-scoped fixture; each
test then checks one program's status, its wall time (deadline + 1 s at most) and its effects.
The last test proves that no process of any run survived.
"""

import concurrent.futures
import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from toolrl_jax.tools import ToolCall, ToolExecutor
from toolrl_jax.tools import python_sandbox as sandbox

UID_MODE = sandbox.sandbox_mode() == "uid"
SECRET_NAME = "TOOLRL_TEST_FAKE_SECRET"
SECRET_VALUE = "hunter2-" + uuid.uuid4().hex
TAG = uuid.uuid4().hex[:12]  # names files and sleep durations of this test session
SLEEP_MARK = "987.%d" % (int(TAG[:6], 16) % 1000)  # `sleep 987.xyz`: findable in /proc
OUTSIDE_FILES = [f"/etc/toolrl_probe_{TAG}", str(pathlib.Path(__file__).parent / f"probe_{TAG}"),
                 f"/root/toolrl_probe_{TAG}"]
TMP_LITTER = f"/tmp/toolrl_litter_{TAG}"


@dataclasses.dataclass(frozen=True)
class Case:
    code: str
    status: str
    timeout_s: float = 2.0
    kwargs: tuple = ()
    uid_mode_only: bool = False


CASES = {
    "infinite_loop": Case("while True:\n    pass\n", "timeout"),
    "ignores_sigterm": Case(
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n", "timeout"),
    "fork_bomb": Case(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "timeout"),
    "memory_bomb": Case("chunks = []\nwhile True:\n    chunks.append(b'x' * 10_000_000)\n", "memory",
                        timeout_s=10.0),
    "forked_memory_bomb": Case(  # each process fits its limit, together they do not
        "import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n"
        "        block = b'x' * 120_000_000\n        time.sleep(30)\n"
        "time.sleep(30)\n", "memory", timeout_s=10.0, kwargs=(("memory_mb", 200),)),
    "huge_stdout": Case("while True:\n    print('x' * 1000)\n", "output_limit"),
    "huge_stderr": Case("import sys\nwhile True:\n    sys.stderr.write('y' * 1000)\n",
                        "output_limit"),
    "one_huge_write": Case("import sys\nsys.stdout.write('z' * 10_000_000)\n", "output_limit",
                           kwargs=(("max_output_bytes", 1000),)),
    "deep_recursion": Case("def f(n):\n    return f(n + 1)\nf(0)\n", "error"),
    "unbounded_recursion_crash": Case(
        "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return list(map(f, [n + 1]))\n"
        "f(0)\n",  # recursion through C overflows the C stack: SIGSEGV
        "error", timeout_s=10.0),
    "kill_parent": Case("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                        "import time\ntime.sleep(30)\n", "error"),
    "kill_everything_it_can": Case("import os\nos.kill(-1, 9)\nprint('still here')\n", "ok",
                                   uid_mode_only=True),  # kill(-1) spares the caller
    "write_outside": Case(
        "import os\nfailures = 0\n"
        f"for path in {['/tmp/../etc/toolrl_probe_' + TAG] + OUTSIDE_FILES[1:]!r}:\n"
        "    try:\n        open(path, 'w').write('pwned')\n    except OSError:\n"
        "        failures += 1\nprint(failures)\nraise SystemExit(1 if failures else 0)\n",
        "error", uid_mode_only=True),
    "inherited_descriptors": Case(  # issue 10: an inherited handle of the real /tmp
        "import os\nescaped = []\nfor fd in range(3, 1024):\n    try:\n"
        "        os.close(os.open('toolrl_escape', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\n"
        "        escaped.append(fd)\n    except OSError:\n        pass\nprint(escaped)\n", "ok"),
    "tmp_litter": Case(f"open({TMP_LITTER!r}, 'w').write('x')\nprint('littered')\n", "ok"),
    "read_environ": Case(
        "import os\nprint(open('/proc/self/environ').read().replace('\\0', '\\n'))\n"
        "try:\n    print(open('/proc/%d/environ' % TRAINER).read())\nexcept OSError as exc:\n"
        "    print('trainer environ:', type(exc).__name__)\n", "ok"),
    "orphan_sleepers": Case(
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        time.sleep(100)\n"
        "        os._exit(0)\nprint('parent leaves')\n", "ok"),
    "detached_subprocess": Case(
        "import subprocess\n"
        f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nprint('detached')\n",
        "ok"),
    "double_fork_daemon": Case(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execvp('sleep', ['sleep', " + repr(SLEEP_MARK) + "])\n    os._exit(0)\n"
        "os.wait()\nprint('daemonized')\n", "ok"),
    "closed_stdout_loop": Case("import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
                               "timeout"),
    "setsid_loop": Case("import os\nif os.fork() == 0:\n    os.setsid()\n    while True:\n"
                        "        pass\nos.wait()\n", "timeout"),
    "huge_file": Case(
        "import os\ntry:\n    with open('big.bin', 'wb') as f:\n"
        "        for _ in range(10):\n            f.write(b'0' * 1_000_000)\n"
        "except OSError as exc:\n    print(exc.errno, os.path.getsize('big.bin'))\n    raise\n",
        "error", kwargs=(("max_file_bytes", 1_000_000),)),
    "thread_spawner": Case(
        "import threading, time\nthreads = []\ntry:\n    while True:\n"
        "        t = threading.Thread(target=time.sleep, args=(0.5,))\n        t.start()\n"
        "        threads.append(t)\nexcept RuntimeError:\n    pass\nprint(len(threads))\n",
        "ok", timeout_s=10.0, kwargs=(("max_processes", 16),)),
    "cpu_burning_threads": Case(
        "import threading\ndef burn():\n    while True:\n        pass\n"
        "for _ in range(4):\n    threading.Thread(target=burn).start()\n", "timeout"),
    "prints": Case("import os\nprint('hello', 6 * 7)\nprint('uid', os.getuid())\n", "ok",
                   timeout_s=10.0),
    "numpy": Case("import numpy as np\nprint(round(float(np.linalg.det(np.array([[2.0, 1.0], "
                  "[1.0, 3.0]]))), 6))\n", "ok", timeout_s=20.0),
    "stdin_closed": Case("import sys\nprint(repr(sys.stdin.read()))\ninput()\n", "error",
                         timeout_s=10.0),
    "stderr_capture": Case("import sys\nprint('out')\nsys.stderr.write('warning: careful\\n')\n",
                           "ok", timeout_s=10.0),
    "syntax_error": Case("def broken(:\n    pass\n", "error", timeout_s=10.0),
    "exit_code": Case("raise SystemExit(3)\n", "error", timeout_s=10.0),
    "undecodable_source": Case("print(1)\n'\ud800'\n", "error", timeout_s=10.0),
    "null_byte": Case("print(1)\0\n", "error", timeout_s=10.0),
    "unicode_and_cwd": Case(
        "import os\nprint('héllo ✓', os.getcwd() == os.environ['HOME'], sorted(os.listdir('.')))\n",
        "ok", timeout_s=10.0),
}


@pytest.fixture(scope="module")
def results():
    os.environ[SECRET_NAME] = SECRET_VALUE
    cases = {name: case for name, case in CASES.items() if UID_MODE or not case.uid_mode_only}

    def one(name):
        case = cases[name]
        code = case.code.replace("TRAINER", str(os.getpid()))
        start = time.monotonic()
        result = sandbox.run(code, timeout_s=case.timeout_s, **dict(case.kwargs))
        return result, time.monotonic() - start

    modes = {path: os.stat(path).st_mode for path in ("/tmp", "/var/tmp", "/dev/shm")
             if os.path.isdir(path)}
    workdirs_before = _workdirs()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            done = dict(zip(cases, pool.map(one, cases)))
    finally:
        del os.environ[SECRET_NAME]
        if not UID_MODE and os.path.exists(TMP_LITTER):  # same-user mode cannot clean /tmp
            os.unlink(TMP_LITTER)
    # Clean-up removes what the sandbox left, never the shared directories' permissions.
    assert {path: os.stat(path).st_mode for path in modes} == modes
    done["new_workdirs_left"] = _workdirs() - workdirs_before
    return done


def _workdirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("toolrl-sandbox-")}


def test_working_directories_are_removed(results):
    assert results["new_workdirs_left"] == set()


def _result(results, name):
    if name not in results:
        pytest.skip("needs the uid mode (tests run as root)")
    return results[name]


@pytest.mark.parametrize("name", sorted(CASES))
def test_status_and_deadline(results, name):
    result, wall = _result(results, name)
    case = CASES[name]
    assert result.status == case.status, (name, result)
    assert wall <= case.timeout_s + 1.0, (name, wall, result)
    assert result.seconds <= wall


def test_outputs_of_hostile_programs(results):
    runs = {name: run for name, run in results.items() if name in CASES}
    stdout = {name: r.stdout for name, (r, _) in runs.items()}
    stderr = {name: r.stderr for name, (r, _) in runs.items()}
    assert "RecursionError" in stderr["deep_recursion"]
    assert results["unbounded_recursion_crash"][0].exit_code < 0  # died from a signal
    assert "MemoryError" in stderr["memory_bomb"]
    assert len(stdout["huge_stdout"].encode()) == 65536
    assert len(stderr["huge_stderr"].encode()) == 65536
    assert stdout["one_huge_write"] == "z" * 1000
    assert stdout["huge_file"] == "27 1000000\n"  # EFBIG, the file stops at RLIMIT_FSIZE
    if UID_MODE:  # with a shared uid the limit also counts the other runs' tasks
        assert 0 < int(stdout["thread_spawner"]) < 16
    assert stdout["inherited_descriptors"] == "[]\n"
    assert stdout["orphan_sleepers"] == "parent leaves\n"
    assert stdout["detached_subprocess"] == "detached\n"
    assert stdout["double_fork_daemon"] == "daemonized\n"
    assert stdout["stdin_closed"] == "''\n" and "EOFError" in stderr["stdin_closed"]
    assert (stdout["stderr_capture"], stderr["stderr_capture"]) == ("out\n", "warning: careful\n")
    assert "SyntaxError" in stderr["syntax_error"] and 'File "main.py", line 1' in stderr[
        "syntax_error"]
    assert results["exit_code"][0].exit_code == 3
    assert stdout["numpy"] == "5.0\n"
    assert stdout["unicode_and_cwd"] == "héllo ✓ True ['main.py']\n"
    assert stdout["prints"].startswith("hello 42\n")
    for name in ("deep_recursion", "syntax_error", "stdin_closed"):
        assert "_sandbox_child" not in stderr[name]  # our bootstrap frames are hidden


def test_environment_holds_no_secrets(results):
    result, _ = results["read_environ"]
    assert SECRET_VALUE not in result.stdout and SECRET_NAME not in result.stdout
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "OPENBLAS_NUM_THREADS",
                     "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLBACKEND", "TOOLRL_SANDBOX_RUN"}
    if UID_MODE:
        assert "trainer environ: PermissionError" in result.stdout


@pytest.mark.skipif(not UID_MODE, reason="uid isolation needs root")
def test_uid_isolation_and_filesystem(results):
    uid = int(results["prints"][0].stdout.split("uid ")[1])
    assert uid >= sandbox._uid_base()
    assert "PermissionError" in results["kill_parent"][0].stderr
    assert results["write_outside"][0].stdout == f"{len(OUTSIDE_FILES)}\n"
    for path in OUTSIDE_FILES:
        assert not os.path.exists(path)
    assert results["tmp_litter"][0].stdout == "littered\n"
    assert not os.path.exists(TMP_LITTER)  # files the sandbox uid left in /tmp are removed


def test_unmapped_uid_range_is_a_config_error(monkeypatch):
    from toolrl_jax.errors import ConfigError

    monkeypatch.setenv("TOOLRL_SANDBOX_UID_BASE", str(2**32 - 10))
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "uid")
    with pytest.raises(ConfigError, match="TOOLRL_SANDBOX_UID_BASE"):
        sandbox.run("print(1)")


def test_python_tool_through_the_executor():
    tool = sandbox.python_tool(timeout_s=5.0)
    with ToolExecutor([tool], timeout_s=7.0) as executor:
        ok, failing = executor.run("t", [
            ToolCall("python", {"code": "print(sum(range(10)))"}),
            ToolCall("python", {"code": "import sys\nprint('partial')\nsys.exit('bad input')"}),
        ])
    assert ok.ok and ok.text == "45"
    assert failing.ok and failing.text == "partial\nbad input"  # the tool ran; the code failed
    assert sandbox.SandboxResult("", "", "timeout", None, 1.0).observation() == (
        "Error: execution timed out")


def _live_sandbox_processes(started_after_ticks: int = 0) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes that belong to a sandbox run: running as a pool uid,
    started from the sandbox child script, or our `sleep 987.xyz` children."""
    uid_range = range(sandbox._uid_base(), sandbox._uid_base() + sandbox._UID_COUNT)
    script = sandbox._CHILD_SCRIPT.encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            status = pathlib.Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        state, start_ticks = stat[0], int(stat[19])
        uids = {int(u) for u in status.split("Uid:")[1].split("\n")[0].split()}
        ours = (uids & set(uid_range)) if UID_MODE else False
        if state not in "ZX" and start_ticks >= started_after_ticks and (
                ours or script in cmdline or SLEEP_MARK.encode() in cmdline):
            found.append((int(pid), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def test_trainer_death_takes_the_run_down(tmp_path):
    """SIGKILL the process that called run(): the reaper gets SIGTERM (PDEATHSIG) and cleans up."""
    marker = "%d.%s" % (int(TAG[:5], 16), "4321")
    workdirs_before = _workdirs()
    trainer = subprocess.Popen([
        sys.executable, "-c",
        "from toolrl_jax.tools import python_sandbox as ps\n"
        f"ps.run(\"import os\\nos.execvp('sleep', ['sleep', '{marker}'])\", timeout_s=60)\n"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                marker in cmd for _, cmd in _live_sandbox_processes()):
            time.sleep(0.05)
        assert any(marker in cmd for _, cmd in _live_sandbox_processes()), "program never started"
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(marker in c for _, c in _live_sandbox_processes()):
        time.sleep(0.05)
    assert not [c for _, c in _live_sandbox_processes() if marker in c]
    while time.monotonic() < deadline and _workdirs() - workdirs_before:
        time.sleep(0.05)
    assert _workdirs() - workdirs_before == set()  # the orphaned reaper removed it


def test_namespaces_private_tmp_and_no_network():
    """As root with unshare/mount permitted: /tmp, /var/tmp, /dev/shm are one private tmpfs of
    disk_mb, and there is no network. Elsewhere the run says it had no namespaces."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    probe = f"/dev/shm/toolrl_probe_{TAG}"
    code = (
        "import os, socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('network', exc.errno)\n"
        f"open({probe!r}, 'w').write('x')\n"
        "print(sorted(os.listdir('/tmp')) == sorted(os.listdir('/var/tmp')))\n"
        "with open('/tmp/fill', 'wb') as f:\n"
        "    for _ in range(40):\n"
        "        f.write(b'0' * 1_000_000)\n")
    try:
        result = sandbox.run(code, timeout_s=10.0, disk_mb=8)
    finally:
        listener.close()
    if not result.namespaces:
        assert result.stdout.startswith("connected")
        pytest.skip("mount/network namespaces not permitted here")
    assert result.stdout == "network 101\nTrue\n"  # ENETUNREACH
    assert result.status == "error" and "No space left on device" in result.stderr
    assert not os.path.exists(probe)


@pytest.mark.skipif(not UID_MODE, reason="uid isolation needs root")
def test_concurrent_runs_get_distinct_uids():
    code = "import os, time\nprint(os.getuid())\ntime.sleep(0.5)\n"
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(
            lambda i: sandbox.run(code, timeout_s=10.0, isolate_namespaces=i % 2 == 0), range(6)))
    assert [r.status for r in runs] == ["ok"] * 6
    assert len({int(r.stdout) for r in runs}) == 6
    assert not any(r.namespaces for r in runs[1::2])  # isolate_namespaces=False is honoured


def test_same_user_mode_cleans_up_without_the_reaper(monkeypatch):
    """The non-root mode (programs share the trainer's uid). The program can kill its reaper
    there; the trainer must still find (by the run's environment marker) and kill what is left.
    Only harmless programs: as root RLIMIT_NPROC is not enforced, so no fork bomb here."""
    monkeypatch.setattr(sandbox, "sandbox_mode", lambda: "same_user")
    code = (
        "import os, signal, subprocess, time\n"
        f"subprocess.Popen(['sleep', '{SLEEP_MARK}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n"
        "os.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(100)\n")
    start = time.monotonic()
    killed_reaper = sandbox.run(code, timeout_s=5.0)
    assert time.monotonic() - start < 5.0
    assert killed_reaper.status == "error"
    assert "supervisor process ended unexpectedly" in killed_reaper.stderr
    assert _live_sandbox_processes() == []
    ok = sandbox.run("import os\nprint(os.getuid() == os.geteuid())\n", timeout_s=10.0)
    assert (ok.status, ok.stdout) == ("ok", "True\n")
    loop = sandbox.run("while True:\n    pass\n", timeout_s=1.0)
    assert loop.status == "timeout" and loop.seconds < 2.0


def test_no_process_survives(results):
    """Runs after the fixture's programs: nothing of any sandbox run may still be alive."""
    time.sleep(0.05)
    assert _live_sandbox_processes() == []
