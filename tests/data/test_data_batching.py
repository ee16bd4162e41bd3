"""Length buckets, padding and the resumable batch iterator."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from toolrl_jax.data.batching import BatchIterator, bucket_for, default_buckets, pad_batch
from toolrl_jax.errors import DataError


def test_buckets():
    assert default_buckets(300, 64) == (64, 128, 256, 300)
    assert default_buckets(64, 64) == (64,)
    assert [bucket_for(n, (64, 128, 256)) for n in (1, 64, 65, 128, 200, 256)] == [64, 64, 128, 128, 256, 256]
    with pytest.raises(DataError, match="257 tokens exceeds the largest bucket"):
        bucket_for(257, (64, 128, 256))


def test_pad_batch_right_and_left():
    tokens, mask, lengths = pad_batch([[5, 6, 7], [8]], (2, 4, 8), pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert tokens.dtype == np.int32 and mask.dtype == bool
    tokens, mask, lengths = pad_batch([[5, 6, 7], [8]], (2, 4, 8), pad_id=-1, batch_size=3, side="left")
    np.testing.assert_array_equal(tokens, [[-1, 5, 6, 7], [-1, -1, -1, 8], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(mask.sum(1), [3, 1, 0])
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    with pytest.raises(ValueError):
        pad_batch([[1]] * 3, (4,), 0, batch_size=2)


def test_epochs_are_permutations_and_seeded():
    it = BatchIterator(10, 3, seed=5, drop_last=False, num_epochs=2)
    batches = list(it)
    assert len(batches) == 8  # 4 per epoch, last one partial
    for e in range(2):
        flat = sorted(i for b in batches[4 * e : 4 * e + 4] for i in b)
        assert flat == list(range(10))
    assert batches[:4] != batches[4:]  # epochs reshuffle
    again = list(BatchIterator(10, 3, seed=5, drop_last=False, num_epochs=2))
    assert again == batches
    other = list(BatchIterator(10, 3, seed=6, drop_last=False, num_epochs=2))
    assert other != batches
    assert list(BatchIterator(5, 2, shuffle=False, num_epochs=1)) == [[0, 1], [2, 3]]


def test_resume_gives_same_next_batches():
    ref = BatchIterator(11, 4, seed=2)
    seen = [next(ref) for _ in range(5)]  # crosses the epoch boundary (2 batches per epoch)
    state = json.loads(json.dumps(ref.state_dict()))
    expected = [next(ref) for _ in range(6)]
    resumed = BatchIterator(11, 4, seed=2)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(6)] == expected
    assert state["epoch"] == 2 and state["index"] == 1
    assert seen  # noqa: the first five were consumed before saving


def test_resume_refuses_other_data():
    it = BatchIterator(11, 4, seed=2)
    with pytest.raises(DataError, match="num_examples"):
        it.load_state_dict({"epoch": 0, "index": 1, "seed": 2, "num_examples": 12, "batch_size": 4})


def test_length_grouping_reduces_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 1000, size=256)
    buckets = default_buckets(1024, 32)

    def padded_tokens(it):
        total = 0
        for b in it.epoch_batches(0):
            total += len(b) * bucket_for(int(max(lengths[b])), buckets)
        return total

    plain = BatchIterator(256, 16, seed=0, lengths=lengths, buckets=buckets)
    grouped = BatchIterator(256, 16, seed=0, lengths=lengths, buckets=buckets, sort_window=8)
    assert padded_tokens(grouped) < 0.8 * padded_tokens(plain)
    assert sorted(i for b in grouped.epoch_batches(0) for i in b) == list(range(256))
    assert grouped.epoch_batches(1) != grouped.epoch_batches(0)


def test_small_dataset_errors():
    with pytest.raises(DataError):
        BatchIterator(0, 1)
    with pytest.raises(DataError, match="smaller than batch_size"):
        BatchIterator(3, 4)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    b=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    k=st.integers(0, 30),
    drop_last=st.booleans(),
    window=st.sampled_from([None, 1, 3]),
)
def test_resume_property(n, b, seed, k, drop_last, window):
    if drop_last and n < b:
        return
    lengths = [(i * 37) % 97 + 1 for i in range(n)]
    make = lambda: BatchIterator(n, b, seed=seed, drop_last=drop_last, lengths=lengths, sort_window=window)  # noqa: E731
    ref = make()
    for _ in range(k):
        next(ref)
    state = ref.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(3)] == [next(ref) for _ in range(3)]
