"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_rl_train_step.py.

One GRPO step of a tiny Qwen2 model on 1 device (no mesh), on a (data=1, fsdp=4, tp=2) mesh and
on a (data=8) mesh, from the same params and batch; prints one JSON line comparing loss,
metrics and updated params, and the fraction of each array one device holds.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from toolrl_jax.models import Decoder, ModelConfig, make_mesh  # noqa: E402
from toolrl_jax.rl.losses import LossConfig  # noqa: E402
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model  # noqa: E402
from toolrl_jax.train.checkpoint import Checkpointer  # noqa: E402

B, T = 16, 16


def batch() -> dict:
    r = np.random.default_rng(0)
    tokens = r.integers(3, 256, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b in range(B):
        mask[b, 5:5 + r.integers(0, T - 5)] = 1.0
    lp = (-5.5 + 0.2 * r.normal(size=(B, T))).astype(np.float32)
    return dict(tokens=tokens, positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)),
                loss_mask=mask, advantages=r.normal(size=B).astype(np.float32),
                old_logprobs=lp, ref_logprobs=(lp + 0.1 * r.normal(size=(B, T))).astype(np.float32))


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    mc = ModelConfig.tiny("qwen2", num_layers=1)
    graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
    cfg = AlgoConfig(
        micro_batch_size=8, vocab_chunk=96,
        loss=LossConfig(kl_coef=0.05, entropy_coef=0.01, aggregation="seq-mean-token-mean"),
    )
    # eps 1e-4: AdamW's first step is ~sign(g); a larger eps keeps it well-conditioned for
    # gradient entries that are 0 up to rounding (k_proj bias), so the comparison is fair.
    opt = OptimConfig(learning_rate=1e-3, eps=1e-4)
    data = batch()
    ref = Learner(graphdef, mc, cfg, opt)
    st, m = ref.train_step(ref.init_state(params), ref.shard_batch(data))
    ref_params = jax.device_get(st.params)
    ref_metrics = {k: float(v) for k, v in jax.device_get(m).items()}
    out = {"ref_loss": ref_metrics["loss"]}
    for name, mesh_cfg in (("fsdp4_tp2", {"data": 1, "fsdp": 4, "tp": 2}), ("data8", {"data": 8})):
        learner = Learner(graphdef, mc, cfg, opt, mesh=make_mesh(mesh_cfg))
        state = learner.init_state(params)
        new_state, metrics = learner.train_step(state, learner.shard_batch(data))
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        got = jax.device_get(new_state.params)
        rel = max(
            float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref_params))
        )
        metric_rel = max(abs(metrics[k] - ref_metrics[k]) / max(abs(ref_metrics[k]), 1e-3)
                         for k in ("loss", "pg_loss", "kl_loss", "entropy", "grad_norm"))

        def fractions(tree):
            return [x.addressable_shards[0].data.size / x.size
                    for x in jax.tree.leaves(tree) if x.ndim == 2]

        mu_nu = [s for s in jax.tree.leaves(new_state.opt_state) if getattr(s, "ndim", 0) == 2]
        bytes_dev = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(new_state))
        bytes_all = sum(x.nbytes for x in jax.tree.leaves(new_state))
        out[name] = dict(
            loss=metrics["loss"],
            diffs={k: metrics[k] - ref_metrics[k]
                   for k in ("loss", "pg_loss", "kl_loss", "entropy", "grad_norm")},
            param_rel=rel, metric_rel=metric_rel,
            param_fractions=sorted(set(fractions(new_state.params))),
            opt_fractions=sorted(set(x.addressable_shards[0].data.size / x.size for x in mu_nu)),
            num_opt_2d=len(mu_nu), state_bytes_fraction=bytes_dev / bytes_all,
            step_sharding=str(new_state.step.sharding.spec),
        )
        if name == "fsdp4_tp2":  # sharded save -> restore onto the mesh shardings
            with tempfile.TemporaryDirectory() as tmp, Checkpointer(tmp, save_every=0) as ckpt:
                ckpt.save(1, new_state, {"next_index": 7}, wait=True)
                restored, pos = ckpt.restore(learner.abstract_state(params))
            same = all(
                bool(np.array_equal(np.asarray(a), np.asarray(b))) and a.sharding == b.sharding
                for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(new_state))
            )
            out[name]["restore_equal"] = same and pos == {"next_index": 7}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
