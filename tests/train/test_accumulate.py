"""Gradient accumulation in ``fit``: ``"exact"`` is the full batch's training, ``"ghost"`` is Ghost BN's.

Float64 throughout, so the equalities hold to 1e-10 after several optimizer steps (momentum SGD, whose
velocity carries any difference forward).
"""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from normlab import nn, optim

F64 = np.float64


def _mlp(v=None) -> nn.Sequential:
    """Three batch-norm layers (``v``: their virtual batch size)."""
    layers = []
    width = [6, 7, 5, 4]
    for i in range(3):
        layers += [
            nn.Linear(width[i], width[i + 1], rng=i, dtype=F64),
            nn.BatchNorm1d(width[i + 1], virtual_batch_size=v, dtype=F64),
            nn.ReLU() if i % 2 == 0 else nn.Tanh(),
        ]
    return nn.Sequential(*layers, nn.Linear(4, 3, rng=9, dtype=F64))


def _cnn(v=None) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, rng=0, dtype=F64),
        nn.BatchNorm2d(3, virtual_batch_size=v, dtype=F64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 2, rng=1, dtype=F64),
        nn.BatchNorm2d(4, virtual_batch_size=v, dtype=F64),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3, rng=2, dtype=F64),
    )


BUILDERS = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (2, 6, 6))}


def _data(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 2.0, size=(n, *shape)), rng.integers(0, 3, n)


def _train(model, x, y, batch_size, **kwargs):
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = nl.fit(
        model, x, y, optimizer=opt, batch_size=batch_size, shuffle=False, verbose=0, **kwargs
    )
    return history


def _assert_states_close(a, b, tol=1e-10):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_allclose(sa[key], sb[key], rtol=tol, atol=tol, err_msg=key)


@pytest.mark.parametrize("net", list(BUILDERS))
@pytest.mark.parametrize("k", [2, 4])
def test_exact_accumulation_equals_full_batch_training(net, k) -> None:
    build, shape = BUILDERS[net]
    b = 4
    x, y = _data(shape, 3 * k * b)
    full, split = build(), build()
    _train(full, x, y, k * b)
    history = _train(split, x, y, b, accumulate=k, accumulation="exact")
    assert len(history.iterations) == 3  # one entry per optimizer step
    _assert_states_close(split, full)
    assert int(split[1].num_batches_tracked) == 3  # running statistics once per step


def test_exact_accumulation_with_a_short_last_step() -> None:
    x, y = _data((6,), 20)  # steps of 8, 8 and 4 samples, both ways
    full, split = _mlp(), _mlp()
    _train(full, x, y, 8)
    _train(split, x, y, 4, accumulate=2, accumulation="exact")
    _assert_states_close(split, full)


@pytest.mark.parametrize("net", list(BUILDERS))
def test_ghost_accumulation_equals_ghost_batch_norm_on_the_full_batch(net) -> None:
    build, shape = BUILDERS[net]
    k, b = 3, 4
    x, y = _data(shape, 3 * k * b, seed=1)
    ghost, split = build(v=b), build()
    _train(ghost, x, y, k * b)
    _train(split, x, y, b, accumulate=k)  # "ghost" is the default mode
    _assert_states_close(split, ghost)
    assert int(split[1].num_batches_tracked) == 3  # once per step, not once per micro-batch


def test_naive_per_batch_training_differs_from_the_full_batch() -> None:
    """The difference the exact mode removes is real: without it the micro-batch statistics change the step."""
    x, y = _data((6,), 16, seed=2)
    full, ghost = _mlp(), _mlp()
    _train(full, x, y, 8)
    _train(ghost, x, y, 4, accumulate=2, accumulation="ghost")
    diff = max(
        float(np.max(np.abs(full.state_dict()[k] - ghost.state_dict()[k])))
        for k in full.state_dict()
    )
    assert diff > 1e-4


def test_history_records_the_accumulation() -> None:
    x, y = _data((6,), 16)
    history = _train(_mlp(), x, y, 4, accumulate=2, accumulation="exact")
    assert history.accumulation == {"accumulate": 2, "mode": "exact"}
    assert history.to_dict()["accumulation"] == {"accumulate": 2, "mode": "exact"}
    assert _train(_mlp(), x, y, 4).accumulation == {"accumulate": 1, "mode": "ghost"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accumulate": 0}, "accumulate must be an int >= 1, got 0"),
        ({"accumulate": 1.5}, "accumulate must be an int >= 1"),
        ({"accumulate": True}, "accumulate must be an int >= 1"),
        ({"accumulate": 2, "accumulation": "naive"}, "accumulation must be one of ghost, exact"),
    ],
)
def test_bad_accumulation_arguments_change_nothing(kwargs, message) -> None:
    model = _mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x, y = _data((6,), 8)
    with pytest.raises(ValueError, match=message):
        _train(model, x, y, 4, **kwargs)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize(
    "model, message",
    [
        (nn.Sequential(nn.Linear(6, 4, rng=0), nn.Dropout(0.5), nn.Linear(4, 3, rng=1)), "Dropout"),
        (
            nn.Sequential(
                nn.Linear(6, 4, rng=0),
                nn.BatchNorm1d(4, virtual_batch_size=2),
                nn.Linear(4, 3, rng=1),
            ),
            "virtual_batch_size=2",
        ),
        (
            nn.Sequential(nn.Linear(6, 4, rng=0), nn.BatchRenorm1d(4), nn.Linear(4, 3, rng=1)),
            "BatchRenorm1d",
        ),
    ],
)
def test_exact_accumulation_refuses_what_it_cannot_make_exact(model, message) -> None:
    before = {k: v.copy() for k, v in model.state_dict().items()}
    x, y = _data((6,), 8)
    with pytest.raises(ValueError, match=message):
        _train(model, x.astype(np.float32), y, 4, accumulate=2, accumulation="exact")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
