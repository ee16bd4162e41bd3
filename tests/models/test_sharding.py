"""Sharding rules, mesh construction, and sharded == single-device forward on 8 CPU devices."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from tests.conftest import simulated_devices_env
from toolrl_jax.errors import ConfigError
from toolrl_jax.models import MeshConfig, ModelConfig, make_mesh, param_partition_specs
from toolrl_jax.models.sharding import batch_partition_spec, initialize_distributed_if_needed


def test_partition_spec_rules_and_divisibility_fallback():
    cfg = ModelConfig.tiny("qwen2", vocab_size=255)  # untied, odd vocab
    specs = param_partition_specs(cfg)
    assert specs[("embed_tokens", "embedding")] == P("tp", "fsdp")
    assert specs[("layers", 1, "self_attn", "q_proj", "kernel")] == P("fsdp", "tp")
    assert specs[("layers", 1, "self_attn", "q_proj", "bias")] == P("tp")
    assert specs[("layers", 0, "self_attn", "o_proj", "kernel")] == P("tp", "fsdp")
    assert specs[("layers", 0, "mlp", "up_proj", "kernel")] == P("fsdp", "tp")
    assert specs[("layers", 0, "mlp", "down_proj", "kernel")] == P("tp", "fsdp")
    assert specs[("lm_head", "kernel")] == P("fsdp", "tp")
    assert specs[("norm", "scale")] == P()
    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tp"))
    fitted = param_partition_specs(cfg, mesh=mesh)
    assert fitted[("embed_tokens", "embedding")] == P(None, "fsdp")  # 255 % 2 != 0
    assert fitted[("lm_head", "kernel")] == P("fsdp")
    assert fitted[("layers", 0, "mlp", "up_proj", "kernel")] == P("fsdp", "tp")
    mesh3 = AbstractMesh((1, 3, 1), ("data", "fsdp", "tp"))  # D=64 not divisible by 3
    fitted3 = param_partition_specs(cfg, mesh=mesh3)
    assert fitted3[("layers", 0, "mlp", "up_proj", "kernel")] == P(None, "tp")
    assert fitted3[("layers", 0, "mlp", "down_proj", "kernel")] == P("tp")
    assert batch_partition_spec() == P(("data", "fsdp"))


def test_mesh_config_errors():
    assert MeshConfig(fsdp=4, tp=2).resolve(8) == (1, 4, 2)
    assert MeshConfig().resolve(8) == (8, 1, 1)
    with pytest.raises(ConfigError, match="product 6 != 8"):
        MeshConfig(data=3, fsdp=2).resolve(8)
    with pytest.raises(ConfigError, match="not divisible"):
        MeshConfig(fsdp=3).resolve(8)
    with pytest.raises(ConfigError, match="unknown axes"):
        make_mesh({"model": 1})
    mesh = make_mesh({"data": -1})
    assert mesh.axis_names == ("data", "fsdp", "tp")


def test_initialize_distributed_is_noop_on_one_host(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert initialize_distributed_if_needed() is False


SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from toolrl_jax.models import (Decoder, ModelConfig, batch_partition_spec, create_model,
                                   export_hf_state, init_cache, load_hf_state, make_mesh,
                                   shard_model)
    from toolrl_jax.models.sharding import cache_partition_spec, fit_spec

    assert jax.device_count() == 8
    cfg = ModelConfig.tiny("qwen2", num_kv_heads=2)  # untied lm_head + biases
    ref_model = Decoder(cfg, rngs=nnx.Rngs(0))
    weights = export_hf_state(ref_model)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 12)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(12, dtype=jnp.int32), (8, 12))

    def fwd(model, tokens, pos):
        return model(tokens, pos)

    ref = np.asarray(nnx.jit(fwd)(ref_model, tokens, pos))

    # Load from lazily read, memory-mapped safetensors slices: each device reads its block.
    import os, tempfile
    from safetensors import safe_open
    from safetensors.numpy import save_file
    st_path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    save_file(weights, st_path)
    st = safe_open(st_path, framework="np")
    reads = {}

    class Recorder:  # wraps a safetensors slice, records the size of every read
        def __init__(self, name):
            self.name, self.slice = name, st.get_slice(name)

        def get_shape(self):
            return self.slice.get_shape()

        def __getitem__(self, index):
            out = self.slice[index]
            reads.setdefault(self.name, []).append(out.size)
            return out

    lazy = {name: Recorder(name) for name in st.keys()}

    def shard_shape(model, *path):
        node = model
        for k in path:
            node = node[k] if isinstance(k, int) else getattr(node, k)
        arr = node.get_value()
        shapes = {s.data.shape for s in arr.addressable_shards}
        assert len(arr.addressable_shards) == 8
        return shapes.pop() if len(shapes) == 1 else shapes

    for axes, expect in [
        ({"fsdp": 4, "tp": 2}, {"embed": (128, 16), "q": (16, 32), "o": (32, 16),
                                "down": (64, 16), "qb": (32,), "lm": (16, 128), "norm": (64,)}),
        ({"data": 8}, {"embed": (256, 64), "q": (64, 64), "o": (64, 64),
                       "down": (128, 64), "qb": (64,), "lm": (64, 256), "norm": (64,)}),
    ]:
        mesh = make_mesh(axes)
        # create_model (abstract + sharded init), then load real weights onto the mesh.
        model = create_model(cfg, mesh=mesh, rngs=nnx.Rngs(1))
        assert shard_shape(model, "embed_tokens", "embedding") == expect["embed"]
        load_hf_state(model, lazy, mesh=mesh)
        got = {
            "embed": shard_shape(model, "embed_tokens", "embedding"),
            "q": shard_shape(model, "layers", 0, "self_attn", "q_proj", "kernel"),
            "o": shard_shape(model, "layers", 1, "self_attn", "o_proj", "kernel"),
            "down": shard_shape(model, "layers", 1, "mlp", "down_proj", "kernel"),
            "qb": shard_shape(model, "layers", 0, "self_attn", "q_proj", "bias"),
            "lm": shard_shape(model, "lm_head", "kernel"),
            "norm": shard_shape(model, "norm", "scale"),
        }
        assert got == expect, (axes, got, expect)
        if axes.get("tp") == 2:  # each read is one device's block, never the whole tensor
            q_name = "model.layers.0.self_attn.q_proj.weight"
            assert max(reads[q_name]) == 16 * 32, reads[q_name]
            assert max(reads["lm_head.weight"]) == 16 * 128
        else:  # replicated: the 8 devices share one host read
            assert len(reads["model.layers.0.mlp.up_proj.weight"]) == 1
        reads.clear()
        batch = NamedSharding(mesh, batch_partition_spec())
        out = nnx.jit(fwd)(model, jax.device_put(tokens, batch), jax.device_put(pos, batch))
        err = float(np.abs(np.asarray(out) - ref).max())
        assert err <= 1e-5, (axes, err)

        # shard_model on a concrete single-device model gives the same placement.
        m2 = Decoder(cfg, rngs=nnx.Rngs(0))
        shard_model(m2, mesh)
        assert shard_shape(m2, "layers", 0, "self_attn", "q_proj", "kernel") == expect["q"]

        # Sharded KV-cache prefill + decode step == unsharded.
        cache = init_cache(cfg, 8, 16)
        cspec = fit_spec(cache_partition_spec(), cache.k.shape, mesh)
        cache = cache.replace(
            k=jax.device_put(cache.k, NamedSharding(mesh, cspec)),
            v=jax.device_put(cache.v, NamedSharding(mesh, cspec)),
            pos=jax.device_put(cache.pos, batch),
        )

        def prefill(model, tokens, pos, cache):
            h, cache = model.hidden(tokens, pos, cache=cache,
                                    cache_index=jnp.zeros(tokens.shape[0], jnp.int32))
            return model.logits(h), cache

        out, cache = nnx.jit(prefill)(model, tokens, pos, cache)
        err = float(np.abs(np.asarray(out) - ref).max())
        assert err <= 1e-5, ("cache", axes, err)
        print("ok", axes, err)
    print("ALL OK")
    """
)


@pytest.mark.slow
def test_sharded_forward_matches_single_device():
    env = simulated_devices_env(8)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
