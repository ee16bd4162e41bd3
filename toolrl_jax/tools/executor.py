"""Runs the model's tool calls on host threads with per-call timeouts.

Every failure becomes observation text the model reads, never an exception in the caller:

    unknown tool     -> "Error: unknown tool 'x'. Available tools: a, b."
    bad arguments    -> "Error: invalid arguments for tool 'x': missing required argument 'y'"
    tool raised      -> "Error: tool 'x' raised ValueError: ..."
    deadline passed  -> "Error: tool 'x' timed out after 10.0 s"

Threads cannot be killed. Each call therefore runs on its own fresh daemon thread, watched by
a supervisor thread of its own, and at most `max_workers` calls run at once (a semaphore the
supervisor takes before starting the tool). The supervisor enforces the deadline whatever the
caller waits for, so hung calls never block later calls: at the deadline the caller gets the
timeout observation and the slot is given back, but the tool's thread keeps running until the
tool returns (its late result is discarded). `abandoned_calls` counts such threads; once
`max_abandoned` of them are still hung, further calls fail at once with a timeout observation
instead of leaking more threads. A deadline cannot fire while a tool holds the GIL (a C
extension, a huge integer power): such tools must bound their own work or run out of process
(`python_sandbox.sandboxed_tool`; docs/tools.md lists which built-in tools are safe in-thread).

Calls are duck-typed: anything with `.name` and `.arguments` (a dict, or a JSON string as in
OpenAI's API), or a mapping with those keys, so parser outputs fit without conversion.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from toolrl_jax.toolcalls.types import ErrorKind, ToolCall, ToolResult
from toolrl_jax.tools.base import Tool, ToolEnvironment, validate_arguments

__all__ = ["ErrorKind", "ToolCall", "ToolExecutor", "ToolResult", "render_observation"]

def render_observation(value: Any) -> str:
    """Tool return value -> text: strings as they are, None as "", others as JSON (or str())."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [truncated {len(text) - limit} characters]"


class ToolExecutor:
    """Thread-pool tool runner with per-call deadlines and per-trajectory state.

    Args:
        tools: the tools (each with `.name`); ignored names collide -> ValueError.
        environment: optional `ToolEnvironment`; its tools are added, and each trajectory gets
            its own state from `environment.reset(trajectory_id, task)` (see `start`).
        max_workers: calls running at once (timed-out calls do not count).
        timeout_s: per-call deadline, counted from the moment the call starts running.
        max_abandoned: hung (timed-out, still running) calls tolerated; beyond it, new calls
            fail at once with a timeout observation. Default: 4 * max_workers.
        max_observation_chars: longer observations are cut with a "[truncated N characters]"
            marker.
        parallel_calls: run the calls of one `submit` concurrently. Default: True without an
            environment, False with one (calls on one trajectory's state run in order).
    """

    def __init__(
        self,
        tools: Iterable[Tool] = (),
        *,
        environment: ToolEnvironment | None = None,
        max_workers: int = 8,
        timeout_s: float = 10.0,
        max_observation_chars: int = 8192,
        parallel_calls: bool | None = None,
        max_abandoned: int | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        all_tools = list(tools) + list(environment.tools if environment is not None else ())
        self._tools: dict[str, Tool] = {}
        for tool in all_tools:
            if tool.name in self._tools and self._tools[tool.name] is not tool:
                raise ValueError(f"two tools are named {tool.name!r}")
            self._tools[tool.name] = tool
        self._environment = environment
        self.timeout_s = float(timeout_s)
        self.max_workers = int(max_workers)
        self.max_abandoned = 4 * self.max_workers if max_abandoned is None else int(max_abandoned)
        if self.max_abandoned < 0:
            raise ValueError(f"max_abandoned must be >= 0, got {max_abandoned}")
        self.max_observation_chars = int(max_observation_chars)
        self.parallel_calls = environment is None if parallel_calls is None else parallel_calls
        self._slots = threading.BoundedSemaphore(self.max_workers)
        self._lock = threading.Lock()
        self._states: dict[Hashable, Any] = {}
        self._abandoned = 0
        self._closed = False

    # ------------------------------------------------------------------ trajectory state

    @property
    def tools(self) -> dict[str, Tool]:
        return dict(self._tools)

    @property
    def abandoned_calls(self) -> int:
        """Timed-out calls whose threads have not returned yet."""
        with self._lock:
            return self._abandoned

    def start(self, trajectory_id: Hashable, task: Any = None) -> Any:
        """Creates (or replaces) the trajectory's state via `environment.reset`; returns it."""
        state = self._environment.reset(trajectory_id, task) if self._environment else None
        with self._lock:
            self._states[trajectory_id] = state
        return state

    def state(self, trajectory_id: Hashable) -> Any:
        with self._lock:
            return self._states.get(trajectory_id)

    def finish(self, trajectory_id: Hashable) -> Any:
        """Forgets the trajectory and returns its final state (None if it had none)."""
        with self._lock:
            return self._states.pop(trajectory_id, None)

    # ------------------------------------------------------------------ running calls

    def submit(self, trajectory_id: Hashable, calls: Sequence[Any]) -> concurrent.futures.Future:
        """Starts the calls; the Future resolves to `list[ToolResult]` in call order.

        Never blocks on the tools and never raises for bad calls (those become results). A
        trajectory that was never `start`ed is started with task None on its first submit.
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            future.set_exception(RuntimeError("ToolExecutor is closed"))
            return future
        calls = list(calls)
        with self._lock:
            needs_start = self._environment is not None and trajectory_id not in self._states
        state = self.start(trajectory_id) if needs_start else self.state(trajectory_id)
        coordinator = threading.Thread(
            target=self._coordinate, args=(future, calls, state),
            name=f"tool-calls-{trajectory_id}", daemon=True)
        coordinator.start()
        return future

    def run(self, trajectory_id: Hashable, calls: Sequence[Any]) -> list[ToolResult]:
        """Blocking `submit(...).result()`."""
        return self.submit(trajectory_id, calls).result()

    def close(self) -> None:
        """Refuses new submits; calls already running finish on their own threads."""
        self._closed = True

    def __enter__(self) -> ToolExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _coordinate(self, future: concurrent.futures.Future, calls: list[Any], state: Any) -> None:
        try:
            if self.parallel_calls:
                pending = [self._launch(call, state) for call in calls]
                results = [self._await(p) for p in pending]
            else:
                results = [self._await(self._launch(call, state)) for call in calls]
            future.set_result(results)
        except BaseException as exc:  # a bug here must still resolve the future
            future.set_exception(exc)

    def _launch(self, call: Any, state: Any) -> _Pending:
        """Checks the call and starts its supervisor thread; never blocks, never raises."""
        name, arguments, problem = _unpack(call)
        tool = self._tools.get(name) if isinstance(name, str) else None
        display = name if isinstance(name, str) else repr(name)
        if problem is not None:
            return _Pending.done(self._error(display, "bad_arguments",
                                             f"invalid arguments for tool '{display}': {problem}"))
        if tool is None:
            available = ", ".join(sorted(self._tools)) or "none"
            return _Pending.done(self._error(
                display, "unknown_tool", f"unknown tool '{display}'. Available tools: {available}."))
        parameters = tool.schema.get("parameters") if isinstance(tool.schema, Mapping) else None
        if parameters:
            try:
                errors = validate_arguments(parameters, arguments)
            except RecursionError:
                errors = ["arguments are nested too deeply"]
            if errors:
                return _Pending.done(self._error(
                    display, "bad_arguments",
                    f"invalid arguments for tool '{display}': {'; '.join(errors)}"))
        with self._lock:
            hung = self._abandoned
        if hung and hung >= self.max_abandoned:
            return _Pending.done(self._error(
                display, "timeout", f"tool '{display}' was not run: {hung} earlier tool calls are "
                f"still hung (max_abandoned={self.max_abandoned})"))
        state_param = getattr(tool, "state_param", None)
        if state_param:
            arguments = {**arguments, state_param: state}
        pending = _Pending(name=display, started=time.monotonic())
        try:
            threading.Thread(target=self._supervise, args=(pending, tool, arguments),
                             name=f"tool-supervisor-{display}", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread": the host is out of threads
            return _Pending.done(self._error(display, "exception",
                                             f"tool '{display}' could not be started: {exc}"))
        return pending

    def _supervise(self, pending: _Pending, tool: Tool, arguments: dict) -> None:
        """Waits for a slot, runs the tool on its own thread and enforces the deadline.

        Every call has its own supervisor, so a deadline fires whatever the caller awaits first:
        hung calls give their slots back at their deadlines and never block later calls.
        """
        self._slots.acquire()
        pending.started = time.monotonic()
        worker = threading.Thread(target=self._work, args=(pending, tool, arguments),
                                  name=f"tool-{pending.name}", daemon=True)
        try:
            worker.start()
        except RuntimeError as exc:  # out of threads: a result, never a caller waiting forever
            pending.result = self._error(pending.name, "exception",
                                         f"tool '{pending.name}' could not be started: {exc}")
            pending.returned.set()
        pending.returned.wait(self.timeout_s)
        with self._lock:
            if pending.result is None:  # the deadline passed: abandon the worker thread
                pending.result = ToolResult(
                    pending.name, False,
                    f"Error: tool '{pending.name}' timed out after {self.timeout_s:g} s",
                    "timeout", time.monotonic() - pending.started)
                self._abandoned += 1
            self._slots.release()
        pending.finished.set()

    def _work(self, pending: _Pending, tool: Tool, arguments: dict) -> None:
        try:
            value = tool(**arguments)
            text, ok, kind = render_observation(value), True, None
        except BaseException as exc:  # noqa: BLE001 - the model sees every failure as text
            try:
                message = str(exc).strip()
            except Exception:  # noqa: BLE001 - an exception whose __str__ fails
                message = ""
            text = f"Error: tool '{pending.name}' raised {type(exc).__name__}" + (
                f": {message}" if message else "")
            ok, kind = False, "exception"
        seconds = time.monotonic() - pending.started
        result = ToolResult(pending.name, ok, _truncate(text, self.max_observation_chars),
                            kind, seconds)
        with self._lock:
            if pending.result is None:
                pending.result = result
            else:  # the caller already got a timeout
                self._abandoned -= 1
        pending.returned.set()

    def _await(self, pending: _Pending) -> ToolResult:
        pending.finished.wait()  # the supervisor resolves every call by its deadline
        return pending.result

    def _error(self, name: str, kind: ErrorKind, message: str) -> ToolResult:
        return ToolResult(name, False, _truncate(f"Error: {message}", self.max_observation_chars),
                          kind, 0.0)


@dataclasses.dataclass(eq=False)
class _Pending:
    name: str
    started: float
    result: ToolResult | None = None
    returned: threading.Event = dataclasses.field(default_factory=threading.Event)
    finished: threading.Event = dataclasses.field(default_factory=threading.Event)

    @classmethod
    def done(cls, result: ToolResult) -> _Pending:
        pending = cls(name=result.name, started=time.monotonic(), result=result)
        pending.returned.set()
        pending.finished.set()
        return pending


def _unpack(call: Any) -> tuple[Any, dict, str | None]:
    """(name, arguments dict, problem text or None) from a duck-typed call; never raises."""
    try:
        if isinstance(call, Mapping):
            name, arguments = call.get("name"), call.get("arguments", {})
        else:
            name, arguments = getattr(call, "name", None), getattr(call, "arguments", {})
    except Exception as exc:  # noqa: BLE001 - garbage from a parser
        return None, {}, f"unreadable call ({type(exc).__name__})"
    if arguments is None:
        arguments = {}
    if isinstance(arguments, (str, bytes)):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            return name, {}, f"arguments are not valid JSON ({exc})"
        except RecursionError:
            return name, {}, "arguments are not valid JSON (nested too deeply)"
    if not isinstance(arguments, Mapping):
        return name, {}, f"arguments must be a JSON object, got {type(arguments).__name__}"
    if not all(isinstance(k, str) for k in arguments):
        return name, {}, "argument names must be strings"
    return name, dict(arguments), None
