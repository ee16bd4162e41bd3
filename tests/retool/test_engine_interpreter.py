"""A scripted policy emitting code cells through the rollout engine with the real code
interpreter: the token stream is exactly prompt + generated ids (verbatim, mask 1) + the
interpreter blocks of the real sandbox output (mask 0)."""

from __future__ import annotations

import pytest

from toolrl_jax.data.math import math_task
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.turns import Environment, code_extractor
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.tools.code_interpreter import code_interpreter_environment
from toolrl_jax.tools.executor import ToolExecutor

from ..rollout._models import OraclePolicy


@pytest.fixture(scope="module")
def qwen():
    from toolrl_jax.chat import find_test_tokenizer, load_tokenizer

    return load_tokenizer(find_test_tokenizer("qwen3"))


def ids_of(tok, pieces):
    out = []
    for p in pieces:
        out += tok.encode(p, add_special_tokens=False)
    return out


def add_script(scripts, prefix, continuation):
    for j, t in enumerate(continuation):
        scripts[tuple(prefix + continuation[:j])] = t


def interpreter_ids(tok, text):
    return tok.encode(f"\n<interpreter>\n{text}\n</interpreter>\n", add_special_tokens=False)


def run_engine(tok, scripts, task, *, stateful):
    policy = OraclePolicy(scripts, vocab_size=len(tok), max_len=1024, default_token=tok.eos_token_id)
    env = code_interpreter_environment(stateful=stateful, timeout_s=5, memory_mb=256,
                                       max_output_chars=300)
    executor = ToolExecutor(environment=env, timeout_s=env.executor_timeout_s(4))
    config = RolloutConfig(num_slots=1, max_new_tokens=48, max_total_len=256, max_turns=4,
                           chunk_steps=7, sampling=SamplingConfig(temperature=0.0),
                           pad_multiple=1)
    environment = Environment(executor=executor, extract_calls=code_extractor(),
                              observation_format="interpreter", tool_stop_strings=("</code>",))
    engine = RolloutEngine(policy, config, tokenizer=tok, environment=environment,
                           init_cache=policy.init_cache)
    return engine.run([RolloutRequest(messages=task.messages, task=task)])


def test_code_cells_stream_is_exact_and_stateful_mode_keeps_variables(qwen):
    tok = qwen
    task = math_task("t", "What is 6 * 7 + 1?", "43", "test")
    prompt = list(tok.apply_chat_template(task.messages, add_generation_prompt=True,
                                          tokenize=True)["input_ids"])
    # non-canonical splits ("pri" + "nt"): a decode/re-encode in the engine would change the ids
    turn1 = ids_of(tok, ["<think>\nI compute it.\n</think>\n<code>\n```python\nx = 6 * 7\npri",
                         "nt(x)\n```\n</code>"])
    assert tok.encode(tok.decode(turn1), add_special_tokens=False) != turn1
    obs1 = interpreter_ids(tok, "42")
    turn2 = ids_of(tok, ["<code>\n```python\npr", "int(x + 1)\n```\n</code>"])
    obs2 = interpreter_ids(tok, "43")
    turn3 = ids_of(tok, ["So the answer is \\boxed{43}.", "<|im_end|>"])
    scripts = {}
    add_script(scripts, prompt, turn1)
    add_script(scripts, prompt + turn1 + obs1, turn2)
    add_script(scripts, prompt + turn1 + obs1 + turn2 + obs2, turn3)

    traj = run_engine(tok, scripts, task, stateful=True)
    expected = prompt + turn1 + obs1 + turn2 + obs2 + turn3
    mask = ([0] * len(prompt) + [1] * len(turn1) + [0] * len(obs1) + [1] * len(turn2)
            + [0] * len(obs2) + [1] * len(turn3))
    for row in range(len(traj)):
        n = int(traj.lengths[row])
        assert traj.tokens[row, :n].tolist() == expected
        assert traj.loss_mask[row, :n].tolist() == mask
        assert traj.stop_reasons[row] == "eos" and traj.num_turns[row] == 3
        assert [c["text"] for c in traj.tool_calls[row]] == ["42", "43"]
        assert [c["arguments"]["code"] for c in traj.tool_calls[row]] == ["x = 6 * 7\nprint(x)",
                                                                          "print(x + 1)"]

    # stateless: the second cell does not see x; its traceback is the interpreter text
    traj = run_engine(tok, scripts, task, stateful=False)
    text = traj.tool_calls[0][1]["text"]
    assert "NameError: name 'x' is not defined" in text
    assert text.splitlines()[-1] == "Error: the cell failed (exit code 1)"
    start = len(prompt) + len(turn1) + len(obs1) + len(turn2)
    stateless_obs = interpreter_ids(tok, text)
    assert traj.tokens[0, start:start + len(stateless_obs)].tolist() == stateless_obs
    assert traj.loss_mask[0, start:start + len(stateless_obs)].sum() == 0
