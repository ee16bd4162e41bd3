"""Decoder family (Llama / SmolLM2 / Qwen2 / Qwen3) in Flax NNX, HF mapping and sharding."""

from toolrl_jax.models.config import Llama3RopeScaling, ModelConfig
from toolrl_jax.models.decoder import Decoder, KVCache, create_model, init_cache
from toolrl_jax.models.hf_mapping import expected_hf_names, expected_hf_shapes, hf_name_to_path
from toolrl_jax.models.sharding import (
    MeshConfig,
    batch_partition_spec,
    cache_partition_spec,
    initialize_distributed_if_needed,
    make_mesh,
    param_partition_specs,
    shard_model,
)
from toolrl_jax.models.weights import export_hf_state, load_hf_state

__all__ = [
    "Decoder",
    "KVCache",
    "Llama3RopeScaling",
    "MeshConfig",
    "ModelConfig",
    "batch_partition_spec",
    "cache_partition_spec",
    "create_model",
    "expected_hf_names",
    "expected_hf_shapes",
    "export_hf_state",
    "hf_name_to_path",
    "init_cache",
    "initialize_distributed_if_needed",
    "load_hf_state",
    "make_mesh",
    "param_partition_specs",
    "shard_model",
]
