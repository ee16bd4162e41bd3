"""A tiny GRPO training loop with checkpoints, run in subprocesses by test_rl_checkpoint.py.

Writes one JSON line of metrics per optimizer step to --metrics. --kill-after S sends itself
SIGKILL right after step S (before that step's checkpoint); --sigterm-after S sends SIGTERM
(the Checkpointer saves at the step boundary and exits with 143).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from toolrl_jax.models import Decoder, ModelConfig  # noqa: E402
from toolrl_jax.rl.losses import LossConfig  # noqa: E402
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model  # noqa: E402
from toolrl_jax.train.checkpoint import Checkpointer  # noqa: E402

B, T = 8, 16


def make_batch(index: int, rng_key) -> dict:
    """Batch ``index`` of a deterministic stream; advantages perturbed with the state's key."""
    r = np.random.default_rng(1000 + index)
    tokens = r.integers(3, 256, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        mask[b, 6:6 + r.integers(1, T - 6)] = 1.0
    adv = r.normal(size=B).astype(np.float32) + 0.1 * np.asarray(jax.random.normal(rng_key, (B,)))
    return dict(tokens=tokens, positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)),
                loss_mask=mask, advantages=adv.astype(np.float32))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--save-every", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=-1)
    ap.add_argument("--sigterm-after", type=int, default=-1)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    mc = ModelConfig.tiny("llama", num_layers=1)
    graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
    cfg = AlgoConfig(micro_batch_size=4, vocab_chunk=128, loss=LossConfig(entropy_coef=0.01))
    opt = OptimConfig(learning_rate=3e-3, weight_decay=0.01)
    learner = Learner(graphdef, mc, cfg, opt)
    ckpt = Checkpointer(args.ckpt, save_every=args.save_every, keep=2)
    if ckpt.latest_step() is not None:
        state, data = ckpt.restore(learner.abstract_state(params))
        next_index = int(data["next_index"])
        print(f"resumed at step {int(state.step)}", flush=True)
    else:
        state = learner.init_state(params, seed=123)
        next_index = 0
    with open(args.metrics, "a") as out, ckpt:
        while int(state.step) < args.steps:
            batch = make_batch(next_index, state.rng)
            state, metrics = learner.train_step(state, batch)
            next_index += 1
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            m["param_sum"] = float(sum(jnp.sum(x) for x in jax.tree.leaves(state.params)))
            step = int(m["step"])
            out.write(json.dumps(m) + "\n")
            out.flush()
            os.fsync(out.fileno())
            if step == args.kill_after:
                ckpt.wait()  # let the last async write land: the kill falls between checkpoints
                os.kill(os.getpid(), signal.SIGKILL)
            if step == args.sigterm_after:
                os.kill(os.getpid(), signal.SIGTERM)
            ckpt.step_boundary(step, state, {"next_index": next_index})
    return 0


if __name__ == "__main__":
    sys.exit(main())
