"""Environments by name (``env.name``): the tools a policy may call and how their turns look.

An environment builder is ``f(cfg: EnvironmentConfig, tasks) -> Environment | None``; ``tasks``
are every task of the run (training and held-out), so per-trajectory backends can be prepared.
``none`` means single-turn rollouts (no tools run; the reward scores the completion). Add one::

    @ENVIRONMENTS.register("my_env")
    def my_env(cfg: EnvironmentConfig, tasks) -> Environment:
        executor = ToolExecutor(my_tools, timeout_s=cfg.timeout_s, max_workers=cfg.max_workers)
        return environment_from_config(cfg, executor)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

from toolrl_jax.data import GENERATED_TOOLS
from toolrl_jax.data.task import ToolTask
from toolrl_jax.envgen import env_for_tasks
from toolrl_jax.errors import ConfigError
from toolrl_jax.registry import Registry
from toolrl_jax.rollout.turns import Environment, code_extractor, tool_call_extractor
from toolrl_jax.eval.bfcl_env import BFCLEnvironment
from toolrl_jax.tools.code_interpreter import code_interpreter_environment
from toolrl_jax.tools.executor import ToolExecutor


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnvironmentConfig:
    """The YAML ``env:`` section.

    Attributes:
      name: a registered environment (:data:`ENVIRONMENTS`); ``none`` = single-turn.
      observation_format: how tool results are appended: ``toolrl`` (``<obs>`` user message),
        ``hermes`` (``<tool_response>`` blocks), ``native`` (the template's tool role) or
        ``interpreter`` (ReTool's ``<interpreter>`` block inside the open turn).
      tool_call_syntax: how calls are read from a turn (``toolcalls.parse`` syntaxes).
      tool_stop_strings: strings that end a turn with tool calls.
      stop_strings: strings that end the trajectory.
      timeout_s: per-call deadline of the executor.
      max_workers: calls running at once.
      max_observation_chars: a tool's text is cut to this many characters.
      stateful: ``code_interpreter``: each cell sees the earlier cells' variables (replayed).
      memory_mb: ``code_interpreter``: the sandbox's memory limit per cell.
      max_output_chars: ``code_interpreter``: interpreter text kept per cell (head and tail; the
        status line is always kept).
    """

    name: str = "none"
    observation_format: Literal["toolrl", "hermes", "native", "interpreter"] = "toolrl"
    tool_call_syntax: Literal["toolrl", "hermes", "python", "auto"] = "toolrl"
    tool_stop_strings: tuple[str, ...] = ("</tool_call>",)
    stop_strings: tuple[str, ...] = ()
    timeout_s: float = 10.0
    max_workers: int = 8
    max_observation_chars: int = 8192
    stateful: bool = False
    memory_mb: int = 512
    max_output_chars: int = 512

    def __post_init__(self) -> None:
        ENVIRONMENTS.get(self.name)
        if not self.timeout_s > 0:
            raise ConfigError(f"env.timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_workers < 1:
            raise ConfigError(f"env.max_workers: must be >= 1, got {self.max_workers}")
        if self.max_observation_chars < 1:
            raise ConfigError(
                f"env.max_observation_chars: must be >= 1, got {self.max_observation_chars}"
            )

    @property
    def multi_turn(self) -> bool:
        return self.name != "none"


EnvironmentBuilder = Callable[[EnvironmentConfig, Sequence[ToolTask]], "Environment | None"]
ENVIRONMENTS: Registry[EnvironmentBuilder] = Registry("environment", config_key="env.name")


def executor_from_config(cfg: EnvironmentConfig, tools=(), *, environment=None) -> ToolExecutor:
    """A :class:`ToolExecutor` with the config's limits."""
    return ToolExecutor(list(tools), environment=environment, timeout_s=cfg.timeout_s,
                        max_workers=cfg.max_workers,
                        max_observation_chars=cfg.max_observation_chars)


def environment_from_config(cfg: EnvironmentConfig, executor, *, extract_calls=None) -> Environment:
    """An :class:`Environment` with the config's formats and stops."""
    return Environment(executor=executor,
                       extract_calls=extract_calls or tool_call_extractor(cfg.tool_call_syntax),
                       observation_format=cfg.observation_format,
                       tool_stop_strings=tuple(cfg.tool_stop_strings),
                       stop_strings=tuple(cfg.stop_strings))


@ENVIRONMENTS.register("none")
def no_tools(cfg: EnvironmentConfig, tasks: Sequence[ToolTask]) -> None:
    """Single-turn: the completion is scored, no tool runs."""
    return None


@ENVIRONMENTS.register("generated_tools")
def generated_tools(cfg: EnvironmentConfig, tasks: Sequence[ToolTask]) -> Environment:
    """The executable tools of ``data.source=generated`` (``toolrl_jax.data.generated``)."""
    return environment_from_config(cfg, executor_from_config(cfg, GENERATED_TOOLS.values()))


@ENVIRONMENTS.register("bfcl_multi_turn")
def bfcl_multi_turn(cfg: EnvironmentConfig, tasks: Sequence[ToolTask]) -> Environment:
    """BFCL v4's executable multi-turn backends, one instance set per trajectory, and every
    user turn of the entry: when an assistant turn ends without a tool call, the entry's next
    user message is appended (token ids, loss mask 0) and the trajectory goes on with the same
    backend instances, until the entry's user turns are used up or ``rollout.max_turns``
    (``BFCLEnvironment.next_user_turn``; reward component ``bfcl`` checks each user turn)."""
    env = BFCLEnvironment.for_tasks(list(tasks))
    return dataclasses.replace(
        environment_from_config(cfg, executor_from_config(cfg, environment=env)),
        next_user_turn=env.next_user_turn)


@ENVIRONMENTS.register("envgen")
def envgen(cfg: EnvironmentConfig, tasks: Sequence[ToolTask]) -> Environment:
    """Built FTRL environments (``data.source=envgen``): one seeded world per trajectory."""
    return environment_from_config(cfg, executor_from_config(cfg, environment=env_for_tasks(tasks)))


@ENVIRONMENTS.register("code_interpreter")
def code_interpreter(cfg: EnvironmentConfig, tasks: Sequence[ToolTask]) -> Environment:
    """ReTool's code interpreter: ``<code>```python ...```</code>`` runs in the sandbox and its
    output is appended inline as ``<interpreter>...</interpreter>`` (loss mask 0). The formats
    are fixed by the method: observation ``interpreter``, stop at ``</code>``."""
    env = code_interpreter_environment(stateful=cfg.stateful, timeout_s=cfg.timeout_s,
                                       memory_mb=cfg.memory_mb,
                                       max_output_chars=cfg.max_output_chars)
    executor = ToolExecutor(environment=env, timeout_s=env.executor_timeout_s(8),
                            max_workers=cfg.max_workers,
                            max_observation_chars=max(cfg.max_observation_chars,
                                                      cfg.max_output_chars + 256))
    return Environment(executor=executor, extract_calls=code_extractor(env.tools[0].name),
                       observation_format="interpreter", tool_stop_strings=("</code>",),
                       stop_strings=tuple(cfg.stop_strings))
