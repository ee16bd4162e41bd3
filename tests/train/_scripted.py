"""A tokenizer-free scripted world for strategy tests: an oracle policy (next token = lookup of
the exact prefix), a ``size(n)`` tool whose observation is ``[60] + [61] * n`` (an error is
``[62]``), and a fake trainer context exposing what strategies use."""

from __future__ import annotations

import dataclasses
import types

from toolrl_jax.data.task import ToolTask
from toolrl_jax.rl.train_step import AlgoConfig
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.turns import Environment
from toolrl_jax.toolcalls.types import ToolCall
from toolrl_jax.tools import ToolExecutor, function_tool
from toolrl_jax.train.fission import FissionConfig
from toolrl_jax.train.tree import TreeConfig

from tests.rollout._models import OraclePolicy

EOS, TOOL_END, OBS, ONE, ERR = 2, 50, 60, 61, 62
WORDS = {10: "size 2", 13: "size 1", 14: "size 1", 15: "size -1"}


def add_script(scripts, prefix, continuation):
    for j, t in enumerate(continuation):
        scripts[tuple(prefix + continuation[:j])] = t


def observation(n: int) -> list[int]:
    return [OBS] + [ONE] * n


def environment() -> Environment:
    @function_tool
    def size(n: int) -> int:
        """Returns n, fails for a negative n.

        Args:
          n: a size.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        return n

    def extract(text):
        parts = text.split()
        if len(parts) >= 2 and parts[0] == "size":
            return [ToolCall("size", {"n": int(parts[1])})], ""
        return [], "no size call"

    def render(turn_ids, results):
        ids = []
        for _, text in results:
            ids += observation(int(text)) if text.strip().isdigit() else [ERR]
        return ids

    return Environment(executor=ToolExecutor([size], timeout_s=5.0), extract_calls=extract,
                       render_observation=render,
                       decode_text=lambda ids: " ".join(WORDS.get(t, "") for t in ids))


def context(scripts, prompts, *, samples, max_turns, num_slots, tree=None, fission=None,
            algo=None, prompts_per_step=None):
    """A fake trainer: ``cfg``, ``engine('train')``, prompts and tasks, ``pad_id``."""
    policy = OraclePolicy(scripts, vocab_size=64, max_len=256, default_token=EOS)
    rollout = RolloutConfig(strategy="tree", prompts_per_step=prompts_per_step or len(prompts),
                            samples_per_prompt=samples, num_slots=num_slots, max_new_tokens=8,
                            max_total_len=64, max_turns=max_turns, chunk_steps=3,
                            sampling=SamplingConfig(temperature=0.0), pad_multiple=1)
    engine = RolloutEngine(policy, rollout, environment=environment(), eos_ids=[EOS],
                           tool_stop_sequences=[[TOOL_END]], init_cache=policy.init_cache)
    cfg = types.SimpleNamespace(rollout=rollout, tree=tree or TreeConfig(),
                                fission=fission or FissionConfig(), algo=algo or AlgoConfig())
    tasks = [ToolTask(id=f"t{j}", messages=[], tools=[], ground_truth="", ground_truth_calls=[],
                      meta={}) for j in range(len(prompts))]

    @dataclasses.dataclass(eq=False)
    class Ctx:
        samples_per_prompt: int
        train_tasks: list
        train_prompts: list
        cfg: object
        pad_id: int = 0

        def engine(self, kind):
            return engine

        def rollout(self, prompts, group_ids, tasks, *, seed):
            reqs = [RolloutRequest(prompt_ids=list(p), group_id=int(g), task=t)
                    for p, g, t in zip(prompts, group_ids, tasks)]
            return engine.run(reqs, seed=seed)

    return Ctx(samples, tasks, [list(p) for p in prompts], cfg)
