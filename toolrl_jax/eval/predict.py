"""Greedy answers of a local model for the evaluators: ``predict_fn(tasks) -> texts``.

Every evaluator (:mod:`toolrl_jax.eval.bfcl`, ``apibank``, ``toolrl``) takes a ``predict_fn``;
this one decodes with the rollout engine (no tools run: single-turn answers), in caches of a
power-of-two length so a few tasks never decode a full batch of empty slots.
"""

from __future__ import annotations

import sys
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

    def engine_for(total: int, rows: int) -> RolloutEngine:
        """A cache of a power-of-two length and no more slots than rows (a power of two, at
        most ``batch_size``): a few tasks never decode a full batch of empty slots."""
        size = max(256, 1 << (total - 1).bit_length())
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
        ok = [i for i, p in enumerate(prompts) if len(p) <= max_prompt_tokens]
        if len(ok) < len(prompts):
            log(f"eval: {len(prompts) - len(ok)} prompts over --max-prompt-tokens="
                  f"{max_prompt_tokens} answered with an empty string")
        if not ok:
            return texts
        longest = max(len(prompts[i]) for i in ok)
        eng = engine_for(longest + max_new_tokens, len(ok))
        traj = eng.run([RolloutRequest(prompt_ids=prompts[i]) for i in ok])
        for row, i in enumerate(ok):
            texts[i] = traj.completion_text(row, tokenizer, skip_special_tokens=True)
        return texts

    return predict
