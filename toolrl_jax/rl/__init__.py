"""GRPO learner: advantages, policy losses, vocab-chunked log-probs and the sharded train step.

Submodules (import them directly; this package imports nothing heavy on its own):

* :mod:`toolrl_jax.rl.advantages` - GRPO / Dr. GRPO / RLOO / batch-normalised advantages.
* :mod:`toolrl_jax.rl.losses` - clipped policy loss, KL estimators, entropy, aggregation modes.
* :mod:`toolrl_jax.rl.logprobs` - token log-probs and entropy in vocabulary chunks.
* :mod:`toolrl_jax.rl.train_step` - one jitted, sharded, micro-batched optimizer step.
"""
