"""Hugging Face tensor names <-> :class:`~toolrl_jax.models.decoder.Decoder` parameter paths.

HF names (``model.layers.3.self_attn.q_proj.weight``) map to ``nnx.state`` paths
(``('layers', 3, 'self_attn', 'q_proj', 'kernel')``). Linear weights are stored by HF as
``[out, in]`` and by us as ``kernel [in, out]``, so they are transposed; embeddings, biases
and norm weights keep their layout.

============================================  ==========================================  =====
HF name                                       nnx path                                    T
============================================  ==========================================  =====
model.embed_tokens.weight [V, D]              embed_tokens.embedding [V, D]               no
model.layers.i.self_attn.{q,k,v,o}_proj.weight  layers.i.self_attn.{q,k,v,o}_proj.kernel   yes
model.layers.i.self_attn.{q,k,v,o}_proj.bias    layers.i.self_attn.{q,k,v,o}_proj.bias     no
model.layers.i.self_attn.{q,k}_norm.weight      layers.i.self_attn.{q,k}_norm.scale        no
model.layers.i.mlp.{gate,up,down}_proj.weight   layers.i.mlp.{gate,up,down}_proj.kernel    yes
model.layers.i.{input,post_attention}_layernorm.weight  ...same....scale                 no
model.norm.weight [D]                         norm.scale [D]                              no
lm_head.weight [V, D]                         lm_head.kernel [D, V] (untied only)         yes
============================================  ==========================================  =====

Ignored names: with ``tie_word_embeddings`` a checkpoint's ``lm_head.weight`` (transformers'
``state_dict()`` includes the tied copy) and RoPE buffers ``...rotary_emb.inv_freq`` map to
the empty path ``()`` (:data:`IGNORED`); loaders skip them.

This module is a pure table (names, paths, shapes from a :class:`ModelConfig`; no arrays):
loading and exporting tensors is in :mod:`toolrl_jax.models.weights`, sharding rules in
:mod:`toolrl_jax.models.sharding`, model creation in :mod:`toolrl_jax.models.decoder`.
"""

from __future__ import annotations

import re

from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.config import ModelConfig

#: Path returned by :func:`hf_name_to_path` for a tensor that has no parameter (skip it).
IGNORED: tuple = ()

_LAYER_RE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    # HF suffix -> (path suffix, transpose)
    "self_attn.q_proj.weight": (("self_attn", "q_proj", "kernel"), True),
    "self_attn.k_proj.weight": (("self_attn", "k_proj", "kernel"), True),
    "self_attn.v_proj.weight": (("self_attn", "v_proj", "kernel"), True),
    "self_attn.o_proj.weight": (("self_attn", "o_proj", "kernel"), True),
    "self_attn.q_proj.bias": (("self_attn", "q_proj", "bias"), False),
    "self_attn.k_proj.bias": (("self_attn", "k_proj", "bias"), False),
    "self_attn.v_proj.bias": (("self_attn", "v_proj", "bias"), False),
    "self_attn.o_proj.bias": (("self_attn", "o_proj", "bias"), False),
    "self_attn.q_norm.weight": (("self_attn", "q_norm", "scale"), False),
    "self_attn.k_norm.weight": (("self_attn", "k_norm", "scale"), False),
    "mlp.gate_proj.weight": (("mlp", "gate_proj", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up_proj", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down_proj", "kernel"), True),
    "input_layernorm.weight": (("input_layernorm", "scale"), False),
    "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), False),
}


def expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name a checkpoint of ``config`` must hold -> its HF shape.

    ``lm_head.weight`` is listed only when embeddings are untied.
    """
    c = config
    d, f, v, dh = c.hidden_size, c.intermediate_size, c.vocab_size, c.head_dim
    qd, kvd = c.num_heads * dh, c.num_kv_heads * dh
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for i in range(c.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (qd, d)
        shapes[p + "self_attn.k_proj.weight"] = (kvd, d)
        shapes[p + "self_attn.v_proj.weight"] = (kvd, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, qd)
        if c.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (qd,)
            shapes[p + "self_attn.k_proj.bias"] = (kvd,)
            shapes[p + "self_attn.v_proj.bias"] = (kvd,)
        if c.o_proj_bias:
            shapes[p + "self_attn.o_proj.bias"] = (d,)
        if c.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (dh,)
            shapes[p + "self_attn.k_norm.weight"] = (dh,)
        shapes[p + "mlp.gate_proj.weight"] = (f, d)
        shapes[p + "mlp.up_proj.weight"] = (f, d)
        shapes[p + "mlp.down_proj.weight"] = (d, f)
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def expected_hf_names(config: ModelConfig) -> list[str]:
    """HF tensor names of a checkpoint of ``config``, in HF order (see expected_hf_shapes)."""
    return list(expected_hf_shapes(config))


def hf_name_to_path(name: str, config: ModelConfig) -> tuple[tuple, bool]:
    """HF tensor name -> (nnx state path, transpose?).

    The ``model.`` prefix is optional. Returns ``(IGNORED, False)`` i.e. ``((), False)`` for a
    tensor that is deliberately skipped: ``lm_head.weight`` when embeddings are tied, and
    ``rotary_emb.inv_freq`` buffers.

    Raises:
      ModelLoadError: the name is not a tensor of this architecture (e.g. a bias on a
        bias-free model, a layer index >= num_layers, q_norm on a non-Qwen3 model).
    """
    if name.endswith("rotary_emb.inv_freq"):
        return IGNORED, False
    if name == "lm_head.weight":
        if config.tie_word_embeddings:
            return IGNORED, False
        return ("lm_head", "kernel"), True
    if name in ("model.embed_tokens.weight", "embed_tokens.weight"):
        return ("embed_tokens", "embedding"), False
    if name in ("model.norm.weight", "norm.weight"):
        return ("norm", "scale"), False
    m = _LAYER_RE.match(name)
    if m and m.group(2) in _BLOCK_NAMES:
        layer = int(m.group(1))
        suffix, transpose = _BLOCK_NAMES[m.group(2)]
        if layer < config.num_layers and _block_has(config, suffix):
            return ("layers", layer, *suffix), transpose
    raise ModelLoadError(
        f"tensor {name!r} is not a parameter of a {config.architecture} with "
        f"{config.num_layers} layers (attention_bias={config.attention_bias}, "
        f"qk_norm={config.qk_norm}, tie_word_embeddings={config.tie_word_embeddings})"
    )


def _block_has(config: ModelConfig, suffix: tuple[str, ...]) -> bool:
    """Whether a decoder block of ``config`` has the parameter ``suffix`` (e.g. a bias)."""
    if suffix[-1] == "bias":
        return config.o_proj_bias if suffix[1] == "o_proj" else config.attention_bias
    if suffix[1] in ("q_norm", "k_norm"):
        return config.qk_norm
    return True


def path_to_hf_name(path: tuple, config: ModelConfig) -> tuple[str, bool]:
    """Inverse of :func:`hf_name_to_path`: nnx state path -> (HF name, transpose?)."""
    path = tuple(path)
    if path == ("embed_tokens", "embedding"):
        return "model.embed_tokens.weight", False
    if path == ("norm", "scale"):
        return "model.norm.weight", False
    if path == ("lm_head", "kernel"):
        return "lm_head.weight", True
    if len(path) >= 3 and path[0] == "layers":
        for suffix, (p, transpose) in _BLOCK_NAMES.items():
            if tuple(path[2:]) == p:
                return f"model.layers.{int(path[1])}.{suffix}", transpose
    raise ModelLoadError(f"parameter path {path!r} has no HF name")


def param_shapes(config: ModelConfig) -> dict[tuple, tuple[int, ...]]:
    """nnx path -> parameter shape (our layout), for every parameter of ``config``."""
    out = {}
    for name, hf_shape in expected_hf_shapes(config).items():
        path, transpose = hf_name_to_path(name, config)
        out[path] = tuple(hf_shape[::-1]) if transpose else tuple(hf_shape)
    return out
