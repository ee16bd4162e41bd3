"""Hugging Face safetensors checkpoints: lazy reading and loading into a :class:`Decoder`.

A Hugging Face model directory holds ``config.json`` and either one ``model.safetensors`` or
shards ``model-0000k-of-0000n.safetensors`` listed in ``model.safetensors.index.json``
(``{"weight_map": {tensor_name: shard_file}}``). :func:`read_safetensors` returns a lazy
``Mapping[name, np.ndarray]``: each lookup reads one tensor from its memory-mapped shard, so loading
a model needs about one tensor of host memory beyond the parameters themselves (and, with a mesh,
each tensor goes straight onto its ``NamedSharding``).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes  # registers bfloat16/float8 with numpy so safetensors can return them
import numpy as np

from toolrl_jax.errors import ModelLoadError

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


class LazyTensor:
    """A tensor read on demand: ``shape``/``dtype`` without reading; ``t[index]`` and
    ``np.asarray(t)`` read (a slice of) it.

    This is the protocol ``hf_mapping.load_hf_state`` accepts (``get_shape()`` plus basic
    slicing), so a mesh load reads only each device's slice where the source allows it.

    Args:
      shape, dtype: of the full tensor (HF layout).
      read: ``read(index) -> np.ndarray`` for a tuple of slices (``None`` = everything).
    """

    __slots__ = ("_read", "dtype", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: Any, read):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def get_shape(self) -> list[int]:
        return list(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        return np.asarray(self._read(index))

    def numpy(self) -> np.ndarray:
        """The whole tensor as a numpy array."""
        return np.asarray(self._read(None))

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


_ST_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}


class SafetensorsTensors(Mapping):
    """Lazy ``Mapping[tensor_name, LazyTensor]`` over one or more safetensors files.

    Files are opened with ``safe_open(framework="numpy")`` (memory-mapped) when first needed; a
    lookup returns a :class:`LazyTensor` that reads the tensor, or just a slice of it, only when
    indexed or converted with ``np.asarray``. bfloat16 tensors come back as ``ml_dtypes.bfloat16``.
    """

    def __init__(self, weight_map: Mapping[str, pathlib.Path]):
        self._weight_map = dict(weight_map)
        self._handles: dict[pathlib.Path, Any] = {}

    def _handle(self, path: pathlib.Path):
        if path not in self._handles:
            from safetensors import safe_open

            try:
                self._handles[path] = safe_open(str(path), framework="numpy")
            except Exception as e:
                raise ModelLoadError(
                    f"{path} is not a readable safetensors file: {type(e).__name__}: {e}"
                ) from e
        return self._handles[path]

    def __getitem__(self, name: str) -> LazyTensor:
        path = self._weight_map[name]
        try:
            view = self._handle(path).get_slice(name)
            shape, st_dtype = view.get_shape(), view.get_dtype()
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"cannot read tensor {name!r} from {path}: {type(e).__name__}: {e}"
            ) from e
        if st_dtype not in _ST_DTYPES:
            raise ModelLoadError(f"tensor {name!r} in {path} has unsupported dtype {st_dtype}")

        def read(index):
            try:
                if index is None:
                    index = tuple(slice(None) for _ in shape)
                return np.asarray(view[index])
            except Exception as e:
                raise ModelLoadError(
                    f"cannot read tensor {name!r} from {path}: {type(e).__name__}: {e}"
                ) from e

        return LazyTensor(shape, _ST_DTYPES[st_dtype], read)

    def __iter__(self) -> Iterator[str]:
        return iter(self._weight_map)

    def __len__(self) -> int:
        return len(self._weight_map)

    def file_of(self, name: str) -> pathlib.Path:
        """The safetensors file that holds ``name``."""
        return self._weight_map[name]


def _keys_of(path: pathlib.Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return list(f.keys())
    except Exception as e:
        raise ModelLoadError(
            f"{path} is not a readable safetensors file: {type(e).__name__}: {e}"
        ) from e


def read_safetensors(path_or_dir: str | pathlib.Path) -> SafetensorsTensors:
    """Lazy tensors of a safetensors file, or of a directory (single file or sharded with an index).

    Args:
      path_or_dir: a ``.safetensors`` file, or a directory with ``model.safetensors``,
        ``model.safetensors.index.json`` (sharded) or, failing both, any ``*.safetensors`` files.
    Raises:
      ModelLoadError: nothing to read, an unreadable file, or an index naming a missing shard.
    """
    path = pathlib.Path(path_or_dir)
    if path.is_file():
        return SafetensorsTensors({name: path for name in _keys_of(path)})
    if not path.is_dir():
        raise ModelLoadError(f"{path} does not exist")
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(
                f"{index} is not a safetensors index (needs a 'weight_map'): {e}"
            ) from e
        files = {}
        for name, shard in weight_map.items():
            shard_path = path / shard
            if not shard_path.is_file():
                raise ModelLoadError(
                    f"{index} names shard {shard} for {name}, but {shard_path} is missing"
                )
            files[name] = shard_path
        return SafetensorsTensors(files)
    single = path / SAFETENSORS_SINGLE
    candidates = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if not candidates:
        raise ModelLoadError(
            f"{path} holds no {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or *.safetensors file"
        )
    weight_map: dict[str, pathlib.Path] = {}
    for file in candidates:
        for name in _keys_of(file):
            weight_map[name] = file
    return SafetensorsTensors(weight_map)


def read_hf_config(model_dir: str | pathlib.Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model directory as a dict.

    Raises:
      ModelLoadError: missing or not JSON.
    """
    path = pathlib.Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir} has no {CONFIG_FILE}; is it a Hugging Face model directory?"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return config


def _model_config(hf_config: Mapping[str, Any], *, param_dtype: str, dtype: str, source: str):
    from toolrl_jax.errors import ConfigError, ToolRLError
    from toolrl_jax.models.config import ModelConfig

    try:
        return ModelConfig.from_hf(dict(hf_config), param_dtype=param_dtype, dtype=dtype)
    except ModelLoadError:
        raise
    except (ConfigError, ToolRLError, KeyError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{source}: unsupported model config: {e}") from e


def build_model_from_hf_tensors(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, Any],
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    mesh=None,
    source: str = "checkpoint",
    strict: bool = True,
):
    """A :class:`Decoder` built from an HF config dict and HF-named tensors (lazy mappings welcome).

    With ``strict`` (every parameter must be in ``tensors``) the model is traced abstractly
    (``nnx.eval_shape``, no random init) and ``hf_mapping.load_hf_state`` fills it tensor by
    tensor, straight onto each parameter's ``NamedSharding`` when ``mesh`` is given. Without
    ``strict``, missing parameters keep ``hf_mapping.create_model``'s random init.

    Returns:
      ``(model, config)``.
    Raises:
      ModelLoadError: unsupported config, missing/unexpected tensors or shape mismatches, naming
        ``source``.
    """
    from toolrl_jax.errors import ToolRLError
    from toolrl_jax.models import hf_mapping

    config = _model_config(hf_config, param_dtype=param_dtype, dtype=dtype, source=source)
    if strict:
        # Every parameter gets overwritten: trace the model abstractly, skip the random init.
        from flax import nnx

        from toolrl_jax.models.decoder import Decoder

        model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    else:
        model = hf_mapping.create_model(config, mesh=mesh)
    try:
        hf_mapping.load_hf_state(model, tensors, mesh=mesh, strict=strict)
    except ModelLoadError as e:
        raise ModelLoadError(f"{source}: {e}") from e
    except (ToolRLError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{source}: weights do not fit the config: {e}") from e
    if strict:
        import jax
        from flax import nnx

        for path, node in nnx.iter_graph(model):
            if isinstance(node, nnx.Variable) and isinstance(
                node.get_value(), jax.ShapeDtypeStruct
            ):
                raise ModelLoadError(
                    f"{source}: model variable {'.'.join(map(str, path))} was not loaded"
                )
    return model, config


def load_model_from_hf_dir(
    model_dir: str | pathlib.Path,
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    mesh=None,
):
    """Load a Hugging Face model directory (``config.json`` + safetensors) into a :class:`Decoder`.

    Args:
      model_dir: directory with ``config.json`` and ``model.safetensors`` or sharded safetensors.
      param_dtype: parameter storage dtype (``float32`` / ``bfloat16``).
      dtype: compute dtype.
      mesh: optional ``jax.sharding.Mesh``; each tensor is put straight onto its ``NamedSharding``.
    Returns:
      ``(model, config)``.
    """
    model_dir = pathlib.Path(model_dir)
    hf_config = read_hf_config(model_dir)
    # Validate the architecture before touching the (possibly large) tensors.
    _model_config(hf_config, param_dtype=param_dtype, dtype=dtype, source=str(model_dir))
    tensors = read_safetensors(model_dir)
    return build_model_from_hf_tensors(
        hf_config, tensors, param_dtype=param_dtype, dtype=dtype, mesh=mesh, source=str(model_dir)
    )
