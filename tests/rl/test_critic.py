"""Critic: value convention, init from the policy, PartitionSpecs, and a fixed tiny task on
which 20 critic steps lower the value loss and raise the explained variance."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.conftest import simulated_devices_env
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.sharding import make_mesh
from toolrl_jax.models.value_head import (
    ValueModel,
    value_model_partition_specs,
    value_model_shardings,
)
from toolrl_jax.rl import gae as gae_lib
from toolrl_jax.rl.critic import (
    critic_loss,
    make_critic_update,
    make_values_fn,
    split_value_model,
)

CONFIG = ModelConfig.tiny("qwen2")  # untied LM head: the critic must drop it


def _batch(seed=0, b=8, t=10):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 256, size=(b, t)).astype(np.int32)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    mask = np.zeros((b, t), np.float32)
    mask[:, 4:] = 1.0
    mask[::3, 6] = 0.0  # an observation hole in some rows
    sign = np.where(tokens[:, 1] < 128, 1.0, -1.0)[:, None]
    returns = (sign + 0.2 * (np.arange(t) - 6.0)[None, :]) * mask
    return {"tokens": tokens, "positions": positions, "loss_mask": mask,
            "returns": returns.astype(np.float32)}


def test_values_are_the_head_on_the_previous_hidden_state():
    model = ValueModel.create(CONFIG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    model.value_head.kernel.set_value(jnp.asarray(rng.normal(size=(CONFIG.hidden_size, 1)),
                                                  jnp.float32))
    model.value_head.bias.set_value(jnp.asarray([0.3], jnp.float32))
    bt = _batch()
    values, hidden = nnx.jit(lambda m, x, p: (m.values(x, p), m.decoder.hidden(x, p)[0]))(
        model, jnp.asarray(bt["tokens"]), jnp.asarray(bt["positions"]))
    values = np.asarray(values)
    h = np.asarray(hidden, np.float64)
    w = np.asarray(model.value_head.kernel[...], np.float64)[:, 0]
    want = np.zeros(values.shape)
    for b in range(values.shape[0]):
        for t in range(1, values.shape[1]):
            want[b, t] = h[b, t - 1] @ w + 0.3
    np.testing.assert_allclose(values, want, atol=1e-4)


def test_from_policy_copies_weights_and_drops_lm_head():
    policy = Decoder(CONFIG, rngs=nnx.Rngs(3))
    critic = ValueModel.from_policy(policy)
    assert critic.decoder.lm_head is None and policy.lm_head is not None
    a = policy.layers[0].mlp.up_proj.kernel.get_value()
    c = critic.decoder.layers[0].mlp.up_proj.kernel.get_value()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert a.unsafe_buffer_pointer() != c.unsafe_buffer_pointer()  # donation-safe copy
    bt = _batch()
    h_policy, _ = policy.hidden(jnp.asarray(bt["tokens"]), jnp.asarray(bt["positions"]))
    h_critic, _ = critic.decoder.hidden(jnp.asarray(bt["tokens"]), jnp.asarray(bt["positions"]))
    np.testing.assert_array_equal(np.asarray(h_policy), np.asarray(h_critic))
    np.testing.assert_array_equal(np.asarray(critic.values(jnp.asarray(bt["tokens"]),
                                                           jnp.asarray(bt["positions"]))), 0.0)


def test_partition_specs_cover_every_critic_parameter():
    critic = ValueModel.create(CONFIG, rngs=nnx.Rngs(0))
    _, params = split_value_model(critic)
    specs = value_model_partition_specs(CONFIG)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = {tuple(getattr(k, "key", k) for k in p) for p, _ in leaves}
    assert paths == set(specs)
    P = jax.sharding.PartitionSpec
    assert specs[("decoder", "layers", 0, "mlp", "up_proj", "kernel")] == P("fsdp", "tp")
    assert specs[("value_head", "kernel")] == jax.sharding.PartitionSpec("fsdp", None)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tp": 1}, devices=jax.devices()[:1])
    shardings = value_model_shardings(params, CONFIG, mesh)
    placed = jax.device_put(params, shardings)
    assert placed["value_head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp")


def test_twenty_critic_steps_lower_the_value_loss_and_raise_explained_variance():
    critic = ValueModel.create(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = split_value_model(critic)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)
    update = make_critic_update(graphdef, optimizer, vf_clip=0.5)
    values_fn = make_values_fn(graphdef)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    losses, evs = [], []
    for _ in range(20):
        old_values = values_fn(params, batch)
        params, opt_state, metrics = update(params, opt_state, dict(batch, old_values=old_values))
        losses.append(float(metrics["vf_loss"]))
        evs.append(float(metrics["explained_variance"]))
    final_loss, final = critic_loss(graphdef, params, batch, vf_clip=None)
    # metrics are those of the values before each step; the first step sees V = 0
    np.testing.assert_allclose(evs[0], 0.0, atol=1e-3)
    assert float(final_loss) < 0.5 * losses[0], (losses, float(final_loss))
    assert float(final["explained_variance"]) > 0.5, evs
    assert losses[-1] < losses[0] and evs[-1] > evs[0] + 0.3
    # the update's metric equals the library loss on the same values
    values = values_fn(params, batch)
    ev = gae_lib.explained_variance(batch["returns"], values, batch["loss_mask"])
    np.testing.assert_allclose(float(final["explained_variance"]), float(ev), rtol=1e-5)


def test_from_pretrained_hf_directory(tmp_path):
    from toolrl_jax.models.export import export_hf_dir

    policy = Decoder(CONFIG, rngs=nnx.Rngs(4))
    out = export_hf_dir(policy, CONFIG, tmp_path / "policy")
    critic = ValueModel.from_pretrained(out)
    assert critic.decoder.lm_head is None
    np.testing.assert_array_equal(
        np.asarray(critic.decoder.layers[1].self_attn.q_proj.kernel[...]),
        np.asarray(policy.layers[1].self_attn.q_proj.kernel[...]))


@pytest.mark.slow
def test_critic_update_and_lora_on_an_8_device_mesh():
    """(fsdp=4, tp=2) on 8 simulated CPU devices: same critic step as on 1 device; LoRA logits
    unchanged by sharding, adapters split like their kernels."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = simulated_devices_env(8)
    script = repo / "tests/rl/_critic_lora_multidevice_script.py"
    proc = subprocess.run([sys.executable, str(script)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    c = res["critic"]
    assert abs(c["loss"] - c["ref_loss"]) <= 1e-5 * max(1.0, abs(c["ref_loss"]))
    assert c["param_rel"] <= 1e-5, c
    assert c["frac"] == 0.125
    lora = res["lora"]
    assert lora["max_diff"] <= 1e-5, lora
    assert lora["lora_a_spec"] == "P('fsdp',)" and lora["lora_a_frac"] == 0.25


def test_micro_batched_update_equals_the_whole_batch_update():
    """Gradient accumulation over 4 micro-batches (rows m::4) = one step on the whole batch."""
    critic = ValueModel.create(CONFIG, rngs=nnx.Rngs(2))
    graphdef, params = split_value_model(critic)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype), params)
    batch = {k: jnp.asarray(v) for k, v in _batch(seed=4).items()}
    batch["old_values"] = jnp.asarray(rng.normal(size=batch["returns"].shape), jnp.float32)
    optimizer = optax.sgd(0.1)
    whole = make_critic_update(graphdef, optimizer, vf_clip=0.5, donate=False)
    micro = make_critic_update(graphdef, optimizer, vf_clip=0.5, donate=False,
                               micro_batch_size=2)
    p1, _, m1 = whole(params, optimizer.init(params), batch)
    p2, _, m2 = micro(params, optimizer.init(params), batch)
    for k in ("vf_loss", "vf_clip_frac", "value_mean", "return_mean", "explained_variance",
              "critic_grad_norm"):
        np.testing.assert_allclose(float(m2[k]), float(m1[k]), rtol=2e-5, atol=1e-6, err_msg=k)
    assert 0.0 < float(m1["vf_clip_frac"]) < 1.0
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch_size=3"):
        make_critic_update(graphdef, optimizer, micro_batch_size=3)(params,
                                                                    optimizer.init(params), batch)
