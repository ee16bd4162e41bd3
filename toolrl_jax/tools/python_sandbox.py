"""Runs untrusted Python (ReTool-style code execution) in a separate, limited process.

    result = python_sandbox.run("print(2 ** 10)", timeout_s=5.0)
    result.status   # 'ok' | 'error' | 'timeout' | 'memory' | 'output_limit'
    result.stdout   # '1024\\n'

Layout of one run (see _sandbox_child.py for the process side):

    trainer thread ──Popen──> reaper (own session; root when the trainer is root; subreaper)
                                 └─fork─> program (own process group, rlimits, sandbox uid)
                                             └─ anything it forks

* Limits (setrlimit in the program): CPU seconds (ceil(timeout) + 1, SIGXCPU -> 'timeout'),
  address space = memory_mb (MemoryError -> 'memory'), file size = max_file_bytes, processes
  and threads = max_processes, open files, no core dumps. The reaper also sums the resident
  memory of all descendants every 50 ms and kills them all past memory_mb (so forking does not
  multiply the memory budget).
* Identity: when the trainer runs as root, the program runs as a dedicated uid/gid from a pool
  (default 2_000_000_000 + 0..63; `TOOLRL_SANDBOX_UID_BASE` overrides), one uid per concurrent
  run, coordinated across threads and processes with flock'ed files in a root-only directory.
  It cannot signal the trainer or the reaper, read /proc/<trainer>/environ, or write files it
  does not own; RLIMIT_NPROC is enforced (it is not for root). Without root, the program runs
  as the trainer's own user (weaker: see docs/tools.md).
* Files: cwd is a fresh mkdtemp directory (HOME and TMPDIR point there), removed afterwards, as
  are files the sandbox uid left at the top level of /tmp, /var/tmp and /dev/shm.
* Environment: only PATH, HOME, TMPDIR, LANG/LC_ALL and single-thread BLAS settings; nothing
  from the trainer's environment is inherited.
* Deadline: wall-clock `timeout_s` from the start. At the deadline (or when output passes
  max_output_bytes) the trainer asks the reaper to kill everything (SIGTERM to the reaper); if
  the reaper does not finish within half a second, the trainer kills the process group and every
  process of the sandbox uid itself. Either way no process of the run survives it.
* Output: stdout and stderr are read concurrently, each capped at max_output_bytes.

Thread-safe: each call owns its processes, directory, pipes and uid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import random
import re
import selectors
import shutil
import signal
import site
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Literal

from toolrl_jax.errors import ConfigError
from toolrl_jax.tools.base import FunctionTool

__all__ = ["SandboxResult", "Status", "python_tool", "run", "sandbox_mode", "sandbox_processes"]

Status = Literal["ok", "error", "timeout", "memory", "output_limit"]

_CHILD_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
_UID_BASE_DEFAULT = 2_000_000_000
_UID_COUNT = 64
_REAPER_GRACE_S = 0.5
_MEMORY_ERROR = re.compile(r"^([A-Za-z_][\w.]*\.)?_?\w*MemoryError\b")
_MARKER_VAR = "TOOLRL_SANDBOX_RUN"


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        stdout, stderr: decoded output (UTF-8, undecodable bytes replaced), each at most
            max_output_bytes bytes before decoding.
        status: 'ok' (exit 0), 'error' (nonzero exit, uncaught exception, killed by a signal),
            'timeout' (wall deadline or CPU limit), 'memory' (MemoryError or the memory budget),
            'output_limit' (stdout or stderr passed max_output_bytes; the run was killed).
        exit_code: the program's exit code, -N if it died from signal N, None if we killed it.
        seconds: wall time of the whole run, start-up and clean-up included.
        namespaces: whether the run had a private mount namespace and no network.
    """

    stdout: str
    stderr: str
    status: Status
    exit_code: int | None
    seconds: float
    namespaces: bool = False

    def observation(self, max_chars: int = 4096) -> str:
        """Text for the model: stdout, then stderr, then a status line unless status is 'ok'."""
        parts = [self.stdout.rstrip("\n")] if self.stdout else []
        if self.stderr:
            parts.append(self.stderr.rstrip("\n"))
        notes = {
            "timeout": "Error: execution timed out",
            "memory": "Error: memory limit exceeded",
            "output_limit": "Error: output limit exceeded; output truncated",
        }
        if self.status in notes:
            parts.append(notes[self.status])
        text = "\n".join(parts)
        if len(text) > max_chars:
            text = text[:max_chars] + f"... [truncated {len(text) - max_chars} characters]"
        return text


def sandbox_mode() -> Literal["uid", "same_user"]:
    """'uid' when this process is root (programs run as a dedicated unprivileged uid), else
    'same_user' (programs run as this process's user; weaker isolation)."""
    return "uid" if os.geteuid() == 0 else "same_user"


def run(
    code: str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 65536,
    max_processes: int = 32,
    max_file_bytes: int = 16 * 1024 * 1024,
    max_open_files: int = 256,
    disk_mb: int = 64,
    isolate_namespaces: bool = True,
) -> SandboxResult:
    """Runs `code` as `__main__` in a fresh sandboxed Python process and returns its result.

    Never raises because of what `code` does. The call returns within about
    `timeout_s` + 0.5 s (the reaper's grace period) plus clean-up in every case.

    Args:
        code: Python source.
        timeout_s: wall-clock deadline in seconds, start-up included.
        memory_mb: address-space limit of each process and total resident memory of all of them.
        max_output_bytes: cap for stdout and for stderr; passing it kills the run.
        max_processes: RLIMIT_NPROC (processes + threads) of the sandbox uid.
        max_file_bytes: RLIMIT_FSIZE, the largest file the program may write.
        max_open_files: RLIMIT_NOFILE.
        disk_mb: size of the private tmpfs holding the working directory, /tmp, /var/tmp and
            /dev/shm (only where mount namespaces are available, see `isolate_namespaces`).
        isolate_namespaces: as root, also try a private mount namespace (that tmpfs) and an
            empty network namespace (no network). Silently skipped where not permitted.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("python_sandbox needs Linux (prctl, /proc, setrlimit)")
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    for field, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb),
                         ("max_output_bytes", max_output_bytes), ("max_processes", max_processes),
                         ("max_file_bytes", max_file_bytes), ("max_open_files", max_open_files),
                         ("disk_mb", disk_mb)):
        if not value > 0:
            raise ValueError(f"{field} must be > 0, got {value}")
    started = time.monotonic()
    deadline = started + float(timeout_s)
    mode = sandbox_mode()
    with contextlib.ExitStack() as cleanup:
        try:
            uid = cleanup.enter_context(_uid_slot(deadline)) if mode == "uid" else None
        except TimeoutError:
            return SandboxResult("", "sandbox: no free sandbox uid before the deadline",
                                 "timeout", None, time.monotonic() - started)
        workdir = tempfile.mkdtemp(prefix="toolrl-sandbox-")
        cleanup.callback(_remove_tree, workdir)
        code_file = "main.py"
        with open(os.path.join(workdir, code_file), "wb") as f:
            f.write(code.encode("utf-8", errors="surrogatepass"))  # bad text -> SyntaxError
        if uid is not None:
            os.chown(workdir, uid, uid)
            os.chown(os.path.join(workdir, code_file), uid, uid)
            cleanup.callback(_remove_files_owned_by, uid)
        status_read, status_write = os.pipe()
        cleanup.callback(_close_quietly, status_read)
        marker = uuid.uuid4().hex
        config = {
            "uid": uid, "gid": uid, "status_fd": status_write, "code_file": code_file,
            "parent_pid": os.getpid(),
            "site_dirs": [p for p in site.getsitepackages() if os.path.isdir(p)],
            "cpu_s": int(math.ceil(timeout_s)) + 1,
            "memory_bytes": int(memory_mb) * 1024 * 1024,
            "file_bytes": int(max_file_bytes),
            "max_processes": int(max_processes),
            "max_open_files": int(max_open_files),
            "disk_bytes": int(disk_mb) * 1024 * 1024,
            "namespaces": int(bool(isolate_namespaces) and uid is not None),
        }
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir, "TMPDIR": workdir,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
            _MARKER_VAR: marker,
        }
        try:
            reaper = subprocess.Popen(
                [sys.executable, "-I", "-S", "-X", "utf8", _CHILD_SCRIPT, *_config_args(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=workdir, env=env, start_new_session=True, close_fds=True,
                pass_fds=(status_write,))
        except OSError as exc:
            return SandboxResult("", f"sandbox: could not start: {exc}", "error", None,
                                 time.monotonic() - started)
        finally:
            os.close(status_write)
        report: dict | None = None
        try:
            stdout, stderr, killed_for = _collect(reaper, deadline, max_output_bytes)
            report = _read_report(status_read)
        finally:  # also on a bug or KeyboardInterrupt here: never leave the run behind
            if not (report and report.get("clean") and reaper.poll() is not None):
                _force_cleanup(reaper, uid, marker)
            for stream in (reaper.stdout, reaper.stderr):
                stream.close()

    seconds = time.monotonic() - started
    out = bytes(stdout[:max_output_bytes]).decode("utf-8", errors="replace")
    err = bytes(stderr[:max_output_bytes]).decode("utf-8", errors="replace")
    result = _decide(out, err, killed_for, report, reaper.returncode, seconds)
    return dataclasses.replace(result, namespaces=bool(report and report.get("namespaces")))


def _config_args(config: dict) -> list[str]:
    """The reaper's argv (key=value; see _sandbox_child._parse_config)."""
    def text(value):
        if value is None:
            return "none"
        return os.pathsep.join(value) if isinstance(value, list) else str(value)

    return [f"{key}={text(value)}" for key, value in config.items()]


def _decide(out: str, err: str, killed_for: str | None, report: dict | None,
            reaper_code: int | None, seconds: float) -> SandboxResult:
    if killed_for is not None:
        return SandboxResult(out, err, killed_for, None, seconds)  # type: ignore[arg-type]
    if report is None:
        note = f"sandbox: supervisor process ended unexpectedly (exit {reaper_code})"
        return SandboxResult(out, (err + "\n" + note).lstrip("\n"), "error", None, seconds)
    if report.get("reason") == "memory":
        return SandboxResult(out, err, "memory", None, seconds)
    if report.get("reason") != "exit":
        return SandboxResult(out, err, "error", None, seconds)
    signum = report.get("signal")
    exit_code = -signum if signum is not None else report.get("exit_code")
    if exit_code == 0:
        return SandboxResult(out, err, "ok", 0, seconds)
    if signum in (signal.SIGXCPU,):
        return SandboxResult(out, err, "timeout", exit_code, seconds)
    last_line = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    if _MEMORY_ERROR.match(last_line.strip()):
        return SandboxResult(out, err, "memory", exit_code, seconds)
    return SandboxResult(out, err, "error", exit_code, seconds)


def _collect(reaper: subprocess.Popen, deadline: float, cap: int
             ) -> tuple[bytearray, bytearray, str | None]:
    """Reads stdout/stderr until the reaper exits, or the deadline / output cap is hit.

    On a limit, SIGTERM asks the reaper to kill and reap everything; after `_REAPER_GRACE_S`
    without it finishing we stop waiting (`_force_cleanup` then kills by process group and uid).
    """
    buffers = {reaper.stdout.fileno(): bytearray(), reaper.stderr.fileno(): bytearray()}
    killed_for: str | None = None
    stop_sent_at: float | None = None

    def read_ready(selector: selectors.BaseSelector, wait: float) -> None:
        nonlocal killed_for
        for key, _ in selector.select(wait):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                selector.unregister(key.fd)
                continue
            buffers[key.fd] += chunk
            if killed_for is None and len(buffers[key.fd]) > cap:
                killed_for = "output_limit"

    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if killed_for is None and now >= deadline:
                killed_for = "timeout"
            if killed_for is not None and stop_sent_at is None:
                stop_sent_at = now
                with contextlib.suppress(ProcessLookupError):
                    reaper.send_signal(signal.SIGTERM)
            limit = deadline if stop_sent_at is None else stop_sent_at + _REAPER_GRACE_S
            if stop_sent_at is not None and now >= limit:
                break
            if reaper.poll() is not None:
                # Every sandbox process is gone: drain what is buffered, never wait for EOF.
                for _ in range(64):
                    if not selector.get_map():
                        break
                    before = sum(len(b) for b in buffers.values())
                    read_ready(selector, 0.0)
                    if sum(len(b) for b in buffers.values()) == before:
                        break
                break
            wait = max(0.0, min(0.05, limit - now))
            if selector.get_map():
                read_ready(selector, wait)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    reaper.wait(timeout=max(wait, 0.001))
    return buffers[reaper.stdout.fileno()], buffers[reaper.stderr.fileno()], killed_for


def _read_report(status_fd: int) -> dict | None:
    os.set_blocking(status_fd, False)
    try:
        data = os.read(status_fd, 65536)
    except OSError:
        return None
    try:
        return json.loads(data.decode().splitlines()[0])
    except (ValueError, IndexError):
        return None


def _force_cleanup(reaper: subprocess.Popen, uid: int | None, marker: str) -> None:
    """Last line of defence, used when the reaper did not report a clean finish: kills the
    reaper's group, then every process of the sandbox uid (or, without one, every process that
    carries the run's environment marker) until none is left."""
    if reaper.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(reaper.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=5.0)
    for _ in range(50):
        leftovers = sandbox_processes(uid=uid, marker=None if uid is not None else marker)
        if not leftovers:
            break
        if uid is not None:
            _kill_uid(uid)
        for pid in leftovers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.wait(timeout=1.0)


def _kill_uid(uid: int) -> None:
    """SIGKILLs every process of `uid` with one kill(-1) from a process running as that uid."""
    source = ("import os,sys\nu=int(sys.argv[1])\nos.setgroups([])\nos.setresgid(u,u,u)\n"
              "os.setresuid(u,u,u)\ntry:\n os.kill(-1,9)\nexcept OSError:\n pass\n")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([sys.executable, "-I", "-S", "-c", source, str(uid)], env={},
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=5.0, check=False)


def sandbox_processes(*, uid: int | None = None, marker: str | None = None) -> list[int]:
    """Live (non-zombie) pids running as `uid`, or carrying the run's marker in their
    environment, or anything whose command line names the sandbox child script when neither
    is given. Used for clean-up and by tests to prove nothing survived."""
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat_line = f.read()
            if stat_line[stat_line.rindex(b")") + 2:][:1] in (b"Z", b"X"):
                continue
            if uid is not None:
                with open(f"/proc/{pid}/status") as f:
                    uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
                if str(uid) in uids:
                    found.append(pid)
                    continue
            if marker is not None:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"{_MARKER_VAR}={marker}".encode() in f.read().split(b"\0"):
                        found.append(pid)
                        continue
            if uid is None and marker is None:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if _CHILD_SCRIPT.encode() in f.read():
                        found.append(pid)
        except (OSError, ValueError, StopIteration):
            continue
    return found


# --------------------------------------------------------------------------- uid pool


def _uid_base() -> int:
    return int(os.environ.get("TOOLRL_SANDBOX_UID_BASE", _UID_BASE_DEFAULT))


def _check_uid_range(base: int) -> None:
    """The pool must be mapped in this user namespace (rootless containers map few uids)."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(int(x) for x in line.split()) for line in f if line.strip()]
    except OSError:
        return
    if not any(inside <= base and base + _UID_COUNT <= inside + count
               for inside, _, count in ranges):
        raise ConfigError(
            f"sandbox uids {base}..{base + _UID_COUNT - 1} are not mapped in this user namespace "
            f"(/proc/self/uid_map: {ranges}); set TOOLRL_SANDBOX_UID_BASE to a free range inside it")


def _lock_dir() -> str:
    path = os.environ.get("TOOLRL_SANDBOX_LOCK_DIR") or (
        "/run/toolrl-sandbox" if os.path.isdir("/run") and os.access("/run", os.W_OK)
        else os.path.join(tempfile.gettempdir(), f"toolrl-sandbox-locks-{os.geteuid()}"))
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"sandbox lock directory {path} must be a directory owned by uid {os.geteuid()} "
            "with mode 0700; remove it or set TOOLRL_SANDBOX_LOCK_DIR")
    return path


@contextlib.contextmanager
def _uid_slot(deadline: float) -> Iterator[int]:
    """Claims a free sandbox uid (flock on <lock dir>/<uid>.lock) for the duration of a run."""
    base, lock_dir = _uid_base(), _lock_dir()
    _check_uid_range(base)
    order = list(range(_UID_COUNT))
    random.shuffle(order)
    while True:
        for offset in order:
            uid = base + offset
            fd = os.open(os.path.join(lock_dir, f"{uid}.lock"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    continue
                raise
            try:
                yield uid  # (the reaper kills leftovers of the uid before it starts the program)
            finally:
                os.close(fd)
            return
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(0.005)


def _remove_files_owned_by(uid: int) -> None:
    """Deletes top-level entries of the world-writable temp dirs owned by the sandbox uid."""
    for directory in {tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"}:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue


def _remove_tree(path: str) -> None:
    """rmtree that never touches anything outside `path` (and never follows symlinks)."""
    root = os.path.abspath(path)

    def retry_writable(function, failed_path, exc_info):
        if isinstance(exc_info[1], FileNotFoundError):
            return
        parent = os.path.dirname(failed_path)
        if not (parent == root or parent.startswith(root + os.sep)) or os.path.islink(parent):
            return
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            function(failed_path)

    shutil.rmtree(path, onerror=retry_writable)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


# --------------------------------------------------------------------------- as a tool


def python_tool(*, name: str = "python", timeout_s: float = 5.0, memory_mb: int = 512,
                max_output_bytes: int = 65536, max_observation_chars: int = 4096):
    """A `Tool` that runs its `code` argument in the sandbox (ReTool's code interpreter).

    The observation is stdout, then stderr, then an error line for timeouts / memory / output
    limits. Give the `ToolExecutor` a `timeout_s` above this tool's `timeout_s` + 1.
    """
    def execute(code: str) -> str:
        result = run(code, timeout_s=timeout_s, memory_mb=memory_mb,
                     max_output_bytes=max_output_bytes)
        return result.observation(max_observation_chars)

    schema = {
        "name": name,
        "description": "Execute Python code in a sandbox and return what it prints "
                       "(stdout, then stderr). State does not persist between calls.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source to run."}},
            "required": ["code"],
        },
    }
    return FunctionTool(name=name, schema=schema, fn=execute)
