"""`ToolRLRewardConfig`: the frozen settings of the ToolRL reward (encoding + jitted scoring).

One hashable, ``kw_only`` frozen dataclass drives both halves: the host encoder (syntax, equality,
static shapes) and the jitted scorer (variant, matching, ranges, schedules), so a reward is fully
described by one object. ``ToolRLRewardConfig.compat_toolrl()`` reproduces the released ToolRL
code (github.com/qiancheng0/ToolRL, ``verl/utils/reward_score/rlla.py``) exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Literal

from toolrl_jax.errors import ConfigError

#: Variant names and the released code's environment flag each corresponds to.
VARIANTS: dict[str, str] = {
    "original": "(default reward, Sec. 3.3)",
    "coarse": "COARSEREWARD",
    "intermediate": "INTERMEDIATEREWARD",
    "finegrained": "REFINEDREWARD",
    "equal_max": "CORRECTMAX1",
    "two_stage": "MAX1STEP30MAX3",
    "dynamic": "(paper form of SCHEDULEREWARD: linear in p = step / total_steps)",
    "dynamic_code": "SCHEDULEREWARD",
    "length": "WITHLENGTH",
    "dynamic_length": "WITHLENGTH + SCHEDULELENGTH",
}
LENGTH_VARIANTS = ("length", "dynamic_length")

#: Largest call count for which optimal matching is exact (bitmask DP over 2**max_calls subsets).
MAX_EXACT_OPTIMAL_CALLS = 10


def _pair(x, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in x)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (min, max) of numbers, got {x!r}") from None
    if not lo <= hi:
        raise ConfigError(f"{name} must have min <= max, got {x!r}")
    return (lo, hi)


#: ``compat: toolrl``: the released ToolRL code's scoring settings.
_COMPAT_TOOLRL = dict(matching="greedy", equality="strict", syntax="toolrl", released_quirks=True,
                      response_only="zero")


@dataclass(frozen=True, kw_only=True)
class ToolRLRewardConfig:
    """Settings of the ToolRL reward R = R_format + R_correct (+ R_length).

    Attributes:
      variant: one of ``VARIANTS``: original | coarse | intermediate | finegrained | equal_max |
        two_stage | dynamic (paper schedule) | dynamic_code (released schedule) | length |
        dynamic_length.
      matching: 'optimal' (paper: maximise the total pair score; exact for max_calls <= 10) or
        'greedy' (released code: ground-truth order, best unused candidate with score > 0).
      equality: 'strict' (Python ``==`` of the decoded values: "1" != 1, 1 == 1.0 == True) or
        'lenient' (strings stripped; numeric strings equal numbers; "true"/"false" equal booleans;
        floats compared to 12 significant digits; booleans distinct from numbers).
      syntax: call syntax of predictions: 'toolrl' (JSON Lines, first block) | 'hermes' |
        'python' | 'auto'. Ground truths are always ToolRL JSON Lines.
      released_quirks: reproduce the released code's failure rules: a malformed call fails the
        whole prediction only where the released code would raise (a call that is not an object or
        has no 'name'; an unhashable name unless 'finegrained'; missing/non-object 'parameters'
        on a call whose name appears in the ground truth), and exact-match tests compare the raw
        JSON objects (extra keys count). False: any malformed call is a parse failure, and
        whole-call equality compares only (name, parameters).
      response_only: correctness when the ground truth has no ``<tool_call>``: 'zero' (released
        code) or 'no_call' (max if the prediction has neither ``<tool_call>`` nor ``</tool_call>``,
        else min: the rule left commented out in the released code).
      format_range, correctness_range, length_range: (min, max) of each component.
      length_words: L of the 'length' variant (r = min(round(words / L, 2), 1)).
      length_schedule: (start, end, steps) of 'dynamic_length': L = (end - start) * step / steps + start.
      dynamic_code_steps: denominator of the released SCHEDULEREWARD (150).
      total_steps: training length T for the paper-form 'dynamic' variant (p = min(step / T, 1)).
      two_stage_step: switch step of 'two_stage' (30).
      length_tie_steps: steps [0, length_tie_steps) for which the rare exact half-cent ties of
        ``round(words / L, 2)`` follow Python's float64 rounding bit for bit; later steps round the
        exact ratio half-to-even (the two differ by 0.01 only on those ties).
      compat: 'toolrl' applies the released code's settings (greedy matching, strict equality,
        ToolRL syntax, its quirks, response-only 0) over those fields; null keeps them.
      max_calls, max_args: static shapes of the encoded arrays. A ground truth that does not fit
        raises ConfigError; a prediction that does not fit is flagged ``pd_overflow`` and scored
        as a parse failure (min correctness).
      max_chars: longest completion whose calls are parsed (longer: parse failure).
    """

    variant: str = "original"
    matching: Literal["optimal", "greedy"] = "optimal"
    equality: Literal["strict", "lenient"] = "strict"
    syntax: Literal["toolrl", "hermes", "python", "auto"] = "toolrl"
    released_quirks: bool = False
    response_only: Literal["zero", "no_call"] = "no_call"
    format_range: tuple[float, float] = (0.0, 1.0)
    correctness_range: tuple[float, float] = (-3.0, 3.0)
    length_range: tuple[float, float] = (0.0, 1.0)
    length_words: int = 512
    length_schedule: tuple[int, int, int] = (384, 640, 105)
    dynamic_code_steps: int = 150
    total_steps: int = 105
    two_stage_step: int = 30
    length_tie_steps: int = 1024
    max_calls: int = 8
    max_args: int = 8
    max_chars: int = 1_000_000
    compat: Literal["toolrl"] | None = None

    def __post_init__(self):
        if self.compat is not None:  # the released code's settings win over the fields
            if self.compat != "toolrl":
                raise ConfigError(f"reward compat must be 'toolrl' or null, got {self.compat!r}")
            for name, value in _COMPAT_TOOLRL.items():
                object.__setattr__(self, name, value)
        if self.variant not in VARIANTS:
            raise ConfigError(f"reward variant {self.variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        if self.matching not in ("optimal", "greedy"):
            raise ConfigError(f"matching must be 'optimal' or 'greedy', got {self.matching!r}")
        if self.equality not in ("strict", "lenient"):
            raise ConfigError(f"equality must be 'strict' or 'lenient', got {self.equality!r}")
        if self.syntax not in ("toolrl", "hermes", "python", "auto"):
            raise ConfigError(f"syntax must be toolrl|hermes|python|auto, got {self.syntax!r}")
        if self.released_quirks and self.syntax != "toolrl":
            raise ConfigError("released_quirks=True needs syntax='toolrl' (the released code reads JSON Lines)")
        if self.response_only not in ("zero", "no_call"):
            raise ConfigError(f"response_only must be 'zero' or 'no_call', got {self.response_only!r}")
        for name in ("format_range", "correctness_range", "length_range"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        try:
            start, end, steps = (int(v) for v in self.length_schedule)
        except (TypeError, ValueError):
            raise ConfigError(f"length_schedule must be (start, end, steps) integers, got {self.length_schedule!r}") from None
        object.__setattr__(self, "length_schedule", (start, end, steps))
        if start < 1 or end < 1 or steps < 1:
            raise ConfigError("length_schedule values must be >= 1")
        if 100 * (max(start, end) + 2) * steps >= 2**31 // 4:
            raise ConfigError("length_schedule too large for int32 arithmetic; use smaller values")
        for name in ("length_words", "dynamic_code_steps", "total_steps", "two_stage_step", "max_calls", "max_args"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.length_words * 100 >= 2**31 // 4:
            raise ConfigError("length_words too large")
        if self.length_tie_steps < 0:
            raise ConfigError("length_tie_steps must be >= 0")
        if self.max_calls > 64 or self.max_args > 64:
            raise ConfigError("max_calls and max_args must be <= 64")

    # ------------------------------------------------------------------ presets
    @classmethod
    def compat_toolrl(cls, variant: str = "original", **overrides) -> ToolRLRewardConfig:
        """The released ToolRL code, exactly: greedy matching, strict Python equality, -3 on any
        parse failure (its quirks included), correctness 0 for response-only ground truths."""
        kw = dict(variant=variant, **_COMPAT_TOOLRL)
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_mapping(cls, values) -> ToolRLRewardConfig:
        """Build from a plain mapping (e.g. a YAML ``reward:`` section); ``compat: toolrl`` selects
        the released-code preset. Unknown keys raise ConfigError naming the closest field."""
        if values is None:
            return cls()
        if not isinstance(values, dict):
            raise ConfigError(f"reward config must be a mapping, got {type(values).__name__}")
        values = dict(values)
        compat = values.pop("compat", None)
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown reward config key '{key}'{hint}")
        for key in ("format_range", "correctness_range", "length_range", "length_schedule"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        if compat in (None, "", False):
            return cls(**values)
        if compat != "toolrl":
            raise ConfigError(f"reward compat must be 'toolrl', got {compat!r}")
        return cls.compat_toolrl(**values)

    def replace(self, **changes) -> ToolRLRewardConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_length(self) -> bool:
        return self.variant in LENGTH_VARIANTS
