"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=4 by test_lora_training.py.

Two LoRA GRPO steps of a tiny Llama on 1 device (no mesh) and on a (data=1, fsdp=2, tp=2) mesh
(base and adapters placed with ``shard_lora_model``, the learner's state on its shardings), from
the same weights and batch; prints one JSON line comparing losses and adapters, the adapters'
shardings in the state, and whether the frozen base stayed bit-identical.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from toolrl_jax.models import Decoder, ModelConfig, make_mesh  # noqa: E402
from toolrl_jax.models.lora import LoRAConfig, apply_lora, shard_lora_model, split_adapters  # noqa: E402
from toolrl_jax.rl.losses import LossConfig  # noqa: E402
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig  # noqa: E402

B, T = 8, 16
MC = ModelConfig.tiny("llama", num_layers=1)
LORA = LoRAConfig(enabled=True, rank=4, alpha=8.0)
ALGO = AlgoConfig(micro_batch_size=4, vocab_chunk=96, loss=LossConfig(kl_coef=0.05))
OPT = OptimConfig(learning_rate=1e-2, eps=1e-4)


def batch() -> dict:
    r = np.random.default_rng(0)
    mask = np.zeros((B, T), np.float32)
    mask[:, T // 2:] = 1.0
    lp = (-5.5 + 0.2 * r.normal(size=(B, T))).astype(np.float32)
    return {"tokens": r.integers(3, 256, (B, T)).astype(np.int32),
            "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1)), "loss_mask": mask,
            "advantages": r.normal(size=B).astype(np.float32), "old_logprobs": lp,
            "ref_logprobs": lp}


def run(mesh) -> tuple[list[float], dict, dict, dict]:
    model = apply_lora(Decoder(MC, rngs=nnx.Rngs(0)), LORA, rngs=nnx.Rngs(1))
    if mesh is not None:
        shard_lora_model(model, LORA, mesh)
    graphdef, adapters, base = split_adapters(model)
    before = jax.device_get(base)
    learner = Learner(graphdef, MC, ALGO, OPT, mesh=mesh, frozen_params=base)
    state = learner.init_state(adapters)
    losses = []
    for _ in range(2):
        state, m = learner.train_step(state, learner.shard_batch(batch()))
        losses.append(float(m["loss"]))
    spec = state.params["layers"][0]["self_attn"]["q_proj"]["lora_a"].sharding
    specs = {"q_proj.lora_a": str(getattr(spec, "spec", None))}
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(jax.device_get(base)),
                                                    jax.tree.leaves(before)))
    return losses, jax.device_get(state.params), specs, {"base_unchanged": same}


def main() -> None:
    assert jax.device_count() == 4, jax.devices()
    ref_losses, ref_params, _, ref_info = run(None)
    mesh = make_mesh({"data": 1, "fsdp": 2, "tp": 2}, devices=jax.devices())
    losses, params, specs, info = run(mesh)
    rel = max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
              for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    print("RESULT " + json.dumps({"ref_losses": ref_losses, "losses": losses, "adapter_rel": rel,
                                  **specs, **info, "ref_base_unchanged": ref_info["base_unchanged"]}))


if __name__ == "__main__":
    main()
