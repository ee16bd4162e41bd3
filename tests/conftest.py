"""Test set-up: CPU JAX, float32 matmuls at full precision, data paths."""

import os
import pathlib
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, inherited by every subprocess test: the
# suite builds many trainers of the same tiny shapes, and on 2 cores compiling dominates.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="toolrl-jax-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Files with ``slow`` tests run first (stable order otherwise), so that with two xdist
    workers the long end-to-end files overlap the many short ones instead of ending the run."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def simulated_devices_env(n: int, **extra: str) -> dict[str, str]:
    """Environment for a subprocess with ``n`` simulated CPU devices (``extra`` overrides).

    * XLA's 40 s collective timeouts are raised to 600 s: on 2 loaded cores (``pytest -n 2``)
      one device's thread can fall that far behind the others at a rendezvous.
    * ``NPROC=64`` sizes XLA's CPU thread pools (tsl's ``DefaultThreadPoolSize`` reads it)
      beyond the machine's 2 cores. Each simulated device's program runs on a pool thread and
      blocks it at every collective; with a pool sized to the cores, a loaded machine could
      leave one device's program unscheduled while the others wait for it at an all-reduce,
      a deadlock (reproduced: 2 of 4 runs of ``tests/rl/_multidevice_script.py`` beside two
      busy loops; 0 of 3 with ``NPROC=64``).
    """
    flags = (f"--xla_force_host_platform_device_count={n} "
             "--xla_cpu_collective_call_terminate_timeout_seconds=600 "
             "--xla_cpu_collective_timeout_seconds=600")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "NPROC": "64", **extra}


def sigkill_once_exists(proc, path: pathlib.Path, log_file: pathlib.Path, *, timeout: float,
                        what: str) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (e.g. a checkpoint directory); fails with the
    tail of ``log_file`` if the process ends first, or with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, pathlib.Path(log_file).read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {what} in time"
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no handler runs, an async checkpoint may be half written
    assert proc.wait() == -9


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (real ToolRL / API-Bank files); tests that need it skip when absent."""
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


def export_tiny_model(out, *, num_kv_heads: int = 1):
    """A tiny random llama (2 layers) with the real SmolLM2 tokenizer, exported to ``out``."""
    from flax import nnx

    from toolrl_jax.chat import find_test_tokenizer, load_tokenizer
    from toolrl_jax.models.config import ModelConfig
    from toolrl_jax.models.decoder import Decoder
    from toolrl_jax.models.export import export_hf_dir

    tok = load_tokenizer(find_test_tokenizer("smollm2"))
    cfg = ModelConfig.tiny("llama", vocab_size=len(tok), num_layers=2, hidden_size=32,
                           intermediate_size=64, num_heads=2, num_kv_heads=num_kv_heads,
                           head_dim=16, tie_word_embeddings=True,
                           eos_token_ids=(tok.convert_tokens_to_ids("<|im_end|>"),))
    export_hf_dir(Decoder(cfg, rngs=nnx.Rngs(0)), cfg, out, tokenizer=tok)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random llama (2 layers, 1 KV head) with the real SmolLM2 tokenizer, as an HF dir."""
    return export_tiny_model(tmp_path_factory.mktemp("tiny_smol"))
