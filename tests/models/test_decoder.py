"""Decoder: logit parity with transformers' PyTorch models, masks, KV cache, HF I/O, errors."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from toolrl_jax.errors import ConfigError, ModelLoadError
from toolrl_jax.models import (
    Decoder,
    ModelConfig,
    expected_hf_names,
    export_hf_state,
    hf_name_to_path,
    init_cache,
    load_hf_state,
)
from toolrl_jax.models.config import Llama3RopeScaling

LLAMA3_ROPE = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
)
CONFIGS = {
    "llama_tied": ModelConfig.tiny("llama"),
    "llama3_untied": ModelConfig.tiny(
        "llama", tie_word_embeddings=False, rope_theta=500000.0, rope_scaling=LLAMA3_ROPE
    ),
    "qwen2_bias": ModelConfig.tiny("qwen2", num_kv_heads=1),
    # head_dim != D / H like real Qwen3; attention_bias adds q/k/v and o_proj biases.
    "qwen3_qknorm": ModelConfig.tiny("qwen3", head_dim=32, attention_bias=True),
}


def torch_model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A transformers model of ``config`` with non-trivial random weights (std 0.2, random
    norm weights and biases) so that errors in any op show up in the logits."""
    hf = config.to_hf()
    tcfg = transformers.AutoConfig.for_model(**{k: v for k, v in hf.items() if k != "architectures"})
    tcfg.initializer_range = 0.2
    torch.manual_seed(seed)
    model = getattr(transformers, hf["architectures"][0])(tcfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return model


def torch_logits(model: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


@nnx.jit
def forward(model: Decoder, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids=segment_ids)


def run(model, tokens, positions=None, segment_ids=None):
    tokens = jnp.asarray(tokens, jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
        segment_ids = jnp.ones(tokens.shape, jnp.int32)
    return np.asarray(
        forward(model, tokens, jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32))
    )


@pytest.fixture(scope="module")
def pairs():
    """name -> (torch model, our Decoder loaded from its state_dict)."""
    out = {}
    for name, cfg in CONFIGS.items():
        tm = torch_model(cfg)
        # Build our config from transformers' own config dict (tests from_hf on real output).
        ours_cfg = ModelConfig.from_hf(tm.config.to_dict() | {"architectures": [cfg.architecture]})
        assert ours_cfg == cfg
        model = Decoder(ours_cfg, rngs=nnx.Rngs(1))
        load_hf_state(model, tm.state_dict())
        out[name] = (tm, model)
    return out


TOKENS = np.random.RandomState(0).randint(0, 256, size=(2, 24))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(pairs, name):
    tm, model = pairs[name]
    ref = torch_logits(tm, TOKENS)
    got = run(model, TOKENS)
    assert np.abs(ref).max() > 1.0  # weights are non-trivial
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_left_right_padding_and_packing_match_rows_alone(pairs):
    _, model = pairs["qwen3_qknorm"]
    rng = np.random.RandomState(1)
    a, b = rng.randint(0, 256, 5), rng.randint(0, 256, 8)
    ref_a, ref_b = run(model, a[None])[0], run(model, b[None])[0]

    # Left padding: row 0 = [pad x3, a], row 1 = b.
    tokens = np.stack([np.r_[np.zeros(3, int), a], b])
    pos = np.stack([np.r_[np.zeros(3, int), np.arange(5)], np.arange(8)])
    seg = np.stack([np.r_[np.zeros(3, int), np.ones(5, int)], np.ones(8, int)])
    out = run(model, tokens, pos, seg)
    assert np.isfinite(out).all()  # padding rows too
    np.testing.assert_allclose(out[0, 3:], ref_a, atol=1e-5)
    np.testing.assert_allclose(out[1], ref_b, atol=1e-5)

    # Right padding.
    tokens = np.stack([np.r_[a, np.zeros(3, int)], b])
    pos = np.stack([np.r_[np.arange(5), np.zeros(3, int)], np.arange(8)])
    seg = np.stack([np.r_[np.ones(5, int), np.zeros(3, int)], np.ones(8, int)])
    out = run(model, tokens, pos, seg)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :5], ref_a, atol=1e-5)

    # Packing: [a | b] in one row, positions restart, + trailing padding.
    tokens = np.r_[a, b, [0, 0, 0]][None]
    pos = np.r_[np.arange(5), np.arange(8), [0, 0, 0]][None]
    seg = np.r_[np.ones(5, int), 2 * np.ones(8, int), [0, 0, 0]][None]
    out = run(model, tokens, pos, seg)[0]
    np.testing.assert_allclose(out[:5], ref_a, atol=1e-5)
    np.testing.assert_allclose(out[5:13], ref_b, atol=1e-5)


def _make_step(graphdef):
    def step(state, tokens, positions, segment_ids, cache, cache_index):
        model = nnx.merge(graphdef, state)
        h, cache = model.hidden(
            tokens, positions, segment_ids=segment_ids, cache=cache, cache_index=cache_index
        )
        return model.logits(h), cache

    return step


def test_kv_cache_prefill_decode_and_chunk_append(pairs):
    tm, model = pairs["llama3_untied"]
    cfg = model.config
    rng = np.random.RandomState(2)
    lengths = np.array([3, 6])
    seqs = [rng.randint(0, 256, 12) for _ in lengths]
    graphdef, state = nnx.split(model)
    chex.clear_trace_counter()
    step_fn = _make_step(graphdef)
    prefill = jax.jit(step_fn, donate_argnames="cache")
    decode = jax.jit(chex.assert_max_traces(step_fn, n=1), donate_argnames="cache")

    # Right-padded prefill of both prompts.
    T = int(lengths.max())
    tokens = np.zeros((2, T), np.int32)
    seg = np.zeros((2, T), np.int32)
    for b, n in enumerate(lengths):
        tokens[b, :n], seg[b, :n] = seqs[b][:n], 1
    pos = np.broadcast_to(np.arange(T), (2, T)).astype(np.int32)
    cache = init_cache(cfg, batch=2, max_len=16)
    logits, cache = prefill(state, tokens, pos, seg, cache, jnp.zeros(2, jnp.int32))
    logits = np.asarray(logits)
    for b, n in enumerate(lengths):
        ref = torch_logits(tm, seqs[b][None, :n])[0]
        np.testing.assert_allclose(logits[b, :n], ref, atol=1e-4)
    assert np.array_equal(np.asarray(cache.pos[0]), np.r_[0, 1, 2, -1, -1, -1, [-1] * 10])

    # Decode 4 tokens one at a time with per-row offsets (one compile for all steps).
    idx = lengths.copy()
    for _ in range(4):
        tok = np.array([[seqs[b][idx[b]]] for b in range(2)], np.int32)
        p = idx[:, None].astype(np.int32)
        step_logits, cache = decode(state, tok, p, np.ones((2, 1), np.int32), cache, jnp.asarray(idx, jnp.int32))
        for b in range(2):
            ref = torch_logits(tm, seqs[b][None, : idx[b] + 1])[0, -1]
            np.testing.assert_allclose(np.asarray(step_logits)[b, 0], ref, atol=1e-4)
        idx = idx + 1

    # Append a 3-token chunk (a tool observation) to row 0 only.
    chunk = rng.randint(0, 256, 3)
    tokens = np.zeros((2, 3), np.int32)
    tokens[0] = chunk
    seg = np.array([[1, 1, 1], [0, 0, 0]], np.int32)
    pos = (idx[:, None] + np.arange(3)).astype(np.int32)
    chunk_logits, cache = prefill(state, tokens, pos, seg, cache, jnp.asarray(idx, jnp.int32))
    full0 = np.r_[seqs[0][: idx[0]], chunk]
    np.testing.assert_allclose(np.asarray(chunk_logits)[0], torch_logits(tm, full0[None])[0, -3:], atol=1e-4)
    idx = idx + np.array([3, 0])
    # One more decode step on both rows: row 1 overwrites the slots written with pos -1.
    tok = np.array([[7], [seqs[1][idx[1]]]], np.int32)
    step_logits, cache = decode(state, tok, idx[:, None].astype(np.int32), np.ones((2, 1), np.int32), cache, jnp.asarray(idx, jnp.int32))
    ref0 = torch_logits(tm, np.r_[full0, 7][None])[0, -1]
    ref1 = torch_logits(tm, seqs[1][None, : idx[1] + 1])[0, -1]
    np.testing.assert_allclose(np.asarray(step_logits)[0, 0], ref0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(step_logits)[1, 0], ref1, atol=1e-4)


def test_export_round_trip_into_transformers():
    for cfg in (CONFIGS["qwen3_qknorm"], CONFIGS["qwen2_bias"]):
        model = Decoder(cfg, rngs=nnx.Rngs(3))
        # Non-trivial norms so a swapped / untransposed tensor shows up.
        for block in model.layers:
            block.input_layernorm.scale.set_value(jnp.linspace(0.5, 1.5, cfg.hidden_size))
        exported = export_hf_state(model)
        assert list(exported) == expected_hf_names(cfg)
        tm = torch_model(cfg, seed=5)
        missing, unexpected = tm.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported.items()}, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}
        if cfg.tie_word_embeddings:
            assert tm.lm_head.weight.data_ptr() == tm.model.embed_tokens.weight.data_ptr()
        np.testing.assert_allclose(run(model, TOKENS), torch_logits(tm, TOKENS), atol=1e-4)


def test_bfloat16_close_to_float32(pairs):
    tm, model32 = pairs["qwen2_bias"]
    ref = run(model32, TOKENS)
    # Reference for the error bf16 causes: transformers' own model run in bfloat16.
    torch_bf16 = torch_model(model32.config).to(torch.bfloat16)
    with torch.no_grad():
        torch_got = torch_bf16(torch.tensor(TOKENS)).logits.float().numpy()
    torch_err = np.abs(torch_got - ref).max() / np.abs(ref).max()
    for pdtype in ("float32", "bfloat16"):
        cfg = model32.config.replace(dtype="bfloat16", param_dtype=pdtype)
        model = Decoder(cfg, rngs=nnx.Rngs(0))
        load_hf_state(model, tm.state_dict())
        assert model.layers[0].mlp.up_proj.kernel.get_value().dtype == jnp.dtype(pdtype)
        got = run(model, TOKENS)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 1.5 * torch_err + 0.01, (err, torch_err)


def test_remat_same_loss_and_grads(pairs):
    _, model = pairs["llama_tied"]
    remat_model = Decoder(model.config.replace(remat=True), rngs=nnx.Rngs(0))
    nnx.update(remat_model, nnx.state(model, nnx.Param))
    tokens = jnp.asarray(TOKENS)
    pos = jnp.broadcast_to(jnp.arange(TOKENS.shape[1]), TOKENS.shape)

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(m(tokens, pos))[..., 0])

    l1, g1 = nnx.jit(nnx.value_and_grad(loss))(model)
    l2, g2 = nnx.jit(nnx.value_and_grad(loss))(remat_model)
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    chex.assert_trees_all_close(jax.tree.leaves(g1), jax.tree.leaves(g2), atol=1e-6)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_give_the_unrolled_loss_and_grads(pairs, policy):
    """``Decoder.hidden(remat=True, remat_policy=...)``: each policy only changes what the
    backward keeps, never the values (reference: the unrolled blocks without remat)."""
    _, model = pairs["llama_tied"]
    tokens = jnp.asarray(TOKENS)
    pos = jnp.broadcast_to(jnp.arange(TOKENS.shape[1]), TOKENS.shape)

    def loss(m, **kw):
        return jnp.mean(jnp.sin(m.hidden(tokens, pos, **kw)[0]))

    l1, g1 = nnx.jit(nnx.value_and_grad(lambda m: loss(m, remat=False)))(model)
    l2, g2 = nnx.jit(nnx.value_and_grad(
        lambda m: loss(m, remat=True, remat_policy=policy)))(model)
    np.testing.assert_allclose(l1, l2, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(jax.tree.leaves(g1), jax.tree.leaves(g2), atol=1e-6)


def test_dots_policy_keeps_more_in_the_backward_than_full():
    """The policy reaches ``jax.checkpoint``: ``dots`` keeps the projections' outputs, so the
    compiled gradient's scratch is larger than with ``full`` (a no-op policy would tie)."""
    model = Decoder(ModelConfig.tiny("llama", num_layers=2), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    tokens = jnp.ones((2, 64), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(64), (2, 64))

    def temp_bytes(policy):
        def loss(s):
            h = nnx.merge(graphdef, s).hidden(tokens, pos, remat=True, remat_policy=policy)[0]
            return jnp.mean(jnp.sin(h))
        return jax.jit(jax.grad(loss)).lower(state).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("dots") > temp_bytes("full")


def test_unknown_remat_policy_is_a_config_error():
    from toolrl_jax.errors import ConfigError
    from toolrl_jax.rl.train_step import AlgoConfig

    with pytest.raises(ConfigError, match=r"algo\.remat_policy: 'some' is not one of full, dots"):
        AlgoConfig(remat_policy="some")


# ----------------------------------------------------------------------------- config / errors


def test_config_round_trip_through_transformers(tmp_path):
    for cfg in CONFIGS.values():
        d = tmp_path / cfg.model_type / str(cfg.tie_word_embeddings)
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(cfg.to_hf()))
        assert ModelConfig.from_hf(d) == cfg
        assert ModelConfig.from_hf(d / "config.json") == cfg
        tcfg = transformers.AutoConfig.from_pretrained(d)
        assert type(tcfg).__name__.lower().startswith(cfg.model_type)
        assert ModelConfig.from_hf(tcfg.to_dict() | {"architectures": tcfg.architectures}) == cfg


def test_from_hf_legacy_rope_scaling_keys():
    hf = CONFIGS["llama3_untied"].to_hf()
    del hf["rope_parameters"]  # transformers 4.x style: rope_theta + rope_scaling{'type': ...}
    hf["rope_scaling"] = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    assert ModelConfig.from_hf(hf) == CONFIGS["llama3_untied"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM.*LlamaForCausalLM"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0},
          "rope_scaling": None}, "yarn.*default, llama3"),
        ({"hidden_size": None}, "hidden_size"),
        ({"hidden_act": "gelu"}, "gelu"),
    ],
)
def test_from_hf_rejects_unsupported(change, match):
    hf = ModelConfig.tiny("llama").to_hf() | change
    with pytest.raises(ModelLoadError, match=match):
        ModelConfig.from_hf(hf)


def test_from_hf_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        ModelConfig.from_hf(tmp_path)


def test_bad_config_values():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        ModelConfig.tiny("llama", num_kv_heads=3)
    with pytest.raises(ConfigError, match="dtype"):
        ModelConfig.tiny("llama", dtype="float16")


def test_load_hf_state_reports_missing_unexpected_and_shape(pairs):
    tm, model = pairs["qwen2_bias"]
    sd = dict(tm.state_dict())
    bad = dict(sd)
    del bad["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ModelLoadError, match=r"missing 1 tensors: model\.layers\.1\.self_attn\.k_proj\.bias"):
        load_hf_state(model, bad)
    bad = dict(sd)
    bad["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 64)
    with pytest.raises(ModelLoadError, match=r"up_proj\.weight: got \(3, 64\), expected \(128, 64\)"):
        load_hf_state(model, bad)
    bad = dict(sd) | {"model.layers.7.mlp.up_proj.weight": torch.zeros(128, 64)}
    with pytest.raises(ModelLoadError, match=r"unexpected 1 tensors: model\.layers\.7"):
        load_hf_state(model, bad)
    load_hf_state(model, bad, strict=False)  # unexpected names skipped when not strict


def test_hf_name_mapping():
    cfg = CONFIGS["qwen3_qknorm"]
    assert hf_name_to_path("model.layers.1.self_attn.q_proj.weight", cfg) == (
        ("layers", 1, "self_attn", "q_proj", "kernel"), True)
    assert hf_name_to_path("model.layers.0.self_attn.k_norm.weight", cfg) == (
        ("layers", 0, "self_attn", "k_norm", "scale"), False)
    assert hf_name_to_path("lm_head.weight", cfg) == ((), False)  # tied: ignored
    untied = CONFIGS["qwen2_bias"]
    assert hf_name_to_path("lm_head.weight", untied) == (("lm_head", "kernel"), True)
    for name in ("model.layers.0.self_attn.q_norm.weight",  # no qk-norm on qwen2
                 "model.layers.2.mlp.up_proj.weight", "model.foo.weight"):
        with pytest.raises(ModelLoadError):
            hf_name_to_path(name, untied)
    # Every nnx param has exactly one HF name and vice versa.
    for cfg in CONFIGS.values():
        model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
        params = {tuple(p): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        mapped = {}
        for name in expected_hf_names(cfg):
            path, t = hf_name_to_path(name, cfg)
            mapped[path] = name
        assert set(mapped) == set(params)


def _numpy_attention(q, k, v, mask):
    """Plain numpy reference: per batch, head; GQA head h reads kv head h // (H / KVH)."""
    b, t, h, dh = q.shape
    g = h // k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            s = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(dh)
            s = np.where(mask[bi], s, -1e30)
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[bi, :, hi] = p @ v[bi, :, hi // g]
    return out


def test_query_chunked_attention_matches_reference_and_grads():
    from toolrl_jax.models.decoder import attention

    rng = np.random.RandomState(4)
    b, t, h, kvh, dh = 2, 13, 4, 2, 8
    q = rng.randn(b, t, h, dh).astype(np.float32)
    k = rng.randn(b, t, kvh, dh).astype(np.float32)
    v = rng.randn(b, t, kvh, dh).astype(np.float32)
    mask = np.tril(np.ones((t, t), bool))[None] & (rng.rand(b, 1, t) > 0.3)
    mask[1, 5] = False  # a query row that sees nothing: finite output required
    ref = _numpy_attention(q, k, v, mask)
    plain = attention(q, k, v, mask, q_chunk=None)
    chunked = attention(q, k, v, mask, q_chunk=4)  # 13 > 2 * 4 -> 4 blocks, padded
    rows = mask.any(-1)
    np.testing.assert_allclose(np.asarray(plain)[rows], ref[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(plain), atol=1e-6)
    assert np.isfinite(np.asarray(chunked)).all()
    loss = lambda qc, q_, k_, v_: jnp.sum(jnp.sin(attention(q_, k_, v_, mask, q_chunk=qc)))
    g1 = jax.grad(lambda *a: loss(None, *a), argnums=(0, 1, 2))(q, k, v)
    g2 = jax.grad(lambda *a: loss(4, *a), argnums=(0, 1, 2))(q, k, v)
    chex.assert_trees_all_close(g1, g2, atol=1e-5)


def test_cudnn_requires_bfloat16():
    with pytest.raises(ConfigError, match="cudnn"):
        ModelConfig.tiny("llama", attention_impl="cudnn")
    ModelConfig.tiny("llama", attention_impl="cudnn", dtype="bfloat16")  # accepted
