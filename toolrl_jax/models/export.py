"""Write a :class:`Decoder` as a Hugging Face model directory (for transformers and vLLM).

The directory holds ``config.json`` (``ModelConfig.to_hf()``), ``generation_config.json``,
``model.safetensors`` (or shards ``model-0000k-of-0000n.safetensors`` plus
``model.safetensors.index.json`` when the weights exceed ``max_shard_bytes``) and the tokenizer
files. Safetensors files are written by a streaming writer: the header (names, dtypes, shapes,
byte offsets) is known from the parameter shapes, then each tensor is gathered to the host
(``jax.device_get`` of one parameter, even when it is sharded over a mesh), converted, written and
dropped, so peak host memory is about one tensor.

Safetensors layout (https://github.com/huggingface/safetensors): 8-byte little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]},
"__metadata__": {...}}`` padded with spaces to a multiple of 8, then the raw little-endian bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils

from toolrl_jax.chat.tokenizer import load_tokenizer
from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.hf_mapping import IGNORED, expected_hf_shapes, hf_name_to_path

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_EXPORT_DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
EXPORT_DTYPES = tuple(_EXPORT_DTYPES)
_SAFETENSORS_DTYPE = {
    np.dtype(np.float32): "F32",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSource:
    """One tensor to write: HF name, shape, and a thunk that returns it as a host numpy array."""

    name: str
    shape: tuple[int, ...]
    get: Callable[[], np.ndarray]


def write_safetensors_streaming(
    path: str | pathlib.Path,
    sources: Iterable[TensorSource],
    dtype: np.dtype,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write tensors to one safetensors file, materialising one tensor at a time.

    Args:
      path: output file.
      sources: tensors in file order; each ``get()`` must return an array of ``shape``.
      dtype: storage dtype (every tensor is cast to it).
      metadata: string metadata (``{"format": "pt"}`` is what transformers expects).
    Returns:
      Number of data bytes written.
    """
    sources = list(sources)
    dtype = np.dtype(dtype)
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for src in sources:
        nbytes = math.prod(src.shape) * dtype.itemsize
        header[src.name] = {
            "dtype": _SAFETENSORS_DTYPE[dtype],
            "shape": list(src.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for src in sources:
            array = np.asarray(src.get())
            if tuple(array.shape) != tuple(src.shape):
                raise ValueError(
                    f"tensor {src.name}: got shape {array.shape}, declared {src.shape}"
                )
            array = np.ascontiguousarray(array.astype(dtype, copy=False))
            if array.dtype.byteorder == ">":
                array = array.byteswap().view(array.dtype.newbyteorder("<"))
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
            del array
    os.replace(tmp, path)
    return offset


def plan_shards(
    sources: list[TensorSource], itemsize: int, max_shard_bytes: int
) -> list[list[TensorSource]]:
    """Greedy split of tensors (in order) into shards of at most ``max_shard_bytes`` each
    (a single tensor larger than the limit gets a shard of its own)."""
    shards: list[list[TensorSource]] = [[]]
    size = 0
    for src in sources:
        nbytes = math.prod(src.shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(src)
        size += nbytes
    return shards


def write_safetensors_dir(
    out_dir: str | pathlib.Path,
    sources: list[TensorSource],
    *,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[pathlib.Path]:
    """Write ``model.safetensors`` or shards + ``model.safetensors.index.json`` (HF naming).

    Returns:
      The safetensors files written.
    """
    if dtype not in _EXPORT_DTYPES:
        raise ModelLoadError(
            f"export dtype {dtype!r} is not supported; use one of {sorted(_EXPORT_DTYPES)}"
        )
    np_dtype = _EXPORT_DTYPES[dtype]
    out_dir = pathlib.Path(out_dir)
    for stale in list(out_dir.glob("model*.safetensors")) + [
        out_dir / "model.safetensors.index.json"
    ]:
        if stale.exists():
            stale.unlink()
    shards = plan_shards(sources, np_dtype.itemsize, max_shard_bytes)
    if len(shards) == 1:
        path = out_dir / "model.safetensors"
        write_safetensors_streaming(path, shards[0], np_dtype)
        return [path]
    n = len(shards)
    weight_map: dict[str, str] = {}
    total = 0
    paths = []
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{n:05d}.safetensors"
        total += write_safetensors_streaming(out_dir / name, shard, np_dtype)
        weight_map.update({src.name: name for src in shard})
        paths.append(out_dir / name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def generation_config_dict(config, *, pad_token_id: int | None = None) -> dict[str, Any]:
    """``generation_config.json`` contents: bos/eos/pad ids of the model config."""
    out: dict[str, Any] = {}
    if config.bos_token_id is not None:
        out["bos_token_id"] = int(config.bos_token_id)
    eos = list(config.eos_token_ids)
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if pad_token_id is not None:
        out["pad_token_id"] = int(pad_token_id)
    return out


def load_tokenizer_any(source: str | os.PathLike) -> Any:
    """A transformers tokenizer from a directory or ``.gguf`` file
    (``toolrl_jax.chat.tokenizer.load_tokenizer``)."""
    return load_tokenizer(pathlib.Path(source))


def save_tokenizer(tokenizer: Any, out_dir: str | pathlib.Path) -> list[str]:
    """Write tokenizer files into ``out_dir``.

    ``tokenizer`` may be: an object with ``save_pretrained`` (a transformers tokenizer, or a wrapper
    exposing one as ``.hf_tokenizer`` / ``.tokenizer``); a ``tokenizers.Tokenizer`` (writes
    ``tokenizer.json``); a directory (its tokenizer files are copied); a ``.gguf`` file or a
    directory holding one (converted by :func:`load_tokenizer_any`).

    Returns:
      Names of the files written.
    """
    out_dir = pathlib.Path(out_dir)
    before = set(os.listdir(out_dir))
    if isinstance(tokenizer, (str, os.PathLike)):
        src = pathlib.Path(tokenizer)
        copied = [name for name in TOKENIZER_FILES if src.is_dir() and (src / name).is_file()]
        if copied:
            for name in copied:
                shutil.copyfile(src / name, out_dir / name)
            return copied
        if src.is_file() and src.name == "tokenizer.json":
            shutil.copyfile(src, out_dir / "tokenizer.json")
            return ["tokenizer.json"]
        if not src.exists():
            raise ModelLoadError(f"tokenizer source {src} does not exist")
        tokenizer = load_tokenizer_any(src)
    for candidate in (
        tokenizer,
        getattr(tokenizer, "hf_tokenizer", None),
        getattr(tokenizer, "tokenizer", None),
    ):
        if candidate is not None and hasattr(candidate, "save_pretrained"):
            candidate.save_pretrained(str(out_dir))
            return sorted(set(os.listdir(out_dir)) - before)
    for candidate in (tokenizer, getattr(tokenizer, "backend_tokenizer", None)):
        if candidate is not None and hasattr(candidate, "to_str") and hasattr(candidate, "save"):
            candidate.save(str(out_dir / "tokenizer.json"))
            return ["tokenizer.json"]
    raise ModelLoadError(
        f"cannot save tokenizer of type {type(tokenizer).__name__}: it has no save_pretrained()"
    )


def source_dtype(kind: str, path: str | os.PathLike) -> tuple[str, str]:
    """The export dtype that keeps a source checkpoint's precision, and where it came from.

    A Hugging Face directory: ``torch_dtype`` (older transformers) or ``dtype`` (newer) of its
    ``config.json`` (``"torch.float16"`` and ``"float16"`` both read as float16); a config
    without either means float32 (transformers' default). A GGUF file: bfloat16 (its weights are
    quantized or half precision; bf16 keeps their range).

    Args:
      kind: ``'hf_dir'`` or ``'gguf'`` (``ResolvedModel.kind``).
      path: the directory or the ``.gguf`` file.
    Returns:
      ``(dtype, reason)``, ``dtype`` in :data:`EXPORT_DTYPES` (float64 and others -> float32).
    """
    if kind == "gguf":
        return "bfloat16", "GGUF source"
    config_path = pathlib.Path(path) / "config.json"
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {config_path}: {e}") from e
    for key in ("torch_dtype", "dtype"):
        value = hf.get(key)
        if isinstance(value, str) and value:
            name = value.removeprefix("torch.")
            if name in _EXPORT_DTYPES:
                return name, f"{key} in {config_path.name}"
            return "float32", f"{key}={value!r} in {config_path.name} is not exportable"
    return "float32", f"no torch_dtype/dtype in {config_path.name}"


def _gather_to_host(value: Any) -> np.ndarray:
    """One (possibly sharded, possibly multi-host) jax array -> full numpy array on this host."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))


def model_tensor_sources(model: Any) -> list[TensorSource]:
    """HF-named :class:`TensorSource` s of a :class:`Decoder`, in HF order, gathered lazily.

    Each ``get()`` gathers one parameter to the host (``jax.device_get``, or
    ``process_allgather`` when it spans hosts) and transposes kernels to HF's ``[out, in]``.
    Tied models have no ``lm_head.weight`` (as ``save_pretrained`` writes them).
    """
    config = model.config
    sources = []
    for name, shape in expected_hf_shapes(config).items():
        path, transpose = hf_name_to_path(name, config)
        if path == IGNORED:
            continue
        node: Any = model
        for key in path:
            node = node[key] if isinstance(key, int) else getattr(node, key)

        def get(var=node, transpose=transpose) -> np.ndarray:
            host = _gather_to_host(var.get_value())
            return host.T if transpose else host

        sources.append(TensorSource(name=name, shape=tuple(shape), get=get))
    return sources


def export_hf_dir(
    model: Any,
    config: Any,
    out_dir: str | pathlib.Path,
    *,
    tokenizer: Any = None,
    dtype: str = "float32",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    pad_token_id: int | None = None,
) -> pathlib.Path:
    """Write ``model`` as a Hugging Face directory that ``transformers`` and vLLM load.

    Files: ``config.json`` (``config.to_hf()`` with ``dtype``/``torch_dtype`` set to the export
    dtype), ``generation_config.json``, ``model.safetensors`` or shards + index when larger than
    ``max_shard_bytes``, and tokenizer files when ``tokenizer`` is given (see
    :func:`save_tokenizer`). Parameters are gathered to the host one at a time. In a multi-host
    run every process must call this (the gathers are collective); only process 0 writes.

    Args:
      model: a :class:`~toolrl_jax.models.decoder.Decoder` (parameters may be mesh-sharded).
      config: its :class:`~toolrl_jax.models.config.ModelConfig`.
      out_dir: created if missing; existing model files in it are replaced.
      tokenizer: ``None``, a tokenizer object, a tokenizer directory, or a ``.gguf`` file.
      dtype: ``'float32'``, ``'bfloat16'`` or ``'float16'`` storage in the safetensors files.
      max_shard_bytes: shard size limit (HF's default is 5 GB; 2 GB here).
      pad_token_id: written to ``generation_config.json`` when given.
    Returns:
      ``out_dir`` as a Path.
    """
    if dtype not in _EXPORT_DTYPES:
        raise ModelLoadError(
            f"export dtype {dtype!r} is not supported; use one of {sorted(_EXPORT_DTYPES)}"
        )
    out_dir = pathlib.Path(out_dir)
    sources = model_tensor_sources(model)
    if jax.process_index() != 0:
        for src in sources:  # take part in the collective gathers, write nothing
            src.get()
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    hf = dict(config.to_hf())
    hf["torch_dtype"] = dtype
    hf["dtype"] = dtype
    (out_dir / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    generation = generation_config_dict(config, pad_token_id=pad_token_id)
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    write_safetensors_dir(out_dir, sources, dtype=dtype, max_shard_bytes=max_shard_bytes)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
    return out_dir
