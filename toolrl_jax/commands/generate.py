"""`toolrl-jax generate`: chat-templated generation from a model.

    toolrl-jax generate --prompt "What is 2+2?"                  # default model smollm2-135m
    toolrl-jax generate --model DIR --prompt TEXT --temperature 0 --json

The prompt is rendered with the model's chat template as token ids (``chat`` package), sampled
with the jitted KV-cache sampler (``rollout.sampler``) until an end-of-turn / EOS id or
``--max-new-tokens``, and the reply is printed. ``--json`` prints one object
``{"prompt_ids": [...], "completion_ids": [...], "text": "...", "stop_reason": "..."}``;
``completion_ids`` include the final end-of-turn id when the model produced one.
"""

from __future__ import annotations

import argparse
import json
import sys

from toolrl_jax.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="alias, HF model directory, .gguf file or hub id (default: smollm2-135m)",
    )
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", default=None, help="optional system message")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="most tokens to generate (default 128)"
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0 = off)")
    parser.add_argument(
        "--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)"
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="parameter and compute dtype (default float32)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the text"
    )


def generate_ids(model, tokenizer, prompt_ids, *, max_new_tokens, sampling, seed, eos_ids):
    """Sample one completion for ``prompt_ids``; returns ``(completion_ids, stop_reason)``."""
    from toolrl_jax.rollout.sampler import Sampler, bucket_length

    cache_len = max(len(prompt_ids) + max_new_tokens, bucket_length(len(prompt_ids)))
    sampler = Sampler(
        model,
        batch_size=1,
        cache_len=cache_len,
        turn_len=max_new_tokens,
        sampling=sampling,
        eos_ids=eos_ids,
    )
    out = sampler.generate([prompt_ids], max_new_tokens=max_new_tokens, seed=seed)
    return [int(t) for t in out.completion_ids[0]], out.stop_reasons[0]


def run(args: argparse.Namespace) -> int:
    from toolrl_jax.chat import detect_template, load_tokenizer
    from toolrl_jax.models.registry import load_model
    from toolrl_jax.rollout.sampling import SamplingConfig

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    loaded = load_model(args.model, param_dtype=args.dtype, dtype=args.dtype)
    tokenizer = load_tokenizer(loaded.source.tokenizer_source)
    template = detect_template(tokenizer)
    messages = []
    if args.system is not None:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    prompt_ids = [int(t) for t in template.render_prompt(tokenizer, messages, True)]

    eos_ids = list(template.end_of_turn_ids(tokenizer))
    for extra in [getattr(tokenizer, "eos_token_id", None), *loaded.config.eos_token_ids]:
        if isinstance(extra, int) and extra not in eos_ids:
            eos_ids.append(extra)
    completion, reason = generate_ids(
        loaded.model,
        tokenizer,
        prompt_ids,
        max_new_tokens=args.max_new_tokens,
        sampling=sampling,
        seed=args.seed,
        eos_ids=eos_ids,
    )
    reply = completion[:-1] if completion and completion[-1] in eos_ids else completion
    text = tokenizer.decode(reply, skip_special_tokens=True)
    if args.json:
        print(
            json.dumps(
                {
                    "prompt_ids": prompt_ids,
                    "completion_ids": completion,
                    "text": text,
                    "stop_reason": reason,
                },
                ensure_ascii=False,
            )
        )
    else:
        print(text)
        if reason == "length":
            print(f"[stopped after --max-new-tokens={args.max_new_tokens}]", file=sys.stderr)
    return 0
