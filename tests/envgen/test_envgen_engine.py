"""``eval --benchmark envs`` engine path on a tiny random model with the real SmolLM2 tokenizer:
the rollout engine plays each task on its own world and the episodes are scored."""

import pytest

from toolrl_jax.envgen import BuildOptions, build_env_dir, load_env_tasks
from toolrl_jax.envgen.evaluation import engine_episodes_fn, evaluate_envs

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_engine_episodes_on_a_built_directory(tmp_path):
    from flax import nnx

    from toolrl_jax.chat import detect_template, find_test_tokenizer, load_tokenizer
    from toolrl_jax.models.config import ModelConfig
    from toolrl_jax.models.decoder import Decoder

    tok = load_tokenizer(find_test_tokenizer("smollm2"))
    cfg = ModelConfig.tiny("llama", vocab_size=len(tok), num_layers=1, hidden_size=32, intermediate_size=64,
                           num_heads=2, num_kv_heads=1, head_dim=16, tie_word_embeddings=True,
                           eos_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    build_env_dir(REPO / "configs" / "envs" / "banking.yaml", tmp_path / "bank",
                  BuildOptions(num_tasks=4, levels=("single", "sequential"), distractors=0))
    tasks = load_env_tasks(tmp_path / "bank")
    fn = engine_episodes_fn(model, tok, detect_template(tok), max_turns=2, max_new_tokens=8, num_slots=2,
                            max_obs_tokens=64)
    episodes = fn(tasks)
    assert len(episodes) == len(tasks) and all(1 <= len(e) <= 2 for e in episodes)
    res = evaluate_envs(tasks, lambda batch: episodes[: len(batch)])
    assert res["overall"]["tasks"] == 4 and set(res["per_level"]) == {"single", "sequential"}
    assert 0.0 <= res["overall"]["mean_turn_reward"] <= 2.0
