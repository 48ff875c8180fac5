"""state_dict / load_state_dict: round trips, PyTorch interchange, and all-or-nothing loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.norm_cases import CASES, NormCase, randomize
from normlab import nn
from normlab.nn import StateDictError


def _trained_bn(seed: int = 0) -> nn.BatchNorm2d:
    rng = np.random.default_rng(seed)
    bn = randomize(nn.BatchNorm2d(3), rng)
    for _ in range(3):
        bn(rng.normal(2.0, 3.0, size=(4, 3, 5, 5)).astype(np.float32))
    return bn


def _snapshot(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), f"{k} differs"


@pytest.mark.parametrize("case", [c for c in CASES if c.layout == "contiguous"], ids=lambda c: c.id)
def test_round_trip_is_bit_exact(case: NormCase) -> None:
    source = randomize(case.build(), np.random.default_rng(3))
    target = case.build()
    target.load_state_dict(source.state_dict())
    _assert_same_state(target.state_dict(), source.state_dict())


def test_state_dict_holds_copies() -> None:
    bn = _trained_bn()
    state = bn.state_dict()
    state["running_mean"][:] = 123.0
    state["weight"][:] = 123.0
    assert not np.any(bn.running_mean == 123.0)
    assert not np.any(bn.weight.data == 123.0)


@pytest.mark.parametrize("case", [c for c in CASES if c.layout == "contiguous"], ids=lambda c: c.id)
def test_pytorch_state_dict_loads_and_gives_the_same_eval_output(case: NormCase) -> None:
    rng = np.random.default_rng(11)
    theirs = getattr(torch.nn, case.layer)(
        *case.args, **case.kwargs, dtype=getattr(torch, case.dtype)
    )
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.from_numpy(rng.normal(0.5, 1.0, size=tuple(p.shape))))
    theirs.train()
    for _ in range(2):  # let PyTorch produce the running statistics itself
        theirs(torch.from_numpy(case.make_input(rng)))
    ours = case.build()
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.eval()
    theirs.eval()
    x = case.make_input(rng)
    expected = theirs(torch.from_numpy(x)).detach().numpy()
    tol = 1e-12 if case.dtype == "float64" else 1e-5
    np.testing.assert_allclose(ours(x), expected, rtol=tol, atol=tol)


def test_keys_and_shapes_match_pytorch() -> None:
    for case in CASES:
        ours = case.build().state_dict()
        theirs = getattr(torch.nn, case.layer)(*case.args, **case.kwargs).state_dict()
        assert list(ours) == list(theirs), case.id
        assert [v.shape for v in ours.values()] == [tuple(v.shape) for v in theirs.values()], (
            case.id
        )


def test_old_state_dict_without_num_batches_tracked_loads_as_zero() -> None:
    bn = _trained_bn()
    old = bn.state_dict()
    del old["num_batches_tracked"]
    fresh = nn.BatchNorm2d(3)
    fresh.num_batches_tracked = np.array(7, dtype=np.int64)
    fresh.load_state_dict(old)
    assert int(fresh.num_batches_tracked) == 0
    np.testing.assert_array_equal(fresh.running_mean, bn.running_mean)


def _corruptions():
    def missing(sd):
        del sd["running_var"]

    def unexpected(sd):
        sd["running_std"] = np.ones(3, np.float32)

    def wrong_shape(sd):
        sd["bias"] = np.zeros(4, np.float32)

    def wrong_dtype(sd):
        sd["weight"] = np.array(["a", "b", "c"])

    def float_counter(sd):
        sd["num_batches_tracked"] = np.array(2.5)

    return [missing, unexpected, wrong_shape, wrong_dtype, float_counter]


@pytest.mark.parametrize("corrupt", _corruptions(), ids=lambda f: f.__name__)
def test_failed_strict_load_changes_nothing(corrupt) -> None:
    target = _trained_bn(seed=1)
    before = _snapshot(target)
    bad = _trained_bn(seed=2).state_dict()  # different values everywhere, then one thing wrong
    corrupt(bad)
    with pytest.raises(StateDictError, match="nothing was changed"):
        target.load_state_dict(bad)
    _assert_same_state(target.state_dict(), before)


def test_non_strict_load_reports_keys_but_still_refuses_wrong_shapes() -> None:
    target = _trained_bn(seed=1)
    source = _trained_bn(seed=2).state_dict()
    del source["running_var"]
    source["extra"] = np.zeros(1)
    result = target.load_state_dict(source, strict=False)
    assert result.missing_keys == ["running_var"]
    assert result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(target.running_mean, source["running_mean"])
    before = _snapshot(target)
    source["bias"] = np.zeros(5, np.float32)
    with pytest.raises(StateDictError, match="bias"):
        target.load_state_dict(source, strict=False)
    _assert_same_state(target.state_dict(), before)


def test_loading_casts_to_the_module_dtype() -> None:
    target = nn.BatchNorm1d(3)  # float32
    source = nn.BatchNorm1d(3, dtype=np.float64)
    source.running_mean = np.array([0.1, 0.2, 0.3])
    target.load_state_dict(source.state_dict())
    assert target.running_mean.dtype == np.float32
    np.testing.assert_array_equal(target.running_mean, np.float32([0.1, 0.2, 0.3]))


def test_track_running_stats_false_has_no_buffers_in_state() -> None:
    assert list(nn.BatchNorm1d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]
    assert list(nn.BatchNorm1d(3, affine=False).state_dict()) == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
