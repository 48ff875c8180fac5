"""DataLoader: coverage, determinism, its own generator, sampling with replacement, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normlab.data import DataLoader

N = 103  # not a multiple of the batch size


def _indices(loader: DataLoader) -> list[list[int]]:
    """One epoch of batches; x is arange(N) so each batch shows the indices it drew."""
    return [xb.tolist() for xb, _ in loader]


def _loader(**kwargs) -> DataLoader:
    x = np.arange(N)
    return DataLoader(x, x * 10, **kwargs)


def test_every_sample_exactly_once_per_epoch() -> None:
    loader = _loader(batch_size=10, seed=3)
    assert len(loader) == 11
    for _ in range(3):
        batches = _indices(loader)
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert sorted(i for b in batches for i in b) == list(range(N))


def test_labels_stay_with_their_inputs() -> None:
    for xb, yb in _loader(batch_size=16, seed=1):
        np.testing.assert_array_equal(yb, xb * 10)


def test_drop_last() -> None:
    loader = _loader(batch_size=10, drop_last=True, seed=0)
    assert len(loader) == 10
    batches = _indices(loader)
    assert [len(b) for b in batches] == [10] * 10
    seen = [i for b in batches for i in b]
    assert len(set(seen)) == 100  # each at most once; the 3 left over are dropped
    assert len(DataLoader(np.zeros(5), batch_size=10, drop_last=True)) == 0


def test_no_shuffle_is_index_order() -> None:
    batches = _indices(_loader(batch_size=50, shuffle=False))
    assert batches == [list(range(50)), list(range(50, 100)), [100, 101, 102]]


def test_same_seed_same_batches_different_seed_different() -> None:
    a, b, c = (_loader(batch_size=8, seed=s) for s in (7, 7, 8))
    epochs_a = [_indices(a) for _ in range(2)]
    assert epochs_a == [_indices(b) for _ in range(2)]
    assert epochs_a[0] != _indices(c)
    assert epochs_a[0] != epochs_a[1]  # each epoch draws a new order


def test_the_global_rng_is_neither_used_nor_disturbed() -> None:
    # the legacy global RNG on purpose: the loader must neither read it nor advance it
    np.random.seed(0)  # noqa: NPY002
    state = np.random.get_state()[1].copy()  # noqa: NPY002
    first = _indices(_loader(batch_size=8, seed=5))
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # noqa: NPY002
    np.random.seed(12345)  # noqa: NPY002
    assert _indices(_loader(batch_size=8, seed=5)) == first


def test_without_labels_yields_arrays() -> None:
    x = np.arange(12.0).reshape(6, 2)
    batches = list(DataLoader(x, batch_size=4, shuffle=False))
    assert isinstance(batches[0], np.ndarray)
    np.testing.assert_array_equal(batches[1], x[4:])


def test_batches_are_copies() -> None:
    x = np.arange(10.0)
    for xb in DataLoader(x, batch_size=5, shuffle=False):
        xb[:] = -1
    assert x.min() == 0


def test_sampling_with_replacement() -> None:
    loader = DataLoader(np.arange(10), batch_size=8, replacement=True, num_batches=25, seed=0)
    assert len(loader) == 25
    batches = [xb for xb in loader]
    assert len(batches) == 25 and all(b.shape == (8,) for b in batches)
    drawn = np.concatenate(batches)
    assert drawn.min() >= 0 and drawn.max() <= 9
    # with replacement some batch repeats a sample (8 draws of 10 rarely avoid it 25 times in a row)
    assert any(len(set(b.tolist())) < 8 for b in batches)
    assert len(DataLoader(np.arange(1000), batch_size=100, replacement=True)) == 10


def _run(loader: DataLoader, epochs: int, then_batches: int) -> list[list[int]]:
    out = []
    for _ in range(epochs):
        out += _indices(loader)
    it = iter(loader)
    out += [next(it)[0].tolist() for _ in range(then_batches)]
    return out


@pytest.mark.parametrize("replacement", [False, True])
@pytest.mark.parametrize("stop_after", [0, 4, 11])
def test_resume_from_state_dict_is_bit_identical(replacement: bool, stop_after: int) -> None:
    reference = _loader(batch_size=10, replacement=replacement, seed=11)
    expected = _run(reference, epochs=4, then_batches=0)

    first = _loader(batch_size=10, replacement=replacement, seed=11)
    got = _run(first, epochs=1, then_batches=stop_after)  # interrupted inside epoch 2
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint would store it

    resumed = _loader(batch_size=10, replacement=replacement, seed=999)  # seed overridden by state
    resumed.load_state_dict(state)
    got += _indices(resumed)  # the rest of epoch 2
    got += _indices(resumed) + _indices(resumed)
    assert got == expected


def test_state_dict_between_epochs() -> None:
    a = _loader(batch_size=10, seed=2)
    _indices(a)
    state = a.state_dict()
    assert state["batch"] == 0
    b = _loader(batch_size=10, seed=0)
    b.load_state_dict(state)
    assert _indices(b) == _indices(a)


def test_load_state_dict_checks_and_changes_nothing_on_error() -> None:
    state = _loader(batch_size=10, seed=2).state_dict()
    loader = _loader(batch_size=8, seed=4)
    with pytest.raises(ValueError, match="batch_size: state 10, loader 8"):
        loader.load_state_dict(state)
    state8 = _loader(batch_size=8, seed=2).state_dict()
    broken = {**state8, "rng": {"bit_generator": "MT19937", "state": {}}}
    with pytest.raises(ValueError, match="invalid generator state"):
        loader.load_state_dict(broken)
    with pytest.raises(ValueError, match=r"batch must be in 0\.\.13"):
        loader.load_state_dict({**state8, "batch": 14})
    with pytest.raises(ValueError, match="format"):
        loader.load_state_dict({"rng": {}})
    assert _indices(loader) == _indices(_loader(batch_size=8, seed=4))


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"y": np.arange(5)}, "x has 6 samples but y has shape"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.0}, "batch_size must be a positive integer"),
        ({"num_batches": 3}, "num_batches applies only with replacement=True"),
    ],
)
def test_bad_arguments(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        DataLoader(np.arange(6), **kwargs)


def test_replacement_needs_samples_and_seed_must_not_be_a_generator() -> None:
    with pytest.raises(ValueError, match="0 samples"):
        DataLoader(np.zeros((0, 3)), replacement=True)
    with pytest.raises(TypeError, match="generator of its own"):
        DataLoader(np.arange(3), seed=np.random.default_rng(0))  # type: ignore[arg-type]
