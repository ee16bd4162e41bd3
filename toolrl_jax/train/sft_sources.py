"""SFT example sources by name (``sft.source``): where warm-start examples come from.

An entry is ``f(cfg: TrainConfig, train_tasks, tokenizer, template) -> [(ids, loss_mask)]``
(the loss mask is 1 on the tokens the model should learn to write).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from toolrl_jax.data import load_toolrl
from toolrl_jax.data.cold_start import cold_start_examples, cold_start_traces
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError
from toolrl_jax.registry import Registry
from toolrl_jax.train.sft import sft_example

Example = tuple[list[int], list[int]]
SFTSource = Callable[[Any, Sequence[ToolTask], Any, Any], list[Example]]
SFT_SOURCES: Registry[SFTSource] = Registry("SFT source", config_key="sft.source")


def answer_examples(tasks: Sequence[ToolTask], tokenizer, template) -> list[Example]:
    """``messages + [assistant: ground_truth]`` with mask 1 on the answer (and its end of turn)."""
    return [sft_example(tokenizer, template, t.messages, t.ground_truth) for t in tasks]


@SFT_SOURCES.register("generated")
def run_tasks(cfg, train_tasks, tokenizer, template) -> list[Example]:
    """The run's own training tasks with their ground-truth answers."""
    return answer_examples(train_tasks, tokenizer, template)


@SFT_SOURCES.register("toolrl_json")
def toolrl_json(cfg, train_tasks, tokenizer, template) -> list[Example]:
    """ToolRL's SFT file (``rlla_sft.json``) at ``sft.path``."""
    if not cfg.sft.path:
        raise DataError("sft.path: required for sft.source=toolrl_json")
    return answer_examples(list(load_toolrl(cfg.sft.path)), tokenizer, template)


@SFT_SOURCES.register("math_cold_start")
def math_cold_start(cfg, train_tasks, tokenizer, template) -> list[Example]:
    """ReTool's cold start: each problem's reference program runs in the sandbox and the trace
    ``<think>`` + ``<code>`` + the real ``<interpreter>`` output + ``\\boxed{}`` is the target
    (interpreter tokens masked). Needs tasks with ``meta['reference_code']``
    (``data.source=math_generated``)."""
    env = cfg.env
    traces = cold_start_traces(train_tasks, timeout_s=env.timeout_s, memory_mb=env.memory_mb,
                               max_output_chars=env.max_output_chars)
    if not len(traces):
        raise DataError("sft.source=math_cold_start: no task has a reference program that runs; "
                        "use data.source=math_generated")
    return cold_start_examples(tokenizer, template, list(traces))
