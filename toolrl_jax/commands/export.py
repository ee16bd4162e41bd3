"""``toolrl-jax export``: write a model as a Hugging Face directory (for transformers / vLLM).

Example::

    toolrl-jax export --model smollm2-135m --out exported/smollm2
    vllm serve exported/smollm2

The storage dtype defaults to the source checkpoint's (``torch_dtype`` / ``dtype`` of its
``config.json``; bfloat16 for a GGUF source), so a float32 policy round-trips exactly;
``--dtype`` overrides it.
"""

from __future__ import annotations

import argparse
import pathlib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="built-in alias (smollm2-135m), HF directory, .gguf file or hub id (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="storage dtype of the safetensors weights (default: the source checkpoint's dtype; "
        "bfloat16 for a GGUF source)",
    )
    parser.add_argument(
        "--max-shard-gb",
        type=float,
        default=2.0,
        help="split model.safetensors into shards of at most this many GB (default: %(default)s)",
    )
    parser.add_argument("--no-tokenizer", action="store_true", help="do not write tokenizer files")


def run(args: argparse.Namespace) -> int:
    from toolrl_jax.errors import ConfigError, ModelLoadError
    from toolrl_jax.models.export import export_hf_dir, load_tokenizer_any, source_dtype
    from toolrl_jax.models.registry import load_model, resolve_model

    if args.max_shard_gb <= 0:
        raise ConfigError(f"--max-shard-gb={args.max_shard_gb}: use a positive number")
    out_dir = pathlib.Path(args.out)
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"--out {out_dir}: {path} is an existing file; give a directory (new or existing)")
    resolved = resolve_model(args.model)
    if args.dtype is None:
        dtype, why = source_dtype(resolved.kind, resolved.path)
    else:
        dtype, why = args.dtype, "--dtype"
    tokenizer = None
    if not args.no_tokenizer:  # before the (slow) weights, so a missing tokenizer fails fast
        try:
            tokenizer = load_tokenizer_any(resolved.tokenizer_source)
        except ModelLoadError as e:
            raise ModelLoadError(f"{e} (pass --no-tokenizer to export the weights only)") from e
    loaded = load_model(args.model, param_dtype="float32", dtype="float32")
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    out = export_hf_dir(
        loaded.model,
        loaded.config,
        out_dir,
        tokenizer=tokenizer,
        dtype=dtype,
        max_shard_bytes=int(args.max_shard_gb * 1024**3),
        pad_token_id=pad,
    )
    files = sorted(p.name for p in out.iterdir())
    print(
        f"exported {loaded.source.name} ({loaded.config.architecture}) to {out} as {dtype} "
        f"({why}): {', '.join(files)}"
    )
    return 0
