"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by test_critic.py.

One critic update on 1 device and on a (data=1, fsdp=4, tp=2) mesh from the same params and
batch, and a LoRA model's logits before / after sharding it on that mesh; prints one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from toolrl_jax.models import Decoder, ModelConfig, make_mesh  # noqa: E402
from toolrl_jax.models.lora import LoRAConfig, LoRAParam, apply_lora, shard_lora_model  # noqa: E402
from toolrl_jax.models.value_head import ValueModel, value_model_shardings  # noqa: E402
from toolrl_jax.rl.critic import make_critic_update, split_value_model  # noqa: E402

B, T = 8, 12
CONFIG = ModelConfig.tiny("qwen2")


def batch() -> dict:
    r = np.random.default_rng(0)
    mask = np.zeros((B, T), np.float32)
    mask[:, 5:] = 1.0
    return dict(tokens=r.integers(3, 256, (B, T)).astype(np.int32),
                positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)),
                loss_mask=mask, returns=(r.normal(size=(B, T)) * mask).astype(np.float32),
                old_values=(0.1 * r.normal(size=(B, T))).astype(np.float32))


def critic_case(mesh) -> dict:
    model = ValueModel.create(CONFIG, rngs=nnx.Rngs(0))
    model.value_head.kernel.set_value(jnp.full((CONFIG.hidden_size, 1), 0.05, jnp.float32))
    graphdef, params = split_value_model(model)
    optimizer = optax.sgd(0.1)  # Adam's first step is sign(g): compare gradients instead
    bt = {k: jnp.asarray(v) for k, v in batch().items()}
    if mesh is not None:
        params = jax.device_put(params, value_model_shardings(params, CONFIG, mesh))
        bt = jax.device_put(bt, NamedSharding(mesh, P(("data", "fsdp"))))
    opt_state = optimizer.init(params)
    params, _, metrics = make_critic_update(graphdef, optimizer)(params, opt_state, bt)
    up = params["decoder"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    frac = up.addressable_shards[0].data.size / up.size
    return {"loss": float(metrics["vf_loss"]), "params": jax.device_get(params), "frac": frac}


def lora_case(mesh) -> dict:
    cfg = LoRAConfig(rank=4, targets=("q_proj", "down_proj"))
    model = apply_lora(Decoder(CONFIG, rngs=nnx.Rngs(0)), cfg, rngs=nnx.Rngs(1))
    for _, var in nnx.iter_graph(model):
        if isinstance(var, LoRAParam):
            var.set_value(var.get_value() + 0.05)
    bt = batch()
    fwd = nnx.jit(lambda m, x, p: m(x, p))
    before = np.asarray(fwd(model, jnp.asarray(bt["tokens"]), jnp.asarray(bt["positions"])))
    shard_lora_model(model, cfg, mesh)
    after = np.asarray(fwd(model, jnp.asarray(bt["tokens"]), jnp.asarray(bt["positions"])))
    a = model.layers[0].self_attn.q_proj.lora_a.get_value()
    return {"max_diff": float(np.abs(before - after).max()),
            "lora_a_spec": str(a.sharding.spec),
            "lora_a_frac": a.addressable_shards[0].data.size / a.size}


def main() -> None:
    mesh = make_mesh({"data": 1, "fsdp": 4, "tp": 2})
    ref, sharded = critic_case(None), critic_case(mesh)
    flat_ref = jax.tree.leaves(ref["params"])
    flat_sh = jax.tree.leaves(sharded["params"])
    rel = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12))
              for a, b in zip(flat_ref, flat_sh))
    out = {"critic": {"ref_loss": ref["loss"], "loss": sharded["loss"], "param_rel": rel,
                      "frac": sharded["frac"]},
           "lora": lora_case(mesh)}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
