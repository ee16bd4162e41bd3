"""Shared fixtures for chat tests: the real Qwen3, Llama 3.2 and SmolLM2 tokenizers, loaded once."""

import pytest

from toolrl_jax.chat.tokenizer import find_test_tokenizer, load_tokenizer
from toolrl_jax.errors import ModelLoadError

TOKENIZER_NAMES = ("qwen3", "llama3.2", "smollm2")


def _load(name: str):
    try:
        return load_tokenizer(find_test_tokenizer(name))
    except ModelLoadError as exc:  # package not installed
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def qwen3_tok():
    return _load("qwen3")


@pytest.fixture(scope="session")
def llama_tok():
    return _load("llama3.2")


@pytest.fixture(scope="session")
def smol_tok():
    return _load("smollm2")


@pytest.fixture(scope="session", params=TOKENIZER_NAMES)
def any_tok(request):
    """(name, tokenizer) for each real tokenizer."""
    fixture = {"qwen3": "qwen3_tok", "llama3.2": "llama_tok", "smollm2": "smol_tok"}[request.param]
    return request.param, request.getfixturevalue(fixture)
