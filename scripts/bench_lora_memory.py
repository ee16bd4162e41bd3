#!/usr/bin/env python
"""Memory of the compiled GRPO train step: full fine-tune vs LoRA on the same model shape.

    python scripts/bench_lora_memory.py --model-shape smollm2-135m --batch 4 --seq 512

Nothing is run and no weights are loaded: the model is built abstractly (``nnx.eval_shape``,
the shapes of the ``--model-shape`` config, random-init layout), the step
(``Learner._step``, state donated as in training) is lowered on ``jax.ShapeDtypeStruct``
arguments and compiled, and XLA's ``compiled.memory_analysis()`` is read. One JSON line per
variant:

* ``argument_bytes``: the step's inputs (train state + batch + the frozen base for LoRA);
* ``output_bytes``: new state + metrics; ``alias_bytes``: outputs written into donated inputs;
* ``temp_bytes``: XLA's scratch (activations kept for the backward, gradients, ...);
* ``total_bytes = argument + output - alias + temp`` (what the step needs at once);
* ``opt_state_bytes``: the AdamW moments (and counters) in the train state;
* ``trainable_params``: parameters that get gradients and moments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from toolrl_jax.models.config import ModelConfig  # noqa: E402
from toolrl_jax.models.decoder import Decoder  # noqa: E402
from toolrl_jax.models.lora import LoRAConfig, apply_lora, split_adapters  # noqa: E402
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model  # noqa: E402

# HF config.json of HuggingFaceTB/SmolLM2-135M-Instruct and Qwen/Qwen2.5-0.5B-Instruct.
SHAPES = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                         head_dim=64, rope_theta=1e5, tie_word_embeddings=True,
                         max_position_embeddings=8192),
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                         head_dim=64, rope_theta=1e6, tie_word_embeddings=True,
                         attention_bias=True, max_position_embeddings=32768),
    "tiny": None,
}


def model_config(shape: str, dtype: str) -> ModelConfig:
    if SHAPES[shape] is None:
        return ModelConfig.tiny("llama", dtype=dtype)
    return ModelConfig(**SHAPES[shape], param_dtype="float32", dtype=dtype)


def nbytes(tree) -> int:
    return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def abstract_batch(batch: int, seq: int) -> dict:
    i32, f32 = jnp.int32, jnp.float32
    s = jax.ShapeDtypeStruct
    return {"tokens": s((batch, seq), i32), "positions": s((batch, seq), i32),
            "loss_mask": s((batch, seq), f32), "advantages": s((batch,), f32),
            "old_logprobs": s((batch, seq), f32)}


def measure(cfg: ModelConfig, lora: LoRAConfig | None, algo: AlgoConfig, batch: dict) -> dict:
    if lora is None:
        graphdef, params = split_model(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
        frozen = None
    else:
        model = nnx.eval_shape(
            lambda: apply_lora(Decoder(cfg, rngs=nnx.Rngs(0)), lora, rngs=nnx.Rngs(1)))
        graphdef, params, frozen = split_adapters(model)
    learner = Learner(graphdef, cfg, algo, OptimConfig(), frozen_params=frozen)
    state = learner.abstract_state(params)
    lowered = jax.jit(learner._step, donate_argnums=0).lower(state, batch, frozen)
    mem = lowered.compile().memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    return {
        "variant": "full" if lora is None else f"lora_r{lora.rank}",
        "base_dtype": None if lora is None else (lora.base_dtype or cfg.param_dtype),
        "trainable_params": sum(x.size for x in jax.tree.leaves(params)),
        "frozen_bytes": 0 if frozen is None else nbytes(frozen),
        "params_bytes": nbytes(params), "opt_state_bytes": nbytes(state.opt_state),
        "argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
        "total_bytes": arg + out - alias + temp,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro-batch-size", type=int, default=None)
    ap.add_argument("--vocab-chunk", type=int, default=8192)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype (master weights float32)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    args = ap.parse_args(argv)
    cfg = model_config(args.model_shape, args.dtype)
    algo = AlgoConfig(vocab_chunk=args.vocab_chunk, micro_batch_size=args.micro_batch_size)
    batch = abstract_batch(args.batch, args.seq)
    lora = LoRAConfig(enabled=True, rank=args.rank, alpha=args.alpha)
    common = {"model_shape": args.model_shape, "batch": args.batch, "seq": args.seq,
              "dtype": args.dtype, "micro_batch_size": args.micro_batch_size,
              "device": jax.devices()[0].device_kind}
    for variant in (None, lora, dataclasses.replace(lora, base_dtype="bfloat16")):
        print(json.dumps({**common, **measure(cfg, variant, algo, batch)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
