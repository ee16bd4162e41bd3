"""SFT loss against a numpy cross-entropy from the model's full logits; a step lowers it."""

import numpy as np
from flax import nnx

from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.rl.train_step import OptimConfig, split_model
from toolrl_jax.train.sft import SFTLearner, pad_examples


def test_sft_loss_matches_numpy_cross_entropy_and_step_reduces_it():
    cfg = ModelConfig.tiny("llama")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    examples = []
    for n in (9, 14, 6):
        ids = rng.integers(3, cfg.vocab_size, size=n).tolist()
        mask = [0] * (n // 2) + [1] * (n - n // 2)  # "assistant" second half
        examples.append((ids, mask))
    batch = pad_examples(examples, 16, pad_id=0)

    logits = np.asarray(model(batch["tokens"], batch["positions"],
                              segment_ids=batch["segment_ids"]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nll, count = 0.0, 0
    for b, (ids, mask) in enumerate(examples):
        for t in range(1, len(ids)):
            if mask[t]:
                nll -= logp[b, t - 1, ids[t]]
                count += 1
    expected = nll / count

    graphdef, params = split_model(model)
    learner = SFTLearner(graphdef, OptimConfig(learning_rate=1e-2, weight_decay=0.0), vocab_chunk=64)
    loss, metrics = learner.loss(params, batch)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert int(metrics["sft_tokens"]) == count

    state = learner.init_state(params)
    for _ in range(3):
        state, _ = learner.step(state, batch)
    after, _ = learner.loss(state.params, batch)
    assert float(after) < float(loss) - 0.05
