"""The variant layers: BatchRenorm1d/2d/3d, Ghost BN (``virtual_batch_size``), WSConv2d.

Gradients against finite differences (float64), Keras 3 (renorm) and PyTorch (Ghost BN per chunk, weight
standardization) as anchors, the numba path against the reference, state-dict and checkpoint round trips, and
every bad argument refused with nothing changed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import normlab as nl
from helpers.gradcheck import check_module_gradients
from helpers.parity import KERNELS, TORCH_LAYERS, TORCH_NORMS, assert_parity
from normlab import kernels, nn
from normlab.functional import RenormClipping, RenormSchedule

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def restore_selection():
    yield
    kernels.use()


def _x(shape, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    channels = shape[1]
    loc = np.resize([0.1, -2.0, 3.0, 0.2], channels).reshape(
        (1, channels) + (1,) * (len(shape) - 2)
    )
    scale = np.resize([1.1, 0.3, 4.0, 0.9], channels).reshape(loc.shape)
    return (rng.standard_normal(shape) * scale + loc).astype(dtype)


def _state(module):
    return {k: np.array(v, copy=True) for k, v in module.state_dict().items()}


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# --------------------------------------------------------------------------------------- batch renorm
@pytest.mark.parametrize(
    "cls, shape",
    [
        (nn.BatchRenorm1d, (8, 3)),
        (nn.BatchRenorm2d, (4, 3, 2, 3)),
        (nn.BatchRenorm3d, (3, 3, 2, 2, 2)),
    ],
)
def test_renorm_gradients_against_finite_differences(cls, shape) -> None:
    """Training mode, with the moving statistics placed so that r and d saturate in every channel (there the
    stop-gradient backward is the true gradient), and eval mode.  ``momentum=0`` keeps the moving statistics
    where they are through the check's many forwards (each training forward updates them)."""
    layer = cls(3, momentum=0.0, renorm_clipping={"rmax": 2.0, "dmax": 1.0}, dtype=np.float64)
    layer.running_mean = np.full(3, 10.0)
    layer.running_std = np.full(3, 0.05)
    layer.weight.data = np.array([0.7, 1.3, -0.4])
    layer.bias.data = np.array([0.1, -0.2, 0.3])
    # (x's seed differs from the check's upstream seed 0: an upstream equal to x's noise has nearly no dx)
    check_module_gradients(layer, _x(shape, 11))
    layer.eval()
    check_module_gradients(layer, _x(shape, 12))


KERAS_MOMENTA = {"one set (paper)": (0.8, None), "two sets (Keras renorm_momentum)": (0.8, 0.6)}


@pytest.mark.parametrize("case", list(KERAS_MOMENTA))
def test_renorm_layer_matches_keras_over_steps_and_in_eval(case) -> None:
    """Keras 3 ``BatchNormalization(renorm=True)`` on torch, float32 (Keras computes renorm's corrections in
    float32 whatever the layer dtype, see tests/functional/test_renorm.py): outputs, input and parameter
    gradients, moving statistics after each of 5 steps with clipping active in some channels, then eval."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    if os.environ["KERAS_BACKEND"] != "torch":
        pytest.skip("KERAS_BACKEND is set to another backend than torch")
    keras = pytest.importorskip("keras")
    k_momentum, k_renorm_momentum = KERAS_MOMENTA[case]
    clipping = {"rmax": 1.5, "rmin": 1 / 1.5, "dmax": 0.5}
    ref = keras.layers.BatchNormalization(
        axis=1,
        momentum=k_momentum,
        epsilon=1e-3,
        renorm=True,
        renorm_clipping=clipping,
        renorm_momentum=k_momentum if k_renorm_momentum is None else k_renorm_momentum,
    )
    ref.build((None, 4, 3, 2))
    layer = nn.BatchRenorm2d(
        4,
        eps=1e-3,
        momentum=nn.momentum_from_keras(k_momentum),
        renorm_clipping=clipping,
        renorm_momentum=None if k_renorm_momentum is None else 1 - k_renorm_momentum,
    )
    rng = np.random.default_rng(3)
    layer.weight.data = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    layer.bias.data = rng.uniform(-0.5, 0.5, 4).astype(np.float32)
    ref.gamma.assign(layer.weight.data)
    ref.beta.assign(layer.bias.data)
    clipped = unclipped = False
    for step in range(5):
        x = _x((6, 4, 3, 2), 10 + step, np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        for w in (ref.gamma, ref.beta):
            w.value.grad = None
        yt = ref(xt, training=True)
        (yt * torch.tensor(dy)).sum().backward()
        layer.zero_grad()
        y = layer(x)
        at_bound = np.isclose(np.abs(layer._cache.d), 0.5) | np.isclose(layer._cache.r, 1.5)
        clipped |= bool(at_bound.any())
        unclipped |= bool((~at_bound).any())
        dx = layer.backward(dy)
        assert_parity(y, yt, TORCH_NORMS, f"step {step} y")
        assert_parity(dx, xt.grad, TORCH_NORMS, f"step {step} dx")
        assert_parity(layer.weight.grad, ref.gamma.value.grad, TORCH_NORMS, "dweight")
        assert_parity(layer.bias.grad, ref.beta.value.grad, TORCH_NORMS, "dbias")
        assert_parity(layer.running_mean, ref.moving_mean.value, TORCH_NORMS, "moving mean")
        assert_parity(layer.running_std, ref.moving_stddev.value, TORCH_NORMS, "moving std")
        assert_parity(layer.running_var, ref.moving_variance.value, TORCH_NORMS, "moving var")
        if k_renorm_momentum is not None:
            assert_parity(layer.renorm_mean, ref.renorm_mean.value, TORCH_NORMS, "renorm mean")
            assert_parity(layer.renorm_std, ref.renorm_stddev.value, TORCH_NORMS, "renorm std")
    assert clipped and unclipped
    layer.eval()
    x = _x((5, 4, 3, 2), 99, np.float32)
    assert_parity(layer(x), ref(torch.tensor(x), training=False), TORCH_NORMS, "eval")


def test_renorm_with_no_room_is_batch_norm_including_running_mean() -> None:
    renorm = nn.BatchRenorm1d(
        3, renorm_clipping=RenormClipping(1.0, 0.0), momentum=0.3, dtype=np.float64
    )
    bn = nn.BatchNorm1d(3, momentum=0.3, running_var="biased", dtype=np.float64)
    for step in range(3):
        x = _x((7, 3), step)
        np.testing.assert_allclose(renorm(x), bn(x), rtol=1e-12, atol=1e-12)
        dy = np.random.default_rng(step).standard_normal(x.shape)
        np.testing.assert_allclose(renorm.backward(dy), bn.backward(dy), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(renorm.running_mean, bn.running_mean, rtol=1e-12)


def test_renorm_schedule_is_driven_by_the_step_count_in_the_state_dict(tmp_path) -> None:
    schedule = RenormSchedule(warmup=2, r_max_steps=6, d_max_steps=4)
    layer = nn.BatchRenorm1d(3, renorm_clipping=schedule, dtype=np.float64)
    assert layer.clipping() == RenormClipping(1.0, 0.0)
    for step in range(4):
        layer(_x((6, 3), step))
    assert int(layer.num_batches_tracked) == 4
    assert layer.clipping() == schedule.at(4) == RenormClipping(1.0 + 2.0 * 2 / 4, 5.0)
    model = nn.Sequential(nn.Linear(3, 3, rng=0, dtype=np.float64), layer)
    nl.save(model, tmp_path / "m.safetensors")
    restored = nl.load(tmp_path / "m.safetensors")
    assert restored[1].renorm_clipping == schedule
    assert restored[1].clipping() == layer.clipping()
    _assert_state_equal(_state(restored), _state(model))
    x = _x((5, 3), 7)
    np.testing.assert_array_equal(restored(x), model.eval()(x))


def test_renorm_state_dict_round_trip_bit_exact() -> None:
    a = nn.BatchRenorm2d(3, renorm_momentum=0.05, renorm_clipping={"rmax": 2, "dmax": 1})
    for step in range(3):
        a(_x((4, 3, 2, 2), step, np.float32))
    b = nn.BatchRenorm2d(3, renorm_momentum=0.05, renorm_clipping={"rmax": 2, "dmax": 1})
    b.load_state_dict(a.state_dict())
    _assert_state_equal(_state(a), _state(b))
    assert set(a.state_dict()) >= {
        "running_std",
        "renorm_mean",
        "renorm_std",
        "num_batches_tracked",
    }


def test_renorm_numba_path_equals_the_reference() -> None:
    x = _x((6, 3, 4, 4), 2, np.float32)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    results = {}
    for backend in ("reference", "numba"):
        kernels.use(backend)
        layer = nn.BatchRenorm2d(3, renorm_clipping={"rmax": 1.5, "dmax": 0.5})
        y = layer(x)
        results[backend] = (y, layer.backward(dy), layer.weight.grad, layer.running_std)
    for a, b in zip(results["numba"], results["reference"], strict=True):
        assert_parity(a, b, KERNELS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"renorm_clipping": {"rmax": 0.5}}, "r_max must be >= 1"),
        ({"renorm_clipping": {"dmax": -1}}, "d_max must be >= 0"),
        ({"renorm_clipping": {"rmax": 2, "bogus": 1}}, "accepts the keys"),
        ({"renorm_clipping": "paper"}, "renorm_clipping must be"),
        ({"track_running_stats": False}, "needs track_running_stats=True"),
        ({"renorm_momentum": 1.5}, "renorm_momentum must be in"),
    ],
)
def test_renorm_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        nn.BatchRenorm1d(3, **kwargs)


def test_renorm_failed_forward_changes_nothing() -> None:
    layer = nn.BatchRenorm1d(3)
    before = _state(layer)
    with pytest.raises(ValueError, match=r"BatchRenorm1d\(3\).*more than 1 value per channel"):
        layer(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        layer(np.ones((4, 2), np.float32))
    _assert_state_equal(_state(layer), before)


# --------------------------------------------------------------------------------------- ghost batch norm
@pytest.mark.parametrize(
    "cls, shape, v", [(nn.BatchNorm1d, (12, 3), 4), (nn.BatchNorm2d, (6, 2, 3, 3), 2)]
)
def test_ghost_layer_equals_torch_per_chunk_and_updates_running_stats_once(cls, shape, v) -> None:
    layer = cls(shape[1], virtual_batch_size=v, dtype=np.float64)
    layer.weight.data = np.linspace(0.5, 1.5, shape[1])
    x = _x(shape)
    dy = np.random.default_rng(5).standard_normal(shape)
    y = layer(x)
    dx = layer.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.zeros(shape[1], dtype=torch.float64, requires_grad=True)
    yt = torch.cat(
        [
            torch.nn.functional.batch_norm(c, None, None, wt, bt, training=True)
            for c in torch.split(xt, v)
        ]
    )
    (yt * torch.tensor(dy)).sum().backward()
    assert_parity(y, yt, TORCH_LAYERS, "y")
    assert_parity(dx, xt.grad, TORCH_LAYERS, "dx")
    assert_parity(layer.weight.grad, wt.grad, TORCH_LAYERS, "dweight")
    assert_parity(layer.bias.grad, bt.grad, TORCH_LAYERS, "dbias")

    # once per call, from the whole batch's statistics: what torch's BN stores after one full-batch pass
    full = (
        torch.nn.BatchNorm1d(shape[1], dtype=torch.float64)
        if len(shape) == 2
        else torch.nn.BatchNorm2d(shape[1], dtype=torch.float64)
    )
    full(torch.tensor(x))
    assert int(layer.num_batches_tracked) == 1
    assert_parity(layer.running_mean, full.running_mean, TORCH_NORMS, "running_mean")
    assert_parity(layer.running_var, full.running_var, TORCH_NORMS, "running_var")


def test_ghost_with_the_whole_batch_and_in_eval_is_batch_norm() -> None:
    ghost = nn.BatchNorm1d(3, virtual_batch_size=8, dtype=np.float64)
    plain = nn.BatchNorm1d(3, dtype=np.float64)
    x = _x((8, 3))
    np.testing.assert_allclose(ghost(x), plain(x), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(ghost.running_var, plain.running_var, rtol=1e-12)
    ghost.eval()
    plain.eval()
    x = _x((5, 3), 1)  # eval: any batch size, the running statistics
    np.testing.assert_array_equal(ghost(x), plain(x))


def test_ghost_numba_path_equals_the_reference() -> None:
    x = _x((8, 3, 4, 4), 3, np.float32)
    dy = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
    results = {}
    for backend in ("reference", "numba"):
        kernels.use(backend)
        layer = nn.BatchNorm2d(3, virtual_batch_size=4)
        results[backend] = (layer(x), layer.backward(dy), layer.weight.grad, layer.running_var)
    for a, b in zip(results["numba"], results["reference"], strict=True):
        assert_parity(a, b, KERNELS)


def test_ghost_is_not_fused_and_gradients_check() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3, virtual_batch_size=3, dtype=np.float64), nn.ReLU())
    assert not any(isinstance(m, nn.BatchNormAct) for m in nn.fuse(model).modules())
    check_module_gradients(
        nn.BatchNorm1d(3, virtual_batch_size=3, dtype=np.float64), _x((9, 3), 11)
    )


@pytest.mark.parametrize("v", [0, -1, 2.5, True])
def test_ghost_bad_virtual_batch_size(v) -> None:
    with pytest.raises(ValueError, match="virtual_batch_size must be an int >= 1"):
        nn.BatchNorm2d(3, virtual_batch_size=v)


@pytest.mark.parametrize("n", [3, 10])
def test_ghost_batch_not_a_multiple_is_refused_with_nothing_changed(n) -> None:
    layer = nn.BatchNorm1d(3, virtual_batch_size=4)
    before = _state(layer)
    with pytest.raises(
        ValueError,
        match=rf"virtual_batch_size=4 needs a training batch that is a multiple of it, got a batch of {n}",
    ):
        layer(np.ones((n, 3), np.float32))
    _assert_state_equal(_state(layer), before)


def test_ghost_config_round_trip(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.BatchNorm1d(3, virtual_batch_size=2))
    nl.save(model, tmp_path / "g.safetensors")
    assert nl.load(tmp_path / "g.safetensors")[1].virtual_batch_size == 2


# --------------------------------------------------------------------------------------- weight standardization
def test_wsconv_matches_torch_two_lines_and_gradients_check() -> None:
    conv = nn.WSConv2d(2, 3, 3, padding=1, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    dy = np.random.default_rng(1).standard_normal((2, 3, 5, 5))
    y = conv(x)
    dx = conv.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight.data, requires_grad=True)
    bt = torch.tensor(conv.bias.data, requires_grad=True)
    mean = wt.mean(dim=(1, 2, 3), keepdim=True)
    w_hat = (wt - mean) / torch.sqrt(wt.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    yt = torch.nn.functional.conv2d(xt, w_hat, bt, padding=1)
    (yt * torch.tensor(dy)).sum().backward()
    assert_parity(y, yt, TORCH_LAYERS, "y")
    assert_parity(dx, xt.grad, TORCH_LAYERS, "dx")
    assert_parity(conv.weight.grad, wt.grad, TORCH_LAYERS, "dweight")
    assert_parity(conv.bias.grad, bt.grad, TORCH_LAYERS, "dbias")
    check_module_gradients(
        nn.WSConv2d(2, 2, 2, rng=1, dtype=np.float64),
        np.random.default_rng(2).standard_normal((2, 2, 3, 3)),
    )


def test_wsconv_refuses_one_element_kernels_and_bad_eps(tmp_path) -> None:
    with pytest.raises(ValueError, match="more than one weight per output channel"):
        nn.WSConv2d(1, 4, 1)
    with pytest.raises(ValueError, match="ws_eps must be a number > 0"):
        nn.WSConv2d(2, 4, 3, ws_eps=0)
    model = nn.Sequential(nn.WSConv2d(2, 3, 2, rng=0, ws_eps=1e-4))
    nl.save(model, tmp_path / "w.safetensors")
    assert nl.load(tmp_path / "w.safetensors")[0].ws_eps == 1e-4
