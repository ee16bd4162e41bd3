"""Plain-Python reference of the ToolRL reward, written from the released code's rules.

This is deliberately *not* the jitted path: it works on the decoded JSON objects with Python
``==`` (or a separate lenient comparator), walks the released code's control flow (including
where it raises and is caught), and computes floats in float64. Tests and ``toolrl-jax reward
--check`` compare the jitted reward against it.

Released code: github.com/qiancheng0/ToolRL, ``verl/utils/reward_score/rlla.py`` (Apache-2.0);
the rules are restated in ``docs/methods.md`` section 1. Extensions beyond the released code (optimal
matching, lenient equality, the strict call schema, the paper-form dynamic schedule and the
'no_call' response-only rule) are implemented here independently as well.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

from toolrl_jax.errors import DataError

__all__ = ["lenient_normalize", "reference_reward"]


# --------------------------------------------------------------------------- equality
class _Bool:
    __slots__ = ("v",)

    def __init__(self, v: bool):
        self.v = v

    def __eq__(self, other):
        return isinstance(other, _Bool) and other.v == self.v

    def __hash__(self):
        return hash(("_Bool", self.v))


def lenient_normalize(v: Any) -> Any:
    """Map a decoded value to one whose ``==`` is the lenient equality (see config docs)."""
    if isinstance(v, bool):
        return _Bool(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return v
        return float(f"{v:.12g}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        t = v.strip()
        if re.fullmatch(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", t) and len(t) <= 64:
            try:
                if "." not in t and "e" not in t.lower():
                    return int(t)
                return lenient_normalize(float(t))
            except (ValueError, OverflowError):
                pass
        if t.lower() in ("true", "false"):
            return _Bool(t.lower() == "true")
        return ("str", t)
    if isinstance(v, list):
        return [lenient_normalize(x) for x in v]
    if isinstance(v, dict):
        return {lenient_normalize(k): lenient_normalize(x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------- pieces
def _match_score(list1, list2, finegrained: bool) -> float:
    if list1 == list2:
        return 1.0
    if finegrained:
        return 0.0
    if not list1 or not list2:
        return 0.0
    count1, count2 = Counter(list1), Counter(list2)
    intersection = sum(min(count1[k], count2[k]) for k in count1.keys() & count2.keys())
    max_possible = len(list1) + len(list2) - intersection
    return intersection / max_possible if max_possible > 0 else 0.0


def _ranges(variant: str, step: int, fmt, corr, *, dynamic_code_steps=150, total_steps=105,
            two_stage_step=30):
    f_lo, f_hi = fmt
    c_lo, c_hi = corr
    if variant == "equal_max":
        c_lo, c_hi = -f_hi, f_hi
    if variant == "two_stage":
        if step >= two_stage_step:
            f_hi, f_lo = f_hi / 2, f_lo / 2
        else:
            c_hi, c_lo = c_hi / 3, c_lo / 3
    if variant in ("dynamic", "dynamic_code"):
        if variant == "dynamic_code":
            f_hi = 2 - (2 - f_hi) * step / dynamic_code_steps
            f_lo = -2 + (2 + f_lo) * step / dynamic_code_steps
            c_hi = (c_hi - 2) * step / dynamic_code_steps + 2
            c_lo = (c_lo + 2) * step / dynamic_code_steps - 2
        else:
            p = min(max(step / total_steps, 0.0), 1.0)
            f_hi = 2 - (2 - f_hi) * p
            f_lo = -2 + (2 + f_lo) * p
            c_hi = (c_hi - 2) * p + 2
            c_lo = (c_lo + 2) * p - 2
        f_hi = max(f_hi, 1.0)
        f_lo = min(f_lo, -1.0)
        c_hi = min(c_hi, 3.0)
        c_lo = max(c_lo, -3.0)
    return f_lo, f_hi, c_lo, c_hi


def _format(response: str, ans: str) -> bool:
    if "<response>" in ans and "<tool_call>" not in ans:
        pattern = r"^<think>.*?</think>\n<response>.*?</response>$"
        return bool(re.search(pattern, response, re.DOTALL)) and response.count("<response>") == 1 \
            and response.count("</response>") == 1
    if "<response>" not in ans and "<tool_call>" in ans:
        pattern = r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>$"
        return bool(re.search(pattern, response, re.DOTALL)) and response.count("<tool_call>") == 1 \
            and response.count("</tool_call>") == 1
    if "<response>" in ans and "<tool_call>" in ans:
        pattern = r"^<think>.*?</think>\n<tool_call>\n.*?\n</tool_call>\n<response>.*?</response>$"
        return (bool(re.search(pattern, response, re.DOTALL)) and response.count("<tool_call>") == 1
                and response.count("</tool_call>") == 1 and response.count("<response>") == 1
                and response.count("</response>") == 1)
    return bool(re.search(r"^<think>.*?</think>$", response, re.DOTALL))


def _length(response: str, variant: str, step: int, length_words: int, schedule) -> float:
    if variant == "dynamic_length":
        start, end, steps = schedule
        max_reward_len = (end - start) * step / steps + start
    else:
        max_reward_len = length_words
    if "<think>" not in response or "</think>" not in response:
        return 0.0
    think = response.split("<think>")[-1].split("</think>")[0].strip()
    reward = round(len(think.split()) / max_reward_len, 2)
    return min(reward, 1.0)


def _gt_calls(ans: str) -> list:
    def lines(block):
        return [json.loads(t) for t in block.strip().split("\n")]

    try:
        return lines(ans.split("<tool_call>")[1].split("</tool_call>")[0])
    except (ValueError, IndexError):
        pass
    i = ans.rfind("<tool_call>")
    j = ans.find("</tool_call>", i)
    try:
        return lines(ans[i + len("<tool_call>"): j])
    except ValueError:
        raise DataError("ground truth <tool_call> block is not JSON Lines") from None


def _best_total(gt_tools, pd_tools, pair_fn) -> float:
    """Exhaustive maximum-weight matching (small inputs): each g takes one unused p or none."""
    best = 0.0

    def rec(i, used, acc):
        nonlocal best
        if i == len(gt_tools):
            best = max(best, acc)
            return
        rec(i + 1, used, acc)
        for j in range(len(pd_tools)):
            if j in used:
                continue
            s = pair_fn(gt_tools[i], pd_tools[j])
            if s is not None and s > 0:
                rec(i + 1, used | {j}, acc + s)

    rec(0, frozenset(), 0.0)
    return best


def _tool_call_reward(gt_tools, pd_tools, hi, lo, *, variant, matching) -> float:
    """The released ``compute_tool_call_reward`` (+ optimal matching). May raise like it."""
    if gt_tools == pd_tools:
        return hi
    if variant == "coarse":
        return lo
    finegrained = variant == "finegrained"
    intermediate = variant == "intermediate"
    gt_names = [tool["name"] for tool in gt_tools]
    pd_names = [tool["name"] for tool in pd_tools]
    score = _match_score(list(gt_names), list(pd_names), finegrained)

    local_max_possible = 1.0
    for gt_tool in gt_tools:
        local_max_possible += 1.0 if intermediate else 1.0 + len(gt_tool["parameters"])

    def pair(gt_tool, pd_tool):
        if pd_tool["name"] != gt_tool["name"]:
            return None
        if intermediate:
            return 1.0 if gt_tool == pd_tool else None
        gt_params, pd_params = gt_tool["parameters"], pd_tool["parameters"]
        param_score = _match_score(list(gt_params.keys()), list(pd_params.keys()), finegrained)
        correctness = sum(1.0 for k, v in gt_params.items() if k in pd_params and pd_params[k] == v)
        return param_score + correctness

    if matching == "greedy":
        used = set()
        for gt_tool in gt_tools:
            best, best_score, best_index = None, 0.0, -1
            for i, pd_tool in enumerate(pd_tools):
                if i in used:
                    continue
                s = pair(gt_tool, pd_tool)
                if s is None:
                    continue
                if intermediate:
                    best, best_index, best_score = pd_tool, i, 1.0
                    break
                if s > best_score:
                    best, best_score, best_index = pd_tool, s, i
            if best:
                used.add(best_index)
                score += best_score
    else:
        # touch every same-name pair first so that malformed calls raise as the released code's would
        for g in gt_tools:
            for p in pd_tools:
                pair(g, p)
        score += _best_total(gt_tools, pd_tools, pair)
    return (hi - lo) * score / local_max_possible + lo


def reference_reward(
    completion: str,
    ground_truth: str,
    step: int = 0,
    *,
    variant: str = "original",
    matching: str = "greedy",
    equality: str = "strict",
    released_quirks: bool = True,
    response_only: str = "zero",
    format_range=(0.0, 1.0),
    correctness_range=(-3.0, 3.0),
    length_words: int = 512,
    length_schedule=(384, 640, 105),
    dynamic_code_steps: int = 150,
    total_steps: int = 105,
    two_stage_step: int = 30,
) -> tuple[float, float, float, float]:
    """(total, format, correctness, length) of one completion, float64, released-code rules.

    Defaults reproduce the released code (``ToolRLRewardConfig.compat_toolrl()``); pass the
    fields of a :class:`ToolRLRewardConfig` to mirror any other setting.
    """
    response = completion.strip()
    ans = ground_truth
    f_lo, f_hi, c_lo, c_hi = _ranges(variant, step, format_range, correctness_range,
                                     dynamic_code_steps=dynamic_code_steps, total_steps=total_steps,
                                     two_stage_step=two_stage_step)
    fmt = f_hi if _format(response, ans) else f_lo

    if "<tool_call>" not in ans:
        if response_only == "zero":
            corr = 0.0
        else:
            no_call = "<tool_call>" not in response and "</tool_call>" not in response
            corr = c_hi if no_call else c_lo
    else:
        gt_tools = _gt_calls(ans)
        corr = c_lo
        try:
            assert "<tool_call>" in response
            assert "</tool_call>" in response
            pd_tools = response.split("<tool_call>")[1].split("</tool_call>")[0].strip().split("\n")
            pd_tools = [json.loads(tool) for tool in pd_tools]
            if not released_quirks:
                for t in pd_tools:
                    if not (isinstance(t, dict) and isinstance(t.get("name"), str)
                            and isinstance(t.get("parameters"), dict)):
                        raise ValueError("malformed call")
                gt_tools = [{"name": t["name"], "parameters": t["parameters"]} for t in gt_tools]
                pd_tools = [{"name": t["name"], "parameters": t["parameters"]} for t in pd_tools]
            if equality == "lenient":  # top-level keys stay as they are, everything inside normalised
                gt_tools = [_lenient_call(t) for t in gt_tools]
                pd_tools = [_lenient_call(t) for t in pd_tools]
            corr = _tool_call_reward(gt_tools, pd_tools, c_hi, c_lo, variant=variant, matching=matching)
        except Exception:  # noqa: BLE001 - the released code's bare except
            corr = c_lo

    length = 0.0
    if variant in ("length", "dynamic_length"):
        length = _length(response, variant, step, length_words, length_schedule)
    return fmt + corr + length, fmt, corr, length


def _lenient_call(t):
    if not isinstance(t, dict):
        return lenient_normalize(t)
    return {k: lenient_normalize(v) for k, v in t.items()}
