"""Greedy decoding parity with transformers (PyTorch) on random tiny models: the sampler on a
padded batch of mixed-length prompts, and `toolrl-jax generate --json --temperature 0` on a
saved model directory with the real Qwen3 tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _hf_greedy(model, prompt, n, eos=None):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def test_sampler_greedy_equals_transformers_generate():
    from toolrl_jax.models import ModelConfig, create_model, load_hf_state
    from toolrl_jax.rollout.sampler import Sampler
    from toolrl_jax.rollout.sampling import SamplingConfig

    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.3,
        tie_word_embeddings=False,
        eos_token_id=2,
        bos_token_id=1,
    )
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    config = ModelConfig.from_hf(hf_config.to_dict())
    model = create_model(config)
    load_hf_state(model, {k: v.detach().numpy() for k, v in hf.state_dict().items()})

    prompts = [[1, 17, 99, 4], [1, 200, 3, 3, 8, 9, 10, 11, 55, 60, 61], [1, 5]]
    sampler = Sampler(
        model,
        batch_size=4,
        cache_len=48,
        turn_len=12,
        sampling=SamplingConfig(temperature=0.0),
        eos_ids=[2],
    )
    out = sampler.generate(prompts, max_new_tokens=12)
    distinct = set()
    for prompt, ids in zip(prompts, out.completion_ids):
        ref = _hf_greedy(hf, prompt, 12, eos=2)
        assert ids.tolist() == ref
        distinct.update(ref)
    assert len(distinct) > 3  # the random model is not degenerate


@pytest.fixture(scope="module")
def qwen3_tiny_dir(tmp_path_factory):
    from toolrl_jax.chat import find_test_tokenizer

    try:
        tok_dir = find_test_tokenizer("qwen3")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Qwen3 tokenizer not installed: {e}")
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    out = tmp_path_factory.mktemp("qwen3-tiny")
    torch.manual_seed(0)
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    config = transformers.Qwen3Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        initializer_range=0.2,
        tie_word_embeddings=True,
        eos_token_id=eos,
        bos_token_id=None,
    )
    model = transformers.Qwen3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.save_pretrained(out)
    for f in tok_dir.iterdir():
        if (
            f.is_file()
            and (f.name.startswith("tokenizer") or f.suffix in (".json", ".jinja", ".txt"))
            and f.name != "config.json"
        ):
            shutil.copy(f, out / f.name)
    return out, model, tok, eos


def test_generate_cli_json_greedy_equals_transformers(qwen3_tiny_dir, capsys):
    from toolrl_jax.cli import main

    out_dir, hf_model, tok, eos = qwen3_tiny_dir
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a prime number."},
    ]
    code = main(
        [
            "generate",
            "--model",
            str(out_dir),
            "--system",
            messages[0]["content"],
            "--prompt",
            messages[1]["content"],
            "--max-new-tokens",
            "14",
            "--temperature",
            "0",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    reference_prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(reference_prompt, dict) or hasattr(reference_prompt, "keys"):
        reference_prompt = reference_prompt["input_ids"]
    assert result["prompt_ids"] == list(reference_prompt)
    expected = _hf_greedy(hf_model, result["prompt_ids"], 14, eos=eos)
    assert result["completion_ids"] == expected
    assert len(set(expected)) > 2
    assert isinstance(result["text"], str)


def test_generate_cli_bad_model_is_one_line_error(capsys):
    from toolrl_jax.cli import main

    code = main(["generate", "--model", "/nonexistent/model-dir", "--prompt", "hi"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nonexistent" in err
