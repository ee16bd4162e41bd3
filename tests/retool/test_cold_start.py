"""Cold-start traces with real sandbox output, and their SFT ids / loss masks."""

from __future__ import annotations

import dataclasses

import pytest

from toolrl_jax.data.cold_start import (
    cold_start_example,
    cold_start_traces,
    split_interpreter_blocks,
)
from toolrl_jax.data.math import generate_math_tasks
from toolrl_jax.tools import python_sandbox
from toolrl_jax.train.sft import sft_example


@pytest.fixture(scope="module")
def smol():
    from toolrl_jax.chat import detect_template, find_test_tokenizer, load_tokenizer

    tok = load_tokenizer(find_test_tokenizer("smollm2"))
    return tok, detect_template(tok)


def test_traces_carry_the_real_sandbox_output_and_the_answer():
    tasks = generate_math_tasks(6, seed=11)
    broken = dataclasses.replace(tasks[0], id="broken",
                                 meta={**tasks[0].meta, "reference_code": "print(1/0)"})
    traces = cold_start_traces(tasks + [broken], timeout_s=10)
    assert len(traces) == 6 and traces.skipped == ("broken",)
    for task, (messages, text) in zip(tasks, traces):
        assert messages == task.messages
        printed = python_sandbox.run(task.meta["reference_code"], timeout_s=10).stdout.rstrip("\n")
        assert text.startswith("<think>\n") and "</think>\n<code>\n```python\n" in text
        assert f"\n```\n</code>\n<interpreter>\n{printed}\n</interpreter>\n" in text
        assert text.endswith(f"\\boxed{{{task.ground_truth}}}.")
        assert task.meta["reference_code"] in text


def test_split_interpreter_blocks():
    text = "a<code>x</code>\n<interpreter>\n1\n</interpreter>\nb\n<interpreter>\nunclosed"
    assert split_interpreter_blocks(text) == [
        ("a<code>x</code>", False), ("\n<interpreter>\n1\n</interpreter>\n", True),
        ("b\n<interpreter>\nunclosed", False)]
    assert split_interpreter_blocks("") == []


def test_example_masks_interpreter_tokens_only(smol):
    tok, template = smol
    task = generate_math_tasks(1, seed=2)[0]
    (messages, text), = cold_start_traces([task], timeout_s=10)
    ids, mask = cold_start_example(tok, template, messages, text)
    prompt = template.render_prompt(tok, messages, add_generation_prompt=True)
    assert ids[:len(prompt)] == list(prompt) and sum(mask[:len(prompt)]) == 0
    # independent reference: encode each piece on its own (as the engine does)
    expected_ids, expected_mask = list(prompt), [0] * len(prompt)
    for piece, is_obs in split_interpreter_blocks(text):
        piece_ids = tok.encode(piece, add_special_tokens=False)
        expected_ids += piece_ids
        expected_mask += [0 if is_obs else 1] * len(piece_ids)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids == expected_ids + [eot] and mask == expected_mask + [1]
    masked_text = tok.decode([t for t, m in zip(ids[len(prompt):], mask[len(prompt):]) if not m])
    assert masked_text.startswith("\n<interpreter>\n") and masked_text.endswith("\n</interpreter>\n")


def test_example_without_code_equals_sft_example(smol):
    tok, template = smol
    messages = generate_math_tasks(1, seed=4)[0].messages
    answer = "<think>\nEasy.\n</think>\nThe answer is \\boxed{3}."
    ids, mask = cold_start_example(tok, template, messages, answer)
    ref_ids, ref_mask = sft_example(tok, template, messages, answer)
    assert ref_ids[:len(ids)] == ids and ref_mask[:len(mask)] == mask
    assert sum(ref_mask[len(ids):]) == 0  # only the separator after the end of turn follows
