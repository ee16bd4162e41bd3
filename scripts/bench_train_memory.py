#!/usr/bin/env python
"""Memory of the GRPO update (and the sampler's programs) at SmolLM2-135M shapes, measured.

    python scripts/bench_train_memory.py                        # every variant, demo shape
    python scripts/bench_train_memory.py --variants base,remat --batch 8 --seq 432

Each variant runs in its own child process (``ru_maxrss`` is a per-process high-water mark),
one after the other. A child builds a randomly initialised decoder with SmolLM2-135M-Instruct's
shapes (``V=49152, D=576, F=1536, L=30, H=9, KVH=3, Dh=64``, tied embeddings, float32; the
weights' values do not change memory), the :class:`~toolrl_jax.rl.train_step.Learner` with the
demo's algorithm (``configs/demo.yaml``: one PPO mini-batch, ``micro_batch_size=8``,
``vocab_chunk=8192``, token-mean, no KL), its :class:`TrainState`, then lowers and compiles the
update for a ``[batch, seq]`` batch and runs it once. One JSON line per measurement:

* ``phase=state``: resident set after the model, params and AdamW state exist (``rss_mib``);
* ``phase=compile``: tracing + lowering seconds (``trace_s``), XLA compile seconds; ``compiled.memory_analysis()`` (XLA's temp arena,
  argument, output, alias and generated-code bytes, in MiB); ``peak_rss_mib`` so far;
* ``phase=step``: seconds of one executed step; ``peak_rss_mib`` so far;
* ``what=sampler`` (``--variants`` ``sampler``): the rollout sampler's prefill and decode
  programs at the demo engine's shape (8 slots, cache ``--cache-len``), the same fields.

Variants: ``unrolled`` (``algo.remat=false``: the 30 blocks unrolled, every layer's
activations kept for the backward), ``remat`` (``algo.remat=true``, the default: one
``lax.scan`` over the layers with a checkpointed body), ``sampler``. Fields a backend does
not report are null. Peak RSS includes the Python / JAX runtime (~0.4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

SMOLLM2_135M = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
    rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192,
)
VARIANTS = ("unrolled", "remat", "sampler")
MIB = 1 << 20


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def memory_fields(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    names = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
             "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {n.replace("_size_in_bytes", "_mib"):
            (None if m is None else round(getattr(m, n, 0) / MIB, 1)) for n in names}


def emit(**fields) -> None:
    fields.setdefault("peak_rss_mib", peak_rss_mib())
    print(json.dumps(fields), flush=True)


def model_config(args, **changes):
    from toolrl_jax.models import ModelConfig

    cfg = ModelConfig(**SMOLLM2_135M, param_dtype="float32", dtype="float32")
    if args.num_layers:
        cfg = cfg.replace(num_layers=args.num_layers)
    return cfg.replace(**changes)


def child_learner(args, variant: str) -> None:
    import jax
    import numpy as np
    from flax import nnx

    from toolrl_jax.models import Decoder
    from toolrl_jax.rl.losses import LossConfig
    from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model

    mc = model_config(args)
    graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
    algo = AlgoConfig(micro_batch_size=args.micro_batch_size, vocab_chunk=args.vocab_chunk,
                      remat=variant == "remat",
                      loss=LossConfig(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0,
                                      entropy_coef=0.0, aggregation="token-mean"))
    learner = Learner(graphdef, mc, algo, OptimConfig(learning_rate=5e-6, weight_decay=0.0))
    state = learner.init_state(params)
    del params
    base = dict(what="train_step", variant=variant, batch=args.batch, seq=args.seq,
                micro_batch_size=args.micro_batch_size, vocab_chunk=args.vocab_chunk,
                num_layers=mc.num_layers)
    emit(**base, phase="state", rss_mib=rss_mib())

    r = np.random.default_rng(0)
    b, t = args.batch, args.seq
    mask = np.zeros((b, t), np.float32)
    mask[:, args.prompt_len:] = 1.0
    batch = learner.shard_batch(dict(
        tokens=r.integers(0, mc.vocab_size, (b, t)).astype(np.int32),
        positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        segment_ids=np.ones((b, t), np.int32),
        loss_mask=mask,
        advantages=r.normal(size=b).astype(np.float32),
    ))
    t0 = time.perf_counter()
    lowered = learner.train_step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    emit(**base, phase="compile", trace_s=round(t1 - t0, 1),
         compile_s=round(time.perf_counter() - t1, 1), rss_mib=rss_mib(),
         **memory_fields(compiled))
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        loss = float(jax.block_until_ready(metrics["loss"]))
        emit(**base, phase="step", step=i, step_s=round(time.perf_counter() - t0, 2),
             loss=loss, grad_norm=float(metrics["grad_norm"]), rss_mib=rss_mib())


def child_sampler(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from toolrl_jax.models import Decoder
    from toolrl_jax.models.decoder import init_cache

    mc = model_config(args)
    model = Decoder(mc, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    b, s, t = 8, args.cache_len, args.prompt_len
    base = dict(what="sampler", batch=b, cache_len=s, prompt_len=t, num_layers=mc.num_layers)
    emit(**base, phase="state", rss_mib=rss_mib())

    def prefill(state, cache, tokens):
        m = nnx.merge(graphdef, state)
        pos = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        h, cache = m.hidden(tokens, pos, cache=cache, cache_index=jnp.zeros((b,), jnp.int32),
                            kv_len=tokens.shape[1])
        return m.logits(h[:, -1]), cache

    def decode(state, cache, token, index):
        m = nnx.merge(graphdef, state)
        h, cache = m.hidden(token, index[:, None], cache=cache, cache_index=index,
                            kv_len=min(s, 512))
        return m.logits(h[:, -1]), cache

    cache = init_cache(mc, b, s)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, mc.vocab_size, (b, t)), jnp.int32)
    for name, fn, extra in (("prefill", prefill, (tokens,)),
                            ("decode", decode, (tokens[:, :1], jnp.full((b,), t, jnp.int32)))):
        t0 = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=1).lower(state, cache, *extra).compile()
        emit(**base, phase=f"compile_{name}", compile_s=round(time.perf_counter() - t0, 1),
             rss_mib=rss_mib(), **memory_fields(compiled))
        t0 = time.perf_counter()
        _, cache = jax.block_until_ready(compiled(state, cache, *extra))
        emit(**base, phase=f"run_{name}", run_s=round(time.perf_counter() - t0, 2),
             rss_mib=rss_mib())


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=432, help="demo: 320 prompt + 112 new tokens")
    ap.add_argument("--prompt-len", type=int, default=320)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--vocab-chunk", type=int, default=8192)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--num-layers", type=int, default=0, help="override L (0: 30)")
    ap.add_argument("--steps", type=int, default=1, help="executed steps after the compile")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child == "sampler":
        child_sampler(args)
        return 0
    if args.child:
        child_learner(args, args.child)
        return 0
    rest = [a for a in (argv if argv is not None else sys.argv[1:])]
    code = 0
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, *rest, "--child", variant]
        code |= subprocess.call(cmd)
    return code


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
