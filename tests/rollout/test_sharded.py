"""The sampler on a mesh of 8 simulated CPU devices gives the same greedy tokens as on one
device, with the KV cache split over slots (data x fsdp) and KV heads (tp)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from tests.conftest import simulated_devices_env

SCRIPT = r"""
import json, sys
import jax, numpy as np
from flax import nnx
sys.path.insert(0, ".")
from tests.rollout._models import random_tiny_decoder
from toolrl_jax.models import make_mesh
from toolrl_jax.rollout.sampler import Sampler
from toolrl_jax.rollout.sampling import SamplingConfig

prompts = [[5, 6, 7], list(range(10, 31)), [3], [40, 41, 42, 43, 44, 45, 46], [9, 8], [1, 2]]
model = random_tiny_decoder("llama", seed=1)
greedy = SamplingConfig(temperature=0.0)
plain = Sampler(model, batch_size=4, cache_len=64, turn_len=10, sampling=greedy)
ref = plain.generate(prompts, max_new_tokens=10)

mesh = make_mesh({"data": 2, "fsdp": 2, "tp": 2})
graphdef, state = nnx.split(model)
from toolrl_jax.models.sharding import param_shardings
state = jax.device_put(state, param_shardings(state, model.config, mesh))
sharded_model = nnx.merge(graphdef, state)
sharded = Sampler(sharded_model, batch_size=4, cache_len=64, turn_len=10,
                  sampling=greedy, mesh=mesh)
out = sharded.generate(prompts, max_new_tokens=10)
st = sharded.init_state(0)
st = sharded.extend(st, [0, 1], [[1, 2, 3], [4, 5]], reset=True)
st, _, _ = sharded.decode(st, 3)
print(json.dumps({
    "same": [a.tolist() == b.tolist() for a, b in zip(ref.completion_ids, out.completion_ids)],
    "k_spec": str(st.cache.k.sharding.spec), "tokens_spec": str(st.tokens.sharding.spec),
    "k_shard_shape": list(st.cache.k.addressable_shards[0].data.shape),
    "devices": len(st.cache.k.sharding.device_set),
}))
"""


def test_sampler_on_eight_device_mesh_matches_single_device():
    repo = pathlib.Path(__file__).resolve().parents[2]
    env = simulated_devices_env(8)
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCRIPT],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(result["same"]), result
    assert result["devices"] == 8
    # k: [L, B, S, KVH, Dh] = [2, 4, 64, 2, 16] split: B over data*fsdp (4 ways), KVH over tp
    assert result["k_shard_shape"] == [2, 1, 64, 1, 16], result
