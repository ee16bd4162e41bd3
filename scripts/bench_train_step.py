#!/usr/bin/env python
"""Benchmark the GRPO train step (forward, backward, AdamW) on random weights.

    python scripts/bench_train_step.py --model-shape qwen2.5-1.5b --batch 8 --seq 1024

Prints one JSON line per measurement window (``--repeats`` windows of ``--steps`` steps after a
compile/warm-up step) with tokens/s and model FLOPs utilisation:

    model FLOPs / step = 6 * N * tokens + 12 * L * H * Dh * T * tokens     (PaLM, App. B)

where ``N`` counts the parameters that do matmuls per token (the output projection included,
the input-embedding lookup excluded) and the second term is attention's ``QK^T`` and ``AV``
(forward + backward, without a causal discount). The vocab-chunked log-prob backward recomputes
the output-projection logits; that extra work is hardware FLOPs, not model FLOPs, and is not
counted. Peak FLOP/s by device kind: H100 / H200 bf16 dense 989e12 per GPU, A100 312e12,
TPU v4 275e12, v5e 197e12, v5p 459e12, v6e 918e12; unknown devices and CPU report ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# Qwen2.5 *-Instruct shapes (Hugging Face config.json of Qwen/Qwen2.5-{0.5B,1.5B}-Instruct).
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, rope_theta=1e6, tie_word_embeddings=True,
                         attention_bias=True, max_position_embeddings=32768),
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536,
                         intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                         head_dim=128, rope_theta=1e6, tie_word_embeddings=True,
                         attention_bias=True, max_position_embeddings=32768),
    "tiny": None,  # ModelConfig.tiny("qwen2")
}

PEAK_FLOPS = (  # (substring of device_kind, lower-case) -> bf16 dense peak per device
    ("h100", 989e12), ("h200", 989e12), ("gh200", 989e12), ("a100", 312e12),
    ("tpu v4", 275e12), ("tpu v5 lite", 197e12), ("tpu v5e", 197e12), ("tpu v5p", 459e12),
    ("tpu v5", 459e12), ("tpu v6", 918e12),
)


def peak_flops(device) -> float | None:
    if device.platform == "cpu":
        return None
    kind = device.device_kind.lower()
    for key, value in PEAK_FLOPS:
        if key in kind:
            return value
    return None


def model_flops_per_step(cfg, batch: int, seq: int) -> float:
    d, v = cfg.hidden_size, cfg.vocab_size
    matmul_params = cfg.num_params() - (0 if cfg.tie_word_embeddings else v * d)
    tokens = batch * seq
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq
    return 6.0 * matmul_params * tokens + attention * tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--vocab-chunk", type=int, default=8192)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="compute dtype (master weights and AdamW moments stay float32)")
    ap.add_argument("--attention", choices=("auto", "xla", "cudnn"), default="auto",
                    help="auto = cudnn on GPU with bf16, else xla")
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="full",
                    help="algo.remat / algo.remat_policy: none, or what the backward keeps")
    ap.add_argument("--steps", type=int, default=5, help="steps per measurement window")
    ap.add_argument("--repeats", type=int, default=3, help="measurement windows")
    ap.add_argument("--num-layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--mesh", default=None, help="e.g. data=1,fsdp=8,tp=1 (default: 1 device)")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    from flax import nnx

    from toolrl_jax.models import Decoder, ModelConfig, make_mesh
    from toolrl_jax.rl.losses import LossConfig
    from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model

    device = jax.devices()[0]
    impl = args.attention
    if impl == "auto":
        impl = "cudnn" if device.platform == "gpu" and args.dtype == "bfloat16" else "xla"
    common = dict(param_dtype="float32", dtype=args.dtype, attention_impl=impl)
    if SHAPES[args.model_shape] is None:
        mc = ModelConfig.tiny("qwen2", **common)
    else:
        mc = ModelConfig(**SHAPES[args.model_shape], **common)
    if args.num_layers is not None:
        mc = mc.replace(num_layers=args.num_layers)

    mesh = None
    if args.mesh:
        mesh = make_mesh({k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))})
    graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
    cfg = AlgoConfig(
        micro_batch_size=args.micro_batch_size, vocab_chunk=args.vocab_chunk,
        loss=LossConfig(entropy_coef=0.001), remat=args.remat != "none",
        remat_policy="full" if args.remat == "none" else args.remat,
    )
    learner = Learner(graphdef, mc, cfg, OptimConfig(learning_rate=1e-6), mesh=mesh)
    state = learner.init_state(params)
    del params

    r = np.random.default_rng(0)
    b, t = args.batch, args.seq
    mask = np.zeros((b, t), np.float32)
    mask[:, t // 4:] = 1.0  # a quarter prompt, the rest response
    batch = learner.shard_batch(dict(
        tokens=r.integers(0, mc.vocab_size, (b, t)).astype(np.int32),
        positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        loss_mask=mask,
        advantages=r.normal(size=b).astype(np.float32),
    ))  # no old_logprobs: on-policy step (ratio 1), the same compute as with them

    t0 = time.perf_counter()
    state, metrics = learner.train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    flops = model_flops_per_step(mc, b, t)
    peak = peak_flops(device)
    n_dev = mesh.size if mesh is not None else 1
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = learner.train_step(state, batch)
        jax.block_until_ready((state.params, metrics))
        dt = (time.perf_counter() - t0) / args.steps
        achieved = flops / dt
        print(json.dumps({
            "bench": "grpo_train_step", "model_shape": args.model_shape,
            "params": mc.num_params(), "batch": b, "seq": t, "tokens_per_step": b * t,
            "micro_batch_size": args.micro_batch_size, "vocab_chunk": args.vocab_chunk,
            "dtype": args.dtype, "attention": impl, "remat": args.remat,
            "device_kind": device.device_kind, "num_devices": n_dev, "repeat": rep,
            "step_time_s": round(dt, 5), "tokens_per_s": round(b * t / dt, 1),
            "model_tflops_per_s": round(achieved / 1e12, 3),
            "mfu": None if peak is None else round(achieved / (peak * n_dev), 4),
            "first_step_s": round(compile_s, 2), "loss": float(metrics["loss"]),
        }), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
