#!/usr/bin/env python
"""Rollout benchmarks on random weights; each result is one JSON line on stdout.

Decode throughput (default)::

    python scripts/bench_rollout.py --model-shape qwen2.5-0.5b --batch 64 \
        --prompt-len 256 --new-tokens 256

prefills ``batch`` random prompts, then times ``new-tokens`` decode steps of the jitted sampler
(no EOS, every row runs to the end) and reports decode tokens/s. On a GPU it adds the HBM
roofline: each decode step must read the parameters and the live KV cache once,

    bytes/step = param bytes + 2 (k, v) * L * B * (prompt + new / 2) * KVH * Dh * itemsize

so ``roofline_tokens_per_s = B * bandwidth / bytes_per_step`` (H100 3.35e12 B/s, H200 4.8e12)
and ``roofline_fraction = tokens_per_s / roofline_tokens_per_s``.

Multi-turn (``--multi-turn``): trajectories alternate generated turns with a tool whose latency is
uniform in 0-200 ms; one JSON line for continuous refill on and one for off, with tokens/s and
slot utilisation. Random weights at temperature 1 sample near-uniformly, so a turn ends on one
of ``V / turn_len`` "tool" token ids (mean turn ``turn_len`` tokens) and a trajectory on one of
``V / traj_len`` EOS ids; observations are ``obs_len`` fixed ids.

Runs on CPU with ``--model-shape tiny`` (small defaults are picked when on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from toolrl_jax.models import ModelConfig, create_model  # noqa: E402
from toolrl_jax.toolcalls import ToolCall  # noqa: E402
from toolrl_jax.rollout.engine import RolloutConfig, RolloutEngine, RolloutRequest  # noqa: E402
from toolrl_jax.rollout.sampler import Sampler  # noqa: E402
from toolrl_jax.rollout.sampling import SamplingConfig  # noqa: E402
from toolrl_jax.rollout.turns import Environment  # noqa: E402

HBM_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def model_config(shape: str, dtype: str) -> ModelConfig:
    if shape == "tiny":
        return ModelConfig.tiny("llama", param_dtype=dtype, dtype=dtype)
    if shape == "qwen2.5-0.5b":
        return ModelConfig(
            model_type="qwen2",
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            head_dim=64,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            max_position_embeddings=32768,
            tie_word_embeddings=True,
            attention_bias=True,
            eos_token_ids=(151645,),
            param_dtype=dtype,
            dtype=dtype,
            attention_impl="xla",
        )
    raise SystemExit(f"unknown --model-shape {shape!r}: use tiny or qwen2.5-0.5b")


def device_bandwidth() -> tuple[str, float | None]:
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    for name, bw in HBM_BANDWIDTH.items():
        if name in kind:
            return kind, bw
    return kind, None


def param_bytes(model) -> int:
    from flax import nnx

    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def bench_decode(args, config: ModelConfig, model) -> dict:
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    sampler = Sampler(
        model, batch_size=b, cache_len=p + n, turn_len=n, sampling=SamplingConfig(temperature=1.0)
    )
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, config.vocab_size, size=(b, p)).tolist()
    rows = list(range(b))

    def once():
        state = sampler.init_state(0)
        t0 = time.perf_counter()
        state = sampler.extend(
            state, rows, prompts, reset=True, uids=rows, max_tokens=n, max_total=p + n
        )
        jax.block_until_ready(state.tokens)
        t1 = time.perf_counter()
        state, steps, _ = sampler.decode(state, n)
        jax.block_until_ready(state.tokens)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, int(steps), int(jax.device_get(state.num_tokens).sum())

    once()  # compile
    prefill_s, decode_s, steps, generated = min(
        (once() for _ in range(args.repeats)), key=lambda r: r[1]
    )
    kind, bandwidth = device_bandwidth()
    itemsize = np.dtype(config.dtype).itemsize
    kv_bytes = (
        2 * config.num_layers * b * (p + n / 2) * config.num_kv_heads * config.head_dim * itemsize
    )
    bytes_per_step = param_bytes(model) + kv_bytes
    decode_tokens = generated - b  # the first token of each row is sampled by the prefill
    out = dict(
        bench="decode",
        model_shape=args.model_shape,
        dtype=config.dtype,
        device=kind,
        batch=b,
        prompt_len=p,
        new_tokens=n,
        decode_steps=steps,
        prefill_s=round(prefill_s, 4),
        decode_s=round(decode_s, 4),
        prefill_tokens_per_s=round(b * p / prefill_s, 1),
        decode_tokens_per_s=round(decode_tokens / decode_s, 1),
        ms_per_step=round(1e3 * decode_s / max(steps, 1), 3),
        bytes_per_step=int(bytes_per_step),
    )
    if bandwidth is not None:
        roofline = b * bandwidth / bytes_per_step
        out.update(
            hbm_bandwidth=bandwidth,
            roofline_tokens_per_s=round(roofline, 1),
            roofline_fraction=round(out["decode_tokens_per_s"] / roofline, 4),
        )
    return out


def bench_multi_turn(args, config: ModelConfig, model) -> list[dict]:
    from toolrl_jax.tools import ToolExecutor, function_tool

    v = config.vocab_size
    n_tool = max(1, v // args.turn_len)
    n_eos = max(1, v // args.traj_len)
    tool_ids = list(range(3, 3 + n_tool))
    eos_ids = list(range(3 + n_tool, 3 + n_tool + n_eos))
    rng = random.Random(0)

    @function_tool
    def slow_tool() -> str:
        """A tool whose latency is uniform in 0-200 ms."""
        time.sleep(rng.uniform(0.0, 0.2))
        return "ok"

    obs_ids = list(range(v - args.obs_len, v))
    np_rng = np.random.default_rng(1)
    prompts = [
        np_rng.integers(
            3 + n_tool + n_eos, v, size=np_rng.integers(args.prompt_len // 2, args.prompt_len + 1)
        ).tolist()
        for _ in range(args.num_requests)
    ]
    cfg = RolloutConfig(
        num_slots=args.batch,
        max_new_tokens=args.turn_len * 4,
        max_total_len=args.prompt_len + args.traj_len * 3,
        max_turns=args.max_turns,
        max_obs_tokens=args.obs_len,
        chunk_steps=args.chunk_steps,
        sampling=SamplingConfig(temperature=1.0),
        seed=0,
        pad_multiple=1,
    )
    environment = Environment(
        executor=ToolExecutor([slow_tool], max_workers=args.batch, timeout_s=5.0),
        extract_calls=lambda text: ([ToolCall("slow_tool", {})], ""),
        render_observation=lambda turn_ids, results: obs_ids,
        decode_text=lambda ids: "",
    )
    engine = RolloutEngine(
        model,
        cfg,
        environment=environment,
        eos_ids=eos_ids,
        tool_stop_sequences=[[t] for t in tool_ids],
    )
    requests = [RolloutRequest(prompt_ids=p, group_id=i) for i, p in enumerate(prompts)]
    for refill in (True, False):  # compile every (rows, length) bucket both modes meet
        engine.run(requests, refill=refill)
    lines = []
    for refill in (True, False):
        traj = engine.run(requests, refill=refill)
        s = traj.stats
        lines.append(
            dict(
                bench="multi_turn",
                refill=refill,
                model_shape=args.model_shape,
                device=device_bandwidth()[0],
                slots=args.batch,
                requests=len(requests),
                tokens_per_s=round(s["tokens_per_s"], 1),
                slot_utilisation=round(s["slot_utilisation"], 4),
                slot_occupancy=round(s["slot_occupancy"], 4),
                wall_s=round(s["wall_s"], 3),
                generated_tokens=s["generated_tokens"],
                mean_turns=round(float(traj.num_turns.mean()), 2),
                tool_turns=s["tool_turns"],
                decode_steps=s["decode_steps"],
                chunk_steps=args.chunk_steps,
                stop_reasons={
                    r: int(c) for r, c in zip(*np.unique(traj.stop_reasons, return_counts=True))
                },
            )
        )
    return lines


def main(argv=None) -> int:
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-shape", choices=("tiny", "qwen2.5-0.5b"), default="tiny")
    parser.add_argument("--batch", type=int, default=8 if on_cpu else 64)
    parser.add_argument("--prompt-len", type=int, default=32 if on_cpu else 256)
    parser.add_argument("--new-tokens", type=int, default=32 if on_cpu else 256)
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32" if on_cpu else "bfloat16"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--multi-turn", action="store_true", help="tool turns, refill on and off")
    parser.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="multi-turn: trajectories (default 4 x batch)",
    )
    parser.add_argument(
        "--turn-len",
        type=int,
        default=16 if on_cpu else 64,
        help="multi-turn: mean tokens per turn",
    )
    parser.add_argument(
        "--traj-len",
        type=int,
        default=64 if on_cpu else 256,
        help="multi-turn: mean generated tokens per trajectory",
    )
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--obs-len", type=int, default=16)
    parser.add_argument("--chunk-steps", type=int, default=8 if on_cpu else 16)
    args = parser.parse_args(argv)
    if args.num_requests is None:
        args.num_requests = 4 * args.batch
    config = model_config(args.model_shape, args.dtype)
    model = create_model(config)
    if args.multi_turn:
        for line in bench_multi_turn(args, config, model):
            print(json.dumps(line), flush=True)
    else:
        print(json.dumps(bench_decode(args, config, model)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
