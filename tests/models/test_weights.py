"""Safetensors loading: transformers-saved tiny models (single file, sharded, bf16) give our Decoder
the logits of torch; lazy slicing; clear errors; sharded load on 8 simulated CPU devices."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tests.conftest import simulated_devices_env
from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models.weights import LazyTensor, load_model_from_hf_dir, read_safetensors

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_torch(kind: str, seed: int = 0) -> torch.nn.Module:
    """A random transformers model (std 0.2, random norms/biases) of a tiny Llama or Qwen2."""
    common = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
    )
    if kind == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=True, head_dim=8)
        cls = transformers.LlamaForCausalLM
    else:
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=False)
        cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return model


TOKENS = np.random.default_rng(0).integers(0, 96, size=(2, 9))


def torch_logits(model, tokens=TOKENS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


def our_logits(model, tokens=TOKENS) -> np.ndarray:
    b, t = tokens.shape
    return np.asarray(model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(t), (b, t))))


@pytest.mark.parametrize("kind,shard", [("llama", None), ("qwen2", "20KB")])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, kind, shard):
    ref = tiny_torch(kind)
    kwargs = {"max_shard_size": shard} if shard else {}
    ref.save_pretrained(tmp_path, **kwargs)
    if shard:
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    else:
        assert (tmp_path / "model.safetensors").is_file()
    model, config = load_model_from_hf_dir(tmp_path)
    assert config.model_type == kind
    np.testing.assert_allclose(our_logits(model), torch_logits(ref), atol=1e-4, rtol=1e-4)


def test_bfloat16_checkpoint(tmp_path):
    ref = tiny_torch("llama").to(torch.bfloat16)
    ref.save_pretrained(tmp_path)
    ref32 = tiny_torch("llama")  # same seed; weights rounded to bf16, rotary buffers kept in f32
    with torch.no_grad():
        for param in ref32.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    tensors = read_safetensors(tmp_path)
    assert tensors["model.norm.weight"].dtype == np.dtype(ml_dtypes.bfloat16)
    model, _ = load_model_from_hf_dir(tmp_path)  # bf16 weights, float32 params and compute
    np.testing.assert_allclose(our_logits(model), torch_logits(ref32), atol=1e-4, rtol=1e-4)
    model16, _ = load_model_from_hf_dir(tmp_path, param_dtype="bfloat16")
    assert model16.embed_tokens.embedding[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(model16.norm.scale[...]).view(np.uint16),
        ref.model.norm.weight.detach().view(torch.int16).numpy().view(np.uint16),
    )


def test_lazy_tensors_read_slices(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5)).astype(np.float32)
    b = rng.normal(size=(4,)).astype(ml_dtypes.bfloat16)
    save_file({"a": a, "b": b}, str(tmp_path / "x.safetensors"))
    tensors = read_safetensors(tmp_path / "x.safetensors")
    assert sorted(tensors) == ["a", "b"] and len(tensors) == 2
    lazy = tensors["a"]
    assert isinstance(lazy, LazyTensor) and lazy.shape == (6, 5) and lazy.get_shape() == [6, 5]
    np.testing.assert_array_equal(lazy[1:4, 2:5], a[1:4, 2:5])
    np.testing.assert_array_equal(np.asarray(lazy), a)
    np.testing.assert_array_equal(np.asarray(tensors["b"]), b)
    with pytest.raises(KeyError):
        tensors["c"]


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_torch("llama").save_pretrained(path)
    return path


def _copy_with(
    src: pathlib.Path, dst: pathlib.Path, edit_tensors=None, edit_config=None
) -> pathlib.Path:
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    if edit_config:
        edit_config(config)
    (dst / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(src / "model.safetensors"))
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_named(saved_llama, tmp_path):
    bad = _copy_with(
        saved_llama,
        tmp_path / "m",
        edit_tensors=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
    )
    with pytest.raises(
        ModelLoadError, match=r"missing 1 tensors: model\.layers\.1\.mlp\.up_proj\.weight"
    ):
        load_model_from_hf_dir(bad)


def test_shape_mismatch_is_named(saved_llama, tmp_path):
    def widen(t):
        t["model.layers.0.self_attn.v_proj.weight"] = np.zeros((24, 32), np.float32)

    bad = _copy_with(saved_llama, tmp_path / "m", edit_tensors=widen)
    with pytest.raises(
        ModelLoadError,
        match=r"model\.layers\.0\.self_attn\.v_proj\.weight: got \(24, 32\), expected \(16, 32\)",
    ):
        load_model_from_hf_dir(bad)


def test_unsupported_architecture_is_named(saved_llama, tmp_path):
    def gpt2(c):
        c["architectures"] = ["GPT2LMHeadModel"]
        c["model_type"] = "gpt2"

    bad = _copy_with(saved_llama, tmp_path / "m", edit_config=gpt2)
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel.*not supported"):
        load_model_from_hf_dir(bad)


def test_missing_files_are_named(saved_llama, tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model_from_hf_dir(tmp_path)
    (tmp_path / "config.json").write_text((saved_llama / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="holds no model.safetensors"):
        load_model_from_hf_dir(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-1.safetensors"}})
    )
    with pytest.raises(ModelLoadError, match="names shard model-1.safetensors .* is missing"):
        read_safetensors(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        read_safetensors(tmp_path)


# ----------------------------------------------------------------------------- 8 devices

_SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, pathlib, sys
    import jax, numpy as np, jax.numpy as jnp
    from jax.sharding import NamedSharding
    from toolrl_jax.models.weights import load_model_from_hf_dir
    from toolrl_jax.models.sharding import make_mesh, param_partition_specs
    from toolrl_jax.models.params import param_variables
    from toolrl_jax.models.export import export_hf_dir

    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tp": 2})
    plain, config = load_model_from_hf_dir(src)
    sharded, _ = load_model_from_hf_dir(src, mesh=mesh)
    specs = param_partition_specs(config, mesh=mesh)
    n_split = 0
    for path, var in param_variables(sharded):
        value = var.get_value()
        want = NamedSharding(mesh, specs[path])
        assert value.sharding.is_equivalent_to(want, value.ndim), (path, value.sharding, want)
        n_split += any(a is not None for a in specs[path])
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(4, 9))
    pos = jnp.broadcast_to(jnp.arange(9), (4, 9))
    a = np.asarray(plain(jnp.asarray(tokens), pos))
    b = np.asarray(jax.jit(lambda t, p: sharded(t, p))(jnp.asarray(tokens), pos))
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
    export_hf_dir(sharded, config, out / "sharded", max_shard_bytes=20_000)
    export_hf_dir(plain, config, out / "plain")
    print(json.dumps({"n_split": n_split, "max_diff": float(np.abs(a - b).max())}))
    """
)


def test_sharded_load_on_8_devices(saved_llama, tmp_path):
    env = simulated_devices_env(8)
    proc = subprocess.run(  # noqa: PLW1510  (the return code is asserted below)
        [sys.executable, "-c", _SHARDED_SCRIPT, str(saved_llama), str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n_split"] > 10  # most parameters really are split over the mesh
    # The export of the mesh-sharded model (gathered tensor by tensor) equals the plain one.
    sharded = read_safetensors(tmp_path / "sharded")
    plain = read_safetensors(tmp_path / "plain")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert sorted(sharded) == sorted(plain)
    for name in plain:
        np.testing.assert_array_equal(np.asarray(sharded[name]), np.asarray(plain[name]))
