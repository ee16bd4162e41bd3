"""math-verify calls for :mod:`toolrl_jax.rewards.math`, importable without JAX (pool workers)."""

from __future__ import annotations

import logging
import signal

# math-verify warns on every call that its own timeouts are off; they are off on purpose (the
# caller enforces the deadline, see rewards/math.py), so only its errors are shown.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def gold_text(gold: str) -> str:
    gold = str(gold)
    return gold if ("\\boxed" in gold or "$" in gold) else f"${gold}$"


def check(answer: str, gold: str) -> bool:
    """math-verify equivalence with its signal timeouts disabled (the caller times out)."""
    from math_verify import parse, verify  # lazy: optional dependency, slow (sympy); worker only

    g = parse(gold_text(gold), parsing_timeout=None)
    p = parse(f"\\boxed{{{answer}}}", parsing_timeout=None)
    if not g or not p:
        return False
    return bool(verify(g, p, timeout_seconds=None))


def safe_check(answer: str, gold: str) -> bool:
    try:
        return check(answer, gold)
    except Exception:  # noqa: BLE001 - any failure scores as wrong
        return False


class _Deadline(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - runs in worker processes
    raise _Deadline


def check_in_worker(answer: str, gold: str, timeout_s: float) -> bool:
    """Runs in a worker process's main thread, where an interval timer can interrupt Python code."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return check(answer, gold)
    except BaseException:  # noqa: BLE001 - timeout or any failure scores as wrong
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
