"""LoRA: B=0 equals the base, the base-only switch, adapter-only optimizer state (bytes), the
merged export loads in transformers with the adapted model's logits, sharding specs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from toolrl_jax.errors import ConfigError
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.lora import (
    BASE_PARAMS,
    LoRAConfig,
    LoRAParam,
    adapters_disabled,
    apply_lora,
    export_merged,
    lora_layers,
    lora_partition_specs,
    merge_lora,
    reference_graphdef,
    shard_lora_model,
    split_lora,
)
from toolrl_jax.models.sharding import make_mesh

TOKENS = np.random.default_rng(0).integers(0, 256, size=(2, 10))


@nnx.jit
def _forward(model, tokens, positions):
    return model(tokens, positions)


def _logits(model) -> np.ndarray:
    b, t = TOKENS.shape
    return np.asarray(_forward(model, jnp.asarray(TOKENS), jnp.broadcast_to(jnp.arange(t), (b, t))))


def _randomize(model, seed, *, only=None):
    """Non-trivial values on every Param (or only on LoRAParams), like tests/models/test_export."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and (only is None or isinstance(var, only)):
            shape = var.get_value().shape
            base = 1.0 if (len(shape) == 1 and only is None) else 0.0
            var.set_value(jnp.asarray(rng.normal(0.0, 0.2, size=shape) + base, jnp.float32))
    return model


def _base_and_adapted(config, lora_cfg=LoRAConfig(rank=4, alpha=8.0)):
    base = _randomize(Decoder(config, rngs=nnx.Rngs(0)), seed=1)
    adapted = _randomize(Decoder(config, rngs=nnx.Rngs(0)), seed=1)
    apply_lora(adapted, lora_cfg, rngs=nnx.Rngs(5))
    return base, adapted


def test_zero_b_init_equals_base_and_switch_gives_the_base():
    config = ModelConfig.tiny("qwen2")
    base, adapted = _base_and_adapted(config)
    assert len(lora_layers(adapted)) == config.num_layers * 7
    np.testing.assert_array_equal(_logits(adapted), _logits(base))
    _randomize(adapted, seed=2, only=LoRAParam)
    assert np.abs(_logits(adapted) - _logits(base)).max() > 1e-2
    with adapters_disabled(adapted):
        np.testing.assert_array_equal(_logits(adapted), _logits(base))
    # the same state merged into the base-only graphdef: reference without a second copy
    _, state = nnx.split(adapted)
    ref = nnx.merge(reference_graphdef(adapted), state)
    np.testing.assert_array_equal(_logits(ref), _logits(base))
    assert np.abs(_logits(adapted) - _logits(base)).max() > 1e-2  # switched back on


def test_adapter_filter_and_optimizer_state_bytes():
    config = ModelConfig.tiny("llama")
    lora_cfg = LoRAConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "up_proj"))
    _, adapted = _base_and_adapted(config, lora_cfg)
    adapters = nnx.state(adapted, LoRAParam)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(adapters))[0]
    paths = [tuple(p) for p, _ in flat]
    assert len(paths) == config.num_layers * 3 * 2
    assert all(getattr(p[-1], "key", p[-1]) in ("lora_a", "lora_b") for p in paths)
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    per_layer = 4 * ((d + q) + (d + kv) + (d + f))  # float32 A [in, r] + B [r, out], r = 4
    adapter_bytes = nbytes(adapters)
    assert adapter_bytes == config.num_layers * per_layer * 4
    base_bytes = nbytes(nnx.state(adapted, BASE_PARAMS))
    assert base_bytes == 4 * config.num_params()

    graphdef, lora_state, base_state, rest = split_lora(adapted)
    opt = optax.adamw(1e-2)
    opt_state = opt.init(lora_state)
    # AdamW holds mu and nu of the adapters only, plus an int32 step count
    assert nbytes(opt_state) == 2 * adapter_bytes + 4

    def loss_fn(lora, base):
        model = nnx.merge(graphdef, lora, base, rest)
        b, t = TOKENS.shape
        return jnp.mean(model(jnp.asarray(TOKENS), jnp.broadcast_to(jnp.arange(t), (b, t))) ** 2)

    grads = jax.jit(jax.grad(loss_fn))(lora_state, base_state)
    updates, opt_state = opt.update(grads, opt_state, lora_state)
    new_lora = optax.apply_updates(lora_state, updates)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_lora, lora_state)
    assert all(jax.tree.leaves(changed))


def test_bf16_frozen_base_keeps_f32_adapters():
    config = ModelConfig.tiny("llama")
    model = apply_lora(Decoder(config, rngs=nnx.Rngs(0)),
                       LoRAConfig(rank=2, base_dtype="bfloat16"), rngs=nnx.Rngs(1))
    base = jax.tree.leaves(nnx.state(model, BASE_PARAMS))
    adapters = jax.tree.leaves(nnx.state(model, LoRAParam))
    assert {x.dtype for x in base} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in adapters} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(_logits(model)).all()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_merged_export_loads_in_transformers_with_adapted_logits(tmp_path, model_type):
    config = ModelConfig.tiny(model_type)
    _, adapted = _base_and_adapted(config)
    _randomize(adapted, seed=3, only=LoRAParam)
    merged = merge_lora(adapted)
    layer = adapted.layers[1].mlp.down_proj
    a, b = (np.asarray(x[...], np.float64) for x in (layer.lora_a, layer.lora_b))
    want_kernel = np.asarray(layer.kernel[...], np.float64) + layer.scale * a @ b
    np.testing.assert_allclose(np.asarray(merged[("layers", 1, "mlp", "down_proj", "kernel")]),
                               want_kernel, rtol=1e-5, atol=1e-6)
    out = export_merged(adapted, tmp_path / "merged", dtype="float32")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = ref(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(_logits(adapted), theirs, atol=1e-4, rtol=1e-4)


def test_lora_sharding_specs_and_config_errors():
    config = ModelConfig.tiny("llama")
    lora_cfg = LoRAConfig(rank=2, targets=("q_proj", "down_proj"))
    model = apply_lora(Decoder(config, rngs=nnx.Rngs(0)), lora_cfg, rngs=nnx.Rngs(1))
    specs = lora_partition_specs(config, lora_cfg)
    P = jax.sharding.PartitionSpec
    assert specs[("layers", 0, "self_attn", "q_proj", "lora_a")] == P("fsdp", None)
    assert specs[("layers", 0, "self_attn", "q_proj", "lora_b")] == P(None, "tp")
    assert specs[("layers", 1, "mlp", "down_proj", "lora_a")] == P("tp", None)
    assert specs[("layers", 1, "mlp", "down_proj", "lora_b")] == P(None, "fsdp")
    assert len(specs) == config.num_layers * 2 * 2
    mesh = make_mesh({"data": 1, "fsdp": 1, "tp": 1}, devices=jax.devices()[:1])
    before = _logits(model)
    shard_lora_model(model, lora_cfg, mesh)
    np.testing.assert_array_equal(_logits(model), before)
    with pytest.raises(ConfigError, match="lora.targets"):
        LoRAConfig(targets=("qkv",))
    with pytest.raises(ConfigError, match="lora.rank"):
        LoRAConfig(rank=0)
