"""ReTool's code interpreter (Feng et al., arXiv 2504.11536) as a per-trajectory tool environment.

The model writes ``<code>```python ...```</code>``; the rollout engine stops at ``</code>``,
``rollout.turns.code_extractor()`` turns the block into the call ``python(code=...)``, and this
environment runs it in the process sandbox (:mod:`toolrl_jax.tools.python_sandbox`) with time,
memory and output limits. The returned text is what goes inside ``<interpreter>...</interpreter>``:

    stdout, then stderr (the traceback on an error), then one status line unless the cell ran
    cleanly:
        Error: execution timed out after {timeout_s:g} s
        Error: memory limit of {memory_mb} MB exceeded
        Error: output limit exceeded; the run was stopped
        Error: the cell failed (exit code {n})

Texts longer than ``max_output_chars`` keep their head and tail with a marker line
``... [output cut: N characters not shown] ...`` between them; the marker and the status line are
never cut (so the text is at most ``max_output_chars`` plus those two lines). Keep
``max_output_chars`` <= ``rollout.max_obs_tokens`` (and the executor's ``max_observation_chars``
above it): the engine and the executor cut longer results from the end, which would drop the
status line.

Modes:

* stateless (default): each cell runs alone in a fresh sandbox process.
* stateful (a notebook, as in ReTool's traces): a cell sees the variables, functions and imports
  of the trajectory's earlier cells. The sandbox has no long-lived process, so a cell is run by
  *replaying* every earlier cell that ran without error (their stdout/stderr sent to /dev/null,
  at the file-descriptor level) and then the new cell, in one module namespace, in one sandbox
  run. Cost: cell k re-executes cells 1..k-1, so a trajectory of n cells executes O(n^2) cell
  bodies, and the run's deadline is ``timeout_s`` plus the measured seconds of the replayed
  cells (the new cell always gets its own ``timeout_s``). Side effects are replayed too
  (randomness without a seed, the clock): a replayed cell that now fails reports
  ``Error: replaying earlier cell i failed`` and the new cell does not run. Failed cells are not
  replayed, so their partial effects are lost (unlike a notebook).

Per-trajectory state follows the executor's environment protocol (``tools.base.ToolEnvironment``):
``reset(trajectory_id, task)`` gives each trajectory its own :class:`InterpreterState` (the list
of executed cells), which the tool receives through its hidden ``state_param``.

    environment = code_interpreter_environment(stateful=True, timeout_s=5, memory_mb=512,
                                               max_output_chars=1024)
    executor = ToolExecutor(environment=environment,
                            timeout_s=environment.executor_timeout_s(max_cells=8))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Sequence
from typing import Any

from toolrl_jax.errors import ConfigError
from toolrl_jax.tools import python_sandbox

__all__ = [
    "CellRecord",
    "CodeInterpreterEnvironment",
    "CodeInterpreterTool",
    "InterpreterLimits",
    "InterpreterState",
    "STATE_PARAM",
    "cell_program",
    "code_interpreter_environment",
    "interpreter_status",
    "interpreter_text",
    "run_cell",
]

STATE_PARAM = "_interpreter_state"  # hidden keyword the executor fills with the trajectory's state
_CUT_MARKER = "... [output cut: {n} characters not shown] ..."
_STATUS_RE = re.compile(
    r"^Error: (execution timed out after \S+ s|memory limit of \d+ MB exceeded|"
    r"output limit exceeded; the run was stopped|the cell failed \(exit code [^)]*\)|"
    r"replaying earlier cell \d+ failed.*)$"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class InterpreterLimits:
    """Sandbox limits of one cell.

    Attributes:
      timeout_s: wall-clock seconds a cell may run (sandbox start-up included).
      memory_mb: address space / resident memory budget of the run.
      max_output_chars: longest interpreter text (head + tail kept, see module docstring).
      max_output_bytes: stdout / stderr cap inside the sandbox; passing it stops the run.
    """

    timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_chars: int = 2048
    max_output_bytes: int = 65536

    def __post_init__(self):
        for name in ("timeout_s", "memory_mb", "max_output_chars", "max_output_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"env.{name} must be > 0, got {getattr(self, name)}")
        if self.max_output_chars < 16:
            raise ConfigError(f"env.max_output_chars must be >= 16, got {self.max_output_chars}")


@dataclasses.dataclass(frozen=True)
class CellRecord:
    """One executed cell: its code, the sandbox status, the interpreter text, wall seconds."""

    code: str
    status: str
    text: str
    seconds: float


@dataclasses.dataclass(eq=False)
class InterpreterState:
    """One trajectory's cells in execution order (mutable; owned by that trajectory only)."""

    trajectory_id: Hashable = None
    cells: list[CellRecord] = dataclasses.field(default_factory=list)

    @property
    def replay_cells(self) -> list[CellRecord]:
        """Earlier cells a stateful run replays: those that ran without error."""
        return [c for c in self.cells if c.status == "ok"]


# --------------------------------------------------------------------------- the program
_PROGRAM = '''\
import linecache as _lc, os as _os, sys as _sys, traceback as _tb, types as _types
_CELLS = {cells!r}
_mod = _types.ModuleType("__main__")
_mod.__dict__["__builtins__"] = __builtins__
_sys.modules["__main__"] = _mod

def _run(i, src):
    name = "<cell>" if i == len(_CELLS) - 1 else "<cell %d>" % (i + 1)
    _lc.cache[name] = (len(src), None, src.splitlines(True), name)
    exec(compile(src, name, "exec"), _mod.__dict__)

def _fail(e):
    _tb.print_exception(type(e), e, e.__traceback__.tb_next.tb_next)
    _sys.stderr.flush()
    _os._exit(1)

_saved = (_os.dup(1), _os.dup(2))
_null = _os.open(_os.devnull, _os.O_WRONLY)
for _i, _src in enumerate(_CELLS[:-1]):
    _os.dup2(_null, 1); _os.dup2(_null, 2)
    try:
        _run(_i, _src)
    except BaseException as _e:
        _sys.stdout.flush(); _sys.stderr.flush()
        _os.dup2(_saved[0], 1); _os.dup2(_saved[1], 2)
        print("Error: replaying earlier cell %d failed (%s)" % (_i + 1, type(_e).__name__),
              file=_sys.stderr)
        _sys.stderr.flush()
        _os._exit(1)
    _sys.stdout.flush(); _sys.stderr.flush()
_os.dup2(_saved[0], 1); _os.dup2(_saved[1], 2)
try:
    _run(len(_CELLS) - 1, _CELLS[-1])
except SystemExit:
    raise
except BaseException as _e:
    _sys.stdout.flush()
    _fail(_e)
'''


def cell_program(code: str, replay: Sequence[str] = ()) -> str:
    """The sandbox program running ``replay`` (output discarded) and then ``code``, in one
    ``__main__`` module namespace. Tracebacks name the new cell ``<cell>`` with its source
    lines and hide the wrapper's frames."""
    return _PROGRAM.format(cells=[*replay, code])


# --------------------------------------------------------------------------- text
def _status_line(result: python_sandbox.SandboxResult, limits: InterpreterLimits) -> str:
    if result.status == "ok":
        return ""
    if result.status == "timeout":
        return f"Error: execution timed out after {limits.timeout_s:g} s"
    if result.status == "memory":
        return f"Error: memory limit of {limits.memory_mb} MB exceeded"
    if result.status == "output_limit":
        return "Error: output limit exceeded; the run was stopped"
    if result.stderr.rstrip().splitlines()[-1:] and _STATUS_RE.match(
            result.stderr.rstrip().splitlines()[-1]):
        return ""  # the program's own status line (a failed replay) is already last
    code = "killed" if result.exit_code is None else result.exit_code
    return f"Error: the cell failed (exit code {code})"


def _cut(body: str, budget: int) -> str:
    """``body`` if it fits ``budget`` characters, else its head and tail around the cut marker."""
    if len(body) <= budget:
        return body
    keep = max(0, budget)
    head, tail = body[: (keep + 1) // 2], body[len(body) - keep // 2 :] if keep // 2 else ""
    marker = _CUT_MARKER.format(n=len(body) - len(head) - len(tail))
    return "\n".join(p for p in (head.rstrip("\n"), marker, tail.lstrip("\n")) if p)


def interpreter_text(result: python_sandbox.SandboxResult, limits: InterpreterLimits) -> str:
    """The ``<interpreter>`` text of a sandbox result (see module docstring for the layout)."""
    parts = [s.rstrip("\n") for s in (result.stdout, result.stderr) if s and s.strip()]
    body = "\n".join(parts)
    status = _status_line(result, limits)
    body = _cut(body, limits.max_output_chars - (len(status) + 1 if status else 0))
    return "\n".join(p for p in (body, status) if p)


def interpreter_status(text: str) -> str:
    """'ok' or 'error': whether an interpreter text from this module reports a failed cell
    (its last line is one of the status lines). A clean cell whose own last printed line imitates
    a status line reads as 'error' (text is all the model and the metrics see). Never raises;
    linear time."""
    if not isinstance(text, str):
        return "error"
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    return "error" if _STATUS_RE.match(last) else "ok"


def run_cell(code: str, limits: InterpreterLimits, state: InterpreterState | None = None,
             *, stateful: bool = False) -> CellRecord:
    """Runs one cell in the sandbox (after replaying ``state``'s clean cells when ``stateful``),
    appends its record to ``state`` and returns it."""
    replay = state.replay_cells if (stateful and state is not None) else []
    timeout = limits.timeout_s + sum(c.seconds for c in replay)
    result = python_sandbox.run(
        cell_program(str(code), [c.code for c in replay]), timeout_s=timeout,
        memory_mb=limits.memory_mb, max_output_bytes=limits.max_output_bytes)
    record = CellRecord(code=str(code), status=result.status,
                        text=interpreter_text(result, limits), seconds=result.seconds)
    if state is not None:
        state.cells.append(record)
    return record


# --------------------------------------------------------------------------- tool + environment
@dataclasses.dataclass(frozen=True, kw_only=True)
class CodeInterpreterTool:
    """``python(code)``: the ``Tool`` the executor calls; runs on the trajectory's state."""

    limits: InterpreterLimits
    stateful: bool = False
    name: str = "python"
    state_param: str = STATE_PARAM

    @property
    def schema(self) -> dict:
        persist = "Variables persist between calls." if self.stateful else \
            "State does not persist between calls."
        return {
            "name": self.name,
            "description": f"Execute Python code in a sandbox and return what it prints. {persist}",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python source to run."}},
                "required": ["code"],
            },
        }

    def __call__(self, **arguments: Any) -> str:
        state = arguments.pop(STATE_PARAM, None)
        return run_cell(arguments.get("code", ""), self.limits, state, stateful=self.stateful).text


class CodeInterpreterEnvironment:
    """``ToolEnvironment`` with the one tool ``python``; each trajectory owns an
    :class:`InterpreterState` (see module docstring)."""

    def __init__(self, limits: InterpreterLimits, *, stateful: bool = False, tool_name: str = "python"):
        self.limits = limits
        self.stateful = bool(stateful)
        self.tools: tuple[CodeInterpreterTool, ...] = (
            CodeInterpreterTool(limits=limits, stateful=self.stateful, name=tool_name),)

    def reset(self, trajectory_id: Hashable, task: Any = None) -> InterpreterState:
        return InterpreterState(trajectory_id=trajectory_id)

    def executor_timeout_s(self, max_cells: int = 1) -> float:
        """A ``ToolExecutor.timeout_s`` that never cuts a cell the sandbox would finish: one cell's
        budget (stateless) or ``max_cells`` budgets (stateful replay), plus 2 s of slack."""
        cells = max(1, int(max_cells)) if self.stateful else 1
        return self.limits.timeout_s * cells + 2.0


def code_interpreter_environment(*, stateful: bool = False, timeout_s: float = 5.0,
                                 memory_mb: int = 512, max_output_chars: int = 2048,
                                 max_output_bytes: int = 65536, tool_name: str = "python",
                                 ) -> CodeInterpreterEnvironment:
    """The code-interpreter environment for ``ToolExecutor(environment=...)`` (the call extractor
    is ``rollout.turns.code_extractor(tool_name)``)."""
    limits = InterpreterLimits(timeout_s=timeout_s, memory_mb=memory_mb,
                               max_output_chars=max_output_chars, max_output_bytes=max_output_bytes)
    return CodeInterpreterEnvironment(limits, stateful=stateful, tool_name=tool_name)
