"""Multi-host training with real processes: 2 processes x 4 CPU devices (jax.distributed, gloo)
started by ``scripts/launch_local.sh``, against one process with 8 devices rolling out the same
two shares (``train.rollout_shards=2``).

The reference is independent of the multi-process code path: the single process gathers
nothing, owns both shares and builds the global batch itself, while each of the two processes
rolls out half of the trajectories, all-gathers the rewards and trains on a batch assembled
from both processes' rows. GRPO with ``ppo_minibatches=2`` (device-side mini-batches) and
``kl_coef > 0`` (reference log-probs on device); the reward component ``token_hash`` of the
driver is a function of the sampled tokens, so equal rewards mean equal samples.

The 2-process run is killed with SIGKILL (the launcher and both processes) once its checkpoint
of step 1 is on disk and relaunched with the same command: step 1 comes from the first launch,
steps 2 and 3 from the resumed one (step 2 right after the restore, step 3 after an in-memory
step), and all three must equal the uninterrupted single-process run. One 2-process run serves
both claims (multi-process == single process, SIGKILL resumes exactly): a second, uninterrupted
2-process run would cost another ~2-3 minutes on 2 cores and is not a more independent reference
than the single-process one.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import export_tiny_model, simulated_devices_env
from toolrl_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "train" / "_multihost_driver.py"
COMPARED = ("reward", "reward/token_hash", "reward/toolrl", "loss", "grad_norm", "ref_kl",
            "kl_loss", "clip_frac", "entropy", "response_length", "constant_groups")


def _args(model_dir, out_dir, steps=3):
    return ["train", f"model.name={model_dir}", f"train.out_dir={out_dir}",
            f"train.steps={steps}", "train.checkpoint_every=1", "train.plot=false",
            "data.num_train=8", "data.num_eval=2", "data.prompt_style=compact",
            "data.min_tools=1", "data.max_tools=1",
            "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=8", "algo.ppo_minibatches=2", "algo.loss.kl_coef=0.01",
            "optim.learning_rate=1e-2", "reward.components.token_hash=1.0"]


def _env(cache_dir, devices=None, **extra):
    """The subprocess environment: ``devices`` simulated CPU devices in one process (see
    ``simulated_devices_env``), else none set here (the launcher sets them per process)."""
    if devices:
        env = simulated_devices_env(devices)
    else:  # NPROC: XLA's CPU pools beyond 2 cores, as simulated_devices_env explains
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["NPROC"] = "64"
    env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR",
                                                         str(cache_dir)), **extra)
    return env


def _launch(num_processes, args, cache_dir, log_dir, new_session=False):
    env = _env(cache_dir, TOOLRL_JAX=f"{sys.executable} {DRIVER}", LOG_DIR=str(log_dir),
               DEVICES_PER_PROCESS="4")
    return subprocess.Popen(["bash", str(REPO / "scripts" / "launch_local.sh"),
                             str(num_processes), *args], env=env, cwd=REPO,
                            start_new_session=new_session)


def _single(args, cache_dir, log_file, devices=8):
    env = _env(cache_dir, devices)
    with open(log_file, "w") as f:
        return subprocess.Popen([sys.executable, str(DRIVER), *args], env=env, cwd=REPO,
                                stdout=f, stderr=subprocess.STDOUT)


def _wait(proc, what, log_dir, timeout=420):
    rc = proc.wait(timeout=timeout)
    if rc != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(pathlib.Path(log_dir).rglob("*"))
                         if p.is_file())
        pytest.fail(f"{what} exited with {rc}:\n{logs}")


def _train_records(run_dir):
    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


def _assert_same(got, want, keys=COMPARED):
    for key in keys:
        if key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["step"], key)


def _kill_after_first_checkpoint(proc, out_dir, timeout=400):
    """SIGKILL of the launcher and its processes once ``checkpoints/1`` and the step-1 metrics
    are on disk; returns the checkpoint steps and train records present at the kill."""
    deadline = time.monotonic() + timeout
    while not (out_dir / "checkpoints" / "1").exists() or not _train_records(out_dir):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes, mid-run
    proc.wait()
    steps = sorted(int(p.name) for p in (out_dir / "checkpoints").iterdir() if p.name.isdigit())
    return steps, [r["step"] for r in _train_records(out_dir)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """The 2-process run (killed with SIGKILL after step 1, relaunched) and its uninterrupted
    1-process, 8-device twin (started together)."""
    root = tmp_path_factory.mktemp("multihost")
    cache, logs = root / "jax_cache", root / "logs"
    logs.mkdir()
    args = _args(tiny_model_dir, root / "two")
    one = _single(_args(tiny_model_dir, root / "one") + ["train.rollout_shards=2"], cache,
                  logs / "single.log")
    at_kill = _kill_after_first_checkpoint(
        _launch(2, args, cache, logs / "killed", new_session=True), root / "two")
    _wait(_launch(2, args, cache, logs / "relaunched"), "the relaunched 2-process run",
          logs / "relaunched")
    _wait(one, "the single-process run", logs)
    return {"root": root, "two": root / "two", "one": root / "one", "cache": cache,
            "logs": logs, "model": tiny_model_dir, "at_kill": at_kill}


def test_two_process_run_killed_with_sigkill_resumes(runs):
    """The kill landed mid-run and the relaunch resumed from the checkpoint (not from 0)."""
    ckpt_steps, logged_steps = runs["at_kill"]
    assert ckpt_steps and max(ckpt_steps) < 3, ckpt_steps
    assert logged_steps and max(logged_steps) < 3, logged_steps
    for p in (0, 1):
        log = (runs["logs"] / "relaunched" / f"process_{p}.log").read_text()
        assert f"at step {max(ckpt_steps)}" in log and "resumed from" in log, log[-2000:]
    assert sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()) == ["1", "2", "3"]


def test_two_processes_equal_one_process_with_two_shares(runs):
    """Every step of the (killed and resumed) 2-process run equals the uninterrupted 1-process
    run; each process generated half of the rows."""
    two, one = _train_records(runs["two"]), _train_records(runs["one"])
    assert [r["step"] for r in two] == [1, 2, 3]  # process 0 alone writes metrics.jsonl
    assert [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(two, one):
        _assert_same(a, b)
        assert a["rollout_rows"] == b["rollout_rows"] == 16
        assert a["rollout_rows_per_process"] == 8  # each process generated half
        assert b["rollout_rows_per_process"] == 16
    assert two[0]["constant_groups"] < 4  # the advantages are not all zero: a real update
    summary = json.loads((runs["two"] / "summary.json").read_text())
    assert summary["after"]["n"] == 2


def test_resume_on_one_process_from_a_two_process_checkpoint(runs, tmp_path):
    """The 2-process checkpoint of step 2 restored on one process (8 devices, two shares)
    reproduces the 2-process run's step 3."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["two"] / "checkpoints", resumed / "checkpoints")
    shutil.rmtree(resumed / "checkpoints" / "3")
    shutil.copy(runs["two"] / "metrics.jsonl", resumed / "metrics.jsonl")
    proc = _single(_args(runs["model"], resumed) + ["train.rollout_shards=2"], runs["cache"],
                   runs["logs"] / "resumed.log")
    _wait(proc, "the resumed single-process run", runs["logs"])
    recs = _train_records(resumed)
    assert [r["step"] for r in recs] == [1, 2, 3]
    _assert_same(recs[-1], _train_records(runs["two"])[-1])


def test_rollout_kv_cache_is_sharded_over_eight_devices(tiny_model_dir, tmp_path):
    """The trainer's rollout engine holds its KV cache on the mesh, 1/8 per device."""
    script = (
        "import json, sys\n"
        "from toolrl_jax.config_io import load_config\n"
        "from toolrl_jax.train.config import TrainConfig\n"
        "from toolrl_jax.train.trainer import Trainer\n"
        "cfg = load_config(TrainConfig, None, sys.argv[1:])\n"
        "k = Trainer(cfg).engine('train').sampler.init_state(0).cache.k\n"
        "print('KV ' + json.dumps({'shape': list(k.shape),\n"
        "                          'shards': [list(s.data.shape) for s in k.addressable_shards]}))\n"
    )
    args = [a for a in _args(tiny_model_dir, tmp_path / "run")[1:] if "token_hash" not in a]
    env = _env(tmp_path / "cache", 8)
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    kv = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("KV "))[3:])
    layers, slots, length, heads, dim = kv["shape"]
    assert len(kv["shards"]) == 8  # one shard per device
    for shard in kv["shards"]:  # slots split 8 ways, everything else whole (1 KV head: no tp)
        assert shard == [layers, slots // 8, length, heads, dim]
    assert slots % 8 == 0


@pytest.fixture(scope="module")
def two_kv_head_model_dir(tmp_path_factory):
    """The tiny llama with 2 KV heads (so ``tp=2`` splits the KV cache's heads)."""
    return export_tiny_model(tmp_path_factory.mktemp("tiny_kv2"), num_kv_heads=2)


# one train step on 8 devices (training mesh data=8) per run directory argument; the second
# run's rollouts on rollout.mesh data=4 x tp=2. Prints the KV cache and weight shardings.
ROLLOUT_MESH_SCRIPT = """
import json, runpy, sys
from flax import nnx
from toolrl_jax.config_io import load_config
from toolrl_jax.train.config import TrainConfig
from toolrl_jax.train.trainer import Trainer

runpy.run_path(sys.argv[1])  # the driver's token_hash reward component (not its main)
args, runs = sys.argv[2:-2], sys.argv[-2:]
for out_dir, extra in zip(runs, ([], ["rollout.mesh.data=4", "rollout.mesh.tp=2"])):
    trainer = Trainer(load_config(TrainConfig, None, args + [f"train.out_dir={out_dir}"] + extra))
    trainer.train()
    sampler = trainer.engine("train").sampler
    k = sampler.init_state(0).cache.k
    q = sampler.params["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    q_train = nnx.state(trainer.model)["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
    print("SHARDING " + json.dumps({
        "kv_shape": list(k.shape), "kv_shards": [list(s.data.shape) for s in k.addressable_shards],
        "kv_devices": sorted(s.device.id for s in k.addressable_shards),
        "kv_mesh": dict(k.sharding.mesh.shape),
        "q_mesh": dict(q.sharding.mesh.shape), "q_shard": list(q.addressable_shards[0].data.shape),
        "q_shape": list(q.shape), "q_train_mesh": dict(q_train.sharding.mesh.shape)}))
"""


def test_rollout_mesh_differs_from_the_training_mesh(two_kv_head_model_dir, tmp_path):
    """``rollout.mesh`` data=4 x tp=2 while training on data=8: the engine's KV cache is split
    as that mesh says (slots 4 ways, KV heads 2 ways: 1/8 per device), its weights live on it
    (resharded device to device: q_proj split over tp), and one train step's metrics equal those
    of rollouts on the training mesh (slots 8 ways, weights replicated).

    (A training mesh with fsdp=8 would be the more telling pair, but its per-layer all-gathers
    on 8 simulated CPU devices once ran into XLA's 40 s CPU-collective rendezvous timeout on the
    2-core machine under a load of ~10, with the default rollout mesh too; the same step
    finished in 69 s at a load of ~5.)"""
    args = [a for a in _args(two_kv_head_model_dir, tmp_path / "unused", steps=1)[1:]
            if "out_dir" not in a]
    args += ["mesh.data=8", "data.num_eval=1"]
    env = _env(tmp_path / "cache", 8)
    runs = [tmp_path / "train_mesh", tmp_path / "rollout_mesh"]
    out = subprocess.run([sys.executable, "-c", ROLLOUT_MESH_SCRIPT, str(DRIVER), *args,
                          *map(str, runs)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=400,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    default, custom = (json.loads(ln[len("SHARDING "):]) for ln in out.stdout.splitlines()
                       if ln.startswith("SHARDING "))
    layers, slots, length, heads, dim = default["kv_shape"]
    assert heads == 2 and slots % 8 == 0
    assert default["kv_mesh"] == default["q_mesh"] == {"data": 8, "fsdp": 1, "tp": 1}
    assert default["kv_shards"] == [[layers, slots // 8, length, heads, dim]] * 8
    assert custom["kv_shape"] == default["kv_shape"]
    assert custom["kv_mesh"] == custom["q_mesh"] == {"data": 4, "fsdp": 1, "tp": 2}
    assert custom["kv_shards"] == [[layers, slots // 4, length, heads // 2, dim]] * 8
    assert custom["kv_devices"] == list(range(8))  # 1/8 on each device, none gathered
    d_model, q_dim = custom["q_shape"]
    assert custom["q_shard"] == [d_model, q_dim // 2]  # q_proj split over tp, data-replicated
    assert custom["q_train_mesh"] == {"data": 8, "fsdp": 1, "tp": 1}  # training keeps its mesh
    got, want = (_train_records(r) for r in reversed(runs))
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1]
    _assert_same(got[0], want[0])
    assert got[0]["rollout_rows"] == 16
    assert got[0]["constant_groups"] < 4  # token_hash rewards differ: a real update


def test_rollout_mesh_must_fit_the_devices():
    from toolrl_jax.errors import ConfigError
    from toolrl_jax.models.sharding import MeshConfig, make_mesh
    from toolrl_jax.train.distributed import rollout_mesh

    train_mesh = make_mesh(MeshConfig())
    assert rollout_mesh(None, train_mesh) is train_mesh
    assert rollout_mesh(MeshConfig(tp=1), None) is None  # one device: no mesh at all
    assert dict(rollout_mesh(MeshConfig(data=-1), train_mesh).shape) == dict(train_mesh.shape)
    with pytest.raises(ConfigError, match=r"rollout\.mesh .*product 2 != 1 devices"):
        rollout_mesh(MeshConfig(data=2), train_mesh)


def _sft_cfg(model_dir, out_dir, micro=None):
    from toolrl_jax.config_io import load_config
    from toolrl_jax.train.config import TrainConfig

    return load_config(TrainConfig, None, [
        f"model.name={model_dir}", f"train.out_dir={out_dir}", "train.steps=0",
        "train.checkpoint_every=1", "train.plot=false", "data.num_train=8", "data.num_eval=1",
        "data.prompt_style=compact", "rollout.prompts_per_step=1", "rollout.samples_per_prompt=2",
        "rollout.max_new_tokens=4", "sft.steps=3", "sft.batch_size=4", "sft.learning_rate=1e-2",
        f"sft.micro_batch_size={'null' if micro is None else micro}"])


def _sft_losses(run_dir):
    return {r["step"]: r["sft_loss"] for r in read_metrics(run_dir) if r["kind"] == "sft"}


def test_sft_resumes_mid_way_with_identical_losses(tiny_model_dir, tmp_path):
    """SFT with micro-batches of 2 rows: equal to whole batches, and a run whose last SFT
    checkpoint is gone (killed after step 2) resumes at step 2 with the same step-3 loss; the
    finished SFT checkpoint holds the weights the KL reference is restored from."""
    import jax
    import numpy as np

    from toolrl_jax.train.trainer import Trainer

    whole = Trainer(_sft_cfg(tiny_model_dir, tmp_path / "whole"))
    whole.train()
    micro = Trainer(_sft_cfg(tiny_model_dir, tmp_path / "micro", micro=2))
    micro.train()
    want = _sft_losses(tmp_path / "whole")
    assert sorted(want) == [1, 2, 3]
    for step, loss in _sft_losses(tmp_path / "micro").items():
        assert loss == pytest.approx(want[step], rel=1e-5), step

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "micro", killed)
    shutil.rmtree(killed / "checkpoints_sft" / "3")
    shutil.rmtree(killed / "checkpoints")  # the RL part never started
    resumed = Trainer(_sft_cfg(tiny_model_dir, killed, micro=2))
    resumed.train()
    got = _sft_losses(killed)
    assert sorted(got) == [1, 2, 3]
    assert got[3] == pytest.approx(_sft_losses(tmp_path / "micro")[3], rel=1e-6, abs=1e-7)
    ref = jax.tree.leaves(resumed.sft_weights())
    final = jax.tree.leaves(micro.sft_weights())
    for a, b in zip(ref, final):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
