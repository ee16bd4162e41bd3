"""The RL trainer: a short loop over typed stages, with hooks around it.

One step, as data::

    collect     rollout strategy (``rollout.strategy``) on the step's prompts (a pure function of
                (seed, step, round): resumes exactly) -> Trajectory rows with their tasks;
                scored by the weighted reward components (``reward.components``); with
                ``algo.dynamic_sampling`` constant groups are dropped and more prompts sampled
    advantages  jitted estimator (``algo.advantage.estimator``) over the groups -> TrainBatch
    log-probs   old log-probs (PPO mini-batches) and reference log-probs (KL), once per batch
    critic      with a critic (``estimator: gae``): rollout-time values -> GAE advantages and
                returns (``train.critic_stage``)
    update      ``algo.ppo_minibatches`` optimizer steps (Learner.ppo_update); then the
                critic's update on the same mini-batches

then the hooks (``toolrl_jax.train.hooks``): non-finite guard, metrics, held-out evaluation,
checkpoint (Orbax; async; SIGTERM-safe), plots. Every component is chosen by name from a
registry, so a new method is a new entry, not a branch here.

Several processes (``toolrl_jax.train.distributed``): each rolls out its shares of the step's
prompts on its own devices, rewards are scored locally and all-gathered (so advantages and
metrics are global), each process's rows become its part of the global batch, and process 0
alone writes the run's files; every process writes its Orbax shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pathlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from toolrl_jax.chat import detect_template, load_tokenizer
from toolrl_jax.config_io import save_config
from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.eval.toolrl import exact_match
from toolrl_jax.models.lora import adapters_disabled, apply_lora, shard_lora_model, split_adapters
from toolrl_jax.models.registry import load_model
from toolrl_jax.models.sharding import initialize_distributed_if_needed, make_mesh, param_shardings
from toolrl_jax.rl.advantages import ESTIMATORS, CreditInputs, TokenEstimator, compute_advantages
from toolrl_jax.rl.train_step import Learner, TrainState, split_model
from toolrl_jax.rl.turn_advantages import token_turn_index
from toolrl_jax.rollout.engine import RolloutEngine, RolloutRequest
from toolrl_jax.rollout.sampling import SamplingConfig
from toolrl_jax.rollout.trajectory import Trajectory, concat_trajectories
from toolrl_jax.rollout.turns import Environment
from toolrl_jax.train import hooks as hooks_lib
from toolrl_jax.train.batch import (
    Collected,
    TrainBatch,
    informative_groups,
    pack_bins,
    pack_rows,
    packed_row_count,
    row_spans,
    select_groups,
)
from toolrl_jax.train.checkpoint import Checkpointer
from toolrl_jax.train.config import TrainConfig, bucket, resolve, sft_optim
from toolrl_jax.train.critic_stage import ActorCriticState, Credit, CriticStage, needs_critic
from toolrl_jax.train.distributed import (
    Shares,
    barrier,
    gather_rows,
    global_max,
    rollout_mesh,
    share_seed,
    to_local,
)
from toolrl_jax.train.environments import ENVIRONMENTS
from toolrl_jax.train.metrics import MetricsLogger
from toolrl_jax.train.rewards import RewardContext, Scores, check_reward_capacity, score
from toolrl_jax.train.sft import SFTLearner, pad_examples
from toolrl_jax.train.sft_sources import SFT_SOURCES
from toolrl_jax.train.sources import DATA_SOURCES
from toolrl_jax.train.strategies import ROLLOUT_STRATEGIES, PromptDraw, RolloutBatch, draw_prompts

Log = Callable[[str], None]
ROLLOUT_STATS = (("decode_s", "time_rollout_decode"), ("extend_s", "time_rollout_prefill"),
                 ("wait_s", "time_tools_wait"), ("slot_utilisation", "rollout_slot_utilisation"),
                 ("tokens_per_s", "rollout_tokens_per_s"))


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _copy(tree: Any) -> Any:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class StageTimer:
    """``with timer("update"): ...`` records seconds per stage as ``time_<stage>``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            key = f"time_{stage}"
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {**self.seconds, "time_step": time.perf_counter() - self.start}


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """Tasks with their prompt ids (the chat template rendered as token ids)."""

    tasks: list[ToolTask]
    prompts: list[list[int]]
    skipped: int = 0


class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs SFT / RL / evaluation."""

    def __init__(self, cfg: TrainConfig, *, log: Log = _stderr):
        self.log = log
        self.run_dir = pathlib.Path(cfg.train.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        initialize_distributed_if_needed()
        self.shares = Shares.create(cfg.train.rollout_shards, cfg.rollout.prompts_per_step)
        if self.shares.num_shares > 1 and cfg.algo.dynamic_sampling:
            raise ConfigError("algo.dynamic_sampling needs one rollout share (one process, "
                              "train.rollout_shards<=1): its group selection is not split yet")
        self.mesh = make_mesh(cfg.mesh) if jax.device_count() > 1 else None
        # rollouts: rollout.mesh, default the training mesh (each process's own devices with
        # several processes)
        self.rollout_mesh = rollout_mesh(cfg.rollout.mesh, self.mesh)
        t0 = time.perf_counter()
        loaded = load_model(cfg.model.name, param_dtype=cfg.model.param_dtype,
                            dtype=cfg.model.dtype, mesh=self.mesh)
        self.model, self.model_config = loaded.model, loaded.config
        if cfg.lora.enabled:
            self._apply_lora(cfg)
        self.tokenizer = load_tokenizer(loaded.source.tokenizer_source)
        self.template = detect_template(self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        log(f"model {cfg.model.name}: {self._num_params() / 1e6:.1f}M parameters, "
            f"loaded in {time.perf_counter() - t0:.1f}s on {jax.devices()[0].platform}")
        split = DATA_SOURCES.get(cfg.data.source)(cfg.data)
        self.train_set = self._prompt_set(split.train, cfg.data.max_prompt_tokens)
        self.heldout_set = self._prompt_set(split.heldout, cfg.data.max_prompt_tokens)
        if not self.train_set.tasks:
            raise DataError("no training task fits data.max_prompt_tokens; raise it")
        log(f"data: {json.dumps({**split.summary(cfg.data.source), 'skipped_too_long': self.train_set.skipped})}")
        longest = max(len(p) for p in self.train_set.prompts + self.heldout_set.prompts)
        self.cfg = resolve(cfg, longest_prompt=longest)
        if self.primary:
            save_config(self.cfg, self.run_dir / "resolved_config.yaml")
        check_reward_capacity(self.cfg.reward, self.train_set.tasks + self.heldout_set.tasks)
        self.environment = ENVIRONMENTS.get(cfg.env.name)(
            cfg.env, self.train_set.tasks + self.heldout_set.tasks)
        self.strategy = ROLLOUT_STRATEGIES.get(cfg.rollout.strategy)
        self._engines: dict[str, RolloutEngine] = {}
        self._initial_params: Any = None
        self.critic: CriticStage | None = None  # built with the RL state (initial_state)

    # ------------------------------------------------------------------ building blocks
    @property
    def train_tasks(self) -> list[ToolTask]:
        return self.train_set.tasks

    @property
    def train_prompts(self) -> list[list[int]]:
        return self.train_set.prompts

    @property
    def heldout_tasks(self) -> list[ToolTask]:
        return self.heldout_set.tasks

    @property
    def primary(self) -> bool:
        """Process 0: the one that writes the run's files."""
        return self.shares.primary

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.rollout.samples_per_prompt

    def _apply_lora(self, cfg: TrainConfig) -> None:
        """Adapters on ``lora.targets`` (A from ``train.seed``, B = 0: the loaded model)."""
        apply_lora(self.model, cfg.lora, rngs=nnx.Rngs(cfg.train.seed))
        if self.mesh is not None:
            shard_lora_model(self.model, cfg.lora, self.mesh)
        adapters = split_adapters(self.model)[1]
        self.log(f"lora: rank {cfg.lora.rank}, alpha {cfg.lora.alpha} on "
                 f"{','.join(cfg.lora.targets)}: "
                 f"{sum(x.size for x in jax.tree.leaves(adapters)) / 1e6:.2f}M trainable")

    @property
    def lora(self) -> bool:
        return self.cfg.lora.enabled

    def _split_trainable(self) -> tuple[nnx.GraphDef, Any, Any]:
        """``(graphdef, trainable params, frozen params)``: LoRA trains the adapters with the
        base frozen; else every parameter is trained (frozen None)."""
        if self.lora:
            return split_adapters(self.model)
        graphdef, params = split_model(self.model)
        return graphdef, params, None

    def _num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self.model, nnx.Param)))

    def _prompt_set(self, tasks: Sequence[ToolTask], limit: int) -> PromptSet:
        """Prompt ids of ``tasks``; prompts over ``limit`` tokens are skipped and counted."""
        kept, prompts, skipped = [], [], 0
        for t in tasks:
            ids = list(self.template.render_prompt(self.tokenizer, t.messages,
                                                   add_generation_prompt=True))
            if len(ids) > limit:
                skipped += 1
                continue
            kept.append(t)
            prompts.append(ids)
        return PromptSet(kept, prompts, skipped)

    @functools.cached_property
    def learner(self) -> Learner:
        graphdef, _, frozen = self._split_trainable()
        return self._make_learner(graphdef, frozen)

    def _make_learner(self, graphdef: nnx.GraphDef, frozen: Any) -> Learner:
        temperature = self.cfg.rollout.sampling.temperature
        return Learner(graphdef, self.model_config, self.cfg.algo, self.cfg.optim,
                       temperature=temperature if temperature > 0 else 1.0, mesh=self.mesh,
                       frozen_params=frozen)

    @functools.cached_property
    def reference_learner(self) -> Learner:
        """LoRA's KL reference: the base model (adapters off) over the learner's frozen
        weights, no second copy."""
        with adapters_disabled(self.model):
            graphdef = split_adapters(self.model)[0]
        return self._make_learner(graphdef, self.learner.frozen_params)

    def engine(self, kind: str) -> RolloutEngine:
        """The rollout engine for ``'train'`` (sampling) or ``'eval'`` (greedy)."""
        if kind not in self._engines:
            self._engines[kind] = self._make_engine(kind)
        return self._engines[kind]

    def _make_engine(self, kind: str) -> RolloutEngine:
        r = self.cfg.rollout
        if kind == "train":
            rc = dataclasses.replace(r, seed=self.cfg.train.seed)
        else:
            slots = max(1, min(len(self.heldout_set.prompts), r.num_slots))
            rc = dataclasses.replace(r, sampling=SamplingConfig(temperature=0.0), num_slots=slots,
                                     max_new_tokens=r.eval_max_new_tokens or r.max_new_tokens)
        engine = build_engine(self.model, rc, self.environment, self.tokenizer, self.template,
                              mesh=self.rollout_mesh)
        if self.rollout_mesh is not self.mesh:
            engine.set_params(self._rollout_weights())
        return engine

    def _rollout_weights(self) -> Any:
        """The model's state as the rollout engines hold it: as is on the training mesh; on
        another :attr:`rollout_mesh` resharded with ``jax.device_put``; with several processes
        a process-local copy (see ``train.distributed``)."""
        full = nnx.split(self.model)[1]
        if self.rollout_mesh is self.mesh:
            return full
        shardings = param_shardings(full, self.model_config, self.rollout_mesh)
        if jax.process_count() == 1:
            return jax.device_put(full, shardings)
        return to_local(full, shardings)

    def _set_policy(self, params: Any) -> None:
        """Copies the learner's params (pure dict; LoRA: the adapters) into the model and the
        rollout engines."""
        state = nnx.state(self.model, nnx.LoRAParam) if self.lora else nnx.state(self.model)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self.model, state)
        if self._engines:
            full = self._rollout_weights()
            for eng in self._engines.values():
                eng.set_params(full)

    def rollout(self, prompts: Sequence[Sequence[int]], group_ids: Sequence[int],
                tasks: Sequence[ToolTask], *, seed: int, kind: str = "train") -> Trajectory:
        reqs = [RolloutRequest(prompt_ids=list(p), group_id=int(g), task=t)
                for p, g, t in zip(prompts, group_ids, tasks)]
        return self.engine(kind).run(reqs, seed=int(seed))

    def reward_context(self, batch: RolloutBatch, step: int) -> RewardContext:
        return RewardContext(trajectory=batch.trajectory, tasks=batch.tasks,
                             group_ids=batch.group_ids, step=step, tokenizer=self.tokenizer,
                             config=self.cfg.reward, max_new_tokens=self.cfg.rollout.max_new_tokens)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int = 0, limit: int = 0) -> dict:
        """Greedy decoding of the held-out tasks: mean reward, each component, exact match.
        Writes ``eval_samples_step{step}.jsonl`` (first assistant turn as ``completion``; with
        several turns also the whole ``response``, interpreter / tool output included)."""
        tasks, prompts = self.heldout_set.tasks, self.heldout_set.prompts
        if limit:
            tasks, prompts = tasks[:limit], prompts[:limit]
        t0 = time.perf_counter()
        groups = np.arange(len(tasks), dtype=np.int32)
        traj = self.rollout(prompts, groups, tasks, seed=0, kind="eval")
        ctx = self.reward_context(RolloutBatch(traj, list(tasks), groups, len(tasks)), step)
        scores = score(ctx)
        texts = ctx.first_turn_texts
        result = scores.metrics()
        for part in ("format", "correctness"):
            if f"toolrl_{part}" in scores.parts:
                result[part] = float(np.mean(scores.parts[f"toolrl_{part}"]))
        if not all("answer" in t.meta for t in tasks):  # tool calls, not math answers
            result["exact_match"] = float(np.mean([exact_match(t, c)
                                                   for t, c in zip(tasks, texts)]))
        result.update(response_length=float(np.mean(ctx.response_lengths)), n=len(tasks),
                      seconds=time.perf_counter() - t0)
        if not self.primary:  # every process evaluates the same tasks; process 0 writes
            return result
        if texts:
            self.log(f"held-out example {tasks[0].id!r} (step {step}): {texts[0][:400]!r}")
        multi_turn = self.cfg.rollout.max_turns > 1  # then also the whole response
        responses = ctx.completion_texts if multi_turn else texts
        with open(self.run_dir / f"eval_samples_step{step}.jsonl", "w") as f:
            for t, c, r, s in zip(tasks, texts, responses, scores.total):
                row = {"id": t.id, "completion": c, "reward": float(s)}
                f.write(json.dumps({**row, "response": r} if multi_turn else row) + "\n")
        return result

    # ------------------------------------------------------------------ SFT
    def _sft_examples(self) -> list[tuple[list[int], list[int]]]:
        s = self.cfg.sft
        examples = SFT_SOURCES.get(s.source)(self.cfg, self.train_set.tasks, self.tokenizer,
                                             self.template)
        examples = [e for e in examples if len(e[0]) <= s.max_tokens]
        if not examples:
            raise DataError(f"no SFT example fits sft.max_tokens={s.max_tokens}")
        return examples

    def _sft_learner(self) -> tuple[SFTLearner, Any]:
        graphdef, params, frozen = self._split_trainable()
        s = self.cfg.sft
        return SFTLearner(graphdef, sft_optim(self.cfg), vocab_chunk=self.cfg.algo.vocab_chunk,
                          mesh=self.mesh, model_config=self.model_config,
                          micro_batch_size=s.micro_batch_size, frozen_params=frozen), params

    @functools.cached_property
    def sft_checkpointer(self) -> Checkpointer:
        """SFT checkpoints, ``RUN_DIR/checkpoints_sft/<sft step>`` (the last one, step
        ``sft.steps``, holds the SFT weights: the KL reference of a resumed run)."""
        t = self.cfg.train
        return Checkpointer(self.run_dir / "checkpoints_sft", save_every=t.checkpoint_every,
                            keep=t.keep_checkpoints, warn=self.log)

    def sft(self, metrics: MetricsLogger, summary: dict | None = None) -> dict:
        """Warm start on ground-truth answers (assistant tokens only); returns the last metrics.

        Checkpointed every ``train.checkpoint_every`` SFT steps and at the end (SIGTERM: saved
        at the next step); a run restarted mid-SFT continues from the newest SFT checkpoint with
        the same batches (the example draws are replayed). With several processes each passes
        its rows of the global batch."""
        s = self.cfg.sft
        if s.steps <= 0:
            return {}
        summary = {} if summary is None else summary
        examples = self._sft_examples()
        length = bucket(max(len(e[0]) for e in examples))  # one shape: one compile
        learner, params = self._sft_learner()
        ckpt, start = self.sft_checkpointer, 0
        if ckpt.latest_step() is not None:
            state, pos = ckpt.restore(learner.abstract_state(params))
            start = int(pos.get("sft_step", ckpt.latest_step()))
            summary.update(pos.get("summary", {}))
            metrics.resume_at(start)
            self.log(f"resumed SFT from {ckpt.directory} at step {start}")
        else:
            state = learner.init_state(params, seed=self.cfg.train.seed)
        rng = np.random.default_rng(self.cfg.train.seed)
        count, index = self.shares.process_count, self.shares.process_index
        last: dict = {}
        bar = tqdm(range(s.steps), desc="sft", file=sys.stderr, dynamic_ncols=True,
                   disable=not self.primary)
        for step in bar:
            idx = rng.choice(len(examples), size=min(s.batch_size, len(examples)), replace=False)
            if step < start:
                continue  # replayed draw of a step done before the restart
            batch = pad_examples([examples[i] for i in idx], length, self.pad_id)
            if count > 1:
                rows = len(idx) // count
                batch = {k: v[index * rows:(index + 1) * rows] for k, v in batch.items()}
            state, m = learner.step(state, batch)
            last = {k: float(v) for k, v in jax.device_get(m).items()}
            bar.set_postfix(loss=f"{last['sft_loss']:.3f}")
            metrics.log(step + 1, last, kind="sft")
            ckpt.step_boundary(step + 1, state, {"sft_step": step + 1, "summary": summary})
        if ckpt.latest_step() != s.steps:
            ckpt.save(s.steps, state, {"sft_step": s.steps, "summary": summary})
        ckpt.wait()
        self._set_policy(state.params)
        return last

    def sft_weights(self) -> Any:
        """The SFT weights (params) of the finished SFT checkpoint, or None."""
        if self.cfg.sft.steps <= 0 or self.sft_checkpointer.latest_step() != self.cfg.sft.steps:
            return None
        learner, params = self._sft_learner()
        state, _ = self.sft_checkpointer.restore(learner.abstract_state(params),
                                                 step=self.cfg.sft.steps)
        return state.params

    # ------------------------------------------------------------------ RL stages
    def rollout_seed(self, step: int, round_index: int = 0) -> int:
        return self.cfg.train.seed * 1_000_003 + step + round_index * 100_000_007

    def collect(self, step: int) -> Collected:
        """Rollouts of ``step``, scored; with dynamic sampling, rounds until the batch has
        ``prompts_per_step`` informative groups (at most ``algo.max_sampling_rounds``)."""
        r, a = self.cfg.rollout, self.cfg.algo
        rounds: list[tuple[RolloutBatch, Scores]] = []
        found = 0
        for k in range(a.max_sampling_rounds if a.dynamic_sampling else 1):
            idx = draw_prompts(len(self.train_set.tasks), r.prompts_per_step, step,
                               self.cfg.data.seed, k)
            batch = self.rollout_shares(idx, step, k)
            scores = score(self.reward_context(batch, step))
            rounds.append((batch, scores))
            good = informative_groups(scores.total, batch.group_ids, batch.num_groups)
            found += int(good.sum())
            if found >= r.prompts_per_step:
                break
        if not a.dynamic_sampling:
            rows = np.ones(len(batch.tasks), np.float32)
            return Collected(batch, scores, good[batch.group_ids], rows)
        return select_groups(rounds, r.prompts_per_step, pad_id=self.pad_id)

    def rollout_shares(self, task_indices: np.ndarray, step: int, round_index: int
                       ) -> RolloutBatch:
        """This process's shares of the round's prompts (``train.distributed``), each rolled
        out with its own seed, as one batch (group ids local, ``0 .. groups-1``)."""
        base = self.rollout_seed(step, round_index)
        parts = [self.strategy(self, PromptDraw(self.shares.prompts(task_indices, s),
                                                share_seed(base, s)))
                 for s in self.shares.mine]
        return parts[0] if len(parts) == 1 else concat_rollout_batches(parts, self.pad_id)

    def _group_offset(self, collected: Collected) -> int:
        return self.shares.process_index * collected.batch.num_groups

    def make_batch(self, collected: Collected) -> TrainBatch:
        """Advantages (jitted, static config) and the fixed-shape batch of this process's rows.

        With several processes the rewards and group ids of every process are all-gathered
        (``[B_global]``, small), the estimator runs on the global batch (so batch-level
        statistics such as ``batch_norm`` are global) and each process keeps its rows."""
        b = collected.batch
        rows = len(b.tasks)
        if len(set(gather_rows(np.asarray([rows])).tolist())) > 1:
            raise ConfigError("every process must roll out the same number of rows per step "
                              "(the rollout strategy returned different counts)")
        estimator = ESTIMATORS.get(self.cfg.algo.advantage.estimator)
        if b.token_advantages is not None:  # per-token advantages of the strategy (trees)
            adv = np.asarray(b.token_advantages(np.asarray(collected.scores.total)))
        elif isinstance(estimator, TokenEstimator) and estimator.needs_values:
            adv = np.zeros(rows, np.float32)  # GAE needs the values: filled by critic_credit
        elif isinstance(estimator, TokenEstimator):  # per-token credit (turns, critic)
            adv = np.asarray(estimator(self.credit_inputs(collected)))
        else:
            glob = gather_rows({"total": collected.scores.total,
                                "groups": b.group_ids + self._group_offset(collected)})
            adv = _advantages(jnp.asarray(glob["total"]), jnp.asarray(glob["groups"]),
                              self.cfg.algo.advantage, b.num_groups * self.shares.process_count)
            start = self.shares.process_index * rows
            adv = np.asarray(adv)[start:start + rows]
        length = max(self.cfg.rollout.max_total_len,
                     bucket(global_max(b.trajectory.tokens.shape[1])))
        return TrainBatch.from_trajectory(b.trajectory, adv, length=length,
                                          pad_id=self.pad_id, row_weight=collected.train_rows,
                                          loss_mask=b.loss_mask)

    def pack(self, batch: TrainBatch) -> TrainBatch:
        """``algo.pack_rows``: the batch's sequences packed into fewer rows of the same length
        (``train.batch.pack_rows``), as many rows on every process (the global largest count,
        rounded to whole mini- and micro-batches); the batch itself when packing saves no
        row."""
        a, rows = self.cfg.algo, int(np.shape(batch.tokens)[0])
        bins = pack_bins(row_spans(batch)[1], int(np.shape(batch.tokens)[1]))
        mesh = self.learner.mesh
        shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        unit = a.ppo_minibatches * (a.micro_batch_size or shards)  # global rows
        unit //= math.gcd(unit, self.shares.process_count)  # this process's share of them
        num_rows = packed_row_count(global_max(len(bins)), rows=rows, unit=unit)
        if num_rows >= rows:
            return batch
        return pack_rows(batch, bins, num_rows, pad_id=self.pad_id)

    def credit_inputs(self, collected: Collected, **extra: Any) -> CreditInputs:
        """This process's rows as a :class:`CreditInputs` (whole groups, local group ids);
        ``extra`` fills the optional fields (values, log-probs) a stage has computed."""
        b, s = collected.batch, collected.scores
        traj = b.trajectory
        mask = np.asarray(traj.loss_mask if b.loss_mask is None else b.loss_mask, np.float32)
        return CreditInputs(
            rewards=np.asarray(s.total, np.float32), group_ids=np.asarray(b.group_ids, np.int32),
            num_groups=b.num_groups, loss_mask=mask,
            token_turn=token_turn_index(traj.turn_starts, traj.turn_ends, mask.shape[1]),
            algo=self.cfg.algo, turn_rewards=s.turn_rewards, turn_mask=s.turn_mask, **extra)

    def add_logprobs(self, state: TrainState, batch: TrainBatch, timer: StageTimer) -> TrainBatch:
        """Old log-probs (when several mini-batches reuse them) and reference log-probs (KL)."""
        a = self.cfg.algo
        placed = self.learner.shard_batch({"tokens": batch.tokens, "positions": batch.positions,
                                           "segment_ids": batch.segment_ids})
        batch = batch.replace(**placed)  # on the mesh once; ppo_update keeps device arrays
        if a.ppo_minibatches > 1 or a.gae.kl_coef > 0:
            with timer("logprobs"):
                batch = batch.replace(old_logprobs=self.learner.compute_logprobs(
                    state.params, placed)["logprobs"])
        if _needs_reference(a):
            with timer("ref_logprobs"):
                learner, params = self._reference(state)
                batch = batch.replace(ref_logprobs=learner.compute_logprobs(
                    params, placed)["logprobs"])
        return batch

    def _reference(self, state: TrainState) -> tuple[Learner, Any]:
        """The learner and params of the KL reference: LoRA's base model (the same weights,
        adapters off; after a LoRA SFT warm start this is the model before SFT), else
        :meth:`_reference_params`."""
        if self.lora:
            return self.reference_learner, state.params
        return self.learner, self._reference_params(state)

    def _reference_params(self, state: TrainState) -> Any:
        """The frozen KL reference: the policy RL starts from (captured before the first
        update). A run resumed after an SFT warm start uses the SFT weights of
        ``checkpoints_sft/<sft.steps>`` (:meth:`sft_weights`); only when that checkpoint is
        gone does it fall back to the restored policy."""
        if self._initial_params is None:
            self.log("algo.loss.kl_coef > 0: resumed after SFT without its checkpoint "
                     "(checkpoints_sft/), the reference policy is the restored policy")
            self._initial_params = _copy(state.params)
        return self._initial_params

    def critic_credit(self, state: ActorCriticState, collected: Collected, batch: TrainBatch
                      ) -> tuple[TrainBatch, Credit]:
        """Rollout-time critic values and the GAE advantages of the batch (which replace its
        placeholder advantages); computed on the padded batch (one compiled shape)."""
        values = self.critic.values(state.critic, batch.as_dict())
        inputs = self.credit_inputs(collected, values=values, old_logprobs=batch.old_logprobs,
                                    ref_logprobs=batch.ref_logprobs)
        length = int(np.shape(batch.loss_mask)[1])
        turn = np.asarray(inputs.token_turn)
        turn = np.pad(turn, ((0, 0), (0, length - turn.shape[1])), constant_values=-1)
        credit = self.critic.credit(dataclasses.replace(inputs, loss_mask=batch.loss_mask,
                                                        token_turn=turn))
        return batch.replace(advantages=credit.advantages), credit

    def step(self, state: TrainState | ActorCriticState, step: int
             ) -> tuple[TrainState | ActorCriticState, dict]:
        """One RL step: collect -> advantages -> log-probs -> (critic values, GAE) -> update
        (policy, then critic); returns its metrics. With a critic, ``state`` is an
        :class:`ActorCriticState` and the first ``critic.warmup_steps`` steps skip the policy
        update."""
        timer = StageTimer()
        with timer("rollout"):
            collected = self.collect(step)
        with timer("advantages"):
            batch = self.make_batch(collected)
            if self.cfg.algo.pack_rows:
                batch = self.pack(batch)
        layout = {"update_rows": int(np.shape(batch.tokens)[0]),  # this process's rows
                  "update_fill": float(np.mean(np.asarray(batch.segment_ids) != 0))}
        with_critic = isinstance(state, ActorCriticState)
        policy = state.policy if with_critic else state
        batch = self.add_logprobs(policy, batch, timer)
        if with_critic:
            with timer("critic_values"):
                batch, credit = self.critic_credit(state, collected, batch)
        updates: list[dict] = [{}]
        if not (with_critic and step < self.cfg.critic.warmup_steps):
            with timer("update"):
                policy, updates = self.learner.ppo_update(
                    policy, batch.as_dict(), num_mini_batches=self.cfg.algo.ppo_minibatches)
                updates = jax.device_get(updates)
            self._set_policy(policy.params)
        if not with_critic:
            return policy, self.step_metrics(collected, layout, updates, timer)
        with timer("critic_update"):
            critic, critic_metrics = self.critic.update(state.critic, {
                "tokens": batch.tokens, "positions": batch.positions,
                "segment_ids": batch.segment_ids, "loss_mask": batch.loss_mask,
                "returns": credit.returns, "old_values": credit.values})
        metrics = self.step_metrics(collected, layout, updates, timer)
        metrics.update({f"critic/{k}": float(v) for k, v in
                        {**jax.device_get(credit.metrics), **critic_metrics}.items()})
        metrics["critic/warmup"] = int(step < self.cfg.critic.warmup_steps)
        return ActorCriticState(policy=policy, critic=critic), metrics

    def step_metrics(self, c: Collected, layout: dict, updates: list[dict],
                     timer: StageTimer) -> dict:
        """The step's metrics over the global batch (per-row values all-gathered); rollout
        timings and ``layout`` (the update batch's rows and fill) are this process's."""
        m = {k: float(np.mean([u[k] for u in updates])) for k in updates[0]
             if np.ndim(updates[0][k]) == 0}
        stats = c.batch.trajectory.stats
        glob = gather_rows({
            "total": c.scores.total, "components": c.scores.components, "parts": c.scores.parts,
            "response": (c.response_mask() > 0).sum(1),
            "tool_calls": np.asarray(c.batch.trajectory.num_tool_calls),
            "groups": c.batch.group_ids + self._group_offset(c),
            "local_rows": np.asarray([len(c.batch.tasks)])})
        scores = Scores(total=glob["total"], components=glob["components"], parts=glob["parts"])
        num_groups = c.batch.num_groups * self.shares.process_count
        m.update(scores.metrics())
        m.update(accuracy=self._accuracy(scores),
                 response_length=float(np.mean(glob["response"])),
                 tool_calls_per_trajectory=float(np.mean(glob["tool_calls"])),
                 constant_groups=int(num_groups - informative_groups(
                     scores.total, glob["groups"], num_groups).sum()),
                 groups=num_groups, sampling_rounds=c.rounds,
                 sampling_shortfall=c.shortfall, rollout_rows=int(glob["total"].shape[0]),
                 rollout_rows_per_process=int(np.max(glob["local_rows"])))
        m.update({dst: float(stats[src]) for src, dst in ROLLOUT_STATS
                  if isinstance(stats.get(src), (int, float))})
        m.update(c.batch.metrics)  # the strategy's own (tree/*, fission/*)
        m.update(timer.metrics())
        m.update(layout)
        return m

    def _accuracy(self, scores: Scores) -> float:
        """Share of rows whose ToolRL correctness is at its maximum (0 without ToolRL)."""
        corr = scores.parts.get("toolrl_correctness")
        if corr is None:
            return 0.0
        return float(np.mean(corr >= self.cfg.reward.toolrl.correctness_range[1] - 1e-6))

    # ------------------------------------------------------------------ the run
    def _fresh_state(self, run_metrics: MetricsLogger, ckpt: Checkpointer, summary: dict
                     ) -> TrainState:
        """Evaluations before training and after SFT, the SFT warm start, a new TrainState."""
        limit = self.cfg.train.eval_limit
        mid_sft = self.cfg.sft.steps > 0 and self.sft_checkpointer.latest_step() is not None
        if not mid_sft:  # else the SFT checkpoint holds the evaluation before training
            summary["before"] = before = self.evaluate(0, limit)
            run_metrics.log(0, before, kind="eval")
            self.log(f"eval before training: {hooks_lib.dumps(before)}")
        if self.cfg.sft.steps > 0:
            sft_metrics = self.sft(run_metrics, summary)
            summary["after_sft"] = after = self.evaluate(0, limit)
            run_metrics.log(0, after, kind="eval_after_sft")
            self.log(f"sft: {hooks_lib.dumps(sft_metrics)}; eval after sft: "
                     f"{hooks_lib.dumps(after)}")
        if _needs_reference(self.cfg.algo) and not self.lora:  # LoRA: the base, adapters off
            self._initial_params = _copy(self._split_trainable()[1])
        return self.initial_state()

    def initial_state(self) -> TrainState | ActorCriticState:
        """A fresh RL state from the model as it is now (after SFT): the learner's
        :class:`TrainState`, with the critic's (:class:`ActorCriticState`) when the estimator
        needs values."""
        policy = self.learner.init_state(self._split_trainable()[1], seed=self.cfg.train.seed)
        if not needs_critic(self.cfg.algo):
            return policy
        critic_params = self._build_critic()
        return ActorCriticState(policy=policy, critic=self.critic.init_state(critic_params))

    def abstract_state(self, params: Any) -> TrainState | ActorCriticState:
        """The restore target of :meth:`initial_state`'s state (shapes and shardings)."""
        policy = self.learner.abstract_state(params)
        if not needs_critic(self.cfg.algo):
            return policy
        critic_params = self._build_critic()
        return ActorCriticState(policy=policy, critic=self.critic.abstract_state(critic_params))

    def _build_critic(self) -> Any:
        """Builds :attr:`critic` (``critic.init``); returns the critic's initial params."""
        if jax.process_count() > 1:
            raise ConfigError("algo.advantage.estimator=gae: the critic runs on one process for "
                              "now; use one process (several devices are fine)")
        self.critic, params = CriticStage.build(self.model, self.cfg, mesh=self.mesh)
        return params

    def start_run(self) -> hooks_lib.RunState:
        """Resumes from the newest checkpoint, or starts fresh (evaluations, SFT)."""
        cfg = self.cfg
        ckpt_dir = self.run_dir / "checkpoints"
        if not cfg.train.resume and ckpt_dir.exists():
            barrier("toolrl_reset_check")  # every process has seen the old checkpoints
            if self.primary:
                self.log(f"train.resume=false: starting over, removing {ckpt_dir} and old "
                         "metrics")
                shutil.rmtree(ckpt_dir)
                shutil.rmtree(self.run_dir / "checkpoints_sft", ignore_errors=True)
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            barrier("toolrl_reset")
        metrics = (MetricsLogger(self.run_dir, config=cfg.metrics) if self.primary
                   else hooks_lib.NullMetrics())
        ckpt = Checkpointer(ckpt_dir, save_every=cfg.train.checkpoint_every,
                            keep=cfg.train.keep_checkpoints, warn=self.log)
        summary: dict = {}
        if cfg.train.resume and ckpt.latest_step() is not None:
            _, params, _ = self._split_trainable()
            # the KL reference: the loaded model, or SFT's; kept when an earlier start_run of
            # this trainer set it (the model then holds the restored policy, not the reference)
            if _needs_reference(cfg.algo) and not self.lora and self._initial_params is None:
                self._initial_params = (_copy(params) if cfg.sft.steps <= 0
                                        else self.sft_weights())
            state, pos = ckpt.restore(self.abstract_state(params))
            policy = state.policy if isinstance(state, ActorCriticState) else state
            start = int(pos.get("step", int(policy.step) // cfg.algo.ppo_minibatches))
            summary = dict(pos.get("summary", {}))
            metrics.resume_at(start)  # records after the checkpoint are logged again
            self._set_policy(policy.params)
            self.log(f"resumed from {ckpt.directory} at step {start}")
        else:
            state, start = self._fresh_state(metrics, ckpt, summary), 0
        return hooks_lib.RunState(state=state, start_step=start, steps=cfg.train.steps,
                                  summary=summary, metrics=metrics, checkpointer=ckpt)

    def train(self, hooks: Sequence[hooks_lib.Hook] | None = None) -> dict:
        """SFT warm start (if configured), then RL steps with hooks; returns the summary."""
        hooks = list(hooks) if hooks is not None else hooks_lib.default_hooks(self.cfg)
        run = self.start_run()
        try:
            for hook in hooks:
                hook.on_start(self, run)
            bar = tqdm(range(run.start_step, run.steps), desc="rl", file=sys.stderr,
                       initial=run.start_step, total=run.steps, dynamic_ncols=True)
            for step in bar:
                run.state, metrics = self.step(run.state, step)
                for hook in hooks:
                    if hook.due(step + 1):
                        hook.after_step(self, run, step + 1, metrics)
                bar.set_postfix(reward=f"{metrics['reward']:.2f}",
                                loss=f"{metrics.get('loss', 0):.3f}")
            for hook in hooks:
                hook.on_end(self, run)
        finally:
            run.checkpointer.close()
            if "sft_checkpointer" in self.__dict__:
                self.sft_checkpointer.close()
            run.metrics.close()
        if self.primary:
            (self.run_dir / "summary.json").write_text(json.dumps(run.summary, indent=2))
        return run.summary


def _needs_reference(algo: Any) -> bool:
    """Reference log-probs are needed: the KL loss or the KL penalty in GAE's token rewards."""
    return algo.loss.kl_coef > 0 or algo.gae.kl_coef > 0


@functools.partial(jax.jit, static_argnames=("config", "num_groups"))
def _advantages(rewards: jax.Array, group_ids: jax.Array, config: Any, num_groups: int):
    return compute_advantages(rewards, group_ids, config, num_groups=num_groups).advantages


def concat_rollout_batches(parts: Sequence[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Rollout batches stacked in order, group ids renumbered consecutively; the rollout
    statistics are the first part's."""
    offsets = np.cumsum([0] + [p.num_groups for p in parts])
    group_ids = np.concatenate([p.group_ids + o for p, o in zip(parts, offsets)]).astype(np.int32)
    traj = concat_trajectories([p.trajectory for p in parts], pad_id=pad_id)
    traj = dataclasses.replace(traj, group_ids=group_ids, stats=dict(parts[0].trajectory.stats))
    return RolloutBatch(trajectory=traj, tasks=[t for p in parts for t in p.tasks],
                        group_ids=group_ids, num_groups=int(offsets[-1]))


def build_engine(model: Any, config: Any, environment: Environment | None, tokenizer: Any,
                 template: Any, *, mesh: Any = None) -> RolloutEngine:
    """The rollout engine for ``config`` with ``environment``'s tools (None: single-turn);
    with ``mesh`` the sampler's slots are split over ``('data', 'fsdp')`` and the KV heads
    over ``tp`` (its parameters must live on ``mesh``)."""
    if environment is None:
        config = dataclasses.replace(config, max_turns=1)
    return RolloutEngine(model, config, tokenizer=tokenizer, template=template,
                         environment=environment, mesh=mesh)
