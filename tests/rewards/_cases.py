"""Generated (completion, ground truth) cases from the real ToolRL data, with perturbations.

Ground truths: ``rlla_sft.json`` outputs (real R1 reasoning in <think>) and the
``rlla_test.parquet`` targets. Completions: the ground truth itself or a perturbation of it
(reordered, dropped, extra, duplicated calls; wrong names, keys, values, types; missing think;
pretty-printed / broken JSON; response instead of calls; malformed calls that hit the released
code's lazy failure rules; think blocks whose word counts sit on the length reward's ties).
"""

from __future__ import annotations

import copy
import json
import pathlib
import random

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "toolrl"


def load_ground_truths(data_dir: pathlib.Path = DATA) -> list[str]:
    import pandas as pd

    sft = json.loads((data_dir / "rlla_sft.json").read_text())
    test = pd.read_parquet(data_dir / "rlla_test.parquet")
    return [r["output"] for r in sft] + [r["ground_truth"] for r in test["reward_model"]]


def _split(gt: str):
    """(think_text, calls or None, response_text or None) using the last <tool_call> block."""
    think = gt.split("<think>")[-1].split("</think>")[0] if "<think>" in gt else " ok "
    calls = None
    if "<tool_call>" in gt:
        i = gt.rfind("<tool_call>")
        j = gt.find("</tool_call>", i)
        calls = [json.loads(t) for t in gt[i + 11: j].strip().split("\n")]
    resp = None
    if "<response>" in gt:
        resp = gt.split("<response>")[-1].split("</response>")[0]
    return think, calls, resp


def _render(think, lines, resp=None, *, think_tags=True):
    parts = []
    if think is not None:
        parts.append(f"<think>{think}</think>" if think_tags else think)
    if lines is not None:
        parts.append("<tool_call>\n" + "\n".join(lines) + "\n</tool_call>")
    if resp is not None:
        parts.append(f"<response>{resp}</response>")
    return "\n".join(parts)


def _dumps(calls):
    return [json.dumps(c) for c in calls]


def _alt_value(v, rng):
    if isinstance(v, bool):
        return rng.choice([not v, int(v), str(v).lower()])
    if isinstance(v, int):
        return rng.choice([str(v), float(v), v + 1, bool(v) if v in (0, 1) else -v])
    if isinstance(v, float):
        return rng.choice([str(v), int(v), v * 2, float("nan")])
    if isinstance(v, str):
        if v.strip().lstrip("-").isdigit():
            return rng.choice([int(v), float(v), v + "0", " " + v])
        return rng.choice([v + "x", v.upper() if v.upper() != v else v + "!", 1, ""])
    if isinstance(v, list):
        return rng.choice([list(reversed(v)) if len(v) > 1 else v + [1], v[:-1], {"a": v}])
    if isinstance(v, dict):
        w = dict(v)
        w["extra"] = 1
        return w
    return "changed"


def _perturb(calls, rng, pool):
    """One random perturbation of a call list -> list of JSON lines (or raw lines)."""
    calls = copy.deepcopy(calls)
    kinds = ["reorder", "drop", "extra", "dup", "name", "key", "value", "type", "pretty", "broken",
             "no_params", "params_list", "name_list", "non_dict", "extra_top", "key_order", "nan",
             "blank_line", "drop_key", "add_key", "empty_params", "swap_values", "multi",
             "py_equal", "py_equal"]
    kind = rng.choice(kinds)
    c = rng.randrange(len(calls))
    call = calls[c]
    params = call["parameters"]
    if kind == "reorder" and len(calls) > 1:
        rng.shuffle(calls)
    elif kind == "drop" and len(calls) > 1:
        calls.pop(c)
    elif kind == "extra":
        calls.insert(rng.randrange(len(calls) + 1), copy.deepcopy(rng.choice(pool)))
    elif kind == "dup":
        calls.insert(c, copy.deepcopy(call))
    elif kind == "name":
        call["name"] = call["name"] + "_v2"
    elif kind == "key" and params:
        k = rng.choice(list(params))
        params[k + "_"] = params.pop(k)
    elif kind in ("value", "type") and params:
        k = rng.choice(list(params))
        params[k] = _alt_value(params[k], rng)
    elif kind == "pretty":
        return [json.dumps(x, indent=2) for x in calls]
    elif kind == "broken":
        lines = _dumps(calls)
        lines[c] = lines[c][: max(1, len(lines[c]) // 2)]
        return lines
    elif kind == "no_params":
        del call["parameters"]
    elif kind == "params_list":
        call["parameters"] = list(params.values())
    elif kind == "name_list":
        call["name"] = [call["name"]]
    elif kind == "non_dict":
        lines = _dumps(calls)
        lines[c] = rng.choice(["[1, 2]", '"text"', "null", "3"])
        return lines
    elif kind == "extra_top":
        call["id"] = 1
    elif kind == "key_order" and len(params) > 1:
        items = list(params.items())
        rng.shuffle(items)
        call["parameters"] = dict(items)
    elif kind == "py_equal":  # values Python's == treats as equal: 1 == 1.0 == True
        for k, v in params.items():
            if isinstance(v, bool):
                params[k] = rng.choice([int(v), float(v)])
            elif isinstance(v, int):
                params[k] = rng.choice([float(v)] + ([bool(v)] if v in (0, 1) else []))
            elif isinstance(v, str) and v in ("0", "1"):
                params[k] = rng.choice([int(v), bool(int(v)), float(v)])
        if not any(isinstance(v, (bool, int, float)) for v in params.values()):
            params["flag"] = rng.choice([True, 1, 1.0, 0, False])
    elif kind == "nan" and params:
        params[rng.choice(list(params))] = float("nan")
    elif kind == "blank_line":
        lines = _dumps(calls)
        lines.insert(rng.randrange(len(lines) + 1), "")
        return lines
    elif kind == "drop_key" and params:
        params.pop(rng.choice(list(params)))
    elif kind == "add_key":
        params["unexpected"] = rng.choice(["v", 0, None])
    elif kind == "empty_params":
        call["parameters"] = {}
    elif kind == "swap_values" and len(params) > 1:
        ks = list(params)
        a, b = rng.sample(ks, 2)
        params[a], params[b] = params[b], params[a]
    elif kind == "multi":
        lines = None
        for _ in range(rng.randint(2, 3)):
            lines = _perturb(calls, rng, pool) if lines is None else lines
        return lines
    return _dumps(calls)


def generate_cases(n: int = 600, seed: int = 0, data_dir: pathlib.Path = DATA) -> list[tuple[str, str]]:
    """``n`` (completion, ground_truth) pairs; deterministic for a seed."""
    rng = random.Random(seed)
    gts = load_ground_truths(data_dir)
    pool = []
    for gt in gts:
        _, calls, _ = _split(gt)
        pool.extend(calls or [])
    cases: list[tuple[str, str]] = []
    # Think lengths on the length reward's half-cent ties (L = 512 fixed; released schedule at
    # steps 15, 30, 60, 105) and around them.
    tie_words = [64, 192, 320, 448, 48, 112, 176, 240, 304, 368, 432, 47, 49, 10, 600, 0]
    order = list(range(len(gts)))
    rng.shuffle(order)
    i = 0
    while len(cases) < n:
        gt = gts[order[i % len(order)]]
        i += 1
        think, calls, resp = _split(gt)
        r = rng.random()
        if calls is None:  # response-only ground truth
            choice = rng.choice(["same", "call", "no_think", "both", "garbage", "close_tag"])
            if choice == "same":
                comp = gt
            elif choice == "call":
                comp = _render(think, _dumps([rng.choice(pool)]))
            elif choice == "no_think":
                comp = _render(None, None, resp or "ok")
            elif choice == "both":
                comp = _render(think, _dumps([rng.choice(pool)]), resp or "ok")
            elif choice == "close_tag":
                comp = _render(think, None, resp or "ok") + "\n</tool_call>"
            else:
                comp = "<think> hmm"
            cases.append((comp, gt))
            continue
        if r < 0.12:
            comp = gt
        elif r < 0.20:
            comp = _render(" " + " ".join(["w"] * rng.choice(tie_words)) + " ", _dumps(calls), resp)
        elif r < 0.25:
            comp = _render(None, _dumps(calls), resp)  # missing think
        elif r < 0.30:
            comp = _render(think, None, resp or "Here is the answer.")  # response instead of calls
        elif r < 0.33:
            comp = _render(think, _dumps(calls), resp) + "\n<tool_call>\n" + _dumps(calls)[0] + "\n</tool_call>"
        elif r < 0.35:
            comp = "<think>" + think + "</think>\n<tool_call>\n" + "\n".join(_dumps(calls))  # truncated
        elif r < 0.37:
            comp = _render(think, _dumps(calls), resp).replace("\n", "\r\n")
        else:
            comp = _render(think, _perturb(calls, rng, pool), resp if rng.random() < 0.8 else None)
        cases.append((comp, gt))
    # Same-name calls whose greedy choice depends on the candidate order (ties broken by index).
    multi = [c for c in pool if len(c["parameters"]) >= 2]
    for _ in range(max(40, n // 12)):
        x = copy.deepcopy(rng.choice(multi))
        (k1, v1), (k2, v2) = list(x["parameters"].items())[:2]
        gt_calls = [{"name": x["name"], "parameters": {k1: v1}},
                    {"name": x["name"], "parameters": {k1: v1, k2: v2}}]
        pd_calls = [{"name": x["name"], "parameters": {k1: v1, k2: v2}},
                    {"name": x["name"], "parameters": {k1: v1, "extra": 0}}]
        rng.shuffle(gt_calls)
        rng.shuffle(pd_calls)
        think = " " + " ".join(["w"] * rng.randint(5, 60)) + " "
        cases.append((_render(think, _dumps(pd_calls)), _render(think, _dumps(gt_calls))))
    # Type-sensitive equality on both sides: True == 1 == 1.0, "1" != 1, 0 == False, NaN != NaN.
    alts = [True, False, 1, 0, 1.0, 0.0, "1", "true", None, [1], {"a": 1}, float("nan"), 10**30, 1e30]
    for _ in range(max(30, n // 20)):
        x = copy.deepcopy(rng.choice(pool))
        gt_calls, pd_calls = copy.deepcopy([x]), copy.deepcopy([x])
        gt_calls[0]["parameters"]["flag"] = rng.choice(alts)
        pd_calls[0]["parameters"]["flag"] = rng.choice(alts)
        cases.append((_render(" check ", _dumps(pd_calls)), _render(" check ", _dumps(gt_calls))))
    # NaN: json.loads returns one shared NaN object, so NaN equals NaN inside containers (whole-call
    # and list comparisons go by identity first) but a bare NaN value never equals (nan != nan).
    nan_gt = _render(" n ", ['{"name": "f", "parameters": {"a": NaN, "b": [NaN], "c": 1}}'])
    for pd_line in ['{"name": "f", "parameters": {"a": NaN, "b": [NaN], "c": 1}}',
                    '{"name": "f", "parameters": {"a": NaN, "b": [NaN], "c": 2}}',
                    '{"name": "f", "parameters": {"c": 1, "b": [NaN], "a": NaN}}',
                    '{"name": "f", "parameters": {"a": 1, "b": [1], "c": 1}}']:
        cases.append((_render(" n ", [pd_line]), nan_gt))
    return cases


def greedy_fooling_case() -> tuple[str, str]:
    """A case where greedy (ground-truth order) takes the wrong partner; optimal does not.

    Ground truth g1 = f(a=1), g2 = f(a=1, b=2); prediction p1 = f(a=1, b=2), p2 = f(a=1, c=3).
    Greedy: g1 scores 1/2 + 1 with both p1 and p2 and takes the first, p1; g2 is left with p2:
    1/3 + 1. Optimal: g1-p2 (1.5) + g2-p1 (1 + 2) = 4.5 > 1.5 + 4/3.
    """
    gt_calls = [{"name": "f", "parameters": {"a": 1}},
                {"name": "f", "parameters": {"a": 1, "b": 2}}]
    pd_calls = [{"name": "f", "parameters": {"a": 1, "b": 2}},
                {"name": "f", "parameters": {"a": 1, "c": 3}}]
    gt = _render(" plan ", _dumps(gt_calls))
    comp = _render(" plan ", _dumps(pd_calls))
    return comp, gt
