"""``eval.predict``: all tasks of a call decoded by cache-length group with slot refill give
the same greedy answers, in the same order, as each task decoded alone."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from toolrl_jax.chat import detect_template, load_tokenizer
from toolrl_jax.data.generated import generate_tasks
from toolrl_jax.eval.predict import cache_groups, make_predict_fn
from toolrl_jax.models.registry import load_model


def test_cache_groups_by_hand():
    prompts = [[0] * 100, [0] * 300, [0] * 200, [0] * 900, [0] * 50]
    # 100+60 -> 256, 300+60 -> 512, 200+60=260 -> 512; 900 is over the prompt limit
    assert cache_groups(prompts, 60, 800) == {256: [0, 4], 512: [1, 2]}
    assert cache_groups(prompts, 60, 1000) == {256: [0, 4], 512: [1, 2], 1024: [3]}
    assert cache_groups([], 60, 1000) == {}


@pytest.mark.slow
def test_one_call_with_refill_matches_each_task_alone(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    # sharpen the random weights, so greedy answers depend on the prompt (not one token forever)
    params = nnx.state(loaded.model, nnx.Param)
    nnx.update(loaded.model, jax.tree.map(lambda x: x * 6.0, params))
    tok = load_tokenizer(str(tiny_model_dir))
    template = detect_template(tok)
    tasks = generate_tasks(5, seed=3, prompt_style="compact")
    prompts = [template.render_prompt(tok, t.messages, add_generation_prompt=True) for t in tasks]
    groups = cache_groups(prompts, 40, 10_000)
    predict = make_predict_fn(loaded.model, tok, template, max_new_tokens=40, batch_size=2,
                              max_prompt_tokens=10_000, log=lambda m: None)
    together = predict(tasks)  # 5 tasks, 2 slots: slots refill
    alone = [predict([t])[0] for t in tasks]
    assert together == alone
    assert len(set(together)) > 1 and all(together)
    assert sum(len(v) for v in groups.values()) == 5
