"""Damaged or non-finite checkpoints (issue 10, items 5 and 6): resume falls back to the newest
intact checkpoint with a one-line warning and never deletes it."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from toolrl_jax.errors import DataError
from toolrl_jax.train.checkpoint import Checkpointer, tree_all_finite


def _state(step: int) -> dict:
    return {"w": jnp.arange(4096, dtype=jnp.float32) * step, "b": jnp.full((3, 3), float(step)),
            "count": jnp.int32(step)}


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _make(directory: pathlib.Path, steps=(1, 2, 3), keep: int = 3) -> None:
    with Checkpointer(directory, keep=keep, async_save=False, handle_sigterm=False) as ckpt:
        for step in steps:
            ckpt.save(step, _state(step), {"step": step})


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _halve_largest(step_dir: pathlib.Path) -> None:
    largest = _files(step_dir / "state")[-1]
    data = largest.read_bytes()
    largest.write_bytes(data[: len(data) // 2])


def _garble_metadata(step_dir: pathlib.Path) -> None:
    for path in step_dir.rglob("*"):
        if path.is_file() and ("METADATA" in path.name or path.name in ("metadata", "manifest.ocdbt")):
            path.write_bytes(b"\x00garbled{" * 7)


def _empty(step_dir: pathlib.Path) -> None:
    for path in sorted(step_dir.rglob("*"), key=lambda p: -len(p.parts)):
        path.unlink() if path.is_file() else path.rmdir()


@pytest.mark.parametrize("damage", [_halve_largest, _garble_metadata, _empty])
def test_damaged_newest_checkpoint_falls_back_to_newest_intact(tmp_path, damage):
    directory = tmp_path / "checkpoints"
    _make(directory)
    damage(directory / "3")
    warnings: list[str] = []
    with Checkpointer(directory, keep=3, async_save=False, handle_sigterm=False,
                      warn=warnings.append) as ckpt:
        state, data = ckpt.restore(_abstract(_state(0)))
        assert data == {"step": 2}
        np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(4096, dtype=np.float32) * 2)
        assert int(state["count"]) == 2
        assert all("\n" not in w for w in warnings)
        assert any("step 3 is damaged" in w for w in warnings) or damage is _empty, warnings
        assert ckpt.all_steps() == [1, 2]  # the damaged step left the rotation ...
        moved = list((tmp_path / "checkpoints.damaged").iterdir()) if damage is not _empty or (
            tmp_path / "checkpoints.damaged").exists() else []
        # ... and was kept for inspection (an emptied one may not even count as a checkpoint)
        assert damage is _empty or [p.name.split("-")[0] for p in moved] == ["3"]
        # training goes on from step 2: step 3 and 4 are saved again, step 2 stays restorable
        assert ckpt.save(3, _state(3), {"step": 3}) and ckpt.save(4, _state(4), {"step": 4})
        assert ckpt.all_steps() == [2, 3, 4]
        assert ckpt.restore(_abstract(_state(0)))[1] == {"step": 4}
        assert ckpt.restore(_abstract(_state(0)), step=2)[1] == {"step": 2}


def test_every_checkpoint_damaged_is_a_clear_error_and_nothing_is_moved(tmp_path):
    directory = tmp_path / "checkpoints"
    _make(directory, steps=(1, 2))
    for step in (1, 2):
        _halve_largest(directory / str(step))
    with Checkpointer(directory, async_save=False, handle_sigterm=False, warn=lambda m: None) as c:
        with pytest.raises(DataError, match="no intact checkpoint") as info:
            c.restore(_abstract(_state(0)))
        assert "\n" not in str(info.value) and "step 2" in str(info.value)
        assert c.all_steps() == [1, 2]
    assert not (tmp_path / "checkpoints.damaged").exists()


def test_a_changed_model_moves_nothing(tmp_path):
    """Every step fails the same way when the target no longer fits: not damage, keep them."""
    directory = tmp_path / "checkpoints"
    _make(directory, steps=(1, 2))
    wrong = _abstract({**_state(0), "w": jnp.zeros(10, jnp.float32)})
    with Checkpointer(directory, async_save=False, handle_sigterm=False, warn=lambda m: None) as c:
        with pytest.raises(DataError):
            c.restore(wrong)
        assert c.all_steps() == [1, 2]


def test_non_finite_states_are_not_saved_and_not_resumed_from(tmp_path):
    directory = tmp_path / "checkpoints"
    warnings: list[str] = []
    nan_state = {**_state(3), "w": _state(3)["w"].at[7].set(jnp.nan)}
    assert tree_all_finite(_state(3)) and not tree_all_finite(nan_state)
    assert not tree_all_finite({"x": jnp.array([1.0, jnp.inf])})
    assert tree_all_finite({"k": jax.random.key(0), "i": jnp.arange(3)})
    with Checkpointer(directory, keep=2, async_save=False, handle_sigterm=False,
                      warn=warnings.append) as ckpt:
        ckpt.save(1, _state(1), {"step": 1})
        ckpt.save(2, _state(2), {"step": 2})
        for step in (3, 4):  # a diverged run: require_finite keeps the good ones in the rotation
            assert not ckpt.save(step, nan_state, {"step": step}, require_finite=True)
            assert not ckpt.step_boundary(step, nan_state, {"step": step}, require_finite=True)
        assert ckpt.all_steps() == [1, 2]
        assert "step 3 not saved" in warnings[0] and "step 2" in warnings[0]
        ckpt.save(3, nan_state, {"step": 3})  # written without the check: skipped on restore
        _, data = ckpt.restore(_abstract(_state(0)))
    assert data == {"step": 2}
    assert any("NaN or infinite" in w for w in warnings)
