"""scripts/bench_train_step.py: shapes vs the Qwen2.5 model cards, FLOPs formula, CPU run."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest

from toolrl_jax.models import ModelConfig

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_train_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("shape,total,non_embedding", [
    ("qwen2.5-0.5b", 0.49e9, 0.36e9),  # Qwen2.5-0.5B-Instruct model card
    ("qwen2.5-1.5b", 1.54e9, 1.31e9),  # Qwen2.5-1.5B-Instruct model card
])
def test_shapes_match_model_cards(bench, shape, total, non_embedding):
    cfg = ModelConfig(**bench.SHAPES[shape])
    assert cfg.num_params() == pytest.approx(total, abs=0.006e9)
    assert cfg.num_params() - cfg.vocab_size * cfg.hidden_size == pytest.approx(
        non_embedding, abs=0.006e9)


def test_flops_formula_by_hand(bench):
    cfg = ModelConfig.tiny("llama", tie_word_embeddings=False)
    d, f, v, n_layers, h, kvh, dh = 64, 128, 256, 2, 4, 2, 16
    per_layer = d * h * dh + 2 * d * kvh * dh + h * dh * d + 3 * d * f + 2 * d
    matmul_params = n_layers * per_layer + d + d * v  # norms are tiny but counted; lm_head counted
    b, t = 2, 10
    want = 6 * matmul_params * b * t + 12 * n_layers * h * dh * t * b * t
    assert bench.model_flops_per_step(cfg, b, t) == want


def test_runs_on_cpu_with_tiny(bench, capsys):
    assert bench.main(["--model-shape", "tiny", "--batch", "4", "--seq", "16", "--steps", "1",
                       "--repeats", "2", "--vocab-chunk", "100", "--num-layers", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert len(lines) == 2
    for rec in lines:
        assert rec["tokens_per_s"] > 0 and rec["mfu"] is None and rec["device_kind"] == "cpu"
        assert rec["tokens_per_step"] == 64
        assert rec["dtype"] == "bfloat16" and math.isfinite(rec["loss"])  # bf16 compute path
