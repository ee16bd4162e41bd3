"""ReTool outcome reward (Feng et al., arXiv 2504.11536): +1 if the final ``\\boxed{}`` answer is
mathematically equal to the reference, else -1.

Equivalence is decided by ``math-verify``. Its own timeouts use ``signal.alarm``, which only works
in a process's main thread, so it is always called with ``parsing_timeout=None,
timeout_seconds=None`` and the timeout is enforced here:

* ``backend="process"`` (default): a pool of spawned worker processes; each check runs under an
  interval timer in the worker's main thread, and a hard outer deadline terminates and replaces
  the pool if a worker is stuck inside C code. Safe to call from any thread.
* ``backend="thread"``: a thread pool; a check that misses its deadline scores -1 and its thread
  is abandoned (Python threads cannot be killed; it finishes in the background).

Host side: :func:`extract_boxed`, :class:`MathVerifier`, :func:`retool_reward`.
Device side: :func:`outcome_reward` (jitted ``where(correct, hi, lo)``).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import multiprocessing
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from toolrl_jax.errors import ConfigError
from toolrl_jax.rewards import _math_worker

__all__ = ["MathVerifier", "OutcomeRewardConfig", "extract_boxed", "outcome_reward", "require_math_verify",
           "retool_reward"]

_MAX_SCAN = 100_000


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed x``) in ``text``.

    Braces are balanced (nested ``{}`` allowed); an unclosed box gives None. Only the last
    100k characters are scanned. Never raises.
    """
    if not isinstance(text, str):
        return None
    text = text[-_MAX_SCAN:]
    for tag in ("\\boxed", "\\fbox"):
        i = text.rfind(tag)
        if i < 0:
            continue
        j = i + len(tag)
        if j < len(text) and text[j] == " ":  # "\boxed 5" form
            rest = text[j + 1:].split("$")[0].strip()
            return rest.split()[0] if rest.split() else None
        if j >= len(text) or text[j] != "{":
            continue
        depth = 0
        for k in range(j, len(text)):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1: k]
        return None
    return None


_MISSING = ("the ReTool outcome reward needs the math-verify package ({why}); install it "
            "(pip install math-verify) or drop the math reward component")


def require_math_verify() -> None:
    """Raises ConfigError when math-verify cannot be found: a reward must never score every
    answer as wrong because a dependency is missing."""
    try:
        found = importlib.util.find_spec("math_verify") is not None
    except (ImportError, ValueError):  # a None entry in sys.modules, a broken parent package
        found = False
    if not found:
        raise ConfigError(_MISSING.format(why="it is not installed"))


def _thread_check(answer: str, gold: str) -> bool:
    """`_math_worker.safe_check`, except that a failing import of math-verify propagates."""
    try:
        return _math_worker.check(answer, gold)
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - any other failure scores as wrong
        return False


class MathVerifier:
    """Thread-safe math answer checker with a per-answer timeout.

    Args:
      timeout_s: seconds allowed per answer; a timeout counts as wrong.
      backend: 'process' (killable workers; default) or 'thread'.
      workers: pool size.

    Use as a context manager or call :meth:`close`.

    Raises:
      ConfigError: math-verify is not installed (or, thread backend, fails to import).
    """

    def __init__(self, *, timeout_s: float = 5.0, backend: Literal["process", "thread"] = "process",
                 workers: int = 2):
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if backend not in ("process", "thread"):
            raise ConfigError(f"backend must be 'process' or 'thread', got {backend!r}")
        require_math_verify()
        self.timeout_s = float(timeout_s)
        self.backend = backend
        self.workers = max(1, int(workers))
        self._lock = threading.Lock()
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            if self.backend == "process":
                ctx = multiprocessing.get_context("spawn")
                self._pool = ctx.Pool(self.workers)
            else:
                self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="math-verify")
        return self._pool

    def _reset_pool(self):
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if self.backend == "process":
            pool.terminate()
        else:
            pool.shutdown(wait=False, cancel_futures=True)

    def verify_many(self, answers: Sequence[str | None], golds: Sequence[str]) -> np.ndarray:
        """[B] bool: answer i (a boxed content, or None for no answer) equals gold i."""
        if len(answers) != len(golds):
            raise ValueError(f"{len(answers)} answers but {len(golds)} golds")
        out = np.zeros(len(answers), bool)
        todo = [i for i, a in enumerate(answers) if isinstance(a, str) and a.strip()]
        with self._lock:
            grace = 2.0 if self.backend == "process" else 0.0
            while todo:
                pool = self._get_pool()
                if self.backend == "process":
                    jobs = {i: pool.apply_async(_math_worker.check_in_worker, (answers[i], str(golds[i]), self.timeout_s))
                            for i in todo}
                else:
                    jobs = {i: pool.submit(_thread_check, answers[i], str(golds[i])) for i in todo}
                remaining = []
                stuck = False
                for i in todo:
                    if stuck:
                        remaining.append(i)
                        continue
                    try:
                        if self.backend == "process":
                            out[i] = bool(jobs[i].get(timeout=self.timeout_s + grace))
                        else:
                            out[i] = bool(jobs[i].result(timeout=self.timeout_s))
                    except (multiprocessing.TimeoutError, cf.TimeoutError):
                        out[i] = False
                        stuck = True  # a worker is wedged: replace the pool, resubmit the rest
                    except ImportError as exc:
                        raise ConfigError(_MISSING.format(why=f"import failed: {exc}")) from None
                    except Exception:  # noqa: BLE001
                        out[i] = False
                if stuck:  # keep what already finished, resubmit the rest to a fresh pool
                    rest = []
                    for i in remaining:
                        done = jobs[i].ready() if self.backend == "process" else jobs[i].done()
                        if not done:
                            rest.append(i)
                            continue
                        try:
                            res = jobs[i].get(timeout=0) if self.backend == "process" else jobs[i].result(timeout=0)
                            out[i] = bool(res)
                        except Exception:  # noqa: BLE001
                            out[i] = False
                    self._reset_pool()
                    remaining = rest
                todo = remaining
        return out

    def close(self):
        with self._lock:
            self._reset_pool()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def retool_reward(
    completions: Sequence[str],
    golds: Sequence[str],
    *,
    verifier: MathVerifier | None = None,
    correct: float = 1.0,
    wrong: float = -1.0,
) -> np.ndarray:
    """ReTool's outcome reward, [B] float32: ``correct`` if the last ``\\boxed{}`` of completion i
    is equivalent to golds[i] (math-verify), else ``wrong`` (also for no box or a timeout).

    Raises ConfigError when math-verify is missing (never a silent ``wrong`` for every answer).
    """
    answers = [extract_boxed(c) for c in completions]
    own = verifier is None
    verifier = verifier or MathVerifier(backend="thread")
    try:
        ok = verifier.verify_many(answers, golds)
    finally:
        if own:
            verifier.close()
    return np.where(ok, np.float32(correct), np.float32(wrong)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class OutcomeRewardConfig:
    """Binary outcome reward values (ReTool: +1 / -1)."""

    correct: float = 1.0
    wrong: float = -1.0


@jax.jit
def _outcome(correct, hi, lo):
    return jnp.where(correct, hi, lo).astype(jnp.float32)


def outcome_reward(correct, config: OutcomeRewardConfig = OutcomeRewardConfig()) -> jax.Array:
    """[B] float32: ``config.correct`` where ``correct`` [B] bool, else ``config.wrong``."""
    return _outcome(jnp.asarray(correct, bool), jnp.float32(config.correct), jnp.float32(config.wrong))
