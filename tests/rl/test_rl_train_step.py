"""GRPO train step: exact accumulation, sharding (8 simulated devices), memory, PPO, traces."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import simulated_devices_env
from toolrl_jax.errors import ConfigError
from toolrl_jax.models import Decoder, ModelConfig
from toolrl_jax.rl.losses import LossConfig
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model

REPO = pathlib.Path(__file__).resolve().parents[2]
MC = ModelConfig.tiny("llama", num_layers=1)
# eps 1e-4: AdamW's first step is ~ g / |g|, which turns rounding noise in gradient entries that
# are ~0 into O(lr) differences; a larger eps keeps the comparison about the gradients.
CFG = AlgoConfig(
    vocab_chunk=96,
    loss=LossConfig(kl_coef=0.05, entropy_coef=0.01, tis_cap=2.0, clip_eps_high=0.28),
)
OPT = OptimConfig(learning_rate=1e-3, eps=1e-4, weight_decay=0.01)


def _batch(b: int, t: int, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    tokens = r.integers(3, 256, (b, t)).astype(np.int32)
    mask = np.zeros((b, t), np.float32)
    for i in range(b):
        start = int(r.integers(1, t // 2))
        mask[i, start:start + int(r.integers(0, t - start))] = 1.0
    lp = (-5.5 + 0.2 * r.normal(size=(b, t))).astype(np.float32)
    return dict(
        tokens=tokens, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)), loss_mask=mask,
        advantages=r.normal(size=b).astype(np.float32), old_logprobs=lp,
        ref_logprobs=(lp + 0.1 * r.normal(size=(b, t))).astype(np.float32),
        sample_logprobs=(lp + 0.3 * r.normal(size=(b, t))).astype(np.float32),
    )


@pytest.fixture(scope="module")
def model_parts():
    graphdef, params = split_model(Decoder(MC, rngs=nnx.Rngs(0)))
    return graphdef, params


@pytest.fixture(scope="module")
def micro_learner(model_parts):
    """Learner with 4 micro-batches of 4 rows; its step is traced at most twice (2 buckets)."""
    learner = Learner(model_parts[0], MC, CFG.__class__(**{**CFG.__dict__, "micro_batch_size": 4}), OPT)
    learner._step = chex.assert_max_traces(learner._step, n=2)
    return learner


def _rel(a, b):
    return max(float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-12))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_accumulating_micro_batches_equals_one_big_batch(model_parts, micro_learner):
    graphdef, params = model_parts
    batch = _batch(16, 16)
    big = Learner(graphdef, MC, CFG, OPT)
    s_big, m_big = big.train_step(big.init_state(params), batch)
    s_acc, m_acc = micro_learner.train_step(micro_learner.init_state(params), batch)
    assert _rel(jax.device_get(s_acc.params), jax.device_get(s_big.params)) <= 1e-6
    assert _rel(jax.device_get(s_acc.opt_state), jax.device_get(s_big.opt_state)) <= 1e-5
    for k in ("loss", "pg_loss", "kl_loss", "entropy_loss", "grad_norm", "clip_frac",
              "tis_weight", "mismatch_abs_logp", "num_tokens"):
        np.testing.assert_allclose(float(m_acc[k]), float(m_big[k]), rtol=2e-6, atol=1e-7)
    assert float(m_acc["num_tokens"]) == batch["loss_mask"].sum()
    # the update did something
    assert _rel(jax.device_get(s_big.params), params) > 1e-3
    assert int(s_acc.step) == 1


def test_compiles_once_per_shape_bucket(model_parts, micro_learner):
    """chex.assert_max_traces(n=2) on the step: 3 batches of one bucket + 1 of another."""
    state = micro_learner.init_state(model_parts[1])
    for seed in (1, 2, 3):
        state, _ = micro_learner.train_step(state, _batch(16, 16, seed))
    state, _ = micro_learner.train_step(state, _batch(16, 24, 4))  # second bucket: one trace
    assert int(state.step) == 4
    assert micro_learner.train_step._cache_size() == 2


def test_logprobs_match_full_logits(model_parts, micro_learner):
    graphdef, params = model_parts
    batch = _batch(32, 16, seed=5)
    out = micro_learner.compute_logprobs(params, batch)
    logits = np.asarray(nnx.merge(graphdef, params)(batch["tokens"], batch["positions"]),
                        np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    want = np.zeros(batch["tokens"].shape)
    want[:, 1:] = np.take_along_axis(logp[:, :-1], batch["tokens"][:, 1:, None], -1)[..., 0]
    ent = np.zeros(batch["tokens"].shape)
    ent[:, 1:] = -(np.exp(logp) * logp).sum(-1)[:, :-1]
    np.testing.assert_allclose(np.asarray(out["logprobs"]), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["entropy"]), ent, rtol=1e-5, atol=1e-5)


def test_ppo_mini_batches_reuse_old_logprobs(model_parts, micro_learner):
    batch = _batch(32, 16, seed=6)
    for k in ("old_logprobs", "sample_logprobs"):
        batch.pop(k)
    batch["sample_logprobs"] = np.asarray(
        micro_learner.compute_logprobs(model_parts[1], batch)["logprobs"])
    state = micro_learner.init_state(model_parts[1])
    state, metrics = micro_learner.ppo_update(state, batch, num_mini_batches=2)
    assert len(metrics) == 2 and int(state.step) == 2
    first, second = (jax.device_get(m) for m in metrics)
    # first mini-batch: old log-probs were computed with the same params -> ratio 1
    np.testing.assert_allclose(first["ratio_mean"], 1.0, atol=1e-5)
    assert first["clip_frac"] == 0.0 and abs(first["approx_kl"]) < 1e-6
    assert first["mismatch_abs_logp"] < 1e-5
    # second mini-batch: params moved, the ratio is no longer 1 for the same old log-probs
    assert second["approx_kl"] > 1e-7
    with pytest.raises(ConfigError, match="mini-batches"):
        micro_learner.ppo_update(state, batch, num_mini_batches=3)


@pytest.mark.slow
def test_step_memory_does_not_grow_with_vocab(model_parts):
    """Compiled temp bytes of the whole step: V 512 -> 4096 adds far less than one [N, V] f32."""
    b, t, chunk = 8, 256, 256
    n = b * (t - 1)

    def temp_bytes(vocab: int) -> int:
        mc = MC.replace(vocab_size=vocab)
        graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
        cfg = AlgoConfig(vocab_chunk=chunk, loss=LossConfig(entropy_coef=0.01))
        learner = Learner(graphdef, mc, cfg)
        state = learner.abstract_state(params)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                 for k, v in _batch(b, t).items() if k in ("tokens", "positions", "loss_mask",
                                                           "advantages")}
        compiled = learner.train_step.lower(state, batch).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, big = 512, 4096
    growth = temp_bytes(big) - temp_bytes(small)
    one_logits_buffer = n * (big - small) * 4
    assert growth < one_logits_buffer / 2, (growth, one_logits_buffer)


def test_config_errors(model_parts):
    with pytest.raises(ConfigError, match="micro_batch_size"):
        AlgoConfig(micro_batch_size=0)
    with pytest.raises(ConfigError, match="compute_entropy"):
        AlgoConfig(compute_entropy=False, loss=LossConfig(entropy_coef=0.1))
    with pytest.raises(ConfigError, match="total_steps"):
        OptimConfig(schedule="cosine", total_steps=0)
    learner = Learner(model_parts[0], MC, AlgoConfig(micro_batch_size=5))
    with pytest.raises(ConfigError, match="micro_batch_size"):
        learner.loss_and_grads(model_parts[1], _batch(16, 8))


@pytest.mark.slow
def test_sharded_step_matches_single_device():
    """8 simulated CPU devices: (fsdp=4, tp=2) and (data=8) vs 1 device, same loss and params."""
    env = simulated_devices_env(8)
    proc = subprocess.run([sys.executable, str(REPO / "tests/rl/_multidevice_script.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    for name in ("fsdp4_tp2", "data8"):
        r = res[name]
        assert abs(r["loss"] - res["ref_loss"]) <= 1e-5 * max(1.0, abs(res["ref_loss"]))
        assert all(abs(d) <= 1e-5 for d in r["diffs"].values()), r["diffs"]
        assert r["param_rel"] <= 1e-5, r
        assert r["step_sharding"] == "P()"
    fsdp = res["fsdp4_tp2"]
    # every (divisible) 2-D parameter and its AdamW moments: 1/8 per device
    assert fsdp["param_fractions"] == [0.125] and fsdp["opt_fractions"] == [0.125]
    assert fsdp["num_opt_2d"] == 18  # mu and nu of the 9 matrices
    assert fsdp["state_bytes_fraction"] < 0.13  # only norms / biases / scalars replicated
    assert fsdp["restore_equal"]  # Orbax round trip of the sharded state, same shardings
    assert res["data8"]["param_fractions"] == [1.0]  # pure data parallel: replicated


def test_ratio_level_sequence_uses_gspo(model_parts):
    """algo.loss.ratio_level=sequence: the learner's loss is GSPO's on the same log-probs, and
    differs from the token-level loss (the batch's old log-probs are off-policy)."""
    import jax.numpy as jnp

    from toolrl_jax.rl.gspo import gspo_loss_terms

    graphdef, params = model_parts
    loss_cfg = LossConfig(ratio_level="sequence", clip_eps_low=3e-4, clip_eps_high=4e-4)
    learner = Learner(graphdef, MC, AlgoConfig(vocab_chunk=96, loss=loss_cfg), OPT)
    batch = {k: v for k, v in _batch(4, 16, seed=3).items() if k != "ref_logprobs"}
    loss, _, _ = learner.loss_and_grads(params, batch)
    lp = learner.compute_logprobs(params, batch)["logprobs"]
    terms = gspo_loss_terms(lp, jnp.asarray(batch["old_logprobs"]), jnp.asarray(batch["advantages"]),
                            jnp.asarray(batch["loss_mask"]), loss_cfg, entropy=None,
                            sample_logprobs=jnp.asarray(batch["sample_logprobs"]))
    denom = float(np.sum(batch["loss_mask"]))  # token-mean
    np.testing.assert_allclose(float(loss), float(terms.numerator) / denom, rtol=1e-5, atol=1e-7)
    token = Learner(graphdef, MC, AlgoConfig(vocab_chunk=96, loss=LossConfig(
        clip_eps_low=3e-4, clip_eps_high=4e-4)), OPT)
    assert abs(float(token.loss_and_grads(params, batch)[0]) - float(loss)) > 1e-6
