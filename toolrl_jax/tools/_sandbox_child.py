"""Process-side half of `toolrl_jax.tools.python_sandbox` (run as a script, stdlib only).

    python -I -S -X utf8 _sandbox_child.py key=value ...   (see `_parse_config`)

This process is the *reaper*: the direct child of the trainer, leader of its own session. It

1. marks itself a child subreaper (PR_SET_CHILD_SUBREAPER), so every orphaned descendant of the
   sandboxed program (double forks, setsid daemons) is re-parented to it and not to PID 1;
2. forks the *program* process, which moves to its own process group, sets resource limits,
   drops privileges (when the trainer is root: to a dedicated unprivileged uid/gid, no
   supplementary groups, no_new_privs) and executes the user's code as `__main__`;
3. waits, polls the total resident memory of all descendants, and when the program exits (or the
   memory budget is exceeded, or the trainer sends SIGTERM) kills every descendant, reaps them
   all until it has no children left, and writes one JSON status line to the status pipe.

Running as root while the program runs as another uid, the reaper cannot be signalled by the
program (`os.kill(os.getppid(), 9)` fails with EPERM).
"""

import builtins
import ctypes
import os
import resource
import shutil
import signal
import sys
import time
import types

PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 32, 4096, 16384, 1 << 18)
SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
POLL_S = 0.05


_INT_KEYS = ("uid", "gid", "status_fd", "parent_pid", "cpu_s", "memory_bytes", "file_bytes",
             "max_processes", "max_open_files", "disk_bytes", "namespaces")


def _parse_config(argv):
    """key=value arguments -> dict (ints; 'none' -> None; site_dirs split on os.pathsep).
    No json: importing it (and re) costs ~15 ms of every run's start-up."""
    cfg = dict(arg.split("=", 1) for arg in argv)
    for key in _INT_KEYS:
        cfg[key] = None if cfg[key] == "none" else int(cfg[key])
    cfg["site_dirs"] = [p for p in cfg["site_dirs"].split(os.pathsep) if p]
    return cfg


def _prctl(option, value):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return libc.prctl(option, value, 0, 0, 0)


def _hidden_import_dirs(temp_root):
    """sys.path directories the private tmpfs would hide (a virtual environment under /tmp),
    as (path inside the tmpfs, O_PATH descriptor of the real directory) pairs."""
    shadowed = [temp_root] + [os.path.realpath(d) for d in SHARED_TEMP_DIRS if os.path.isdir(d)]
    found, seen = [], set()
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if not real or real in seen or not os.path.isdir(real):
            continue
        for top in shadowed:
            if real.startswith(top.rstrip("/") + "/"):
                seen.add(real)
                inside = temp_root.rstrip("/") + real[len(top.rstrip("/")):]
                found.append((inside, os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)))
                break
    return found


def _isolate_namespaces(cfg):
    """Best effort, root only: a private mount namespace and an empty network namespace.

    In the new mount namespace a tmpfs of `disk_bytes` is mounted over the temp root that holds
    the working directory, and bound onto /tmp, /var/tmp and /dev/shm, so everything the program
    can write there lives in one size-limited tmpfs that vanishes with the run and is invisible
    outside. Import directories that lived under those (a virtual environment in /tmp) are bound
    back read-only at their paths. The network namespace has no interfaces up: no network, not
    even loopback. Returns False (nothing changed) where unshare/mount are not permitted.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    old_ns = [os.open("/proc/self/ns/%s" % kind, os.O_RDONLY) for kind in ("mnt", "net")]
    hidden = []
    try:
        if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
            return False
        try:
            def mount(source, target, fstype, flags, data):
                if libc.mount(source, target.encode(), fstype, flags, data) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, "mount %s: %s" % (target, os.strerror(errno)))

            mount(None, "/", None, MS_REC | MS_PRIVATE, None)
            workdir = cfg["workdir"]
            temp_root = os.path.dirname(workdir)
            hidden = _hidden_import_dirs(temp_root)
            with open(cfg["code_file"], "rb") as f:
                code = f.read()
            mount(b"tmpfs", temp_root, b"tmpfs", MS_NOSUID | MS_NODEV,
                  b"size=%dk,mode=1777" % max(64, cfg["disk_bytes"] // 1024))
            os.mkdir(workdir, 0o700)
            with open(os.path.join(workdir, cfg["code_file"]), "wb") as f:
                f.write(code)
            os.chown(os.path.join(workdir, cfg["code_file"]), cfg["uid"], cfg["gid"])
            os.chown(workdir, cfg["uid"], cfg["gid"])
            for inside, fd in hidden:
                os.makedirs(inside, 0o755, exist_ok=True)
                mount(("/proc/self/fd/%d" % fd).encode(), inside, None, MS_BIND | MS_REC, None)
                mount(None, inside, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                      None)
            for shared in SHARED_TEMP_DIRS:
                if os.path.isdir(shared) and os.path.realpath(shared) != temp_root:
                    mount(temp_root.encode(), shared, None, MS_BIND | MS_REC, None)
            return True
        except OSError:
            for fd in old_ns:  # undo: back to the trainer's namespaces
                libc.setns(fd, 0)
            return False
    finally:
        for fd in old_ns + [fd for _, fd in hidden]:
            os.close(fd)


def _others_can_traverse(path):
    """True if every ancestor directory of `path` is searchable by other users (o+x)."""
    current = "/"
    for part in os.path.abspath(path).split("/")[1:]:
        try:
            if not os.stat(current).st_mode & 0o001:
                return False
        except OSError:
            return False
        current = os.path.join(current, part)
    return True


def _remap_unreachable_sys_path():
    """Keeps imports working after the uid drop when the interpreter lives under a private
    directory (e.g. /root/.pyenv): each sys.path entry the new uid could not reach is opened now
    (O_PATH) and replaced by /proc/self/fd/N, which resolves without checking the ancestors."""
    remap = {}
    for entry in sys.path:
        if entry and os.path.isdir(entry) and not _others_can_traverse(entry):
            fd = os.open(entry, os.O_PATH | os.O_DIRECTORY)
            remap[entry] = "/proc/self/fd/%d" % fd
    if not remap:
        return

    def fix(path):
        for old, new in remap.items():
            if path == old or path.startswith(old + "/"):
                return new + path[len(old):]
        return path

    sys.path[:] = [fix(p) for p in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [fix(p) for p in search]
    sys.path_importer_cache.clear()


def _user_task_count(uid):
    """Tasks (threads included) whose real uid is `uid`: RLIMIT_NPROC counts these."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/status" % name) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1"))
        except (OSError, ValueError, KeyError):
            continue
    return total


def _set_limits(cfg):
    def limit(which, soft, hard=None):
        resource.setrlimit(which, (soft, soft if hard is None else hard))

    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
    limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    nproc = cfg["max_processes"]
    if cfg["uid"] is None:  # shared uid: the limit counts the trainer's own tasks too
        nproc += _user_task_count(os.getuid())
    limit(resource.RLIMIT_NPROC, nproc)
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])


def _drop_privileges(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise OSError("could not drop privileges")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise OSError("privileges could be regained after dropping them")


def _program(cfg):
    """Runs in the forked program process; never returns."""
    try:
        os.setpgid(0, 0)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # Nothing of the reaper's may reach the program: its status pipe, the descriptor of the
        # real temp directory (it reads /tmp behind the private tmpfs), anything inherited.
        os.closerange(3, _max_fd())
        if cfg["namespaces"]:
            os.chdir(cfg["workdir"])  # the copy inside the private tmpfs
        if cfg["uid"] is not None:
            _remap_unreachable_sys_path()
        _set_limits(cfg)
        # Lower priority than the reaper and the trainer, so that a program hogging the CPU
        # (e.g. a fork bomb) cannot delay its own clean-up; it cannot undo this (RLIMIT_NICE).
        os.setpriority(os.PRIO_PROCESS, 0, 10)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if cfg["uid"] is not None:
            _drop_privileges(cfg["uid"], cfg["gid"])
            _prctl(PR_SET_DUMPABLE, 1)  # credential change cleared it; /proc/<pid> stays ours
        with open(cfg["code_file"], "rb") as f:
            source = f.read()  # bytes: compile() applies PEP 263 coding cookies
    except BaseException as exc:  # noqa: BLE001
        os.write(2, ("sandbox setup failed: %s: %s\n" % (type(exc).__name__, exc)).encode())
        os._exit(125)

    bootstrap_file = __file__

    def excepthook(kind, value, tb):
        while tb is not None and tb.tb_frame.f_code.co_filename == bootstrap_file:
            tb = tb.tb_next
        if isinstance(value, BaseException):
            value = value.with_traceback(tb)
        sys.__excepthook__(kind, value, tb)

    main = types.ModuleType("__main__")
    main.__file__ = cfg["code_file"]
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = [cfg["code_file"]]
    sys.excepthook = excepthook
    exec(compile(source, cfg["code_file"], "exec"), main.__dict__)  # noqa: S102
    raise SystemExit(0)


def _max_fd():
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _children():
    """Direct children of this process (orphans land here too: we are a subreaper)."""
    found = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                found.extend(int(p) for p in f.read().split())
        return found
    except OSError:
        pass
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                    found.append(int(name))
            except (OSError, ValueError):
                continue
    return found


def _descendants():
    seen, frontier = [], _children()
    while frontier:
        pid = frontier.pop()
        seen.append(pid)
        try:
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                frontier.extend(int(p) for p in f.read().split())
        except OSError:
            continue
    return seen


def _resident_bytes(pids):
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/statm" % pid) as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def _reap_ready():
    """Reaps exited children: ([(pid, status)], whether any child is left)."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped, False
        if pid == 0:
            return reaped, True
        reaped.append((pid, status))


def _kill_uid(uid):
    """SIGKILLs every process of `uid` (one kill(-1) from a forked child running as `uid`)."""
    killer = os.fork()
    if killer == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(killer, 0)


def _kill_everything(program_pgid, uid):
    """SIGKILLs all descendants and reaps them until this process has no children left."""
    for _ in range(2000):
        try:
            os.killpg(program_pgid, signal.SIGKILL)
        except OSError:
            pass
        if uid is not None:  # everything running as the sandbox uid, wherever it moved to
            _kill_uid(uid)
        for pid in _children():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if not _reap_ready()[1]:
            return True
        time.sleep(0.001)
        if not _reap_ready()[1]:
            return True
    return False


def main():
    cfg = _parse_config(sys.argv[1:])
    status_fd = cfg["status_fd"]
    # Started with -S (site.py and .pth files cost 50-150 ms): add the trainer's site-packages.
    sys.path.extend(p for p in cfg["site_dirs"] if p not in sys.path)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    watched = {signal.SIGCHLD, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    # If the trainer dies, SIGTERM us so that nothing of the run outlives it.
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != cfg["parent_pid"]:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the prctl: stays pending
    cfg["workdir"] = os.getcwd()
    # The real parent of the workdir, even under the private tmpfs; the program never gets it
    # (O_CLOEXEC, and _program closes every descriptor above 2).
    parent_fd = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if cfg["uid"] is not None:
        _kill_uid(cfg["uid"])  # leftovers of a run whose reaper and trainer both died
    if cfg["namespaces"]:
        cfg["namespaces"] = cfg["uid"] is not None and _isolate_namespaces(cfg)
    program = os.fork()
    if program == 0:
        _program(cfg)
    try:
        os.setpgid(program, program)  # also done by the child; whichever runs first wins
    except OSError:
        pass

    report = {"reason": "exit", "exit_code": None, "signal": None, "clean": False,
              "namespaces": bool(cfg["namespaces"])}
    while report["exit_code"] is None and report["signal"] is None:
        info = signal.sigtimedwait(watched, POLL_S)
        if info is not None and info.si_signo == signal.SIGTERM:
            report["reason"] = "terminated"
            break
        reaped, children_left = _reap_ready()
        for pid, status in reaped:
            if pid == program:
                if os.WIFSIGNALED(status):
                    report["signal"] = os.WTERMSIG(status)
                else:
                    report["exit_code"] = os.WEXITSTATUS(status)
        if not children_left:
            break
        if _resident_bytes(_descendants()) > cfg["memory_bytes"]:
            report["reason"] = "memory"
            break
    report["clean"] = _kill_everything(program, cfg["uid"])
    if os.getppid() != cfg["parent_pid"]:  # the trainer died: nobody else removes the workdir
        shutil.rmtree(os.path.basename(cfg["workdir"]), ignore_errors=True, dir_fd=parent_fd)

    def as_json(value):
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        return '"%s"' % value if isinstance(value, str) else str(value)

    line = "{%s}\n" % ", ".join('"%s": %s' % (k, as_json(v)) for k, v in report.items())
    os.write(status_fd, line.encode())
    os._exit(0)


if __name__ == "__main__":
    main()
