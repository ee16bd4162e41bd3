"""Hugging Face checkpoints: lazy safetensors reading, and HF-named tensors <-> :class:`Decoder`.

A Hugging Face model directory holds ``config.json`` and either one ``model.safetensors`` or
shards ``model-0000k-of-0000n.safetensors`` listed in ``model.safetensors.index.json``
(``{"weight_map": {tensor_name: shard_file}}``). :func:`read_safetensors` returns a lazy
``Mapping[name, np.ndarray]``: each lookup reads one tensor from its memory-mapped shard, so loading
a model needs about one tensor of host memory beyond the parameters themselves (and, with a mesh,
each tensor goes straight onto its ``NamedSharding``). :func:`load_hf_state` fills a model from
HF-named tensors and :func:`export_hf_state` is its inverse, both through the name <-> path table
of :mod:`toolrl_jax.models.hf_mapping`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # registers bfloat16/float8 with numpy so safetensors can return them
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors import safe_open

from toolrl_jax.errors import ConfigError, ModelLoadError, ToolRLError
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder, create_model
from toolrl_jax.models.hf_mapping import (
    IGNORED,
    expected_hf_names,
    expected_hf_shapes,
    hf_name_to_path,
    path_to_hf_name,
)
from toolrl_jax.models.params import get_variable, param_variables
from toolrl_jax.models.sharding import param_partition_specs

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


class LazyTensor:
    """A tensor read on demand: ``shape``/``dtype`` without reading; ``t[index]`` and
    ``np.asarray(t)`` read (a slice of) it.

    This is the protocol :func:`load_hf_state` accepts (``get_shape()`` plus basic
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
    (``nnx.eval_shape``, no random init) and :func:`load_hf_state` fills it tensor by
    tensor, straight onto each parameter's ``NamedSharding`` when ``mesh`` is given. Without
    ``strict``, missing parameters keep ``decoder.create_model``'s random init.

    Returns:
      ``(model, config)``.
    Raises:
      ModelLoadError: unsupported config, missing/unexpected tensors or shape mismatches, naming
        ``source``.
    """
    config = _model_config(hf_config, param_dtype=param_dtype, dtype=dtype, source=source)
    if strict:
        # Every parameter gets overwritten: trace the model abstractly, skip the random init.
        model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    else:
        model = create_model(config, mesh=mesh)
    try:
        load_hf_state(model, tensors, mesh=mesh, strict=strict)
    except ModelLoadError as e:
        raise ModelLoadError(f"{source}: {e}") from e
    except (ToolRLError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{source}: weights do not fit the config: {e}") from e
    if strict:
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


# --------------------------------------------------------------------------- HF tensors <-> params


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


def load_hf_state(
    model: "Any",
    tensors: Mapping[str, Any],
    *,
    mesh: jax.sharding.Mesh | None = None,
    strict: bool = True,
) -> None:
    """Fill ``model``'s parameters in place from HF-named tensors, cast to ``param_dtype``.

    Args:
      model: a :class:`Decoder` (concrete, or abstract from
        :func:`~toolrl_jax.models.decoder.create_model` / ``nnx.eval_shape``).
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
        var = get_variable(model, path)
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
    for path, var in param_variables(model):
        name, transpose = path_to_hf_name(path, config)
        value = var.get_value()
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            host = np.asarray(multihost_utils.process_allgather(value, tiled=True))
        else:
            host = np.asarray(jax.device_get(value))
        out[name] = np.ascontiguousarray(host.T if transpose else host)
    return {n: out[n] for n in expected_hf_names(config)}
