"""Per-turn credit: reward components that score turns, their composition in ``score()``, the
``turn_grpo`` estimator through the trainer's ``make_batch``, FTRL turns and BFCL user turns.

References are plain Python (the formula of ``rl.turn_advantages``, written out loop by loop),
hand-computed FTRL values and bfcl-eval's own checker."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pytest

from tests.conftest import REPO
from tests.rollout._models import OraclePolicy
from tests.train._scripted import add_script
from toolrl_jax.chat import detect_template, find_test_tokenizer, load_tokenizer
from toolrl_jax.config_io import load_config
from toolrl_jax.data.bfcl import bfcl_training_tasks
from toolrl_jax.data.task import ToolTask
from toolrl_jax.envgen import BuildOptions, build_env_dir, load_env_tasks
from toolrl_jax.errors import ConfigError
from toolrl_jax.eval.bfcl import bfcl_multi_turn
from toolrl_jax.rl.advantages import ESTIMATORS, TokenEstimator
from toolrl_jax.rl.turn_advantages import TurnAdvantageConfig
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.trajectory import Trajectory, TrajectoryRecord
from toolrl_jax.rollout.turns import Environment, ToolTurnHandler
from toolrl_jax.train.batch import Collected
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.distributed import Shares
from toolrl_jax.train.environments import ENVIRONMENTS, EnvironmentConfig
from toolrl_jax.train.rewards import (
    REWARD_COMPONENTS,
    ComponentScore,
    RewardConfig,
    RewardContext,
    Scores,
    score,
    user_turn_spans,
)
from toolrl_jax.train.strategies import RolloutBatch
from toolrl_jax.train.trainer import Trainer


class BareTrainer(Trainer):
    """The trainer's credit stage without a model: ``make_batch`` / ``credit_inputs`` only."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.shares = Shares.create(0, cfg.rollout.prompts_per_step)
        self.pad_id = 0


def _trainer(*overrides: str) -> BareTrainer:
    return BareTrainer(load_config(TrainConfig, None, [
        "algo.advantage.estimator=turn_grpo", "reward.components={ftrl: 1.0}", *overrides]))


def _collected(traj: Trajectory, scores: Scores, tasks, num_groups: int) -> Collected:
    batch = RolloutBatch(trajectory=traj, tasks=list(tasks), group_ids=traj.group_ids,
                         num_groups=num_groups)
    rows = np.ones(len(traj), np.float32)
    return Collected(batch, scores, rows > 0, rows)


# ----------------------------------------------------------------------------- reference
def _norm(values, cfg):
    """GRPO normalisation of one set (plain Python): 0 for a set of one."""
    if len(values) < 2:
        return [0.0] * len(values)
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - cfg.std_ddof))
    return [((v - m) / (s + cfg.eps)) if cfg.normalize_std else v - m for v in values]


def reference_token_advantages(traj, turn_rewards, turn_mask, outcome, cfg):
    """``turn_grpo`` written out: per (group, turn) and per group statistics, the outcome
    discounted by later rewarded turns, an unrewarded turn credited by the next rewarded one,
    trailing unrewarded turns the outcome advantage alone."""
    n, k = turn_mask.shape
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(int(traj.group_ids[i]), []).append(i)
    a_out = [0.0] * n
    a_turn = [[0.0] * k for _ in range(n)]
    for members in groups.values():
        for i, a in zip(members, _norm([float(outcome[i]) for i in members], cfg)):
            a_out[i] = a
        for t in range(k):
            rows = [i for i in members if turn_mask[i][t]]
            for i, a in zip(rows, _norm([float(turn_rewards[i][t]) for i in rows], cfg)):
                a_turn[i][t] = a
    out = np.zeros(traj.tokens.shape)
    for i in range(n):
        for j in range(int(traj.num_turns[i])):
            rewarded = [t for t in range(j, k) if turn_mask[i][t]]
            if rewarded:
                c = rewarded[0]
                later = sum(1 for t in range(c + 1, k) if turn_mask[i][t])
                value = cfg.turn_coef * a_turn[i][c] + cfg.gamma ** later * a_out[i]
            else:
                value = a_out[i]
            out[i, traj.turn_starts[i, j]:traj.turn_ends[i, j]] = value
    return out


def _scripted_trajectory():
    """2 groups x 2 samples, 2-3 assistant turns each with observations between."""
    script = [(0, [3, 2, 2]), (0, [2, 4, 1]), (1, [2, 2, 1]), (1, [3, 1, 2])]
    records = []
    for uid, (group, turns) in enumerate(script):
        rec = TrajectoryRecord.from_prompt(uid, group, [5] * (2 + uid % 2))
        for j, n in enumerate(turns):
            rec.append_generated([7 + j] * n, [-1.0] * n)
            if j + 1 < len(turns):
                rec.append_observation([9, 9])
        rec.stop_reason = "eos"
        records.append(rec)
    return Trajectory.from_records(records, pad_multiple=4)


# ----------------------------------------------------------------------------- (a) make_batch
@pytest.mark.parametrize("overrides", [(), ("algo.turn_advantage.gamma=0.5",
                                            "algo.turn_advantage.turn_coef=2.0")],
                         ids=["mt_grpo", "discounted"])
def test_turn_grpo_through_make_batch_matches_plain_python(overrides):
    trainer = _trainer(*overrides)
    traj = _scripted_trajectory()
    nan = np.nan
    turns = np.array([[1.0, nan, 0.5],    # turn 1 unrewarded: credited by turn 2
                      [0.0, 1.0, 2.0],
                      [2.0, 1.0, nan],    # turn 2 unrewarded, none after: outcome only
                      [0.0, 0.5, 1.0]], np.float32)
    mask = np.isfinite(turns)
    outcome = np.array([1.0, 0.0, 0.5, 2.0], np.float32)
    scores = Scores(total=outcome, components={}, parts={},
                    turn_rewards=np.where(mask, turns, 0.0), turn_mask=mask)
    batch = trainer.make_batch(_collected(traj, scores, [None] * 4, 2))

    want = reference_token_advantages(traj, turns, mask, outcome, trainer.cfg.algo.turn_advantage)
    adv = np.asarray(batch.advantages)
    assert adv.shape[1] >= traj.tokens.shape[1]
    np.testing.assert_allclose(adv[:, :traj.tokens.shape[1]], want, atol=1e-5)
    assert not adv[:, traj.tokens.shape[1]:].any()
    assert np.all(adv[np.asarray(batch.loss_mask) == 0] == 0)
    row0 = [adv[0, traj.turn_starts[0, k]] for k in range(3)]
    assert row0[0] != pytest.approx(row0[1])  # per-turn credit, not one number per row
    assert row0[1] == row0[2]  # the unrewarded turn 1 gets the credit of turn 2
    row2 = [adv[2, traj.turn_starts[2, k]] for k in range(3)]
    assert row2[2] == pytest.approx(reference_token_advantages(
        traj, np.zeros_like(turns), np.zeros_like(mask), outcome,
        trainer.cfg.algo.turn_advantage)[2, traj.turn_starts[2, 2]])  # outcome alone


def test_turn_grpo_is_a_registered_token_estimator():
    entry = ESTIMATORS.get("turn_grpo")
    assert isinstance(entry, TokenEstimator) and entry.needs_turn_rewards
    cfg = load_config(TrainConfig, None, ["algo.turn_advantage.gamma=0.9"])
    assert cfg.algo.turn_advantage == TurnAdvantageConfig(gamma=0.9)


@pytest.mark.parametrize("overrides, match", [
    (["algo.advantage.estimator=turn_grpo"], r"turn_grpo needs per-turn rewards.*bfcl.*ftrl"),
    (["algo.advantage.estimator=turn_grpo", "reward.components.ftrl=1.0",
      "algo.dynamic_sampling=true"], r"algo\.dynamic_sampling"),
    (["algo.turn_advantage.gamma=1.5"], r"algo\.turn_advantage\.gamma"),
    (["algo.advantage.estimator=gae", "algo.gae.turn_reward_coef=0.5"],
     r"estimator=gae needs per-turn rewards.*bfcl.*ftrl"),
    (["algo.advantage.estimator=gae", "algo.gae.turn_reward_coef=0.5",
      "reward.components.ftrl=1.0", "algo.dynamic_sampling=true"], r"algo\.dynamic_sampling"),
])
def test_turn_grpo_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, None, overrides)


# ----------------------------------------------------------------------------- (b) score()
TURNS_A = np.array([[1.0, 2.0, np.nan], [0.5, np.nan, np.nan], [3.0, 1.0, 4.0]], np.float32)
TURNS_B = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, np.nan], [1.0, np.nan, 2.0]], np.float32)


@REWARD_COMPONENTS.register("test_turns_a", overwrite=True)
def _turns_a(ctx, cfg):
    return ComponentScore(np.array([1.0, 2.0, 3.0]), {}, TURNS_A)


@REWARD_COMPONENTS.register("test_turns_b", overwrite=True)
def _turns_b(ctx, cfg):
    return ComponentScore(np.array([0.0, -1.0, 1.0]), {}, TURNS_B[:, :2])  # narrower: padded


@REWARD_COMPONENTS.register("test_no_turns", overwrite=True)
def _no_turns(ctx, cfg):
    return ComponentScore(np.array([10.0, 20.0, 30.0]))


def _context(components):
    recs = []
    for uid in range(3):
        rec = TrajectoryRecord.from_prompt(uid, 0, [1, 2])
        for _ in range(3):
            rec.append_generated([3], [0.0])
        recs.append(rec)
    traj = Trajectory.from_records(recs)
    return RewardContext(trajectory=traj, tasks=[None] * 3, group_ids=np.zeros(3, np.int32),
                         step=0, tokenizer=None, config=RewardConfig(components=components),
                         max_new_tokens=8)


def test_score_composes_weighted_turn_rewards():
    s = score(_context({"test_turns_a": 0.5, "test_turns_b": 2.0, "test_no_turns": 0.1}))
    np.testing.assert_allclose(s.total, [0.5 + 0 + 1, 1 - 2 + 2, 1.5 + 2 + 3], rtol=1e-6)
    b = np.full((3, 3), np.nan)
    b[:, :2] = TURNS_B[:, :2]
    want = [[0.5 * TURNS_A[i, k] + 2.0 * b[i, k] for k in range(3)] for i in range(3)]
    want_mask = [[math.isfinite(v) for v in row] for row in want]
    np.testing.assert_array_equal(s.turn_mask, want_mask)
    assert s.turn_mask.tolist() == [[True, True, False], [True, False, False],
                                    [True, False, False]]
    np.testing.assert_allclose(s.turn_rewards, np.where(want_mask, want, 0.0), rtol=1e-6)

    only_a = score(_context({"test_turns_a": 3.0}))
    np.testing.assert_array_equal(only_a.turn_mask, np.isfinite(TURNS_A))
    np.testing.assert_allclose(only_a.turn_rewards, np.nan_to_num(3.0 * TURNS_A))
    none = score(_context({"test_no_turns": 1.0}))
    assert none.turn_rewards is None and none.turn_mask is None


def test_user_turn_spans_from_tool_call_records():
    rec = TrajectoryRecord.from_prompt(0, 0, [1])
    for _ in range(5):
        rec.append_generated([3], [0.0])
    rec.tool_calls = [{"turn": 0, "name": "a"}, {"turn": 2, "name": None}]  # 2: a parse error
    traj = Trajectory.from_records([rec])
    assert user_turn_spans(traj, 0) == [[0, 1], [2, 3], [4]]


# ----------------------------------------------------------------------------- (d) FTRL
@pytest.fixture(scope="module")
def banking_task(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank"
    build_env_dir(REPO / "configs" / "envs" / "banking.yaml", out,
                  BuildOptions(num_tasks=2, levels=("sequential",), distractors=0))
    return load_env_tasks(out)[0]


def _ftrl_row(uid, turn_calls):
    """A row whose assistant turns made ``turn_calls`` (None: a text answer), as the engine
    logs them."""
    rec = TrajectoryRecord.from_prompt(uid, 0, [1, 2])
    for j, calls in enumerate(turn_calls):
        rec.append_generated([3 + j, 4], [0.0, 0.0])
        if calls is not None:
            rec.tool_calls += [{"turn": j, "name": c["name"], "arguments": c["arguments"],
                                "ok": True, "text": "", "error_kind": None, "seconds": 0.0}
                               for c in calls]
            rec.append_observation([9])
    rec.stop_reason = "eos"
    return rec


def test_ftrl_turns_reach_the_advantages(banking_task):
    task = banking_task
    gt = [t["calls"] for t in task.meta["ground_truth_turns"]]
    assert len(gt) == 2
    wrong = [{"name": gt[1][0]["name"], "arguments": {"card_id": "CRD-0000"}}]
    rows = [[gt[0], gt[1]], [gt[0], wrong], [wrong, None], [gt[0], gt[1], None]]
    traj = Trajectory.from_records([_ftrl_row(i, r) for i, r in enumerate(rows)])
    text_only = types.SimpleNamespace(decode=lambda ids, **kw: "Done.")
    ctx = RewardContext(trajectory=traj, tasks=[task] * 4, group_ids=np.zeros(4, np.int32),
                        step=0, tokenizer=text_only,
                        config=RewardConfig(components={"ftrl": 1.0}), max_new_tokens=8)
    scores = score(ctx)
    # FTRL by hand: a turn whose one call solves an open sub-goal 2*1/(1+1) = 1, a call that
    # solves none 0, a text answer 1/(1 + #unsolved sub-goals) (2 open: 1/3, none open: 1)
    want = np.array([[1, 1, 0], [1, 0, 0], [0, 1 / 3, 0], [1, 1, 1]], np.float32)
    want_mask = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]], bool)
    np.testing.assert_array_equal(scores.turn_mask, want_mask)
    np.testing.assert_allclose(scores.turn_rewards, want, atol=1e-6)
    np.testing.assert_allclose(scores.total, [1.0, 0.5, 1 / 6, 1.0], atol=1e-6)  # turn mean

    trainer = _trainer()
    batch = trainer.make_batch(_collected(traj, scores, [task] * 4, 1))
    ref = reference_token_advantages(traj, want, want_mask, scores.total,
                                     trainer.cfg.algo.turn_advantage)
    adv = np.asarray(batch.advantages)[:, :traj.tokens.shape[1]]
    np.testing.assert_allclose(adv, ref, atol=1e-5)
    first, second = adv[1, traj.turn_starts[1, 0]], adv[1, traj.turn_starts[1, 1]]
    assert first > 0 > second  # row 1: right first call, wrong second one


# ----------------------------------------------------------------------------- (c) BFCL
EOS, TOOL_END, OBS, USER = 2, 50, 60, 70
CALLS = {  # one token per assistant call block (ToolRL syntax)
    10: [("cd", {"folder": "academic_venture"}), ("mkdir", {"dir_name": "academic_hub"})],
    11: [("find", {"path": ".", "name": "goal"})],
    12: [("cat", {"file_name": "goals.txt"})],
    13: [("ls", {})],  # wrong for user turn 1
}


def _call_text(calls):
    lines = "\n".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)
    return f"<tool_call>\n{lines}\n</tool_call>"


def _bfcl_script(prompt, call_tokens):
    """Per user turn: one tool turn (the call token, TOOL_END), the observation, then a turn
    that ends at once with EOS; the environment then feeds user turn ``u`` as ``[USER + u]``."""
    scripts, prefix = {}, list(prompt)
    for u, tok in enumerate(call_tokens):
        if u:
            prefix += [USER + u]
        add_script(scripts, prefix, [tok, TOOL_END])
        prefix += [tok, TOOL_END, OBS]
        add_script(scripts, prefix, [EOS])
        prefix += [EOS]
    return scripts


@pytest.fixture(scope="module")
def bfcl_task():
    task = {t.id: t for t in bfcl_training_tasks("multi_turn_base", limit=8)}["multi_turn_base_7"]
    assert len(task.meta["turn_ground_truth"]) == 3
    return task


def test_bfcl_training_step_uses_every_user_turn(bfcl_task):
    task = bfcl_task
    user_ids = {m["content"]: USER + u for u, turn in enumerate(task.meta["turns"])
                for m in turn}
    base = ENVIRONMENTS.get("bfcl_multi_turn")(EnvironmentConfig(name="bfcl_multi_turn"), [task])
    assert base.next_user_turn is not None
    env = dataclasses.replace(
        base, render_observation=lambda turn_ids, results: [OBS],
        render_user_turn=lambda turn_ids, messages: [user_ids[messages[0]["content"]]],
        decode_text=lambda ids: "".join(_call_text(CALLS[t]) for t in ids if t in CALLS))
    prompts = [[1, 3], [1, 4]]
    scripts = {**_bfcl_script(prompts[0], [10, 11, 12]), **_bfcl_script(prompts[1], [10, 13, 12])}
    policy = OraclePolicy(scripts, vocab_size=80, max_len=128, default_token=EOS)
    rollout = RolloutConfig(num_slots=2, max_new_tokens=4, max_total_len=64, max_turns=8,
                            chunk_steps=4, sampling=SamplingConfig(temperature=0.0),
                            pad_multiple=1)
    engine = RolloutEngine(policy, rollout, environment=env, eos_ids=[EOS],
                           tool_stop_sequences=[[TOOL_END]], init_cache=policy.init_cache)
    traj = engine.run([RolloutRequest(prompt_ids=p, group_id=0, task=task) for p in prompts])

    # every user turn is in the trajectory, as ids with loss mask 0, after an EOS turn
    for i in range(2):
        tokens, mask = traj.tokens[i, :traj.lengths[i]], traj.loss_mask[i, :traj.lengths[i]]
        for u in (1, 2):
            (at,) = np.nonzero(tokens == USER + u)[0]
            assert mask[at] == 0 and tokens[at - 1] == EOS
        assert traj.num_turns[i] == 6 and traj.stop_reasons[i] == "eos"
        assert user_turn_spans(traj, i) == [[0, 1], [2, 3], [4, 5]]

    ctx = RewardContext(trajectory=traj, tasks=[task] * 2, group_ids=traj.group_ids, step=0,
                        tokenizer=None, config=RewardConfig(components={"bfcl": 1.0}),
                        max_new_tokens=4)
    scores = score(ctx)
    # a reward on the last assistant turn of each user turn: BFCL's checks per user turn
    np.testing.assert_array_equal(scores.turn_mask[:, :6],
                                  [[False, True] * 3, [False, True] * 3])
    np.testing.assert_array_equal(scores.turn_rewards[:, [1, 3, 5]], [[1, 1, 1], [1, 0, 1]])
    np.testing.assert_array_equal(scores.total, [1.0, 0.0])  # the entry's verdict

    checker = bfcl_multi_turn()[0]
    played = [["cd(folder='academic_venture')", "mkdir(dir_name='academic_hub')"],
              ["find(path='.', name='goal')"], ["cat(file_name='goals.txt')"]]
    entry = {k: task.meta[k] for k in ("initial_config", "involved_classes")}
    entry["id"] = task.meta["bfcl_id"]
    assert checker([[p] for p in played], task.meta["turn_ground_truth"], entry,
                   "multi_turn_base", "test_turn_credit_ref")["valid"]

    trainer = _trainer("reward.components={bfcl: 1.0}")
    batch = trainer.make_batch(_collected(traj, scores, [task] * 2, 1))
    adv = np.asarray(batch.advantages)
    per_turn = adv[1, traj.turn_starts[1, :6]]
    assert per_turn[0] == per_turn[1]  # the tool turn shares its user turn's credit
    assert per_turn[2] != pytest.approx(per_turn[0])  # user turn 1 failed: its own credit
    assert per_turn[2] < per_turn[0] < 0 < adv[0, traj.turn_starts[0, 0]]
    ref = reference_token_advantages(traj, scores.turn_rewards, scores.turn_mask, scores.total,
                                     trainer.cfg.algo.turn_advantage)
    np.testing.assert_allclose(adv[:, :traj.tokens.shape[1]], ref, atol=1e-5)


def test_handler_renders_a_user_turn_with_the_chat_template():
    tok = load_tokenizer(find_test_tokenizer("smollm2"))
    template = detect_template(tok)
    executor = types.SimpleNamespace(start=lambda uid, task: None, finish=lambda uid: None)
    turns = {1: [{"role": "user", "content": "and now the second request"}]}
    env = Environment(executor=executor, extract_calls=lambda text: ([], "none"),
                      next_user_turn=lambda task, u, state: turns.get(u))
    handler = ToolTurnHandler(env, tokenizer=tok, template=template)
    first = [{"role": "user", "content": "first request"}]
    prompt = list(template.render_prompt(tok, first, add_generation_prompt=True))
    handler.start(0, ToolTask(id="t", messages=first, tools=[], ground_truth="",
                              ground_truth_calls=[], meta={}), prompt)
    answer = tok.encode("Done.", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    follow = handler.follow_up(0, 0, answer)
    assert follow is not None and follow.calls == ()
    obs = handler.observe(0, follow)
    assert obs.tool_calls == ()
    want = list(template.render_prompt(
        tok, first + [{"role": "assistant", "content": "Done."}] + turns[1],
        add_generation_prompt=True))
    assert prompt + answer + list(obs.ids) == want
    assert handler.follow_up(0, 1, answer) is None  # no user turn 2: the trajectory ends
