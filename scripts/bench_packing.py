#!/usr/bin/env python
"""Benchmark packed GRPO rows (``algo.pack_rows``) against the padded batch.

    python scripts/bench_packing.py --model-shape smollm2-135m --num-layers 4 \
        --batch 16 --seq 1024 --min-len 128 --max-len 1024

Random weights of the model shape; a batch of ``--batch`` right-padded rows of ``--seq`` tokens
whose lengths are uniform in ``[--min-len, --max-len]`` (a prompt of ``--prompt-len`` tokens,
the rest trained on), as multi-turn rollouts (ReTool, FTRL) produce under one compiled length.
The same sequences are packed first-fit decreasing (``train.batch.pack_rows``) into fewer rows
(whole micro-batches: 1, 2, 3, 4, 6, 8, ... of them). One JSON line per variant: rows, the fraction
of real tokens, seconds per train step (best of ``--repeats``, after a compile step), real
tokens/s, the loss, and for the packed variant the speed-up and the loss difference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench_lora_memory import SHAPES  # noqa: E402  (the model shapes of the benchmarks)
from toolrl_jax.models import Decoder, ModelConfig  # noqa: E402
from toolrl_jax.rl.losses import LossConfig  # noqa: E402
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model  # noqa: E402
from toolrl_jax.train.batch import (  # noqa: E402
    TrainBatch,
    pack_bins,
    pack_rows,
    packed_row_count,
    row_spans,
)

def padded_batch(args, vocab_size: int) -> TrainBatch:
    r = np.random.default_rng(args.seed)
    b, t = args.batch, args.seq
    lengths = r.integers(args.min_len, args.max_len + 1, b)
    tokens = np.zeros((b, t), np.int32)
    seg = np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), np.float32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = r.integers(3, vocab_size, n)
        seg[i, :n] = 1
        mask[i, args.prompt_len:n] = 1.0
    return TrainBatch(tokens=tokens, positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
                      segment_ids=seg, loss_mask=mask, sample_logprobs=None,
                      advantages=r.normal(size=b).astype(np.float32))


def time_steps(learner, params, batch: TrainBatch, repeats: int) -> tuple[float, float]:
    """``(best seconds per step, loss)``: a compile step, then ``repeats`` timed steps from the
    same state (the state is re-created so every step sees the same params)."""
    times, loss = [], None
    for k in range(repeats + 1):
        state = learner.init_state(params)
        placed = learner.shard_batch(batch.as_dict())
        start = time.perf_counter()
        state, metrics = learner.train_step(state, placed)
        loss = float(jax.device_get(metrics)["loss"])
        if k:
            times.append(time.perf_counter() - start)
    return min(times), loss


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--num-layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--min-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--vocab-chunk", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.prompt_len < args.min_len <= args.max_len <= args.seq:
        ap.error("need --prompt-len < --min-len <= --max-len <= --seq")
    shape = SHAPES[args.model_shape]
    overrides = {} if args.num_layers is None else {"num_layers": args.num_layers}
    if shape is None:
        mc = ModelConfig.tiny("llama", **overrides)
    else:
        mc = ModelConfig(**{**shape, **overrides})
    graphdef, params = split_model(Decoder(mc, rngs=nnx.Rngs(0)))
    algo = AlgoConfig(micro_batch_size=args.micro_batch_size, vocab_chunk=args.vocab_chunk,
                      loss=LossConfig(aggregation="seq-mean-token-mean"))
    learner = Learner(graphdef, mc, algo, OptimConfig(learning_rate=1e-6))
    padded = padded_batch(args, mc.vocab_size)
    bins = pack_bins(row_spans(padded)[1], args.seq)
    rows = packed_row_count(len(bins), rows=args.batch, unit=args.micro_batch_size)
    packed = pack_rows(padded, bins, rows, pad_id=0)
    real = int((padded.segment_ids != 0).sum())
    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        seconds, loss = time_steps(learner, params, batch, args.repeats)
        n = int(batch.tokens.shape[0])
        results[name] = dict(
            bench="train_step_packing", variant=name, model_shape=args.model_shape,
            num_layers=mc.num_layers, rows=n, seq=args.seq, real_tokens=real,
            fill=round(real / (n * args.seq), 3), step_s=round(seconds, 3),
            real_tokens_per_s=round(real / seconds, 1), loss=loss,
            peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            device=jax.devices()[0].device_kind)
    results["packed"]["speedup"] = round(results["padded"]["step_s"]
                                         / results["packed"]["step_s"], 2)
    results["packed"]["loss_abs_diff"] = abs(results["packed"]["loss"]
                                             - results["padded"]["loss"])
    for line in results.values():
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
