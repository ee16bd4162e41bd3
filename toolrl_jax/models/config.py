"""Decoder configuration, converted to and from Hugging Face ``config.json``.

One frozen dataclass, :class:`ModelConfig`, describes every model of the decoder family
(Llama incl. SmolLM2 and Llama 3.x, Qwen2 / Qwen2.5, Qwen3). It is built from a HF config
with :meth:`ModelConfig.from_hf` and written back with :meth:`ModelConfig.to_hf`, so an
exported checkpoint loads in ``transformers`` / vLLM as the same architecture.

Supported (anything else raises :class:`toolrl_jax.errors.ModelLoadError`):

=====================  ==========  =================================================
architecture           model_type  notes
=====================  ==========  =================================================
LlamaForCausalLM       llama       rope ``default`` or ``llama3``; SmolLM2; tied or not
Qwen2ForCausalLM       qwen2       q/k/v bias; no sliding window
Qwen3ForCausalLM       qwen3       per-head RMSNorm on q and k (``qk_norm``)
=====================  ==========  =================================================
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from toolrl_jax.errors import ConfigError, ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_ARCH_OF_TYPE = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}
SUPPORTED_ROPE_TYPES = ("default", "llama3")
_DTYPES = ("float32", "bfloat16")
_ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
    """Llama 3.x RoPE frequency scaling (HF ``rope_type: llama3``).

    For each RoPE frequency ``f`` with wavelength ``w = 2π / f`` and
    ``L = original_max_position_embeddings``:
    ``w < L / high_freq_factor`` -> ``f`` unchanged; ``w > L / low_freq_factor`` -> ``f / factor``;
    otherwise ``(1 - s) f / factor + s f`` with ``s = (L / w - low) / (high - low)``.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture + numerics of a decoder-only LM (hashable; safe as a jit static arg).

    Attributes:
      model_type: 'llama' | 'qwen2' | 'qwen3'.
      vocab_size, hidden_size (D), intermediate_size (F), num_layers (L), num_heads (H),
      num_kv_heads (KVH, GQA groups = H / KVH), head_dim (Dh): shapes.
      rms_norm_eps: RMSNorm epsilon.
      rope_theta: RoPE base; rope_scaling: None or :class:`Llama3RopeScaling`.
      max_position_embeddings: context length the model was trained for (informational).
      tie_word_embeddings: lm_head is embed_tokens transposed.
      attention_bias: q/k/v projections carry a bias (Qwen2 always; Llama/Qwen3 when HF's
        ``attention_bias`` is true, in which case o_proj carries one too, see ``o_proj_bias``).
      qk_norm: Qwen3's per-head RMSNorm on q and k (before RoPE).
      bos_token_id: int or None; eos_token_ids: tuple of ints (may be empty).
      param_dtype: storage dtype of parameters, 'float32' | 'bfloat16'.
      dtype: compute dtype of activations / matmuls, 'float32' | 'bfloat16'.
      attention_impl: 'xla' (portable einsum + softmax in float32, query-chunked for long
        sequences) or 'cudnn' (``jax.nn.dot_product_attention(implementation='cudnn')``; needs
        dtype='bfloat16'; falls back to 'xla' when the backend is not a GPU).
      remat: rematerialise each decoder block in the backward pass (saves activation memory).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Llama3RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    param_dtype: str = "float32"
    dtype: str = "float32"
    attention_impl: str = "xla"
    remat: bool = False

    def __post_init__(self) -> None:
        if self.model_type not in _ARCH_OF_TYPE:
            raise ConfigError(
                f"model_type={self.model_type!r} is not supported; use one of "
                f"{sorted(_ARCH_OF_TYPE)}"
            )
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}: use one of {_DTYPES}")
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise ConfigError(
                f"attention_impl={self.attention_impl!r}: use one of {_ATTENTION_IMPLS}"
            )
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            raise ConfigError(
                "attention_impl='cudnn' needs dtype='bfloat16' (cuDNN flash attention has no "
                "float32 kernel); use attention_impl='xla' for float32"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.model_type == "qwen2" and not self.attention_bias:
            raise ConfigError("model_type='qwen2' always has q/k/v bias: set attention_bias=True")
        if self.qk_norm and self.model_type != "qwen3":
            raise ConfigError("qk_norm=True is only defined for model_type='qwen3'")
        if isinstance(self.eos_token_ids, list):
            object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        if isinstance(self.rope_scaling, Mapping):  # keep the config hashable
            rs = {k: v for k, v in self.rope_scaling.items() if k not in ("rope_type", "type")}
            object.__setattr__(self, "rope_scaling", Llama3RopeScaling(**rs))

    # ----------------------------------------------------------------- derived
    @property
    def o_proj_bias(self) -> bool:
        """o_proj has a bias: HF Llama/Qwen3 with ``attention_bias`` (Qwen2 never)."""
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def architecture(self) -> str:
        return _ARCH_OF_TYPE[self.model_type]

    def num_params(self) -> int:
        """Total parameter count (embedding counted once when tied)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        qd, kvd = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = d * qd + 2 * d * kvd + qd * d
        if self.attention_bias:
            attn += qd + 2 * kvd
        if self.o_proj_bias:
            attn += d
        if self.qk_norm:
            attn += 2 * self.head_dim
        block = attn + 3 * d * f + 2 * d
        return v * d + self.num_layers * block + d + (0 if self.tie_word_embeddings else d * v)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- HF in
    @classmethod
    def from_hf(
        cls,
        hf: Mapping[str, Any] | str | Path,
        *,
        param_dtype: str = "float32",
        dtype: str = "float32",
        **overrides: Any,
    ) -> "ModelConfig":
        """Build from a HF config: a dict, a ``config.json`` path, or a model directory.

        Reads both the transformers-4 keys (``rope_theta``, ``rope_scaling``) and the
        transformers-5 key (``rope_parameters``). ``overrides`` replace fields afterwards
        (e.g. ``attention_impl='cudnn'``).

        Raises:
          ModelLoadError: unreadable file, unsupported architecture or rope type, sliding
            window, non-SiLU activation, MLP bias, or a missing key; the message names it.
        """
        source = "config dict"
        if not isinstance(hf, Mapping):
            path = Path(hf)
            if path.is_dir():
                path = path / "config.json"
            source = str(path)
            try:
                hf = json.loads(path.read_text())
            except FileNotFoundError:
                raise ModelLoadError(f"{source}: file not found (expected a HF config.json)")
            except (OSError, json.JSONDecodeError) as e:
                raise ModelLoadError(f"{source}: cannot read HF config.json ({e})")
        hf = dict(hf)

        supported = ", ".join(SUPPORTED_ARCHITECTURES)
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if archs:
            arch = archs[0]
            if arch not in SUPPORTED_ARCHITECTURES:
                raise ModelLoadError(
                    f"{source}: architecture {arch!r} is not supported; supported: {supported}"
                )
            model_type = SUPPORTED_ARCHITECTURES[arch]
        elif model_type not in _ARCH_OF_TYPE:
            raise ModelLoadError(
                f"{source}: model_type {model_type!r} (no 'architectures') is not supported; "
                f"supported: {supported}"
            )

        def need(key: str) -> Any:
            if key not in hf or hf[key] is None:
                raise ModelLoadError(f"{source}: missing required key {key!r} for {model_type}")
            return hf[key]

        act = hf.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ModelLoadError(f"{source}: hidden_act={act!r} is not supported; only 'silu'")
        if hf.get("mlp_bias"):
            raise ModelLoadError(f"{source}: mlp_bias=true is not supported")
        if hf.get("use_sliding_window"):
            raise ModelLoadError(
                f"{source}: use_sliding_window=true is not supported (full attention only)"
            )

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        head_dim = hf.get("head_dim") or hidden // heads

        # RoPE: transformers 5 'rope_parameters' (incl. rope_theta) or 4.x 'rope_theta' +
        # 'rope_scaling'.
        rope = dict(hf.get("rope_parameters") or {})
        if hf.get("rope_scaling"):
            rope = {**dict(hf["rope_scaling"]), **rope}
        rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ModelLoadError(
                f"{source}: rope type {rope_type!r} is not supported; supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        rope_scaling = None
        if rope_type == "llama3":
            try:
                rope_scaling = Llama3RopeScaling(
                    factor=float(rope["factor"]),
                    low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_position_embeddings=int(
                        rope["original_max_position_embeddings"]
                    ),
                )
            except KeyError as e:
                raise ModelLoadError(f"{source}: llama3 rope scaling is missing key {e}")

        eos = hf.get("eos_token_id")
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        if model_type == "qwen2":
            attention_bias = True  # hard-coded in HF Qwen2Attention
        else:
            attention_bias = bool(hf.get("attention_bias", False))
        fields = dict(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            qk_norm=model_type == "qwen3",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            param_dtype=param_dtype,
            dtype=dtype,
        )
        fields.update(overrides)
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ModelLoadError(f"{source}: {e}") from None

    # ----------------------------------------------------------------- HF out
    def to_hf(self) -> dict[str, Any]:
        """A complete HF ``config.json`` dict that transformers loads to the same architecture.

        Writes the RoPE settings both ways (``rope_theta`` + ``rope_scaling`` for
        transformers 4.x / vLLM, ``rope_parameters`` for transformers 5).
        """
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        rope_scaling = None
        if self.rope_scaling is not None:
            rope_scaling = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
            rope_parameters = {**rope_scaling, "rope_theta": self.rope_theta}
        eos: Any = None
        if len(self.eos_token_ids) == 1:
            eos = self.eos_token_ids[0]
        elif self.eos_token_ids:
            eos = list(self.eos_token_ids)
        hf: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "initializer_range": 0.02,
            "attention_dropout": 0.0,
            "use_cache": True,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
        }
        if self.model_type == "llama":
            hf.update(attention_bias=self.attention_bias, mlp_bias=False, pretraining_tp=1)
        elif self.model_type == "qwen2":
            hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        else:  # qwen3
            hf.update(
                attention_bias=self.attention_bias,
                use_sliding_window=False,
                sliding_window=None,
                max_window_layers=self.num_layers,
            )
        return hf

    # ----------------------------------------------------------------- tests
    @classmethod
    def tiny(cls, model_type: str = "llama", **overrides: Any) -> "ModelConfig":
        """A tiny random-init config for tests: 2 layers, D=64, 4 heads (2 KV), Dh=16, V=256."""
        fields: dict[str, Any] = dict(
            model_type=model_type,
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            max_position_embeddings=512,
            tie_word_embeddings=model_type != "qwen2",
            attention_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            bos_token_id=1,
            eos_token_ids=(2,),
        )
        fields.update(overrides)
        return cls(**fields)
