"""LoRA in training: adapter-only optimizer state, frozen base, base-model KL reference, LoRA
SFT, checkpoints of adapters, exact resume, merged export that transformers loads.

Independent references: byte counts from the layer shapes (``r * (in + out)`` per wrapped
projection), the LoRA gradient from the full model's kernel gradient at ``B = 0``
(``dL/dB = s A^T dL/dW``, ``dL/dA = s dL/dW B^T = 0``), reference log-probs from a plain Decoder
holding the base weights, and transformers' PyTorch model for the export.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from tests.conftest import simulated_devices_env
from toolrl_jax.cli import main
from toolrl_jax.config_io import load_config
from toolrl_jax.models.config import ModelConfig
from toolrl_jax.models.decoder import Decoder
from toolrl_jax.models.lora import ALL_TARGETS, LoRAConfig, apply_lora, split_adapters
from toolrl_jax.models.registry import load_model
from toolrl_jax.rl.losses import LossConfig
from toolrl_jax.rl.train_step import AlgoConfig, Learner, OptimConfig, split_model
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.metrics import read_metrics
from toolrl_jax.train.sft import SFTLearner

MC = ModelConfig.tiny("llama", num_layers=2)
LORA = LoRAConfig(enabled=True, rank=4, alpha=8.0)
ALGO = AlgoConfig(vocab_chunk=96, loss=LossConfig(kl_coef=0.05))
OPT = OptimConfig(learning_rate=1e-2, weight_decay=0.0)


def _nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """``(in, out)`` of every projection from the model config (HF shapes, transposed)."""
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    d, f = c.hidden_size, c.intermediate_size
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def _batch(b: int = 4, t: int = 12, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    mask = np.zeros((b, t), np.float32)
    mask[:, t // 2:] = 1.0
    return {"tokens": r.integers(3, 256, (b, t)).astype(np.int32),
            "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1)), "loss_mask": mask,
            "advantages": np.array([1.0, -1.0, 0.5, -0.5], np.float32)[:b],
            "ref_logprobs": (-5.5 + 0.2 * r.normal(size=(b, t))).astype(np.float32)}


def _adapted(config=MC, lora=LORA, seed=0):
    model = apply_lora(Decoder(config, rngs=nnx.Rngs(seed)), lora, rngs=nnx.Rngs(seed + 1))
    return model, *split_adapters(model)


@pytest.mark.parametrize("base_dtype", [None, "bfloat16"])
def test_optimizer_state_holds_only_adapters(base_dtype):
    lora = dataclasses.replace(LORA, base_dtype=base_dtype)
    _, graphdef, adapters, base = _adapted(lora=lora)
    learner = Learner(graphdef, MC, ALGO, OptimConfig(), frozen_params=base)
    state = learner.init_state(adapters)
    want = sum(4 * lora.rank * (i + o) for i, o in _shapes(MC).values()) * MC.num_layers
    assert set(ALL_TARGETS) == set(_shapes(MC))
    assert _nbytes(state.params) == want
    leaves = jax.tree.leaves(state.opt_state)
    floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    others = [x for x in leaves if not jnp.issubdtype(x.dtype, jnp.floating)]
    assert _nbytes(floats) == 2 * want  # AdamW mu and nu of A and B, nothing of the base
    assert all(x.size == 1 for x in others)  # step counters
    base_dtypes = {x.dtype for x in jax.tree.leaves(base)}
    assert base_dtypes == {jnp.dtype(base_dtype or "float32")}
    assert _nbytes(base) == jnp.dtype(base_dtype or "float32").itemsize * MC.num_params()


def test_lora_gradient_is_the_projected_full_gradient_at_zero_b():
    """At B = 0 the adapted model is the base, so the LoRA learner's gradient follows from the
    full learner's kernel gradient G: dL/dB = s A^T G, dL/dA = 0."""
    _, graphdef, adapters, base = _adapted()
    plain = Decoder(MC, rngs=nnx.Rngs(0))
    full_graphdef, full_params = split_model(plain)
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}  # random ref log-probs: KL grad
    lora_learner = Learner(graphdef, MC, ALGO, OPT, frozen_params=base)
    full_learner = Learner(full_graphdef, MC, ALGO, OPT)
    _, g_lora, _ = jax.jit(lora_learner.loss_and_grads)(adapters, batch, base)
    _, g_full, _ = jax.jit(full_learner.loss_and_grads)(full_params, batch)
    scale = LORA.scale
    for i in range(MC.num_layers):
        for owner in ("self_attn", "mlp"):
            for name in g_lora["layers"][i][owner]:
                g = np.asarray(g_full["layers"][i][owner][name]["kernel"], np.float64)
                a = np.asarray(adapters["layers"][i][owner][name]["lora_a"], np.float64)
                got = g_lora["layers"][i][owner][name]
                np.testing.assert_allclose(np.asarray(got["lora_b"]), scale * a.T @ g,
                                           rtol=1e-4, atol=1e-7)
                np.testing.assert_array_equal(np.asarray(got["lora_a"]), 0.0)


def test_lora_rl_and_sft_steps_change_only_adapters():
    _, graphdef, adapters, base = _adapted()
    base_before = jax.tree.map(np.array, base)
    batch = _batch()
    learner = Learner(graphdef, MC, ALGO, OPT, frozen_params=base)
    with_ref = dict(batch)
    start = np.asarray(learner.compute_logprobs(adapters, batch)["logprobs"])
    with_ref.update(ref_logprobs=start, old_logprobs=start)  # PPO epochs on one batch
    state = learner.init_state(adapters)
    losses = []
    for _ in range(3):
        state, m = learner.train_step(state, with_ref)
        losses.append(float(m["loss"]))
    assert losses[0] != losses[-1] and all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # the adapters raise the ratio of positive advantages
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                           state.params, adapters)
    assert all(changed["layers"][0]["mlp"]["down_proj"].values())
    jax.tree.map(np.testing.assert_array_equal, base, base_before)  # bit-identical base

    sft = SFTLearner(graphdef, OPT, vocab_chunk=96, frozen_params=base)
    sft_state = sft.init_state(state.params)
    sft_losses = []
    for _ in range(3):
        sft_state, m = sft.step(sft_state, {k: batch[k] for k in ("tokens", "positions",
                                                                   "loss_mask")})
        sft_losses.append(float(m["sft_loss"]))
    assert sft_losses[-1] < sft_losses[0]
    jax.tree.map(np.testing.assert_array_equal, base, base_before)


def test_reference_logprobs_are_the_base_model_with_adapters_off():
    """The trainer's reference learner (adapters off, the same frozen arrays) gives the plain
    base Decoder's log-probs, computed here from full logits with numpy."""
    from toolrl_jax.models.lora import adapters_disabled

    model, graphdef, adapters, base = _adapted()
    rng = np.random.default_rng(3)
    adapters = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype), adapters)
    with adapters_disabled(model):
        ref_graphdef = split_adapters(model)[0]
    ref = Learner(ref_graphdef, MC, ALGO, OPT, frozen_params=base)
    policy = Learner(graphdef, MC, ALGO, OPT, frozen_params=base)
    batch = _batch()
    got = np.asarray(ref.compute_logprobs(adapters, batch)["logprobs"])
    plain = Decoder(MC, rngs=nnx.Rngs(0))  # the same init as the adapted model's base
    logits = np.asarray(plain(jnp.asarray(batch["tokens"]), jnp.asarray(batch["positions"])),
                        np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tok = batch["tokens"][:, 1:]
    want = np.take_along_axis(logits[:, :-1], tok[..., None], -1)[..., 0] - logz[:, :-1]
    np.testing.assert_allclose(got[:, 1:], want, rtol=1e-4, atol=1e-4)
    moved = np.asarray(policy.compute_logprobs(adapters, batch)["logprobs"])
    assert np.abs(moved[:, 1:] - want).max() > 1e-2  # the adapted policy is another model


def test_export_run_of_a_full_fine_tune_writes_the_checkpoint_weights(tiny_model_dir, tmp_path):
    """``export --run`` without LoRA: the directory holds the checkpoint's params exactly."""
    from toolrl_jax.config_io import save_config
    from toolrl_jax.train.checkpoint import Checkpointer

    run = tmp_path / "run"
    cfg = load_config(TrainConfig, None, [f"model.name={tiny_model_dir}"])
    save_config(cfg, run / "resolved_config.yaml")
    loaded = load_model(str(tiny_model_dir))
    graphdef, params = split_model(loaded.model)
    learner = Learner(graphdef, loaded.config, cfg.algo, cfg.optim)
    state = learner.init_state(params)
    rng = np.random.default_rng(0)
    trained = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, 0.01, x.shape), x.dtype),
                           state.params)
    with Checkpointer(run / "checkpoints", async_save=False, handle_sigterm=False) as ckpt:
        ckpt.save(7, state.replace(params=trained), {"step": 7}, wait=True)
    out = tmp_path / "out"
    assert main(["export", "--run", str(run), "--out", str(out), "--dtype", "float32"]) == 0
    _, exported = split_model(load_model(str(out)).model)
    jax.tree.map(np.testing.assert_array_equal, exported, jax.device_get(trained))


# ----------------------------------------------------------------------------- the trainer
def _cfg(model_dir, out_dir, steps):
    return load_config(TrainConfig, None, [
        f"model.name={model_dir}", f"train.out_dir={out_dir}", f"train.steps={steps}",
        "train.checkpoint_every=1", "train.plot=false", "data.num_train=8", "data.num_eval=2",
        "data.prompt_style=compact", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=8", "algo.ppo_minibatches=2", "algo.micro_batch_size=2",
        "algo.loss.kl_coef=0.1", "optim.learning_rate=1e-2", "sft.steps=1", "sft.batch_size=2",
        "sft.learning_rate=1e-2", "lora.enabled=true", "lora.rank=4", "lora.alpha=8.0",
    ])


def _dir_bytes(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow
def test_lora_trainer_end_to_end_resume_and_merged_export(tiny_model_dir, tmp_path):
    from toolrl_jax.train.trainer import Trainer

    full = Trainer(_cfg(tiny_model_dir, tmp_path / "full", 3))
    full.train()
    # the base is bit-identical to the loaded model, the adapters moved, the engines see them
    loaded = load_model(str(tiny_model_dir)).model
    _, _, base = split_adapters(full.model)
    _, plain = split_model(loaded)
    jax.tree.map(np.testing.assert_array_equal, base, plain)
    _, adapters, _ = split_adapters(full.model)
    b = np.asarray(adapters["layers"][1]["mlp"]["down_proj"]["lora_b"])
    assert np.abs(b).max() > 0
    engine_b = full.engine("train").sampler.params["layers"][1]["mlp"]["down_proj"]["lora_b"]
    np.testing.assert_array_equal(np.asarray(engine_b[...]), b)
    recs = [r for r in read_metrics(tmp_path / "full") if r["kind"] == "train"]
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(np.isfinite(r["ref_kl"]) and np.isfinite(r["loss"]) for r in recs)
    # checkpoints hold adapters + AdamW moments: far smaller than the base weights
    state_dir = tmp_path / "full" / "checkpoints" / "3" / "state"
    assert _dir_bytes(state_dir) < _nbytes(plain) / 4

    # killed after step 2, resumed to step 3: the uninterrupted run's step 3
    Trainer(_cfg(tiny_model_dir, tmp_path / "split", 2)).train()
    split = Trainer(_cfg(tiny_model_dir, tmp_path / "split", 3))
    split.train()
    last = [r for r in read_metrics(tmp_path / "split") if r["kind"] == "train"][-1]
    assert last["step"] == 3
    for key in ("reward", "loss", "grad_norm", "ref_kl", "response_length"):
        assert last[key] == pytest.approx(recs[-1][key], rel=1e-5, abs=1e-6), key
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7),
                 split_adapters(split.model)[1], adapters)

    # merged export of the run's newest checkpoint loads in transformers with our logits
    out = tmp_path / "merged"
    assert main(["export", "--run", str(tmp_path / "full"), "--out", str(out),
                 "--dtype", "float32"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(3, 1000, (2, 10))
    positions = jnp.broadcast_to(jnp.arange(10), (2, 10))
    ours = np.asarray(nnx.jit(lambda m, t, p: m(t, p))(full.model, jnp.asarray(tokens), positions))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    plain_logits = np.asarray(nnx.jit(lambda m, t, p: m(t, p))(loaded, jnp.asarray(tokens),
                                                                positions))
    assert np.abs(plain_logits - theirs).max() > 1e-4  # the adapters are in the export


@pytest.mark.slow
def test_lora_step_on_a_4_device_mesh_matches_one_device():
    """(fsdp=2, tp=2) on 4 simulated CPU devices: the same losses and adapters as on one
    device, A sharded like its kernel's input dim, the sharded base untouched."""
    import json
    import pathlib
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[2]
    env = simulated_devices_env(4)
    proc = subprocess.run([sys.executable, str(repo / "tests/train/_lora_mesh_script.py")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    np.testing.assert_allclose(res["losses"], res["ref_losses"], rtol=1e-5, atol=1e-6)
    assert res["ref_losses"][1] != res["ref_losses"][0]
    assert res["adapter_rel"] <= 5e-5, res
    assert res["q_proj.lora_a"] == "P('fsdp', None)"
    assert res["base_unchanged"] and res["ref_base_unchanged"]
