"""FTRL environment builder: specs, builds, ground-truth checks, per-turn rewards, determinism."""

import json
import random
import shutil

import pytest

from toolrl_jax.chat.toolrl_prompt import TOOLRL_SYSTEM_HEADER, parse_toolrl_user_message
from toolrl_jax.cli import main as cli_main
from toolrl_jax.data.task import parse_ground_truth_calls
from toolrl_jax.envgen import (
    LEVELS, BuildOptions, SubGoal, TurnInput, build_env_dir, build_tasks, check_env_dir, env_for_tasks,
    ftrl_turn_rewards, load_env_tasks, load_spec, loads_spec, make_world, replay, score_task,
)
from toolrl_jax.envgen.builder import gt_turn_inputs, read_env_dir, task_world
from toolrl_jax.envgen.world import ToolError
from toolrl_jax.errors import DataError
from toolrl_jax.envgen.evaluation import evaluate_envs, texts_episodes_fn
from toolrl_jax.toolcalls.types import ToolCall
from toolrl_jax.tools.executor import ToolExecutor

from tests.conftest import REPO

DOMAINS = ("banking", "travel", "inventory", "calendar")
SPECS = {d: REPO / "configs" / "envs" / f"{d}.yaml" for d in DOMAINS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("envs")
    return {d: (root / d, build_env_dir(SPECS[d], root / d, BuildOptions(num_tasks=250, seed=0))) for d in DOMAINS}


# ----------------------------------------------------------------------------- builds and checks
@pytest.mark.parametrize("domain", DOMAINS)
def test_each_spec_builds_200_tasks_over_all_levels_and_check_reaches_every_subgoal(built, domain):
    path, manifest = built[domain]
    spec, tasks, _ = read_env_dir(path)
    assert len(tasks) >= 200 and manifest["num_tasks"] == len(tasks)
    per_level = {lv: sum(t.level == lv for t in tasks) for lv in LEVELS}
    assert all(n >= 20 for n in per_level.values()), per_level
    # every level is what it claims: call structure of the ground truth
    for t in tasks:
        call_turns = [turn for turn in t.turns if "calls" in turn]
        if t.level == "single":
            assert len(call_turns) == 1 and len(call_turns[0]["calls"]) == 1
        elif t.level == "parallel":
            assert len(call_turns) == 1 and len(call_turns[0]["calls"]) >= 2
        elif t.level in ("sequential", "multihop"):
            # an output feeds a later input: turn 2 uses a value that only turn 1's result shows
            assert len(call_turns) >= 2
            episode = replay(task_world(spec, t), gt_turn_inputs(t))
            first_result = episode.turns[0].calls[0].text
            fed = [v for v in call_turns[1]["calls"][0]["arguments"].values()
                   if isinstance(v, str) and v in first_result and v not in t.query]
            assert fed, (t.query, first_result, call_turns[1])
        else:
            assert "response" in t.turns[-1] and any(g.kind == "ask" for g in t.subgoals)
    report = check_env_dir(path)
    assert report.ok, report.failures[:3]
    assert sum(r["tasks"] for r in report.per_level.values()) == len(tasks)
    assert all(r["reached"] == r["subgoals"] and r["complete"] == r["tasks"] for r in report.per_level.values())


def _corrupt_value(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    return v + "X"


def test_corrupted_ground_truth_is_detected(built, tmp_path):
    src, _ = built["banking"]
    dst = tmp_path / "corrupt"
    shutil.copytree(src, dst)
    lines = (dst / "tasks.jsonl").read_text().splitlines()
    corrupted = set()
    for level in ("single", "parallel", "sequential", "multihop"):
        i = next(i for i, line in enumerate(lines) if json.loads(line)["level"] == level)
        task = json.loads(lines[i])
        call = task["turns"][-1]["calls"][-1]
        name = sorted(call["arguments"])[0]
        call["arguments"][name] = _corrupt_value(call["arguments"][name])
        lines[i] = json.dumps(task)
        corrupted.add(task["id"])
    (dst / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    report = check_env_dir(dst)
    assert {tid for tid, _ in report.failures} == corrupted
    assert cli_main(["envs", "check", str(dst)]) == 1
    assert cli_main(["envs", "check", str(src)]) == 0


def test_cli_build_writes_docs_tasks_manifest(tmp_path, capsys):
    out = tmp_path / "cal"
    assert cli_main(["envs", "build", "--spec", str(SPECS["calendar"]), "--out", str(out), "--num-tasks", "10",
                     "--seed", "3", "--levels", "single,multihop"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks_per_level"] == {"single": 5, "multihop": 5}
    docs = json.loads((out / "tools.json").read_text())
    doc = next(d for d in docs if d["name"] == "create_event")
    assert doc["parameters"]["required"] == ["title", "date", "start_hour", "room_id", "organizer_id"]
    assert doc["parameters"]["properties"]["duration_min"]["type"] == "integer"
    assert cli_main(["envs", "build", "--spec", str(SPECS["calendar"]), "--out", str(out), "--levels", "solo"]) == 2
    assert "unknown level 'solo'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- spec errors
GOOD = """\
domain: mini
entities:
  account:
    key: account_id
    count: 5
    fields:
      account_id: {type: str, pattern: "A-{n}"}
      balance: {type: float, range: [0, 100], min: 0}
      kind: {type: enum, values: [a, b]}
operations:
  deposit:
    kind: update
    entity: account
    params:
      account_id: {field: account_id, required: true}
      amount: {field: balance, effect: add, required: true}
    returns: [account_id, balance]
    phrases: ["deposit {amount} into {account_id}"]
"""


def _line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("old, new, needle, message", [
    ("field: balance, effect", "field: balanse, effect", "balanse",
     "unknown field 'balanse' of entity 'account'"),
    ("balance: {type: float", "balance: {type: integer", "integer", "type 'integer' is not valid"),
    ("entity: account\n    params", "entity: acount\n    params", "acount", "unknown entity 'acount'"),
    ("returns: [account_id, balance]", "returns: [account_id, balanse]", "balanse",
     "returns unknown field 'balanse'"),
    ('phrases: ["deposit {amount} into {account_id}"]', 'phrases: ["deposit money into {account_id}"]',
     "deposit money", "omits required param 'amount'"),
    ("required: true}\n    returns", "required: yes please}\n    returns", "yes please", "required must be true or false"),
])
def test_spec_mistakes_name_the_line_and_the_fix(tmp_path, old, new, needle, message):
    assert old in GOOD
    text = GOOD.replace(old, new)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_spec(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:{_line_of(text, needle)}:"), msg
    assert message in msg and "fix:" in msg
    assert "\n" not in msg


def test_spec_mistake_suggests_the_close_name(tmp_path):
    with pytest.raises(DataError, match="did you mean 'balance'"):
        loads_spec(GOOD.replace("field: balance, effect", "field: balanse, effect"), "x.yaml")
    loads_spec(GOOD, "good.yaml")  # the unmodified spec is valid


# ----------------------------------------------------------------------------- FTRL per-turn reward
def ref_turn_rewards(turns, goals):
    """Plain-Python FTRL reference for call sub-goals: goals are (name, args) pairs; a turn is a
    list of (name, args, ok) or the string 'TEXT'."""
    open_goals = list(goals)
    out = []
    for turn in turns:
        if turn == "TEXT":
            out.append(1.0 / (1 + len(open_goals)))
            continue
        s = 0
        for name, args, ok in turn:
            if ok and (name, args) in open_goals:
                open_goals.remove((name, args))
                s += 1
        out.append(2.0 * s / (len(turn) + 1))
    return out


def _call_tasks(path, level):
    spec, tasks, _ = read_env_dir(path)
    return spec, [t for t in tasks if t.level == level and all(g.kind == "call" for g in t.subgoals)]


def test_ftrl_rewards_match_reference_on_scripted_trajectories(built):
    spec, tasks = _call_tasks(built["travel"][0], "parallel")
    rng = random.Random(0)
    checked = 0
    for task in tasks[:15]:
        gt = [(c["name"], c["arguments"]) for c in task.turns[0]["calls"]]
        goals = [(g.tool, dict(g.arguments)) for g in task.subgoals]
        assert sorted(map(json.dumps, goals)) == sorted(json.dumps((n, a)) for n, a in gt)  # no defaults here
        for _ in range(4):
            script, ref_turns = [], []
            for _ in range(rng.randint(1, 4)):
                if rng.random() < 0.2:
                    script.append(TurnInput(text="<response> done </response>"))
                    ref_turns.append("TEXT")
                    continue
                calls, ref = [], []
                for _ in range(rng.randint(1, 3)):
                    pick = rng.random()
                    if pick < 0.6:  # a ground-truth call (maybe a repeat: solves once)
                        name, args = rng.choice(gt)
                        calls.append(ToolCall(name, dict(args)))
                        ref.append((name, args, True))
                    elif pick < 0.8:  # a failed call: unknown tool
                        calls.append(ToolCall("no_such_tool", {}))
                        ref.append(("no_such_tool", {}, False))
                    else:  # a failed call: wrong argument type
                        name, args = rng.choice(gt)
                        bad = {k: 12345 for k in args}
                        calls.append(ToolCall(name, bad))
                        ref.append((name, bad, False))
                script.append(TurnInput(calls=tuple(calls)))
                ref_turns.append(ref)
            episode = replay(task_world(spec, task), script)
            got = ftrl_turn_rewards(episode.turns, task.subgoals)
            assert got == pytest.approx(ref_turns and ref_turn_rewards(ref_turns, goals), abs=1e-6)
            checked += 1
    assert checked >= 20


def test_ftrl_rewards_hand_cases_on_state_subgoals(built):
    spec, tasks, _ = read_env_dir(built["banking"][0])
    task = next(t for t in tasks if t.level == "multihop" and t.turns[-1]["calls"][0]["name"] == "freeze_account")
    (read,), (freeze,) = [tuple(ToolCall(c["name"], c["arguments"]) for c in turn["calls"]) for turn in task.turns]
    bad = ToolCall("freeze_account", {"account_id": "ACC-NOPE"})  # fails: no such account
    script = [TurnInput(calls=(read, read)),                 # k=2, s=1 -> 2/3
              TurnInput(text="<response> Let me check. </response>"),  # 1 goal open -> 1/2
              TurnInput(calls=(bad, freeze, freeze)),        # failed call counts in k; freezing twice solves once -> 2/4
              TurnInput(text="<think> ok </think><response> Frozen. </response>")]  # nothing open -> 1
    episode = replay(task_world(spec, task), script)
    assert ftrl_turn_rewards(episode.turns, task.subgoals) == pytest.approx([2 / 3, 1 / 2, 2 / 4, 1.0])
    assert [c.ok for c in episode.turns[2].calls] == [False, True, True]


def test_missing_info_ask_turn_and_guards(built):
    _, tasks, _ = read_env_dir(built["travel"][0])
    task = next(t for t in tasks if t.level == "missing_info" and len(t.turns) == 1)
    ask = next(g for g in task.subgoals if g.kind == "ask")
    tt = next(t for t in load_env_tasks(built["travel"][0]) if t.id == task.id)
    asked = score_task(tt, [TurnInput(text=f"<response> What is the {ask.keywords[0]}? </response>")])
    assert asked.success and asked.turn_rewards == (1.0,)
    vague = score_task(tt, [TurnInput(text="<response> Sure, done! </response>")])
    assert not vague.success and vague.turn_rewards == (0.5,)  # 1 / (1 + 1 unsolved)
    guessed = score_task(tt, [TurnInput(calls=(ToolCall(g.tool or "get_flight", {}),)) for g in task.guards
                              if g.kind == "not_called"] + [TurnInput(text=f"<response> {ask.keywords[0]}? </response>")])
    assert not guessed.guards_ok and not guessed.success


# ----------------------------------------------------------------------------- determinism, world, training
def test_build_is_deterministic_for_a_seed():
    spec = load_spec(SPECS["inventory"])
    opts = BuildOptions(num_tasks=30, seed=7)
    a = [t.to_dict() for t in build_tasks(spec, opts).tasks]
    b = [t.to_dict() for t in build_tasks(spec, opts).tasks]
    c = [t.to_dict() for t in build_tasks(spec, BuildOptions(num_tasks=30, seed=8)).tasks]
    assert a == b and a != c
    w1, w2 = make_world(spec, 5, noise=1.0, noise_seed=2), make_world(spec, 5, noise=1.0, noise_seed=2)
    assert w1.tables == w2.tables and w1.tables != make_world(spec, 6).tables
    key = next(iter(w1.tables["product"]))
    assert w1.get_product(sku=key) == w2.get_product(sku=key) and "_meta" in w1.get_product(sku=key)


def test_world_validates_arguments_with_clear_errors():
    world = make_world(load_spec(SPECS["banking"]), 1)
    acc = next(iter(world.tables["account"]))
    with pytest.raises(ToolError, match="argument 'kind' must be one of"):
        world.list_accounts(customer_id="CU-0001", kind="crypto")
    with pytest.raises(ToolError, match="missing required argument 'amount'"):
        world.deposit(account_id=acc)
    with pytest.raises(ToolError, match="cannot go below 0"):
        world.withdraw(account_id=acc, amount=world.tables["account"][acc]["balance"] + 1)
    with pytest.raises(ToolError, match="not found"):
        world.get_account(account_id="ACC-9999")
    before = world.tables["account"][acc]["balance"]
    assert world.deposit(account_id=acc, amount=10) == {"account_id": acc, "balance": round(before + 10, 2)}


def test_training_tasks_and_per_trajectory_environment(built):
    path = built["banking"][0]
    tasks = load_env_tasks(path, levels=["sequential"], limit=4)
    assert len(tasks) == 4
    for t in tasks:
        assert t.system.startswith(TOOLRL_SYSTEM_HEADER)
        assert parse_toolrl_user_message(t.user) == [{"role": "user", "content": t.meta["query"]}]
        assert parse_ground_truth_calls(t.ground_truth) == t.ground_truth_calls
        assert t.ground_truth_calls == t.meta["ground_truth_turns"][0]["calls"]
        assert {d["name"] for d in t.tools} == set(t.meta["env"]["tools"])
    env = env_for_tasks(tasks)
    with ToolExecutor(environment=env) as ex:
        finals = []
        for i, t in enumerate(tasks):  # two trajectories per task: their worlds are separate
            for uid in (2 * i, 2 * i + 1):
                ex.start(uid, t)
            for turn in t.meta["ground_truth_turns"]:
                results = ex.run(2 * i, [ToolCall(c["name"], c["arguments"]) for c in turn["calls"]])
                assert all(r.ok for r in results), results
            done, untouched = ex.finish(2 * i), ex.finish(2 * i + 1)
            assert done.tables != untouched.tables
            finals.append((t, done.snapshot()))
        for t, snap in finals:
            for g in t.meta["subgoals"]:
                goal = SubGoal.from_dict(g)
                assert goal.kind == "call" or goal.holds(snap)
        bad = ex.run(99, [ToolCall("get_account", {"account_id": "ACC-0001"})])  # never started: no world
        assert not bad[0].ok


def test_evaluate_envs_on_scripted_completions(built):
    from toolrl_jax.data.task import render_toolrl_output

    tasks = load_env_tasks(built["calendar"][0], limit=250)[::10]
    perfect = {t.id: [render_toolrl_output(turn["calls"]) if "calls" in turn else
                      render_toolrl_output(response=turn["response"]) for turn in t.meta["ground_truth_turns"]]
               + ([] if "response" in t.meta["ground_truth_turns"][-1] else [render_toolrl_output(response="Done.")])
               for t in tasks}
    res = evaluate_envs(tasks, texts_episodes_fn(perfect))
    assert res["overall"]["success_rate"] == 1.0 and res["overall"]["subgoal_completion"] == 1.0
    assert set(res["per_level"]) == set(LEVELS)
    silent = evaluate_envs(tasks, texts_episodes_fn({}))
    assert silent["overall"]["success_rate"] == 0.0 and silent["overall"]["subgoal_completion"] == 0.0


class _CharTokenizer:
    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


def test_trajectory_turns_follow_the_engine_log(built):
    """Turns from a rollout Trajectory row: logged calls run, parse errors and calls the engine
    never ran (max_turns) count as failed calls, a plain answer is a text turn."""
    import numpy as np

    from toolrl_jax.data.task import render_toolrl_output
    from toolrl_jax.envgen import trajectory_turns

    task = next(t for t in load_env_tasks(built["banking"][0]) if t.meta["level"] == "single")
    call = task.ground_truth_calls[0]
    texts = [render_toolrl_output([call]), "<think> x </think>\n<tool_call>\nnot json\n</tool_call>",
             render_toolrl_output([call]), "<think> x </think>\n<response> done </response>"]
    ids = [list(map(ord, t)) for t in texts]

    class FakeTrajectory:
        num_turns = np.array([4])
        tool_calls = [[{"turn": 0, "name": call["name"], "arguments": call["arguments"], "ok": True},
                       {"turn": 1, "name": None, "arguments": None, "ok": False}]]

        @staticmethod
        def turn_ids(row, turn):
            return np.array(ids[turn])

    turns = trajectory_turns(FakeTrajectory, 0, _CharTokenizer())
    assert [len(t.calls) for t in turns] == [1, 0, 0, 0] and [t.failed_calls for t in turns] == [0, 1, 1, 0]
    score = score_task(task, turns)
    assert score.success and score.turn_rewards == pytest.approx([1.0, 0.0, 0.0, 1.0])


def test_paraphrase_and_distractor_knobs():
    spec = load_spec(SPECS["travel"])
    plain = build_tasks(spec, BuildOptions(num_tasks=20, paraphrase=False, distractors=0)).tasks
    varied = build_tasks(spec, BuildOptions(num_tasks=20, paraphrase=True, distractors=2)).tasks
    wrappers = {t.query.split()[0] for t in varied}
    assert all(t.query.endswith(".") and not t.query.startswith(("Please", "Could", "Hi")) for t in plain)
    assert len(wrappers) > 2
    for t in plain:
        needed = {c["name"] for turn in t.turns for c in turn.get("calls", ())}
        assert set(t.tools) == needed | {g.tool for g in t.guards if g.kind == "not_called"}
    assert all(len(t.tools) == len(set(t.tools)) for t in varied)
    for t in varied:
        needed = {c["name"] for turn in t.turns for c in turn.get("calls", ())}
        needed |= {g.tool for g in t.guards if g.kind == "not_called"}
        assert needed <= set(t.tools) and len(t.tools) == len(needed) + 2
