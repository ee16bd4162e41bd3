"""The GRPO training loop (imperative shell around the pure, jitted pieces).

One step, as data::

    tasks[step]  (a pure function of (seed, step): resumes exactly)
      -> prompt ids (chat template as token ids)          repeated `samples_per_prompt` times
      -> RolloutEngine.run   jitted KV-cache sampler; multi-turn mode runs tools, appends
                             observation ids with loss mask 0, refills finished slots
      -> Trajectory          tokens, loss_mask, sample_logprobs, group_ids (numpy)
      -> reward              completion text parsed once on the host, jitted ToolRL reward
      -> advantages          jitted, per group (GRPO / Dr. GRPO / RLOO / batch-normalised)
      -> Learner.ppo_update  `ppo_minibatches` optimizer steps reusing the old log-probs
      -> metrics.jsonl, checkpoint (Orbax; async; SIGTERM-safe)

Evaluation (before training, every ``eval_every`` steps and after) decodes the held-out tasks
greedily and reports the mean ToolRL reward, its components and exact-match accuracy.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from toolrl_jax.config_io import save_config
from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.train.config import TrainConfig

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- data
def load_tasks(cfg: TrainConfig) -> tuple[list, list, dict]:
    """``(train_tasks, heldout_tasks, summary)`` for ``cfg.data``."""
    d = cfg.data
    if d.source == "generated":
        from toolrl_jax.data.generated import train_heldout_split

        train, held = train_heldout_split(d.num_train, d.num_eval, seed=d.seed,
                                          prompt_style=d.prompt_style, min_tools=d.min_tools,
                                          max_tools=d.max_tools)
        return list(train), list(held), {"source": "generated", "train": len(train),
                                          "heldout": len(held), "skipped": 0}
    if d.path is None and d.source != "bfcl_multi_turn":
        raise ConfigError(f"data.path: required for data.source={d.source!r}")
    if d.source in ("toolrl_json", "toolrl_parquet"):
        from toolrl_jax.data import load_toolrl

        loaded = load_toolrl(d.path)
    elif d.source == "apibank":
        from toolrl_jax.data import load_apibank

        loaded = load_apibank(d.path)
    elif d.source == "bfcl":
        from toolrl_jax.data import load_bfcl

        loaded = load_bfcl(d.path)
    elif d.source == "bfcl_multi_turn":  # data.path = a BFCL multi-turn category
        from toolrl_jax.tools.bfcl_env import bfcl_training_tasks

        loaded = bfcl_training_tasks(d.path or "multi_turn_base")
    else:  # pragma: no cover - rejected by the config type
        raise ConfigError(f"data.source: unknown {d.source!r}")
    tasks = list(loaded)
    if len(tasks) <= d.num_eval:
        raise DataError(f"{d.path}: {len(tasks)} usable records, need more than data.num_eval="
                        f"{d.num_eval}")
    rng = np.random.default_rng(d.seed)
    order = rng.permutation(len(tasks))
    held = [tasks[i] for i in order[: d.num_eval]]
    train = [tasks[i] for i in order[d.num_eval:]]
    summary = {"source": d.source, "train": len(train), "heldout": len(held),
               "skipped": int(getattr(loaded, "skipped", 0))}
    return train, held, summary


def step_task_indices(num_tasks: int, prompts_per_step: int, step: int, seed: int) -> np.ndarray:
    """Task indices of ``step`` (0-based): epoch-wise permutations, a pure function of the step.

    The data position after step ``s`` is just ``s``, so resuming needs no iterator state.
    """
    start = step * prompts_per_step
    out = []
    while len(out) < prompts_per_step:
        epoch, offset = divmod(start + len(out), num_tasks)
        perm = np.random.default_rng([seed, epoch]).permutation(num_tasks)
        take = min(prompts_per_step - len(out), num_tasks - offset)
        out.extend(perm[offset: offset + take].tolist())
    return np.asarray(out, np.int64)


def _bucket(n: int, multiple: int = 64) -> int:
    return max(multiple, -(-n // multiple) * multiple)


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """Builds every component from a :class:`TrainConfig` and runs SFT / GRPO / evaluation."""

    def __init__(self, cfg: TrainConfig, *, log: Log = _stderr):
        from toolrl_jax.chat import detect_template, load_tokenizer
        from toolrl_jax.models.registry import load_model
        from toolrl_jax.models.sharding import initialize_distributed_if_needed

        self.cfg = cfg
        self.log = log
        self.run_dir = pathlib.Path(cfg.train.out_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.run_dir / "resolved_config.yaml")
        initialize_distributed_if_needed()
        self.mesh = self._make_mesh()

        t0 = time.perf_counter()
        loaded = load_model(cfg.model.name, param_dtype=cfg.model.param_dtype,
                            dtype=cfg.model.dtype, mesh=self.mesh)
        self.model = loaded.model
        self.model_config = loaded.config
        self.tokenizer = load_tokenizer(loaded.source.tokenizer_source)
        self.template = detect_template(self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        log(f"model {cfg.model.name}: {self._num_params() / 1e6:.1f}M parameters, "
            f"loaded in {time.perf_counter() - t0:.1f}s on {jax.devices()[0].platform}")

        self.train_tasks, self.heldout_tasks, summary = load_tasks(cfg)
        self.train_prompts, skipped = self._prompt_ids(self.train_tasks)
        self.heldout_prompts, _ = self._prompt_ids(self.heldout_tasks)
        keep = [i for i, p in enumerate(self.train_prompts) if p is not None]
        self.train_tasks = [self.train_tasks[i] for i in keep]
        self.train_prompts = [self.train_prompts[i] for i in keep]
        keep_h = [i for i, p in enumerate(self.heldout_prompts) if p is not None]
        self.heldout_tasks = [self.heldout_tasks[i] for i in keep_h]
        self.heldout_prompts = [self.heldout_prompts[i] for i in keep_h]
        if not self.train_tasks:
            raise DataError("no training task fits data.max_prompt_tokens; raise it")
        summary["skipped_too_long"] = skipped
        log(f"data: {json.dumps(summary)}")

        self._check_batch_geometry()
        self._reward_config = self._make_reward_config()
        r = cfg.rollout
        turns = r.max_turns if r.mode == "multi_turn" else 1
        obs = r.max_observation_tokens if r.mode == "multi_turn" else 0
        self._train_len = _bucket(max(len(p) for p in self.train_prompts)
                                  + turns * r.max_new_tokens + (turns - 1) * obs)
        self._learner = None
        self._engines: dict[str, Any] = {}

    # ------------------------------------------------------------------ building blocks
    def _check_batch_geometry(self) -> None:
        """Fails fast (before any compile) when the batch does not split as configured."""
        r, a = self.cfg.rollout, self.cfg.algo
        rows = r.prompts_per_step * r.samples_per_prompt
        if a.ppo_minibatches < 1 or rows % a.ppo_minibatches:
            raise ConfigError(f"algo.ppo_minibatches={a.ppo_minibatches} must divide "
                              f"rollout.prompts_per_step*samples_per_prompt={rows}")
        mini = rows // a.ppo_minibatches
        if a.micro_batch_size < 1 or mini % a.micro_batch_size:
            raise ConfigError(f"algo.micro_batch_size={a.micro_batch_size} must divide the PPO "
                              f"mini-batch of {mini} rows (rows / algo.ppo_minibatches)")

    def _make_mesh(self):
        from toolrl_jax.models.sharding import MeshConfig, make_mesh

        if jax.device_count() == 1:
            return None
        m = self.cfg.mesh
        return make_mesh(MeshConfig(data=m.data, fsdp=m.fsdp, tp=m.tp))

    def _num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self.model, nnx.Param)))

    def _prompt_ids(self, tasks) -> tuple[list, int]:
        limit = self.cfg.data.max_prompt_tokens
        out, skipped = [], 0
        for t in tasks:
            ids = self.template.render_prompt(self.tokenizer, t.messages, add_generation_prompt=True)
            if len(ids) > limit:
                out.append(None)
                skipped += 1
            else:
                out.append(list(ids))
        return out, skipped

    def _make_reward_config(self):
        from toolrl_jax.rewards.config import ToolRLRewardConfig

        r = self.cfg.reward
        if r.compat == "toolrl":
            return ToolRLRewardConfig.compat_toolrl(variant=r.variant)
        return ToolRLRewardConfig(variant=r.variant, matching=r.matching,
                                  total_steps=max(self.cfg.train.steps, 1))

    def _optim_config(self, lr: float, total_steps: int):
        from toolrl_jax.rl.train_step import OptimConfig

        o = self.cfg.optim
        return OptimConfig(learning_rate=lr, schedule=o.schedule, warmup_steps=o.warmup_steps,
                           total_steps=max(total_steps, o.warmup_steps + 1),
                           weight_decay=o.weight_decay, grad_clip_norm=o.grad_clip,
                           b1=o.b1, b2=o.b2)

    @property
    def learner(self):
        if self._learner is None:
            from toolrl_jax.rl.losses import LossConfig
            from toolrl_jax.rl.train_step import GRPOConfig, Learner, split_model

            a, r = self.cfg.algo, self.cfg.rollout
            loss = LossConfig(clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
                              dual_clip_c=a.dual_clip, kl_coef=a.kl_coef,
                              kl_estimator=a.kl_estimator, entropy_coef=a.entropy_coef,
                              aggregation=a.loss_agg)
            total = self.cfg.train.steps * a.ppo_minibatches
            grpo = GRPOConfig(loss=loss, optim=self._optim_config(self.cfg.optim.lr, total),
                              micro_batch_size=a.micro_batch_size,
                              temperature=r.temperature if r.temperature > 0 else 1.0)
            graphdef, _ = split_model(self.model)
            self._learner = Learner(graphdef, self.model_config, grpo, mesh=self.mesh)
        return self._learner

    def engine(self, kind: str):
        """The rollout engine for ``'train'`` (sampling) or ``'eval'`` (greedy)."""
        if kind not in self._engines:
            from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine
            from toolrl_jax.rollout.sampling import SamplingConfig
            from toolrl_jax.rollout.turns import Environment, tool_call_extractor

            r = self.cfg.rollout
            longest = max(len(p) for p in self.train_prompts + self.heldout_prompts)
            if kind == "train":
                sampling = SamplingConfig(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k)
                max_new = r.max_new_tokens
                slots = min(r.prompts_per_step * r.samples_per_prompt, 64)
            else:
                sampling = SamplingConfig(temperature=0.0)
                max_new = r.eval_max_new_tokens or r.max_new_tokens
                slots = min(len(self.heldout_prompts), 64)
            multi = r.mode == "multi_turn"
            turns = r.max_turns if multi else 1
            total = _bucket(longest + turns * (max_new + (r.max_observation_tokens if multi else 0)))
            rc = RolloutConfig(num_slots=max(slots, 1), max_new_tokens=max_new,
                               max_total_len=total, max_turns=turns,
                               max_obs_tokens=r.max_observation_tokens, sampling=sampling,
                               seed=self.cfg.train.seed)
            environment = None
            if multi:
                from toolrl_jax.tools.executor import ToolExecutor

                if self.cfg.data.source == "bfcl_multi_turn":
                    from toolrl_jax.tools.bfcl_env import BFCLEnvironment

                    env = BFCLEnvironment.for_tasks(self.train_tasks + self.heldout_tasks)
                    executor = ToolExecutor(environment=env)
                else:
                    from toolrl_jax.data.generated import GENERATED_TOOLS

                    executor = ToolExecutor(list(GENERATED_TOOLS.values()))
                environment = Environment(executor=executor,
                                          extract_calls=tool_call_extractor("toolrl"),
                                          observation_format="toolrl")
            self._engines[kind] = RolloutEngine(self.model, rc, tokenizer=self.tokenizer,
                                                template=self.template, environment=environment)
        return self._engines[kind]

    def _set_policy(self, params: Any) -> None:
        """Copies the learner's params (pure dict) into the model and the rollout engines."""
        state = nnx.state(self.model)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(self.model, state)
        full = nnx.split(self.model)[1]
        for eng in self._engines.values():
            eng.set_params(full)

    def _rollout(self, kind: str, prompts: Sequence[Sequence[int]], group_ids: Sequence[int],
                 seed: int, tasks: Sequence[Any] | None = None):
        from toolrl_jax.rollout.engine import RolloutRequest

        tasks = list(tasks) if tasks is not None else [None] * len(prompts)
        reqs = [RolloutRequest(prompt_ids=list(p), group_id=int(g), task=t)
                for p, g, t in zip(prompts, group_ids, tasks)]
        return self.engine(kind).run(reqs, seed=int(seed))

    def _texts(self, traj) -> list[str]:
        """Text the reward scores: the first assistant turn (ToolRL's rule; in single-turn mode
        that is the whole completion). Decoded for scoring only, never fed back as ids."""
        if self.cfg.rollout.mode == "multi_turn":
            return [self.tokenizer.decode(traj.turn_ids(i, 0).tolist(), skip_special_tokens=True)
                    for i in range(traj.tokens.shape[0])]
        return [traj.completion_text(i, self.tokenizer, skip_special_tokens=True)
                for i in range(traj.tokens.shape[0])]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int = 0, limit: int = 0) -> dict:
        """Greedy decoding of the held-out tasks; mean reward, components, exact match."""
        from toolrl_jax.eval.toolrl import exact_match
        from toolrl_jax.rewards.toolrl import score_texts

        tasks, prompts = self.heldout_tasks, self.heldout_prompts
        if limit:
            tasks, prompts = tasks[:limit], prompts[:limit]
        t0 = time.perf_counter()
        traj = self._rollout("eval", prompts, range(len(prompts)), seed=0, tasks=tasks)
        texts = self._texts(traj)
        scores = score_texts(texts, [t.ground_truth for t in tasks], step, self._reward_config)
        em = [exact_match(t, c) for t, c in zip(tasks, texts)]
        result = {
            "reward": float(np.mean(scores["total"])),
            "format": float(np.mean(scores["format"])),
            "correctness": float(np.mean(scores["correctness"])),
            "exact_match": float(np.mean(em)),
            "n": len(tasks),
            "seconds": time.perf_counter() - t0,
        }
        if texts:
            self.log(f"held-out example {tasks[0].id!r} (step {step}): {texts[0][:400]!r}")
        with open(self.run_dir / f"eval_samples_step{step}.jsonl", "w") as f:
            for t, c, s in zip(tasks, texts, scores["total"]):
                f.write(json.dumps({"id": t.id, "completion": c, "reward": float(s)}) + "\n")
        return result

    # ------------------------------------------------------------------ SFT
    def sft(self) -> dict:
        """Warm start on ground-truth answers of the training tasks (assistant tokens only)."""
        from toolrl_jax.rl.train_step import split_model
        from toolrl_jax.train.sft import SFTLearner, pad_examples, sft_example

        s = self.cfg.sft
        if s.steps <= 0:
            return {}
        if s.source == "toolrl_json":
            from toolrl_jax.data import load_toolrl

            if not s.path:
                raise ConfigError("sft.path: required for sft.source=toolrl_json")
            tasks = list(load_toolrl(s.path))
        else:
            tasks = self.train_tasks
        examples = []
        for t in tasks:
            ids, mask = sft_example(self.tokenizer, self.template, t.messages, t.ground_truth)
            if len(ids) <= s.max_tokens:
                examples.append((ids, mask))
        if not examples:
            raise DataError(f"no SFT example fits sft.max_tokens={s.max_tokens}")
        length = _bucket(max(len(e[0]) for e in examples))  # one shape: one compile
        graphdef, params = split_model(self.model)
        learner = SFTLearner(graphdef, self._optim_config(s.lr, s.steps))
        state = learner.init_state(params, seed=self.cfg.train.seed)
        rng = np.random.default_rng(self.cfg.train.seed)
        from tqdm import tqdm

        last = {}
        bar = tqdm(range(s.steps), desc="sft", file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            idx = rng.choice(len(examples), size=min(s.batch_size, len(examples)), replace=False)
            chosen = [examples[i] for i in idx]
            batch = pad_examples(chosen, length, self.pad_id)
            state, metrics = learner.step(state, batch)
            if getattr(self, "_ckpt", None) is not None and self._ckpt.preemption_requested(step):
                self.log("SIGTERM during SFT: stopping (the SFT warm start is not checkpointed)")
                raise SystemExit(143)
            last = {k: float(v) for k, v in jax.device_get(metrics).items()}
            bar.set_postfix(loss=f"{last['sft_loss']:.3f}")
            self.metrics.log(step + 1, last, kind="sft")
        self._set_policy(state.params)
        return last

    # ------------------------------------------------------------------ GRPO
    def _grpo_batch(self, traj, rewards: np.ndarray) -> tuple[dict, dict]:
        from toolrl_jax.rl.advantages import AdvantageConfig, compute_advantages

        a = self.cfg.algo
        adv_cfg = AdvantageConfig(estimator=a.advantage, std_ddof=a.std_ddof)
        groups = np.asarray(traj.group_ids, np.int32)
        num_groups = int(groups.max()) + 1
        out = compute_advantages(jnp.asarray(rewards, jnp.float32), jnp.asarray(groups),
                                 adv_cfg, num_groups=num_groups)
        adv = np.asarray(out.advantages)
        t = max(self._train_len, _bucket(traj.tokens.shape[1]))  # fixed T: one compile
        batch = {k: np.asarray(v) for k, v in traj.pad_to(t, pad_id=self.pad_id).to_batch().items()}
        batch["loss_mask"] = batch["loss_mask"].astype(np.float32)
        if a.filter_equal_groups:  # DAPO dynamic sampling: all-equal groups carry no signal
            batch["loss_mask"] *= np.asarray(out.nonconstant_row_mask, np.float32)[:, None]
        batch["advantages"] = adv.astype(np.float32)
        stats = {"constant_groups": int(out.num_constant_groups), "groups": int(out.num_groups)}
        return batch, stats

    def _reference_params(self, state):
        """The frozen reference policy of the KL term: the policy GRPO starts from.

        That is the loaded model, or the model after the SFT warm start; both are captured in
        :meth:`train` before the first update. A run resumed after an SFT warm start cannot
        rebuild the SFT weights, so it falls back to the restored policy and says so."""
        if getattr(self, "_initial_params", None) is not None:
            return self._initial_params
        self.log("kl_coef > 0: resumed after SFT, the reference policy is the restored policy")
        return jax.tree.map(lambda x: jnp.array(x, copy=True), state.params)

    def train(self) -> dict:
        """SFT warm start (if configured), then GRPO; evaluates before and after."""
        from tqdm import tqdm

        from toolrl_jax.rewards.toolrl import score_texts
        from toolrl_jax.rl.train_step import split_model
        from toolrl_jax.train.checkpoint import Checkpointer
        from toolrl_jax.train.metrics import MetricsLogger

        cfg = self.cfg
        r, a = cfg.rollout, cfg.algo
        ckpt_dir = self.run_dir / "checkpoints"
        if not cfg.train.resume and ckpt_dir.exists():
            import shutil

            self.log(f"train.resume=false: starting over, removing {ckpt_dir} and old metrics")
            shutil.rmtree(ckpt_dir)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self.metrics = MetricsLogger(self.run_dir)
        ckpt = Checkpointer(ckpt_dir, save_every=cfg.train.checkpoint_every,
                            keep=cfg.train.keep_checkpoints)
        self._ckpt = ckpt
        summary: dict[str, Any] = {}
        try:
            _, params = split_model(self.model)
            if a.kl_coef > 0 and cfg.sft.steps <= 0:  # the loaded model is the reference
                self._initial_params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
            start = 0
            state = None
            if cfg.train.resume and ckpt.latest_step() is not None:
                state, pos = ckpt.restore(self.learner.abstract_state(params))
                start = int(pos.get("step", int(state.step) // max(a.ppo_minibatches, 1)))
                self._set_policy(state.params)
                summary = dict(pos.get("summary", {}))
                self.log(f"resumed from {ckpt.directory} at step {start}")
            if state is None:
                before = self.evaluate(0, cfg.train.eval_limit)
                summary["before"] = before
                self.metrics.log(0, before, kind="eval")
                self.log(f"eval before training: {json.dumps(_round(before))}")
                if cfg.sft.steps > 0:
                    sft_metrics = self.sft()
                    after_sft = self.evaluate(0, cfg.train.eval_limit)
                    summary["after_sft"] = after_sft
                    self.metrics.log(0, after_sft, kind="eval_after_sft")
                    self.log(f"sft: {json.dumps(_round(sft_metrics))}; eval after sft: "
                             f"{json.dumps(_round(after_sft))}")
                _, params = split_model(self.model)
                state = self.learner.init_state(params, seed=cfg.train.seed)
                if a.kl_coef > 0 and cfg.sft.steps > 0:  # the SFT'd model is the reference
                    self._initial_params = jax.tree.map(lambda x: jnp.array(x, copy=True),
                                                        state.params)

            ref_params = None
            n_prompts = r.prompts_per_step
            bar = tqdm(range(start, cfg.train.steps), desc="grpo", file=sys.stderr,
                       initial=start, total=cfg.train.steps, dynamic_ncols=True)
            for step in bar:
                times = {}
                t0 = time.perf_counter()
                idx = step_task_indices(len(self.train_tasks), n_prompts, step, cfg.data.seed)
                prompts = [self.train_prompts[i] for i in idx for _ in range(r.samples_per_prompt)]
                groups = [g for g in range(n_prompts) for _ in range(r.samples_per_prompt)]
                step_tasks = [self.train_tasks[i] for i in idx for _ in range(r.samples_per_prompt)]
                traj = self._rollout("train", prompts, groups, seed=cfg.train.seed * 1_000_003 + step,
                                     tasks=step_tasks)
                times["time_rollout"] = time.perf_counter() - t0
                st = getattr(traj, "stats", {}) or {}
                for src, dst in (("decode_s", "time_rollout_decode"), ("extend_s", "time_rollout_prefill"),
                                 ("wait_s", "time_tools_wait"), ("slot_utilisation", "rollout_slot_utilisation"),
                                 ("tokens_per_s", "rollout_tokens_per_s")):
                    if isinstance(st.get(src), (int, float)):
                        times[dst] = float(st[src])
                t1 = time.perf_counter()
                texts = self._texts(traj)
                gts = [self.train_tasks[i].ground_truth for i in idx for _ in range(r.samples_per_prompt)]
                scores = score_texts(texts, gts, step, self._reward_config)
                times["time_reward"] = time.perf_counter() - t1
                batch, adv_stats = self._grpo_batch(traj, scores["total"])
                t2 = time.perf_counter()
                keys = ("tokens", "positions", "segment_ids")
                if a.ppo_minibatches > 1:  # old log-probs once, reused by every mini-batch
                    placed = self.learner.shard_batch({k: batch[k] for k in keys})
                    batch["old_logprobs"] = np.asarray(jax.device_get(
                        self.learner.compute_logprobs(state.params, placed)["logprobs"]))
                    times["time_logprobs"] = time.perf_counter() - t2
                    t2 = time.perf_counter()
                if a.kl_coef > 0:  # frozen reference = the policy at the start of GRPO
                    if ref_params is None:
                        ref_params = self._reference_params(state)
                    placed = self.learner.shard_batch({k: batch[k] for k in keys})
                    batch["ref_logprobs"] = np.asarray(jax.device_get(
                        self.learner.compute_logprobs(ref_params, placed)["logprobs"]))
                    times["time_ref_logprobs"] = time.perf_counter() - t2
                    t2 = time.perf_counter()
                state, step_metrics = self.learner.ppo_update(
                    state, batch, num_mini_batches=a.ppo_minibatches)
                step_metrics = jax.device_get(step_metrics)
                times["time_update"] = time.perf_counter() - t2
                self._set_policy(state.params)
                gen_len = (batch["loss_mask"] > 0).sum(1)
                m = {k: float(np.mean([sm[k] for sm in step_metrics]))
                     for k in step_metrics[0] if np.ndim(step_metrics[0][k]) == 0}
                m.update(
                    reward=float(np.mean(scores["total"])),
                    reward_format=float(np.mean(scores["format"])),
                    reward_correctness=float(np.mean(scores["correctness"])),
                    reward_length=float(np.mean(scores["length"])),
                    accuracy=float(np.mean(scores["correctness"] >= self._reward_config.correctness_range[1] - 1e-6)),
                    response_length=float(np.mean(gen_len)),
                    tool_calls_per_trajectory=float(np.mean(traj.num_tool_calls)),
                    time_step=time.perf_counter() - t0,
                    **adv_stats, **times,
                )
                self.metrics.log(step + 1, m)
                bar.set_postfix(reward=f"{m['reward']:.2f}", loss=f"{m.get('loss', 0):.3f}")
                if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                    ev = self.evaluate(step + 1, cfg.train.eval_limit)
                    self.metrics.log(step + 1, ev, kind="eval")
                ckpt.step_boundary(step + 1, state, {"step": step + 1, "summary": summary})
            after = self.evaluate(cfg.train.steps, cfg.train.eval_limit)
            summary["after"] = after
            self.metrics.log(cfg.train.steps, after, kind="eval_final")
            if ckpt.latest_step() != cfg.train.steps:
                ckpt.save(cfg.train.steps, state, {"step": cfg.train.steps, "summary": summary})
            ckpt.wait()
        finally:
            ckpt.close()
            self.metrics.close()
        if cfg.train.plot:
            try:
                from toolrl_jax.train.metrics import plot_run

                summary["plots"] = [str(p) for p in plot_run(self.run_dir)]
            except ImportError:
                self.log("matplotlib not installed: skipping plots (pip install matplotlib)")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _round(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
