"""``toolrl-jax export``: write a model as a Hugging Face directory (for transformers / vLLM).

Example::

    toolrl-jax export --model smollm2-135m --out exported/smollm2
    vllm serve exported/smollm2

The storage dtype defaults to the source checkpoint's (``torch_dtype`` / ``dtype`` of its
``config.json``; bfloat16 for a GGUF source), so a float32 policy round-trips exactly;
``--dtype`` overrides it.

A trained policy: ``--run RUN_DIR`` exports the newest RL checkpoint of a ``toolrl-jax train``
run (``--step`` another one) on the run's base model (``model.name`` of its
``resolved_config.yaml``). A LoRA run (``lora.enabled``) is merged first,
``W + (alpha / r) A B`` in float32 (:func:`toolrl_jax.models.lora.export_merged`), so the
directory is a plain model that transformers and vLLM load without PEFT::

    toolrl-jax export --run runs/lora_smoke --out exported/lora_smoke --dtype float32
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
    parser.add_argument(
        "--run",
        default=None,
        help="export the policy of this training run directory (its newest checkpoint; LoRA "
        "adapters merged) instead of --model",
    )
    parser.add_argument("--step", type=int, default=None,
                        help="with --run: the checkpoint step (default: the newest)")


def _run_config(run_dir: pathlib.Path):
    from toolrl_jax.config_io import load_config
    from toolrl_jax.errors import ConfigError
    from toolrl_jax.train.config import TrainConfig

    path = run_dir / "resolved_config.yaml"
    if not path.is_file():
        raise ConfigError(f"--run {run_dir}: no resolved_config.yaml there; give a directory "
                          "written by toolrl-jax train")
    return load_config(TrainConfig, path)


def _run_policy(cfg, run_dir: pathlib.Path, step: int | None):
    """The run's model (LoRA applied when it trained adapters) with the checkpoint's params."""
    from flax import nnx

    from toolrl_jax.errors import ConfigError
    from toolrl_jax.models.lora import apply_lora, split_adapters
    from toolrl_jax.models.registry import load_model
    from toolrl_jax.rl.train_step import Learner, split_model
    from toolrl_jax.train.checkpoint import Checkpointer

    loaded = load_model(cfg.model.name, param_dtype=cfg.model.param_dtype, dtype="float32")
    model = loaded.model
    if cfg.lora.enabled:
        apply_lora(model, cfg.lora, rngs=nnx.Rngs(cfg.train.seed))
        graphdef, params, frozen = split_adapters(model)
    else:
        (graphdef, params), frozen = split_model(model), None
    learner = Learner(graphdef, loaded.config, cfg.algo, cfg.optim, frozen_params=frozen)
    ckpt_dir = run_dir / "checkpoints"
    ckpt = Checkpointer(ckpt_dir, async_save=False, handle_sigterm=False)
    try:
        if ckpt.latest_step() is None:
            raise ConfigError(f"--run {run_dir}: no checkpoint in {ckpt_dir}")
        state, _ = ckpt.restore(learner.abstract_state(params), step=step)
    finally:
        ckpt.close()
    target = nnx.state(model, nnx.LoRAParam) if cfg.lora.enabled else nnx.state(model)
    nnx.replace_by_pure_dict(target, state.params)
    nnx.update(model, target)
    return model, loaded.config, int(state.step)


def run(args: argparse.Namespace) -> int:
    from toolrl_jax.errors import ConfigError, ModelLoadError
    from toolrl_jax.models.export import export_hf_dir, load_tokenizer_any, source_dtype
    from toolrl_jax.models.lora import export_merged
    from toolrl_jax.models.registry import load_model, resolve_model

    if args.max_shard_gb <= 0:
        raise ConfigError(f"--max-shard-gb={args.max_shard_gb}: use a positive number")
    out_dir = pathlib.Path(args.out)
    for path in (out_dir, *out_dir.parents):
        if path.exists() and not path.is_dir():
            raise ConfigError(
                f"--out {out_dir}: {path} is an existing file; give a directory (new or existing)")
    run_dir = pathlib.Path(args.run) if args.run else None
    cfg = _run_config(run_dir) if run_dir is not None else None
    if args.step is not None and run_dir is None:
        raise ConfigError("--step: only with --run RUN_DIR")
    resolved = resolve_model(cfg.model.name if cfg is not None else args.model)
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
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    kwargs = {"tokenizer": tokenizer, "dtype": dtype, "pad_token_id": pad,
              "max_shard_bytes": int(args.max_shard_gb * 1024**3)}
    if cfg is not None:
        model, config, opt_steps = _run_policy(cfg, run_dir, args.step)
        what = f"run {run_dir} after {opt_steps} optimizer steps"
        if cfg.lora.enabled:
            out = export_merged(model, out_dir, **kwargs)
            what += f" (LoRA rank {cfg.lora.rank} merged)"
        else:
            out = export_hf_dir(model, config, out_dir, **kwargs)
    else:
        loaded = load_model(args.model, param_dtype="float32", dtype="float32")
        config, what = loaded.config, loaded.source.name
        out = export_hf_dir(loaded.model, config, out_dir, **kwargs)
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {what} ({config.architecture}) to {out} as {dtype} ({why}): "
          f"{', '.join(files)}")
    return 0
