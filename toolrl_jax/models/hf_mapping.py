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
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

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


# --------------------------------------------------------------------------- tensors


def _hf_shape(t: Any) -> tuple[int, ...]:
    if hasattr(t, "get_shape"):  # safetensors PySafeSlice
        return tuple(int(s) for s in t.get_shape())
    return tuple(int(s) for s in t.shape)


def _to_numpy(t: Any) -> np.ndarray:
    if type(t).__module__.startswith("torch"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            return t.float().numpy().astype(jnp.bfloat16)
        return t.numpy()
    return np.asarray(t)


def _read(t: Any, index: tuple[slice, ...] | None = None) -> np.ndarray:
    """Read a whole tensor or a slice (``index`` in HF layout) as numpy."""
    if index is None:
        if hasattr(t, "get_shape"):
            return _to_numpy(t[tuple(slice(None) for _ in t.get_shape())])
        return _to_numpy(t)
    return _to_numpy(t[index])


def _get_variable(model: nnx.Module, path: tuple) -> nnx.Variable:
    node: Any = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _param_items(model: nnx.Module) -> list[tuple[tuple, nnx.Variable]]:
    """(path, Variable) for every nnx.Param of the model, paths as in nnx.state."""
    out = []
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            out.append((tuple(int(k) if isinstance(k, (int, np.integer)) else k for k in path), var))
    return out


def load_hf_state(
    model: "Any",
    tensors: Mapping[str, Any],
    *,
    mesh: jax.sharding.Mesh | None = None,
    strict: bool = True,
) -> None:
    """Fill ``model``'s parameters in place from HF-named tensors, cast to ``param_dtype``.

    Args:
      model: a :class:`Decoder` (concrete, or abstract from :func:`create_model` /
        ``nnx.eval_shape``).
      tensors: HF name -> array-like in HF layout: numpy arrays, torch tensors,
        safetensors ``safe_open(...).get_slice(name)`` slices (read lazily), or
        anything ``np.asarray`` accepts.
      mesh: when given, each parameter is placed on ``NamedSharding(mesh, spec)`` with the
        spec from :func:`toolrl_jax.models.sharding.param_partition_specs` via
        ``jax.make_array_from_callback``: each device reads only its own slice of the
        (possibly mmap'd) host tensor, so no device holds a full copy of a sharded param.
        Without a mesh, a parameter that already lives on a ``NamedSharding`` keeps it.
      strict: when true (default) missing and unexpected tensor names are errors; when false
        they are skipped (missing params keep their current values). Shape mismatches are
        always errors.

    Raises:
      ModelLoadError: lists missing names, unexpected names and shape mismatches.
    """
    from toolrl_jax.models.sharding import param_partition_specs

    config: ModelConfig = model.config
    expected = expected_hf_shapes(config)
    unexpected, mismatched, plan = [], [], []
    for name, t in tensors.items():
        try:
            path, transpose = hf_name_to_path(name, config)
        except ModelLoadError:
            unexpected.append(name)
            continue
        if path == IGNORED:
            continue
        canon, _ = path_to_hf_name(path, config)
        shape = _hf_shape(t)
        if shape != expected[canon]:
            mismatched.append(f"{name}: got {shape}, expected {expected[canon]}")
            continue
        plan.append((canon, name, path, transpose))
    loaded = {canon for canon, *_ in plan}
    missing = [n for n in expected if n not in loaded]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if strict and missing:
        problems.append(f"missing {len(missing)} tensors: " + ", ".join(missing[:20]))
    if strict and unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors: " + ", ".join(unexpected[:20]))
    if problems:
        raise ModelLoadError(
            f"weights do not fit {config.architecture} config "
            f"(L={config.num_layers}, D={config.hidden_size}, V={config.vocab_size}): "
            + " | ".join(problems)
        )

    pdtype = jnp.dtype(config.param_dtype)
    specs = param_partition_specs(config, mesh=mesh) if mesh is not None else None
    for _, name, path, transpose in plan:
        t = tensors[name]
        var = _get_variable(model, path)
        if mesh is not None:
            sharding = jax.sharding.NamedSharding(mesh, specs[path])
            hf_shape = _hf_shape(t)
            shape = hf_shape[::-1] if transpose else hf_shape
            var.set_value(
                jax.make_array_from_callback(shape, sharding, _slice_reader(t, transpose, pdtype))
            )
            continue
        host = _read(t)
        if transpose:
            host = host.T
        host = np.ascontiguousarray(host.astype(pdtype, copy=False))
        current = var.get_value()
        if isinstance(current, jax.Array) and isinstance(
            getattr(current, "sharding", None), jax.sharding.NamedSharding
        ):
            var.set_value(jax.device_put(host, current.sharding))
        else:
            var.set_value(jnp.asarray(host))


def _slice_reader(t: Any, transpose: bool, dtype: np.dtype) -> Callable[[tuple], np.ndarray]:
    """Callback for ``make_array_from_callback``: reads one device's block (our layout).

    Blocks are memoised per index for the duration of one parameter's load, so devices that
    hold the same block (replicated axes) share one host read.
    """
    memo: dict[tuple, np.ndarray] = {}

    def read(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index)
        key = tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in index)
        if key not in memo:
            out = _read(t, index[::-1]).T if transpose else _read(t, index)
            memo[key] = np.ascontiguousarray(out.astype(dtype, copy=False))
        return memo[key]

    return read


def export_hf_state(model: Any) -> dict[str, np.ndarray]:
    """All parameters as HF-named numpy arrays in HF layout and ``param_dtype``.

    Tied models export no ``lm_head.weight`` (as ``save_pretrained`` does). Sharded
    parameters are gathered to host (``process_allgather`` across hosts).
    """
    config: ModelConfig = model.config
    out: dict[str, np.ndarray] = {}
    for path, var in _param_items(model):
        name, transpose = path_to_hf_name(path, config)
        value = var.get_value()
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            from jax.experimental import multihost_utils

            host = np.asarray(multihost_utils.process_allgather(value, tiled=True))
        else:
            host = np.asarray(jax.device_get(value))
        out[name] = np.ascontiguousarray(host.T if transpose else host)
    return {n: out[n] for n in expected_hf_names(config)}


def create_model(
    config: ModelConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    rngs: nnx.Rngs | None = None,
) -> Any:
    """Build a randomly initialised :class:`Decoder`.

    With a mesh, the model is traced abstractly (``nnx.eval_shape``) and its parameters are
    created by one jitted init whose ``out_shardings`` are the param NamedShardings, so each
    device materialises only its own shards (no full copy lands on one device). Follow with
    :func:`load_hf_state` (same mesh) to load real weights.
    """
    from toolrl_jax.models.decoder import Decoder
    from toolrl_jax.models.sharding import param_shardings

    rngs = rngs if rngs is not None else nnx.Rngs(0)
    if mesh is None:
        return Decoder(config, rngs=rngs)
    abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = param_shardings(abstract_state, config, mesh)
    key = rngs.params()

    def init(key: jax.Array) -> Any:
        return nnx.state(Decoder(config, rngs=nnx.Rngs(params=key)))

    state = jax.jit(init, out_shardings=shardings)(key)
    return nnx.merge(graphdef, state)
