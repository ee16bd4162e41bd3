"""Packed GRPO rows (``algo.pack_rows``): several sequences per row with segment ids give the
loss and gradient of the same sequences padded one per row."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from tests.train import _multihost_driver  # noqa: F401  (registers the token_hash reward)
from tests.train.test_composable import _one_step, _overrides
from toolrl_jax.config_io import load_config
from toolrl_jax.errors import ConfigError
from toolrl_jax.models import Decoder, ModelConfig
from toolrl_jax.rl.losses import LossConfig, aggregation_denominator, aggregation_weights
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model
from toolrl_jax.train.batch import (
    TrainBatch,
    pack_bins,
    pack_rows,
    packed_row_count,
    row_spans,
)
from toolrl_jax.train.config import TrainConfig

MC = ModelConfig.tiny("llama", num_layers=2)
PAD = 0


def test_first_fit_decreasing_by_hand():
    # longest first: 30 -> bin 0 (2 left); 20 -> bin 1 (12 left); 10 -> bin 1; 5 fits nowhere
    assert pack_bins(np.array([10, 30, 5, 20, 0]), 32) == [[1], [3, 0], [2]]
    assert pack_bins(np.array([16, 16, 16, 16]), 32) == [[0, 1], [2, 3]]
    assert pack_bins(np.array([0, 0]), 8) == []


@pytest.mark.parametrize("bins, rows, unit, want", [
    (3, 8, 1, 3), (4, 8, 1, 4), (5, 8, 1, 6), (7, 8, 1, 8), (1, 8, 2, 2), (3, 8, 2, 4),
    (5, 16, 2, 6), (9, 32, 2, 12), (13, 32, 2, 16), (17, 64, 1, 24), (0, 8, 4, 4), (7, 6, 2, 6),
])
def test_packed_row_count_is_whole_units_times_few_sizes(bins, rows, unit, want):
    """Units of 1, 2, 3, 4, 6, 8, 12, 16, 24, ...; never more than the rows."""
    assert packed_row_count(bins, rows=rows, unit=unit) == want


def _padded_batch(lengths, prompt_lengths, t, *, seed=0, token_advantages=False) -> TrainBatch:
    """Right-padded rows: a prompt (mask 0) then a response (mask 1), random tokens."""
    r = np.random.default_rng(seed)
    b = len(lengths)
    tokens = np.full((b, t), PAD, np.int32)
    seg = np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), np.float32)
    for i, (n, p) in enumerate(zip(lengths, prompt_lengths)):
        tokens[i, :n] = r.integers(3, 256, n)
        seg[i, :n] = 1
        mask[i, p:n] = 1.0
    adv = r.normal(size=(b, t) if token_advantages else b).astype(np.float32)
    return TrainBatch(tokens=tokens, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
                      segment_ids=seg, loss_mask=mask,
                      sample_logprobs=(-5.0 + 0.3 * r.normal(size=(b, t))).astype(np.float32),
                      advantages=adv)


LENGTHS = [30, 12, 9, 20, 17, 6, 25, 7]
PROMPTS = [8, 5, 4, 8, 6, 6, 9, 3]  # row 5: prompt only (no loss token): dropped by packing


def test_pack_rows_moves_every_sequence_intact():
    batch = _padded_batch(LENGTHS, PROMPTS, 32, token_advantages=True)
    start, length = row_spans(batch)
    assert start.tolist() == [0] * 8 and length.tolist() == [30, 12, 9, 20, 17, 0, 25, 7]
    bins = pack_bins(length, 32)
    assert bins == [[0], [6, 7], [3, 1], [4, 2]]  # 30 | 25 + 7 | 20 + 12 | 17 + 9
    packed = pack_rows(batch, bins, 4, pad_id=PAD)
    chex.assert_shape([packed.tokens, packed.segment_ids, packed.advantages], (4, 32))
    for r, rows in enumerate(bins):
        offset = 0
        for k, b in enumerate(rows, start=1):
            n = int(length[b])
            sl = slice(offset, offset + n)
            np.testing.assert_array_equal(packed.tokens[r, sl], batch.tokens[b, :n])
            np.testing.assert_array_equal(packed.positions[r, sl], np.arange(n))
            np.testing.assert_array_equal(packed.loss_mask[r, sl], batch.loss_mask[b, :n])
            np.testing.assert_array_equal(packed.advantages[r, sl], batch.advantages[b, :n])
            np.testing.assert_array_equal(packed.sample_logprobs[r, sl],
                                          batch.sample_logprobs[b, :n])
            assert (packed.segment_ids[r, sl] == k).all()
            offset += n
        assert (packed.segment_ids[r, offset:] == 0).all()
        assert (packed.loss_mask[r, offset:] == 0).all()
    assert packed.loss_mask.sum() == batch.loss_mask.sum()
    with pytest.raises(ValueError, match="more than T"):
        pack_rows(batch, [[0, 6]], 1, pad_id=PAD)


def test_segment_aggregation_matches_a_loop_over_sequences():
    """Hand reference: seq-mean-token-mean weights are 1/|o| of the token's own segment and D
    counts segments with a loss token."""
    mask = np.array([[0, 1, 1, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 0, 0]], np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 2, 2, 3, 3]], np.int32)
    w = np.asarray(aggregation_weights(mask, "seq-mean-token-mean", segment_ids=seg))
    want = np.array([[0, 1 / 2, 1 / 2, 0, 1 / 3, 1 / 3, 1 / 3, 0],
                     [0, 0, 1 / 2, 1 / 2, 1 / 2, 1 / 2, 0, 0]], np.float32)
    np.testing.assert_allclose(w, want, rtol=1e-6)
    # segments with a loss token: (0,1) (0,2) (1,1) (1,2); (1,3) has none
    assert float(aggregation_denominator(mask, "seq-mean-token-mean", seg)) == 4.0
    assert float(aggregation_denominator(mask, "token-mean", seg)) == mask.sum()
    # one segment per row: the row-wise aggregation
    rows = (np.arange(8)[None] < 7).astype(np.int32).repeat(2, 0)
    np.testing.assert_allclose(
        np.asarray(aggregation_weights(mask, "seq-mean-token-mean", segment_ids=rows)),
        np.asarray(aggregation_weights(mask, "seq-mean-token-mean")), rtol=1e-6)


@pytest.fixture(scope="module")
def model_parts():
    return split_model(Decoder(MC, rngs=nnx.Rngs(0)))


def _loss_and_grads(learner, params, batch: TrainBatch, ref_params):
    d = batch.as_dict()
    d["ref_logprobs"] = learner.compute_logprobs(ref_params, d)["logprobs"]
    loss, grads, metrics = jax.jit(learner.loss_and_grads)(params, d)
    return float(loss), grads, {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("aggregation, token_advantages, micro", [
    ("token-mean", False, None), ("seq-mean-token-mean", False, 2),
    ("seq-mean-token-mean", True, None), ("seq-mean-token-sum-norm", False, 2),
])
def test_packed_batch_has_the_padded_loss_and_gradient(model_parts, aggregation,
                                                       token_advantages, micro):
    graphdef, params = model_parts
    ref_params = jax.tree.map(lambda x: x * 0.9, params)  # a different policy for the KL
    algo = AlgoConfig(vocab_chunk=96, micro_batch_size=micro, loss=LossConfig(
        aggregation=aggregation, kl_coef=0.05, entropy_coef=0.01, tis_cap=2.0))
    learner = Learner(graphdef, MC, algo, OptimConfig(learning_rate=1e-3))
    padded = _padded_batch(LENGTHS, PROMPTS, 32, seed=1, token_advantages=token_advantages)
    bins = pack_bins(row_spans(padded)[1], 32)
    packed = pack_rows(padded, bins, packed_row_count(len(bins), rows=8, unit=2), pad_id=PAD)
    assert packed.tokens.shape[0] == 4 < padded.tokens.shape[0]
    want_loss, want_grads, want_m = _loss_and_grads(learner, params, padded, ref_params)
    got_loss, got_grads, got_m = _loss_and_grads(learner, params, packed, ref_params)
    assert abs(got_loss - want_loss) <= 1e-5 * max(1.0, abs(want_loss)), (got_loss, want_loss)
    for k in ("pg_loss", "kl_loss", "entropy_loss", "entropy", "ref_kl", "num_tokens",
              "tis_weight", "mismatch_kl_k1"):
        assert got_m[k] == pytest.approx(want_m[k], rel=1e-5, abs=1e-6), k
    chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)


def test_pack_rows_config_errors():
    with pytest.raises(ConfigError, match=r"algo\.pack_rows: GSPO"):
        AlgoConfig(pack_rows=True, loss=LossConfig(ratio_level="sequence"))
    with pytest.raises(ConfigError, match=r"algo\.pack_rows: the critic"):
        load_config(TrainConfig, None, ["algo.pack_rows=true", "algo.advantage.estimator=gae"])


@pytest.mark.slow
def test_trainer_step_with_packed_rows_has_the_padded_loss(tiny_model_dir, tmp_path):
    """One real step of the tiny trainer, padded vs packed (same rollouts, one PPO
    mini-batch): the same loss to 1e-5 on fewer rows."""
    extra = ("algo.ppo_minibatches=1", "algo.micro_batch_size=1", "rollout.prompts_per_step=4",
             "rollout.max_new_tokens=24", "rollout.num_slots=8", "rollout.max_total_len=1024",
             "reward.components={token_hash: 1.0}", "algo.loss.entropy_coef=0.01")
    _, padded = _one_step(load_config(TrainConfig, None, _overrides(
        tiny_model_dir, tmp_path / "padded", *extra)))
    _, packed = _one_step(load_config(TrainConfig, None, _overrides(
        tiny_model_dir, tmp_path / "packed", *extra, "algo.pack_rows=true")))
    assert padded["update_rows"] == 8 and packed["update_rows"] < 8, (padded, packed)
    assert packed["update_fill"] > padded["update_fill"]
    assert packed["reward"] == padded["reward"]  # the same rollouts
    assert padded["advantage_mean"] != 0.0 and padded["loss"] != 0.0
    for k in ("loss", "pg_loss", "entropy", "num_tokens", "advantage_mean"):
        assert packed[k] == pytest.approx(padded[k], rel=1e-5, abs=1e-6), k
