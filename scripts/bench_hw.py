#!/usr/bin/env python
"""This machine's limits, measured with plain JAX; one JSON line each.

* memory read bandwidth: ``sum(x)`` over a float32 array far larger than the caches
  (bytes read / best time);
* matmul peak: ``a @ b`` of two ``n x n`` matrices in the given dtype (``2 n^3`` FLOPs / best time).

    python scripts/bench_hw.py [--mib 512] [--n 2048] [--dtype float32] [--repeats 10]

These are the denominators of docs/performance.md's roofline fractions.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp


def _best(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    x = jnp.ones((args.mib * 2**20 // 4,), jnp.float32)
    t = _best(jax.jit(jnp.sum), x, repeats=args.repeats)
    print(json.dumps({"measure": "memory_read_bandwidth", "bytes": x.nbytes, "seconds": t,
                      "gb_per_s": x.nbytes / t / 1e9, "load1": load,
                      "device": str(jax.devices()[0].device_kind)}), flush=True)
    del x
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (args.n, args.n), args.dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (args.n, args.n), args.dtype)
    t = _best(jax.jit(jnp.matmul), a, b, repeats=args.repeats)
    print(json.dumps({"measure": "matmul_peak", "n": args.n, "dtype": args.dtype, "seconds": t,
                      "gflop_per_s": 2 * args.n**3 / t / 1e9, "load1": os.getloadavg()[0],
                      "device": str(jax.devices()[0].device_kind)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
