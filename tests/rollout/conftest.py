"""Shared fixtures of the rollout tests: one random tiny decoder and one sampling sampler."""

import pytest

from toolrl_jax.rollout.sampler import Sampler
from toolrl_jax.rollout.sampling import SamplingConfig

from ._models import random_tiny_decoder

TEMPERATURE_1_TOP_50 = SamplingConfig(temperature=1.0, top_k=50)


@pytest.fixture(scope="session")
def llama():
    return random_tiny_decoder("llama", seed=1)


@pytest.fixture(scope="session")
def sampler_t1(llama):
    """Batch 2, temperature 1, top-k 50 (compiled once for the session)."""
    return Sampler(llama, batch_size=2, cache_len=64, turn_len=12, sampling=TEMPERATURE_1_TOP_50)
