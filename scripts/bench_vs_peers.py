#!/usr/bin/env python
"""The same decode / train-step work through toolrl-jax and its peers, interleaved, in one run.

    python scripts/bench_vs_peers.py [--model smollm2-135m] [--measures decode,train]
        [--batches 16,64] [--prompt-len 128] [--new-tokens 128]
        [--train-batch 4] [--train-seq 256] [--repeats 3]

Prints one JSON line per measure (``{"measure", "ours", "peer", "ratio", ...}``; ratio > 1 means
toolrl-jax is faster) plus a ``skipped`` line for each peer that is not importable. Peers:

* ``transformers`` / PyTorch eager (same weights, exported with ``export_hf_dir`` to a temporary
  directory): ``model.generate`` greedy with ``min_new_tokens = max_new_tokens`` (no early stop)
  against :class:`toolrl_jax.rollout.sampler.Sampler` greedy (prefill + decode timed on both);
  and one GRPO-surrogate step (``-mean(exp(lp - sg(lp)) * A)`` over the masked response tokens,
  forward + backward + AdamW) against :class:`toolrl_jax.rl.train_step.Learner.train_step`.
* ``tunix`` (PyPI ``google-tunix``) and ``trl``: detected and reported as skipped when absent;
  their GRPO-step comparison needs the demo's data pipeline and is not wired here yet.

Runs alternate (ours, peer, ours, peer, ...) after one warm-up each so that load from other
processes hits both sides alike; the best of ``--repeats`` is reported with the 1-minute load
average and the process's peak resident memory. Installs nothing: ``make bench-peers`` creates
``.venv-peers`` with the peers and runs this script there.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import resource
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from toolrl_jax.models.export import export_hf_dir  # noqa: E402
from toolrl_jax.models.registry import load_model  # noqa: E402
from toolrl_jax.rollout.sampler import Sampler  # noqa: E402
from toolrl_jax.rollout.sampling import SamplingConfig  # noqa: E402

try:
    import torch
    import transformers
except ImportError:  # the peer is optional
    torch = transformers = None


def _emit(**fields) -> None:
    fields.setdefault("load1", round(os.getloadavg()[0], 2))
    fields.setdefault("peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    print(json.dumps(fields), flush=True)


def _interleaved(runs: dict, repeats: int, warmups: dict | None = None) -> dict:
    """Best wall time of each named callable, alternating after one warm-up each
    (``warmups[name]`` when given, e.g. a shorter generation that compiles the same programs)."""
    for name, run in runs.items():
        (warmups or {}).get(name, run)()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------- decode
def ours_decode(model, batch: int, prompts: np.ndarray, new_tokens: int, cache_len: int,
                kv_min_bucket: int | None = 128):
    sampler = Sampler(
        model, batch_size=batch, cache_len=cache_len, turn_len=new_tokens,
        sampling=SamplingConfig(temperature=0.0), kv_min_bucket=kv_min_bucket,
    )
    rows = prompts.tolist()

    def run(n=new_tokens):
        run.last = sampler.generate(rows, max_new_tokens=n).completion_ids
        return run.last

    return run


def hf_decode(hf_model, prompts: np.ndarray, new_tokens: int):
    ids = torch.from_numpy(prompts.astype(np.int64))
    attn = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            return hf_model.generate(
                input_ids=ids, attention_mask=attn, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
            )

    return run


# ----------------------------------------------------------------------------- train step
def _train_batch(vocab: int, b: int, t: int) -> dict:
    r = np.random.default_rng(0)
    mask = np.zeros((b, t), np.float32)
    mask[:, t // 4:] = 1.0
    return dict(
        tokens=r.integers(3, vocab, (b, t)).astype(np.int32),
        positions=np.tile(np.arange(t, dtype=np.int32), (b, 1)),
        loss_mask=mask,
        advantages=r.normal(size=b).astype(np.float32),
    )


def ours_train(model, config, batch: dict, remat: str = "full"):
    from toolrl_jax.rl.losses import LossConfig
    from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model

    graphdef, params = split_model(model)
    algo = AlgoConfig(loss=LossConfig(entropy_coef=0.0), remat=remat != "none",
                      remat_policy="full" if remat == "none" else remat)
    learner = Learner(graphdef, config, algo, OptimConfig(learning_rate=1e-6))
    holder = {"state": learner.init_state(jax.tree.map(lambda x: x.copy(), params))}
    dev_batch = learner.shard_batch(batch)

    def run():
        holder["state"], metrics = learner.train_step(holder["state"], dev_batch)
        jax.block_until_ready(metrics)

    return run


def torch_train(hf_model, batch: dict):
    hf_model.train()
    opt = torch.optim.AdamW(hf_model.parameters(), lr=1e-6, weight_decay=0.0)
    tokens = torch.from_numpy(batch["tokens"].astype(np.int64))
    mask = torch.from_numpy(batch["loss_mask"])[:, 1:]
    adv = torch.from_numpy(batch["advantages"])[:, None]

    def run():
        logits = hf_model(input_ids=tokens).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
        ratio = torch.exp(lp - lp.detach())
        loss = -(ratio * adv * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), 1.0)
        opt.step()

    return run


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--measures", default="decode,train")
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--cache-len", type=int, default=None,
                    help="our KV cache slots per row (default prompt + new; an engine sizes it "
                         "to max_total_len, often far above the live length)")
    ap.add_argument("--whole-cache", action="store_true",
                    help="also time our sampler reading the whole cache every step "
                         "(kv_min_bucket=None, the behaviour before KV-length buckets)")
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-seq", type=int, default=256)
    ap.add_argument("--remat", choices=("none", "full", "dots"), default="full",
                    help="train step: algo.remat / algo.remat_policy (default: the trainer's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--compile-cache", default=None,
                    help="JAX persistent compilation cache directory (reruns skip compiling)")
    ap.add_argument("--warmup-tokens", type=int, default=None,
                    help="our decode warm-up generates this many tokens (same programs) instead "
                         "of a full run")
    ap.add_argument("--skip-peer", action="store_true",
                    help="time toolrl-jax only (with --whole-cache: KV buckets vs whole cache)")
    args = ap.parse_args(argv)
    measures = set(args.measures.split(","))
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

    for peer, module in (("tunix", "tunix"), ("trl", "trl")):
        if importlib.util.find_spec(module) is None:
            _emit(measure="grpo_step", peer=peer, skipped=f"{module} is not importable")
        else:
            _emit(measure="grpo_step", peer=peer, skipped="GRPO-step comparison not wired yet")
    loaded = load_model(args.model)
    model, config = loaded.model, loaded.config
    hf_model = None
    if torch is None:
        _emit(measure="all", peer="transformers", skipped="torch/transformers not importable")
    elif not args.skip_peer:
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as tmp:
            export_hf_dir(model, config, tmp)
            hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        hf_model.eval()
    common = dict(model=args.model, dtype="float32", device=jax.devices()[0].device_kind,
                  torch_threads=args.threads)

    if "decode" in measures:
        for b in (int(x) for x in args.batches.split(",")):
            prompts = np.random.default_rng(b).integers(
                3, config.vocab_size, (b, args.prompt_len)).astype(np.int32)
            cache_len = args.cache_len or args.prompt_len + args.new_tokens
            runs = {"ours": ours_decode(model, b, prompts, args.new_tokens, cache_len)}
            if args.whole_cache:
                runs["ours_whole_cache"] = ours_decode(
                    model, b, prompts, args.new_tokens, cache_len, kv_min_bucket=None)
            if hf_model is not None:
                runs["peer"] = hf_decode(hf_model, prompts, args.new_tokens)
            warmups = {}
            if args.warmup_tokens:
                warmups = {k: functools.partial(v, args.warmup_tokens)
                           for k, v in runs.items() if k.startswith("ours")}
            best = _interleaved(runs, args.repeats, warmups)
            toks = b * args.new_tokens
            extra = {}
            if args.whole_cache:
                extra["ours_whole_cache_tokens_per_s"] = round(toks / best["ours_whole_cache"], 1)
                extra["ratio_vs_whole_cache"] = round(best["ours_whole_cache"] / best["ours"], 3)
                extra["greedy_identical"] = all(  # the last timed runs' completions
                    (a == c).all() for a, c in zip(runs["ours"].last, runs["ours_whole_cache"].last))
            if hf_model is None:
                _emit(measure="greedy_decode", peer=None, batch=b, prompt_len=args.prompt_len,
                      new_tokens=args.new_tokens, cache_len=cache_len,
                      ours_tokens_per_s=round(toks / best["ours"], 1), **extra, **common)
                continue
            _emit(measure="greedy_decode", peer="transformers.generate", batch=b,
                  prompt_len=args.prompt_len, new_tokens=args.new_tokens, cache_len=cache_len,
                  ours_tokens_per_s=round(toks / best["ours"], 1),
                  peer_tokens_per_s=round(toks / best["peer"], 1),
                  ratio=round(best["peer"] / best["ours"], 3), **extra, **common)

    if "train" in measures and hf_model is not None:
        batch = _train_batch(config.vocab_size, args.train_batch, args.train_seq)
        best = _interleaved(
            {"ours": ours_train(model, config, batch, args.remat),
             "peer": torch_train(hf_model, batch)},
            args.repeats)
        t_ours, t_peer = best["ours"], best["peer"]
        toks = args.train_batch * args.train_seq
        _emit(measure="train_step", peer="pytorch_eager", batch=args.train_batch,
              seq=args.train_seq, ours_tokens_per_s=round(toks / t_ours, 1),
              peer_tokens_per_s=round(toks / t_peer, 1), ratio=round(t_peer / t_ours, 3),
              ours_step_s=round(t_ours, 3), peer_step_s=round(t_peer, 3), remat=args.remat,
              **common)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
