"""Shared fixtures of the trainer tests: a tiny random model with the real SmolLM2 tokenizer,
and a persistent compilation cache so that trainers of the same shapes compile once."""

from __future__ import annotations

import jax
import pytest
from flax import nnx

from toolrl_jax.chat import find_test_tokenizer, load_tokenizer
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.export import export_hf_dir


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    tok = load_tokenizer(find_test_tokenizer("smollm2"))
    cfg = ModelConfig.tiny("llama", vocab_size=len(tok), num_layers=2, hidden_size=32,
                           intermediate_size=64, num_heads=2, num_kv_heads=1, head_dim=16,
                           tie_word_embeddings=True,
                           eos_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))
    out = tmp_path_factory.mktemp("tiny_smol")
    export_hf_dir(Decoder(cfg, rngs=nnx.Rngs(0)), cfg, out, tokenizer=tok)
    return out
