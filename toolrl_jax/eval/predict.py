"""Greedy answers of a local model for the evaluators: ``predict_fn(tasks) -> texts``.

Every evaluator (:mod:`toolrl_jax.eval.bfcl`, ``apibank``, ``toolrl``) takes a ``predict_fn``;
this one decodes with the rollout engine (no tools run: single-turn answers). The tasks of one
call are grouped by cache length (a power of two >= prompt + ``max_new_tokens``) and each group
is one engine run with continuous refill: a slot whose answer ends takes the next task at once,
so a call of many tasks costs about the sum of its answers' lengths over the slots, not the
number of chunks times the longest answer. Evaluators should therefore pass many tasks per call
(``tasks_per_call``), not one decoding batch.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable

from toolrl_jax.eval.bfcl import PredictFn
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.sampling import SamplingConfig


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_predict_fn(model, tokenizer, template, *, max_new_tokens: int, batch_size: int,
                    max_prompt_tokens: int, log: Callable[[str], None] = _stderr) -> PredictFn:
    """``predict_fn(tasks) -> texts``: greedy answers from the rollout engine (no tools run)."""
    engines: dict[tuple[int, int], RolloutEngine] = {}

    def engine_for(size: int, rows: int) -> RolloutEngine:
        """A cache of ``size`` tokens and no more slots than rows (a power of two, at most
        ``batch_size``): a few tasks never decode a full batch of empty slots."""
        slots = min(batch_size, 1 << max(rows - 1, 0).bit_length())
        if (size, slots) not in engines:
            cfg = RolloutConfig(num_slots=slots, max_new_tokens=max_new_tokens,
                                max_total_len=size, max_turns=1,
                                sampling=SamplingConfig(temperature=0.0))
            engines[size, slots] = RolloutEngine(model, cfg, tokenizer=tokenizer,
                                                 template=template)
        return engines[size, slots]

    def predict(tasks):
        prompts = [template.render_prompt(tokenizer, t.messages, add_generation_prompt=True)
                   for t in tasks]
        texts = [""] * len(tasks)
        too_long = sum(len(p) > max_prompt_tokens for p in prompts)
        if too_long:
            log(f"eval: {too_long} prompts over --max-prompt-tokens={max_prompt_tokens} "
                "answered with an empty string")
        for size, rows in cache_groups(prompts, max_new_tokens, max_prompt_tokens).items():
            traj = engine_for(size, len(rows)).run(
                [RolloutRequest(prompt_ids=prompts[i]) for i in rows])
            for row, i in enumerate(rows):
                texts[i] = traj.completion_text(row, tokenizer, skip_special_tokens=True)
        return texts

    return predict


def cache_groups(prompts, max_new_tokens: int, max_prompt_tokens: int) -> dict[int, list[int]]:
    """Cache length -> indices of the prompts decoded in it: the power of two (at least 256)
    that holds prompt + ``max_new_tokens``; prompts over ``max_prompt_tokens`` are left out."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) <= max_prompt_tokens:
            groups[max(256, 1 << (len(p) + max_new_tokens - 1).bit_length())].append(i)
    return dict(sorted(groups.items()))
