"""BFCLEnvironment runs BFCL multi-turn calls exactly as bfcl-eval's own executor does.

Reference: ``bfcl_eval``'s ``execute_multi_turn_func_call`` (eval of BFCL's ground-truth call
strings on instances it keeps in its module globals) and its ``state_checker`` (attribute-wise
comparison of backend instances).
"""

from __future__ import annotations

import re
import uuid

import pytest

pytest.importorskip("bfcl_eval")
pytest.importorskip("mpmath")

from toolrl_jax.data.bfcl import bfcl_training_tasks, load_bfcl, parse_call_string  # noqa: E402
from toolrl_jax.eval.bfcl_env import BFCLEnvironment, execute_bfcl_call  # noqa: E402
from toolrl_jax.tools.executor import ToolExecutor  # noqa: E402

# entries of multi_turn_base that together involve all eight backend classes
ENTRY_INDICES = (0, 2, 14, 15, 50, 100, 150)


@pytest.fixture(scope="module")
def base_tasks():
    return list(load_bfcl("multi_turn_base", limit=max(ENTRY_INDICES) + 1))


@pytest.fixture(scope="module")
def env():
    return BFCLEnvironment()


@pytest.fixture(scope="module")
def bfcl_reference():
    from toolrl_jax.eval.bfcl import bfcl_multi_turn

    _, execute, utils = bfcl_multi_turn()
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import state_checker

    model_name = f"toolrl_jax_test_{uuid.uuid4().hex[:8]}"
    yield execute, state_checker, model_name
    prefix = re.sub(r"[-./:]", "_", model_name)
    g = vars(utils)
    for key in [k for k in g if k.startswith(prefix)]:
        del g[key]


def _executor(env):
    return ToolExecutor(environment=env, timeout_s=30.0, max_observation_chars=10**7, max_workers=1)


@pytest.mark.parametrize("index", ENTRY_INDICES)
def test_ground_truth_matches_bfcl_execution(index, base_tasks, env, bfcl_reference):
    execute, state_checker, model_name = bfcl_reference
    task = base_tasks[index]
    meta = task.meta
    executor = _executor(env)
    executor.start("traj", task)
    all_ref = []
    for turn, strings in enumerate(meta["turn_ground_truth"]):
        calls = [parse_call_string(s, meta["functions"]) for s in strings]
        ours = executor.run("traj", calls)
        ref, ref_instances = execute(
            list(strings), meta["initial_config"], meta["involved_classes"], model_name, meta["bfcl_id"],
            long_context=False, is_evaL_run=False)
        assert [r.text for r in ours] == ref, f"{meta['bfcl_id']} turn {turn}"
        assert all(r.error_kind is None for r in ours)
        all_ref.extend(ref)
    state = executor.finish("traj")
    assert state_checker(state.instances, ref_instances) == {"valid": True}
    assert len(state.call_strings) == sum(len(t) for t in meta["turn_ground_truth"])
    assert state.results == all_ref  # every call logged, in order
    executor.close()


def test_trajectories_of_one_entry_keep_separate_state(base_tasks, env):
    task = base_tasks[0]  # GorillaFileSystem + TwitterAPI
    executor = _executor(env)
    executor.start("a", task)
    executor.start("b", task)
    out_a = executor.run("a", [{"name": "mkdir", "arguments": {"dir_name": "zz_only_in_a"}},
                               {"name": "cd", "arguments": {"folder": "zz_only_in_a"}},
                               {"name": "pwd", "arguments": {}},
                               {"name": "ls", "arguments": {}}])
    out_b = executor.run("b", [{"name": "pwd", "arguments": {}}, {"name": "ls", "arguments": {}}])
    assert "zz_only_in_a" in out_a[2].text
    assert "zz_only_in_a" not in out_b[0].text
    assert "zz_only_in_a" not in out_b[1].text
    assert "document" in out_b[1].text  # the entry's initial tree is there
    state_a, state_b = executor.finish("a"), executor.finish("b")
    fs_a, fs_b = state_a.instances["GorillaFileSystem"], state_b.instances["GorillaFileSystem"]
    assert fs_a is not fs_b
    assert state_b.call_strings == ["pwd()", "ls()"]
    # a fresh reset of the same entry starts from the initial config again
    fresh = env.reset("c", task)
    assert "zz_only_in_a" not in execute_bfcl_call(fresh, "ls", {})


def test_bad_calls_become_error_text(base_tasks, env):
    task = base_tasks[0]  # GorillaFileSystem + TwitterAPI: no TradingBot functions
    executor = _executor(env)
    executor.start("t", task)
    results = executor.run("t", [
        {"name": "no_such_function", "arguments": {}},
        {"name": "get_stock_info", "arguments": {"symbol": "AAPL"}},  # another class's function
        {"name": "cd", "arguments": {"folder": 3}},  # wrong type
        {"name": "cd", "arguments": {}},  # missing required
        {"name": "cd", "arguments": {"folder": "x", "extra": 1}},  # unknown argument
        {"name": "cd", "arguments": "{not json"},
        {"name": "cat", "arguments": {"file_name": "does_not_exist.txt"}},  # backend error
    ])
    kinds = [r.error_kind for r in results]
    assert kinds[0] == "unknown_tool"
    assert "unknown function 'get_stock_info'" in results[1].text and "cd" in results[1].text
    assert kinds[2:6] == ["bad_arguments"] * 4
    assert all(r.text.startswith("Error") for r in results[:6])
    assert "No such file" in results[6].text or "Error" in results[6].text
    # direct calls: non-literal values, non-identifier names, no task -> text, never an exception
    state = executor.finish("t")
    assert execute_bfcl_call(state, "cd", {"folder": object()}).startswith("Error")
    assert execute_bfcl_call(state, "cd", {"bad-name": "x"}).startswith("Error")
    assert execute_bfcl_call(state, "__class__", {}).startswith("Error")
    assert execute_bfcl_call(env.reset("none", None), "ls", {}).startswith("Error")
    # a positional-style BFCL error: wrong argument name reaching the backend (schema bypassed)
    assert execute_bfcl_call(state, "cd", {"dir": "x"}).startswith("Error during execution")
    executor.close()


def test_training_tasks_ground_truth_scores_max(base_tasks):
    from toolrl_jax.rewards.config import ToolRLRewardConfig
    from toolrl_jax.rewards.toolrl import reward_ranges, score_texts

    tasks = bfcl_training_tasks("multi_turn_base", limit=40)
    assert 30 <= len(tasks) <= 40
    by_id = {t.id: t for t in base_tasks}
    for t in tasks:
        strings = t.meta["ground_truth_call_strings"]
        assert strings == t.meta["turn_ground_truth"][0]
        assert [c["name"] for c in t.ground_truth_calls] == [s.split("(")[0] for s in strings]
        assert t.ground_truth.startswith("<think>") and "<tool_call>\n{" in t.ground_truth
        assert t.meta["initial_config"] == by_id.get(t.id, t).meta["initial_config"]
        assert t.messages[0]["role"] == "system" and t.messages[-1]["role"] == "user"
        assert t.meta["turns"][0][0]["content"] in t.messages[-1]["content"]
    config = ToolRLRewardConfig()
    _, f_hi, _, c_hi = (float(x) for x in reward_ranges(0, config))
    gts = [t.ground_truth for t in tasks]
    best = score_texts(gts, gts, 0, config)["total"]
    assert best.tolist() == pytest.approx([f_hi + c_hi] * len(tasks))
    # and a wrong first step scores lower (the check can fail)
    shifted = gts[1:] + gts[:1]
    worse = score_texts(shifted, gts, 0, config)["total"]
    assert (worse < f_hi + c_hi).any()


def test_training_tasks_reject_single_turn_category():
    from toolrl_jax.errors import DataError

    with pytest.raises(DataError, match="not multi-turn"):
        bfcl_training_tasks("simple_python")


def test_long_context_entry_loads_long_scenario(bfcl_reference):
    execute, state_checker, model_name = bfcl_reference
    env = BFCLEnvironment()
    task = load_bfcl("multi_turn_long_context", limit=1)[0]
    meta = task.meta
    state = env.reset("lc", task)
    strings = meta["turn_ground_truth"][0]
    ours = []
    for s in strings:
        call = parse_call_string(s, meta["functions"])
        ours.append(execute_bfcl_call(state, call["name"], call["arguments"]))
    ref, ref_instances = execute(list(strings), meta["initial_config"], meta["involved_classes"],
                                 model_name + "_lc", meta["bfcl_id"], long_context=True, is_evaL_run=False)
    assert ours == ref
    assert state_checker(state.instances, ref_instances) == {"valid": True}


def test_for_tasks_keeps_only_involved_classes(base_tasks):
    from toolrl_jax.errors import DataError

    env = BFCLEnvironment.for_tasks([base_tasks[50]])  # VehicleControlAPI only
    assert {t.class_name for t in env.tools} == {"VehicleControlAPI"}
    assert len(env.tools) == len(base_tasks[50].meta["functions"])
    with pytest.raises(DataError, match="not in this environment"):
        env.reset("x", base_tasks[0])
    with pytest.raises(DataError, match="unknown BFCL class"):
        BFCLEnvironment(["NoSuchAPI"])
