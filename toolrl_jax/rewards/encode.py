"""Host side of the ToolRL reward: text -> fixed-shape integer arrays (parse each completion once).

Every value the jitted scorer compares is replaced by a 32-bit id: the BLAKE2b hash of a canonical
string whose equality is exactly the configured equality:

* ``strict``: Python ``==`` of the decoded JSON (the released code's semantics). Numbers (bool,
  int, float) compare by exact value, so ``True == 1 == 1.0`` but ``1 != 1.0000001`` and
  ``10**30 != 1e30``; ``"1" != 1``; lists in order; dicts regardless of key order. A bare NaN
  value gets a fresh id (``nan != nan``), while a NaN inside a list, dict or call is one constant:
  Python compares container items by identity first and ``json.loads`` returns a single shared
  NaN object, so ``[NaN] == [NaN]`` and two calls with a NaN argument are equal as wholes.
* ``lenient``: strings stripped; numeric strings are numbers (``"1" == 1``); ``"true"/"false"``
  (any case) are booleans; booleans are not numbers; floats compared to 12 significant digits.

Ids are 32-bit, so two *different* canonical values collide with probability 2**-32 per comparison
(a 5-call sample makes a few hundred comparisons: ~1e-7 per sample; negligible next to sampling
noise, and a collision can only turn a mismatch into a match).

The regex format check (the four ToolRL patterns, required tags exactly once) and the
whitespace-word count of ``<think>`` are computed here too and enter as arrays.

Arrays (B = batch, C = ``config.max_calls``, A = ``config.max_args``), see :class:`ToolCallBatch`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from toolrl_jax.errors import ConfigError, DataError
from toolrl_jax.rewards.config import ToolRLRewardConfig
from toolrl_jax.toolcalls.parse import (
    MAX_DEPTH,
    ParsedCompletion,
    first_tool_call_block,
    parse_completion,
)

__all__ = [
    "EncodedGroundTruth",
    "ToolCallBatch",
    "canonical",
    "encode_batch",
    "format_ok",
    "parse_ground_truth",
    "required_shape",
    "think_word_count",
    "value_id",
]


class ToolCallBatch(NamedTuple):
    """Encoded completions and ground truths (a pytree of arrays; jit/vmap friendly).

    Attributes (``[B]`` per sample, ``[B, C]`` per call, ``[B, C, A]`` per argument):
      format_ok [B] bool: the ToolRL format regex for the ground truth's tag set matched.
      has_think [B] bool: both ``<think>`` and ``</think>`` occur (length reward precondition).
      think_words [B] int32: whitespace words of the last ``<think>`` block (released rule).
        Both are computed only when ``config.uses_length`` (else False / 0: nothing reads them).
      gt_has_call [B] bool: the ground truth contains ``<tool_call>``.
      pd_has_call_tag [B] bool: the prediction contains ``<tool_call>`` or ``</tool_call>``.
      pd_ok [B] bool: the prediction's calls parsed (False -> min correctness).
      pd_overflow [B] bool: the prediction had more than C calls or A arguments in a call.
      gt_call_valid, pd_call_valid [B, C] bool: slot holds a call.
      gt_name, pd_name [B, C] int32: name ids.
      gt_call, pd_call [B, C] int32: whole-call ids (for exact-match tests).
      gt_key, gt_val, pd_key, pd_val [B, C, A] int32: argument key and value ids (dict order).
      gt_arg_valid, pd_arg_valid [B, C, A] bool.
      pd_bad_params [B, C] bool: (released_quirks) call without an object 'parameters'.
      pd_unhashable_name [B, C] bool: (released_quirks) name is a list/object.
    """

    format_ok: Any
    has_think: Any
    think_words: Any
    gt_has_call: Any
    pd_has_call_tag: Any
    pd_ok: Any
    pd_overflow: Any
    gt_call_valid: Any
    pd_call_valid: Any
    gt_name: Any
    pd_name: Any
    gt_call: Any
    pd_call: Any
    gt_key: Any
    gt_val: Any
    gt_arg_valid: Any
    pd_key: Any
    pd_val: Any
    pd_arg_valid: Any
    pd_bad_params: Any
    pd_unhashable_name: Any


# ------------------------------------------------------------------------ canonical values
_MAX_SHAPE = 64  # largest max_calls / max_args a config accepts


class _TooDeep(Exception):
    pass


_NUMERIC = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _num(v: float, lenient: bool, nan_ids, depth: int = 0) -> str:
    if isinstance(v, int):
        return f"n:{v}"
    if math.isnan(v):
        # Python: nan != nan, but containers compare items by identity first and json.loads
        # returns one shared NaN object, so [NaN] == [NaN] for decoded JSON.
        return f"nan#{next(nan_ids)}" if depth == 0 else "n:nan"
    if math.isinf(v):
        return "n:inf" if v > 0 else "n:-inf"
    if lenient:
        v = float(f"{v:.12g}")
    if v.is_integer():
        return f"n:{int(v)}"
    return f"f:{v!r}"


def _canon(v: Any, lenient: bool, nan_ids, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise _TooDeep
    t = type(v)  # exact-type fast paths for what json.loads returns; subclasses take the chain
    if t is str and not lenient:
        return "s:" + repr(v)  # repr is injective on str (and much cheaper than json.dumps)
    if t is int:
        return f"n:{v}"
    if t is dict:
        items = sorted(_canon(k, lenient, nan_ids, depth + 1) + ":" + _canon(x, lenient, nan_ids, depth + 1)
                       for k, x in v.items())
        return "{" + ",".join(items) + "}"
    if t is list:
        return "[" + ",".join([_canon(x, lenient, nan_ids, depth + 1) for x in v]) + "]"
    if v is None:
        return "N"
    if isinstance(v, bool):
        if lenient:
            return "b:true" if v else "b:false"
        return f"n:{int(v)}"
    if isinstance(v, (int, float)):
        return _num(v, lenient, nan_ids, depth)
    if isinstance(v, str):
        if lenient:
            t = v.strip()
            if len(t) <= 64 and _NUMERIC.fullmatch(t):
                try:
                    x = float(t)
                    if "." not in t and "e" not in t.lower():
                        return _num(int(t), lenient, nan_ids)
                    return _num(x, lenient, nan_ids, depth)
                except (ValueError, OverflowError):
                    pass
            if t.lower() in ("true", "false"):
                return f"b:{t.lower()}"
            return "s:" + repr(str(t))
        return "s:" + repr(str(v))
    if isinstance(v, complex):
        if v.imag == 0:
            return _num(v.real, lenient, nan_ids, depth)
        return f"c:{v!r}"
    if isinstance(v, list):
        return "[" + ",".join(_canon(x, lenient, nan_ids, depth + 1) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ",".join(_canon(x, lenient, nan_ids, depth + 1) for x in v) + ")"
    if isinstance(v, dict):  # keys equal under the equality collapse, the last value wins (dict)
        merged = {_canon(k, lenient, nan_ids, depth + 1): _canon(x, lenient, nan_ids, depth + 1)
                  for k, x in v.items()}
        return "{" + ",".join(sorted(k + ":" + x for k, x in merged.items())) + "}"
    if isinstance(v, (set, frozenset)):
        return "set{" + ",".join(sorted(_canon(x, lenient, nan_ids, depth + 1) for x in v)) + "}"
    if isinstance(v, bytes):
        return f"y:{v!r}"
    return f"o:{type(v).__name__}#{next(nan_ids)}"  # unknown types never compare equal


def canonical(value: Any, equality: str = "strict", *, _nan_ids=None) -> str:
    """Canonical string of a decoded value: equal strings <=> equal values under ``equality``.

    Each NaN (and value of an unknown type) gets a fresh token, so it equals nothing: within one
    :func:`encode_batch` call from a shared counter, otherwise from random bits.
    Raises ``ValueError`` for nesting deeper than ``parse.MAX_DEPTH``.
    """
    nan_ids = _nan_ids if _nan_ids is not None else _random_ids()
    try:
        return _canon(value, equality == "lenient", nan_ids, 0)
    except (_TooDeep, RecursionError):
        raise ValueError(f"value nested deeper than {MAX_DEPTH}") from None


def _random_ids():
    while True:
        yield secrets.token_hex(8)


@functools.lru_cache(maxsize=1 << 16)
def _hash32(s: str) -> int:
    """int32 of the 4-byte BLAKE2b digest of ``s`` (memoised: keys and common values repeat)."""
    digest = hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "little", signed=True)


def value_id(value: Any, equality: str = "strict", *, _nan_ids=None) -> int:
    """32-bit id of ``canonical(value, equality)`` (int32 range)."""
    return _hash32(canonical(value, equality, _nan_ids=_nan_ids))


# ------------------------------------------------------------------------ format / length
_PATTERNS = {
    "response": re.compile(r"^<think>.*?</think>\n<response>.*?</response>$", re.DOTALL),
    "tool_call": re.compile(r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>$", re.DOTALL),
    "both": re.compile(
        r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>\n<response>.*?</response>$", re.DOTALL),
    "neither": re.compile(r"^<think>.*?</think>$", re.DOTALL),
}
_REQUIRED_ONCE = {
    "response": ("<response>", "</response>"),
    "tool_call": ("<tool_call>", "</tool_call>"),
    "both": ("<tool_call>", "</tool_call>", "<response>", "</response>"),
    "neither": (),
}


def _gt_kind(ground_truth: str) -> str:
    has_r, has_t = "<response>" in ground_truth, "<tool_call>" in ground_truth
    if has_r and not has_t:
        return "response"
    if has_t and not has_r:
        return "tool_call"
    return "both" if has_t else "neither"


def format_ok(text: str, ground_truth: str) -> bool:
    """ToolRL format reward test on the *stripped* assistant text.

    The pattern depends on the tags of the ground truth (response only / tool_call only / both /
    neither) and each required tag must occur exactly once. The tag counts are checked first;
    with each required tag unique, the lazy DOTALL patterns match in linear time.
    """
    return _format_ok_kind(text, _gt_kind(ground_truth))


def _format_ok_kind(text: str, kind: str) -> bool:
    if any(text.count(tag) != 1 for tag in _REQUIRED_ONCE[kind]):
        return False
    return _PATTERNS[kind].search(text) is not None


def think_word_count(text: str) -> tuple[bool, int]:
    """(has both think tags, whitespace words of ``text.split("<think>")[-1].split("</think>")[0]``)."""
    if "<think>" not in text or "</think>" not in text:
        return False, 0
    seg = text[text.rfind("<think>") + len("<think>"):]
    cut = seg.find("</think>")
    if cut >= 0:
        seg = seg[:cut]
    return True, len(seg.split())


# ------------------------------------------------------------------------ calls
class _Call(NamedTuple):
    name_id: int
    call_id: int
    keys: tuple[int, ...]
    vals: tuple[int, ...]
    bad_params: bool
    unhashable_name: bool


_C_NAME = _canon("name", False, None, 1)
_C_PARAMETERS = _canon("parameters", False, None, 1)


class EncodedGroundTruth(NamedTuple):
    """A parsed ground truth: whether it has calls and the encoded calls."""

    has_call: bool
    calls: tuple[_Call, ...]


def _top_id(v: Any, c: str, nan_ids) -> int:
    """Id of a call's name or argument value: a bare NaN compared with == never matches (a fresh
    id); inside a container it is the shared constant (already in ``c``)."""
    if isinstance(v, float) and math.isnan(v):
        return _hash32(f"nan#{next(nan_ids)}")
    return _hash32(c)


def _encode_call(name: Any, params: Any, whole: Any, equality: str, nan_ids) -> _Call:
    """Ids of one call. ``whole=None`` means the whole call is ``{"name": name, "parameters": params}``,
    whose canonical form is then assembled from the parts' (each value canonicalised once).
    Raises ``ValueError`` for a value nested deeper than ``MAX_DEPTH``."""
    try:
        return _encode_call_parts(name, params, whole, equality == "lenient", nan_ids)
    except (_TooDeep, RecursionError):
        raise ValueError(f"value nested deeper than {MAX_DEPTH}") from None


def _encode_call_parts(name: Any, params: Any, whole: Any, lenient: bool, nan_ids) -> _Call:
    bad = not isinstance(params, dict)
    try:
        hash(name)
        unhashable = False
    except TypeError:
        unhashable = True
    # Inside a whole call object (a dict), name and parameters sit one level deeper: canonicalise
    # the parts at that depth and assemble the whole from them (each value visited once; the
    # depth limit fails exactly when canonicalising the whole object would).
    from_parts = whole is None or type(whole) is dict
    d = 1 if whole is None else 2
    c_name = _canon(name, lenient, nan_ids, d)
    keys: tuple[int, ...] = ()
    vals: tuple[int, ...] = ()
    if not bad:
        # Keys that are equal under the equality (lenient: " a" and "a") are one key, as in a
        # dict of the normalised values: first position, last value. Counted twice they would
        # push the key Jaccard above 1 and the reward out of its range.
        merged: dict[str, tuple[str, Any]] = {}
        for k, v in params.items():
            merged[_canon(k, lenient, nan_ids, d + 1)] = (_canon(v, lenient, nan_ids, d + 1), v)
        cks = list(merged)
        cvs = [c for c, _ in merged.values()]
        keys = tuple(map(_hash32, cks))
        vals = tuple([_top_id(v, c, nan_ids) for c, v in merged.values()])
        c_params = "{" + ",".join(sorted([k + ":" + v for k, v in zip(cks, cvs)])) + "}"
    elif from_parts and (whole is None or "parameters" in whole):
        c_params = _canon(params, lenient, nan_ids, d)
    if whole is None:
        c_whole = "{" + ",".join(sorted([_C_NAME + ":" + c_name, _C_PARAMETERS + ":" + c_params])) + "}"
    elif from_parts:
        items = []
        for k, v in whole.items():
            ck = _canon(k, lenient, nan_ids, d)
            if k == "name" and type(k) is str:
                items.append(ck + ":" + c_name)
            elif k == "parameters" and type(k) is str:
                items.append(ck + ":" + c_params)
            else:
                items.append(ck + ":" + _canon(v, lenient, nan_ids, d))
        c_whole = "{" + ",".join(sorted(items)) + "}"
    else:
        c_whole = _canon(whole, lenient, nan_ids, 1)
    return _Call(_top_id(name, c_name, nan_ids), _hash32(c_whole), keys, vals, bad, unhashable)


def _json_lines(block: str) -> list | None:
    try:
        return [json.loads(line) for line in block.strip().split("\n")]
    except (ValueError, RecursionError, MemoryError):
        return None


def parse_ground_truth(ground_truth: str, config: ToolRLRewardConfig, *, _nan_ids=None) -> EncodedGroundTruth:
    """Encode a ToolRL target text. Raises DataError when its ``<tool_call>`` block is unreadable.

    The block is read by the released rule (first ``<tool_call>``); when that fails (e.g. the
    ``<think>`` text mentions the tag, where the released code would crash) the last block is used.
    """
    if not isinstance(ground_truth, str):
        raise DataError(f"ground_truth must be a string, got {type(ground_truth).__name__}")
    nan_ids = _nan_ids if _nan_ids is not None else itertools.count()
    if "<tool_call>" not in ground_truth:
        return EncodedGroundTruth(False, ())
    raw = None
    block = first_tool_call_block(ground_truth)
    if block is not None:
        raw = _json_lines(block)
    if raw is None:
        i = ground_truth.rfind("<tool_call>")
        j = ground_truth.find("</tool_call>", i)
        if j > i:
            raw = _json_lines(ground_truth[i + len("<tool_call>"): j])
    if raw is None:
        raise DataError("ground truth <tool_call> block is not JSON Lines of {\"name\", \"parameters\"} objects")
    calls = []
    for k, obj in enumerate(raw, 1):
        if not isinstance(obj, dict) or "name" not in obj or not isinstance(obj.get("parameters"), dict):
            raise DataError(f"ground truth call {k} needs 'name' and an object 'parameters'")
        whole = obj if config.released_quirks else None
        try:
            calls.append(_encode_call(obj["name"], obj["parameters"], whole, config.equality, nan_ids))
        except ValueError as e:
            raise DataError(f"ground truth call {k}: {e}") from None
    return EncodedGroundTruth(True, tuple(calls))


def _encode_prediction(text: str, config: ToolRLRewardConfig, nan_ids,
                       parsed: ParsedCompletion | None = None,
                       max_calls: int | None = None) -> tuple[bool, tuple[_Call, ...], str]:
    """(ok, calls, reason) for a stripped completion text (``parsed``: its parse, if done already).

    At most ``max_calls + 1`` calls (default ``config.max_calls``) are encoded: one more than
    fits already overflows, so a completion of 10,000 calls costs no more than one of 9.
    """
    cap = (config.max_calls if max_calls is None else max_calls) + 1
    if len(text) > config.max_chars:
        return False, (), f"completion longer than max_chars={config.max_chars}"
    if config.released_quirks:
        block = first_tool_call_block(text)
        if block is None:
            return False, (), "missing <tool_call> or </tool_call>"
        raw = _json_lines(block)
        if raw is None:
            return False, (), "a <tool_call> line is not JSON"
        calls = []
        for k, obj in enumerate(raw[:cap], 1):
            if not isinstance(obj, dict) or "name" not in obj:
                return False, (), f"call {k} is not an object with 'name'"
            try:
                calls.append(_encode_call(obj["name"], obj.get("parameters"), obj, config.equality, nan_ids))
            except ValueError as e:
                return False, (), f"call {k}: {e}"
        return True, tuple(calls), ""
    if parsed is None:
        parsed = parse_completion(text, config.syntax, max_chars=config.max_chars)
    if not parsed.has_tool_call:
        return False, (), "no <tool_call>"
    if not parsed.ok:
        return False, (), parsed.reason
    calls = []
    for k, c in enumerate(parsed.tool_calls[:cap], 1):
        try:
            calls.append(_encode_call(c.name, c.arguments, None, config.equality, nan_ids))
        except ValueError as e:
            return False, (), f"call {k}: {e}"
    return True, tuple(calls), ""


class _CallTable:
    """Flat (sample, call, argument) entries of encoded calls, written to the arrays at once."""

    def __init__(self):
        self.call_at: list[tuple[int, int]] = []  # (b, c)
        self.call_ids: list[tuple[int, int, bool, bool]] = []  # (name, call, bad, unhashable)
        self.arg_at: list[tuple[int, int, int]] = []  # (b, c, a)
        self.arg_ids: list[tuple[int, int]] = []  # (key, value)

    def add(self, b: int, calls: Sequence[_Call], C: int, A: int) -> None:
        for c, call in enumerate(calls[:C]):
            self.call_at.append((b, c))
            self.call_ids.append((call.name_id, call.call_id, call.bad_params, call.unhashable_name))
            n = min(len(call.keys), A)
            self.arg_at.extend((b, c, a) for a in range(n))
            self.arg_ids.extend(zip(call.keys[:n], call.vals[:n]))

    def write(self, out: dict, side: str) -> None:
        if self.call_at:
            bc = tuple(np.asarray(self.call_at, np.int64).T)
            ids = np.asarray(self.call_ids, np.int64)
            out[f"{side}_call_valid"][bc] = True
            out[f"{side}_name"][bc] = ids[:, 0]
            out[f"{side}_call"][bc] = ids[:, 1]
            if side == "pd":
                out["pd_bad_params"][bc] = ids[:, 2].astype(bool)
                out["pd_unhashable_name"][bc] = ids[:, 3].astype(bool)
        if self.arg_at:
            bca = tuple(np.asarray(self.arg_at, np.int64).T)
            kv = np.asarray(self.arg_ids, np.int64)
            out[f"{side}_key"][bca] = kv[:, 0]
            out[f"{side}_val"][bca] = kv[:, 1]
            out[f"{side}_arg_valid"][bca] = True


def _gather_rows(out: dict, prefix: str, table: _CallTable, num_rows: int, row_of_sample: np.ndarray) -> None:
    """``out[prefix*][b] = table row row_of_sample[b]`` for the per-call arrays (rows < 0 stay 0)."""
    side = prefix[:-1]
    keys = [k for k in out if k.startswith(prefix) and out[k].ndim > 1]
    rows = {k: np.zeros((num_rows + 1,) + out[k].shape[1:], out[k].dtype) for k in keys}
    table.write(rows, side)  # row num_rows (index -1) stays empty
    for k in keys:
        out[k] = rows[k][row_of_sample]


def encode_batch(
    completions: Sequence[str | ParsedCompletion],
    ground_truths: Sequence[str],
    config: ToolRLRewardConfig,
    *,
    return_reasons: bool = False,
):
    """Encode B (completion, ground truth) pairs into a :class:`ToolCallBatch` of numpy arrays.

    Args:
      completions: assistant texts (stripped here, as the released code strips them), or their
        :func:`~toolrl_jax.toolcalls.parse.parse_completion` results when the caller (e.g. the
        rollout engine) parsed them already: their calls are reused, not parsed again (with
        ``released_quirks`` the raw text is re-read by the released rule).
      ground_truths: ToolRL target texts (each distinct text is parsed once per call).
      config: shapes (max_calls, max_args), equality, syntax, released_quirks.
      return_reasons: also return a list of per-sample parse-failure reasons ('' when fine).

    Raises:
      DataError: a ground truth is unreadable, or the two lists differ in length.
      ConfigError: a ground truth has more calls / arguments than max_calls / max_args.
    """
    if len(completions) != len(ground_truths):
        raise DataError(f"{len(completions)} completions but {len(ground_truths)} ground truths")
    B, C, A = len(completions), config.max_calls, config.max_args
    out = {
        "format_ok": np.zeros(B, bool), "has_think": np.zeros(B, bool),
        "think_words": np.zeros(B, np.int32), "gt_has_call": np.zeros(B, bool),
        "pd_has_call_tag": np.zeros(B, bool), "pd_ok": np.zeros(B, bool),
        "pd_overflow": np.zeros(B, bool),
    }
    for side in ("gt", "pd"):
        out[f"{side}_call_valid"] = np.zeros((B, C), bool)
        out[f"{side}_name"] = np.zeros((B, C), np.int32)
        out[f"{side}_call"] = np.zeros((B, C), np.int32)
        out[f"{side}_key"] = np.zeros((B, C, A), np.int32)
        out[f"{side}_val"] = np.zeros((B, C, A), np.int32)
        out[f"{side}_arg_valid"] = np.zeros((B, C, A), bool)
    out["pd_bad_params"] = np.zeros((B, C), bool)
    out["pd_unhashable_name"] = np.zeros((B, C), bool)
    reasons = [""] * B
    # Each distinct ground truth and each distinct prediction text is encoded once into a row of
    # a table; samples then gather their rows (identical completions are common in a GRPO group).
    gt_rows: dict[str, int] = {}
    gt_table, gt_of_sample = _CallTable(), np.zeros(B, np.int64)
    gt_has_call: list[bool] = []
    gt_kind: list[str] = []
    pd_rows: dict[str, int] = {}
    pd_table, pd_of_sample = _CallTable(), np.full(B, -1, np.int64)
    pd_result: list[tuple[bool, bool, str]] = []  # (ok, overflow, reason) per pd row
    fmt_memo: dict[tuple[str, str], bool] = {}
    nan_ids = itertools.count()
    for b, (text, gt) in enumerate(zip(completions, ground_truths)):
        if not isinstance(gt, str):
            raise DataError(f"sample {b}: ground_truth must be a string")
        g = gt_rows.get(gt)
        if g is None:
            egt = parse_ground_truth(gt, config, _nan_ids=nan_ids)
            if len(egt.calls) > C or any(len(c.keys) > A for c in egt.calls):
                raise ConfigError(f"sample {b}: ground truth has {len(egt.calls)} calls / "
                                  f"{max((len(c.keys) for c in egt.calls), default=0)} arguments, more than "
                                  f"max_calls={C} / max_args={A}; raise them in the reward config")
            g = gt_rows[gt] = len(gt_has_call)
            gt_has_call.append(egt.has_call)
            gt_kind.append(_gt_kind(gt))
            gt_table.add(g, egt.calls, C, A)
        gt_of_sample[b] = g
        parsed = None
        if isinstance(text, ParsedCompletion):
            same = text.syntax in ("", config.syntax) and len(text.tool_call_blocks) <= 1
            parsed = text if (config.syntax == "auto" or same) else None
            text = text.text
        text = text.strip() if isinstance(text, str) else ""
        fkey = (text, gt_kind[g])
        fmt = fmt_memo.get(fkey)
        if fmt is None:
            fmt = fmt_memo[fkey] = _format_ok_kind(text, gt_kind[g])
        out["format_ok"][b] = fmt
        if config.uses_length:  # only the length reward reads the think word count
            out["has_think"][b], out["think_words"][b] = think_word_count(text)
        out["pd_has_call_tag"][b] = "<tool_call>" in text or "</tool_call>" in text
        if not gt_has_call[g]:
            continue  # correctness does not read the prediction's calls
        p = pd_rows.get(text) if parsed is None else None
        if p is None:
            ok, calls, reason = _encode_prediction(text, config, nan_ids, parsed)
            overflow = ok and (len(calls) > C or any(len(c.keys) > A for c in calls))
            if overflow:
                reason = f"prediction has more than max_calls={C} calls or max_args={A} arguments"
            p = len(pd_result)
            if parsed is None:
                pd_rows[text] = p
            pd_result.append((ok, overflow, reason))
            if ok:
                pd_table.add(p, calls, C, A)
        pd_of_sample[b] = p
        out["pd_ok"][b], out["pd_overflow"][b], reasons[b] = pd_result[p]
    _gather_rows(out, "pd_", pd_table, len(pd_result), pd_of_sample)
    _gather_rows(out, "gt_", gt_table, len(gt_has_call), gt_of_sample)
    if B:
        out["gt_has_call"] = np.asarray(gt_has_call, bool)[gt_of_sample]
    batch = ToolCallBatch(**out)
    return (batch, reasons) if return_reasons else batch


def required_shape(completions: Sequence[str], ground_truths: Sequence[str],
                   config: ToolRLRewardConfig) -> tuple[int, int]:
    """(calls, arguments) that ``max_calls`` / ``max_args`` need so that nothing overflows.

    Parses every text (ground truths that fail to parse are ignored here; encode reports them).
    """
    calls, args = 1, 1
    nan_ids = itertools.count()
    for text, gt in zip(completions, ground_truths):
        try:
            egt = parse_ground_truth(gt, config, _nan_ids=nan_ids)
        except DataError:
            continue
        found = list(egt.calls)
        if egt.has_call and isinstance(text, str):
            ok, pcalls, _ = _encode_prediction(text.strip(), config, nan_ids, max_calls=_MAX_SHAPE)
            if ok:
                found_p = list(pcalls)
                calls = max(calls, len(found_p))
                args = max([args] + [len(c.keys) for c in found_p])
        calls = max(calls, len(found))
        args = max([args] + [len(c.keys) for c in found])
    return calls, args
