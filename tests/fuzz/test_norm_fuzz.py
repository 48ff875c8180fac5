"""Property-based fuzzing of the normalization family (issue 10, items 4, 5, 7, 8).

Generators:

* **layer configurations** (``test_random_layer_matches_pytorch``): a random norm layer (BatchNorm1d/2d,
  InstanceNorm1d/2d, LayerNorm, GroupNorm, RMSNorm), random small shapes (batch 2-4, channels 1-6, spatial
  sizes 1-5, LayerNorm/RMSNorm over the last 1 or 2 axes), affine or not, eps in [1e-6, 0.1] (RMSNorm also
  ``None``), momentum in [0, 1] or ``None``, float32 or float64, random weights and biases, the reference or
  the numba path.  Two training steps (forward, backward) and one eval forward, each against the same
  ``torch.nn`` layer: outputs, input gradients, parameter gradients and running statistics within
  ``helpers.parity.TORCH_NORMS``.
* **malformed calls to the functional ops** (``test_functional_op_is_right_or_refuses``): one of
  ``batch_norm``, ``instance_norm``, ``layer_norm``, ``rms_norm``, ``group_norm``, ``moments``,
  ``update_running_stats`` and the backwards, with an input of a random dtype (bool, int8, int64, float16,
  float32, float64, complex, object), rank 0-4 and shape, NaN/inf sprinkled in, and random arguments: eps
  (valid, 0, negative, NaN, inf, bool, str, None), num_groups (valid, 0, negative, bool, float, None),
  normalized_shape (valid, int, (), 0, float, str, None, too long), weight/bias of right or wrong shape and
  dtype, running statistics of right or wrong shape, axes in or out of range, a wrong cache for backward.
* **malformed calls to the layers** (``test_layer_is_right_or_refuses``): a random norm layer fed an input of
  random dtype, rank, channel count and NaN/inf; and ``test_constructor_refuses_clearly``: random constructor
  arguments.

Properties: a call either raises ``ValueError``/``TypeError`` whose message names the op or layer, leaving
every buffer and parameter of the layer as it was; or it returns the result PyTorch computes (in float64, on
the same arguments), NaN where PyTorch has NaN.  Never AttributeError, ZeroDivisionError, IndexError or a
silently different result.

Examples per test in CI: ``NORMLAB_FUZZ_EXAMPLES`` scaled (default 150: 40 layer configurations, 150
functional calls, 80 layer calls, 80 constructor calls).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.parity import TORCH_NORMS, assert_parity
from normlab import functional as F
from normlab import kernels, nn

_BASE = int(os.environ.get("NORMLAB_FUZZ_EXAMPLES", "150"))


def _settings(share: float) -> settings:
    return settings(
        max_examples=max(1, int(_BASE * share)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(autouse=True)
def _restore_backend():
    previous = kernels.backend().name
    yield
    kernels.use(previous)


# --------------------------------------------------------------------------- (a) configurations vs PyTorch
@st.composite
def layer_configs(draw):
    kind = draw(
        st.sampled_from(
            [
                "BatchNorm1d",
                "BatchNorm2d",
                "InstanceNorm1d",
                "InstanceNorm2d",
                "LayerNorm",
                "GroupNorm",
                "RMSNorm",
            ]
        )
    )
    # at least 4 values per statistic: with 2 the input gradient is exactly 0 in exact arithmetic, and the
    # two libraries' rounding noise (float32) is all there is to compare
    n = draw(st.integers(4, 6))
    c = draw(st.integers(1, 6))
    spatial = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=2)))
    eps = draw(st.floats(1e-6, 0.1))
    momentum = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    affine = draw(st.booleans())
    config = {"kind": kind, "affine": affine, "eps": eps, "momentum": momentum}
    if kind == "BatchNorm1d":
        shape = draw(st.sampled_from([(n, c), (n, c, spatial[0])]))
        args, torch_kw = (c,), {"eps": eps, "momentum": momentum, "affine": affine}
    elif kind == "BatchNorm2d":
        shape = (n, c, spatial[0], spatial[-1])
        args, torch_kw = (c,), {"eps": eps, "momentum": momentum, "affine": affine}
    elif kind.startswith("InstanceNorm"):
        shape = (n, c, draw(st.integers(4, 6))) + ((spatial[-1],) if kind.endswith("2d") else ())
        track = momentum is not None and draw(st.booleans())  # momentum=None differs on purpose
        args = (c,)
        torch_kw = {
            "eps": eps,
            "momentum": momentum,
            "affine": affine,
            "track_running_stats": track,
        }
    elif kind == "GroupNorm":
        groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        shape = (n, c, *spatial)
        if c // groups * math.prod(spatial) < 4:
            shape = (n, c, spatial[0] + 4, *spatial[1:])
        args, torch_kw = (groups, c), {"eps": eps, "affine": affine}
    else:
        shape = (n, c, draw(st.integers(4, 6)))
        k = draw(st.integers(1, 2))
        normalized = shape[-k:]
        args = (normalized,)
        if kind == "LayerNorm":
            torch_kw = {"eps": eps, "elementwise_affine": affine}
        else:
            torch_kw = {
                "eps": draw(st.one_of(st.none(), st.just(eps))),
                "elementwise_affine": affine,
            }
    config.update(
        shape=shape,
        args=args,
        torch_kw=torch_kw,
        dtype=draw(st.sampled_from(["float32", "float64"])),
        path=draw(st.sampled_from(["reference", "numba"])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return config


@given(layer_configs())
@_settings(40 / 150)
def test_random_layer_matches_pytorch(config):
    kernels.use(config["path"])
    dt = np.dtype(config["dtype"])
    tdt = getattr(torch, config["dtype"])
    ours = getattr(nn, config["kind"])(*config["args"], **config["torch_kw"], dtype=dt)
    theirs = getattr(torch.nn, config["kind"])(*config["args"], **config["torch_kw"], dtype=tdt)
    rng = np.random.default_rng(config["seed"])
    for name, p in ours.named_parameters():
        p.data = rng.normal(1.0 if name == "weight" else 0.0, 0.5, size=p.data.shape).astype(dt)
        getattr(theirs, name).data = torch.from_numpy(p.data.copy())
    what = f"{config['kind']}{config['args']} {config['torch_kw']} {config['shape']} {dt} {config['path']}"
    for step in range(3):
        training = step < 2
        ours.train(training)
        theirs.train(training)
        x = rng.normal(2.0, 3.0, size=config["shape"]).astype(dt)
        g = rng.normal(size=config["shape"]).astype(dt)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = theirs(xt)
        y = ours(x)
        assert_parity(y, yt, TORCH_NORMS, f"{what} step {step} output")
        yt.backward(torch.from_numpy(g))
        dx = ours.backward(g)
        assert_parity(dx, xt.grad, TORCH_NORMS, f"{what} step {step} dx")
        for name, p in ours.named_parameters():
            assert_parity(p.grad, getattr(theirs, name).grad, TORCH_NORMS, f"{what} d{name}")
            p.grad = None
            getattr(theirs, name).grad = None
        for name in ("running_mean", "running_var"):
            buffer = getattr(ours, name, None)
            if buffer is not None:
                assert_parity(buffer, getattr(theirs, name), TORCH_NORMS, f"{what} {name}")


# --------------------------------------------------------------------------- (b) malformed functional calls
FLOAT_DTYPES = ("float16", "float32", "float64")
DTYPES = FLOAT_DTYPES * 3 + ("bool", "int8", "int64", "complex128", "object")
BAD_SCALARS = [None, True, False, "1e-5", float("nan"), float("inf"), -1.0, -1e-5, 2.5, [1e-5]]


@st.composite
def arrays(draw, min_rank=0, max_rank=4):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=min_rank, max_size=max_rank)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(0.0, draw(st.sampled_from([1.0, 100.0])), size=shape)
    if values.size and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 2))):
            values.flat[draw(st.integers(0, values.size - 1))] = draw(
                st.sampled_from([np.nan, np.inf, -np.inf])
            )
    if dtype == "object":
        return values.astype(object)
    if dtype in ("bool", "int8", "int64"):
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(values).astype(dtype)
    return values.astype(dtype)


def _maybe(draw, good, bad):
    """Mostly the valid value, sometimes one of the bad ones."""
    return draw(st.one_of(st.just(good), st.just(good), st.sampled_from(bad)))


def _param(draw, shape):
    options = [
        None,
        np.ones(shape),
        np.ones(shape, np.float32),
        np.ones((7,)),
        np.ones(shape, np.int64),
    ]
    p = draw(st.sampled_from(options))
    if isinstance(p, np.ndarray) and p.dtype.kind == "f" and p.shape == tuple(shape):
        p = p * draw(st.floats(-2, 2))
    return p


@st.composite
def functional_calls(draw):
    op = draw(
        st.sampled_from(
            [
                "batch_norm",
                "instance_norm",
                "layer_norm",
                "rms_norm",
                "group_norm",
                "moments",
                "update_running_stats",
                "backward",
            ]
        )
    )
    x = draw(arrays())
    c = x.shape[1] if x.ndim >= 2 else 3
    eps = _maybe(draw, draw(st.sampled_from([1e-5, 1e-3, 0.5])), BAD_SCALARS)
    kw: dict = {}
    if op in ("batch_norm", "instance_norm"):
        use_input_stats = draw(st.booleans())
        stat = _maybe(
            draw, np.zeros(c), [None, np.zeros(c + 1), np.zeros(c, np.int64), np.zeros(())]
        )
        var = _maybe(draw, np.ones(c) * 2, [None, np.ones((c, 1)), np.ones(c, bool)])
        kw = dict(
            weight=_param(draw, (c,)),
            bias=_param(draw, (c,)),
            running_mean=stat,
            running_var=var,
            use_input_stats=use_input_stats,
            eps=eps,
        )
    elif op in ("layer_norm", "rms_norm"):
        k = draw(st.integers(1, 2))
        good = tuple(x.shape[-k:]) if x.ndim >= k else (3,)
        shape = _maybe(
            draw, good, [(), 0, -1, 2.5, "ab", None, (0,), (*good, 1, 1), (2.0,), [True]]
        )
        pshape = good if isinstance(shape, tuple) else (3,)
        kw = dict(normalized_shape=shape, weight=_param(draw, pshape), eps=eps)
        if op == "layer_norm":
            kw["bias"] = _param(draw, pshape)
        elif draw(st.booleans()):
            kw["eps"] = None
    elif op == "group_norm":
        groups = _maybe(
            draw,
            draw(st.sampled_from([g for g in range(1, max(c, 1) + 1) if c % g == 0] or [1])),
            [0, -2, True, 2.0, None, "2", c + 1],
        )
        kw = dict(num_groups=groups, weight=_param(draw, (c,)), bias=_param(draw, (c,)), eps=eps)
    elif op == "moments":
        good = draw(st.integers(-max(x.ndim, 1), max(x.ndim, 1) - 1))
        kw = dict(axes=_maybe(draw, good, [x.ndim, -x.ndim - 1, (0, 0), (), 1.0, None, "0", True]))
    elif op == "update_running_stats":
        kw = dict(
            batch_mean=_maybe(draw, np.ones(3), [np.ones(1), np.ones(4), np.ones(3, int), None]),
            batch_var=_maybe(draw, np.ones(3), [np.ones((3, 1)), None]),
            factor=_maybe(
                draw, draw(st.floats(0, 1)), [-0.1, 1.5, float("nan"), True, None, "0.1"]
            ),
        )
    else:
        kw = dict(
            which=draw(
                st.sampled_from(
                    ["batch_norm", "layer_norm", "rms_norm", "group_norm", "instance_norm"]
                )
            ),
            cache=draw(st.sampled_from([None, "cache", 3, (1, 2), "other-shape"])),
        )
    return op, x, kw


def _names_the_op(err: Exception, *names: str) -> bool:
    return any(str(err).startswith(n) for n in names)


def _torch_reference(op, x, kw):
    """PyTorch's result for a call that normlab accepted, computed in float64."""
    t = torch.from_numpy(np.asarray(x, np.float64))

    def opt(a):
        return None if a is None else torch.from_numpy(np.asarray(a, np.float64).copy())

    if op in ("batch_norm", "instance_norm"):
        given = not kw["use_input_stats"]
        rm = opt(kw["running_mean"]) if given else None
        rv = opt(kw["running_var"]) if given else None
        if op == "batch_norm":
            return torch.batch_norm(
                t, opt(kw["weight"]), opt(kw["bias"]), rm, rv, not given, 0.0, kw["eps"], False
            )
        return torch.instance_norm(
            t, opt(kw["weight"]), opt(kw["bias"]), rm, rv, not given, 0.0, kw["eps"], False
        )
    shape = kw.get("normalized_shape")
    shape = (shape,) if isinstance(shape, int) else shape
    if op == "layer_norm":
        return torch.layer_norm(t, shape, opt(kw["weight"]), opt(kw["bias"]), kw["eps"])
    if op == "rms_norm":
        return torch.rms_norm(t, shape, opt(kw["weight"]), kw["eps"])
    return torch.group_norm(
        t, kw["num_groups"], opt(kw["weight"]), opt(kw["bias"]), kw["eps"], False
    )


def _check_against_torch(op, x, kw, y):
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.size == 0:
        return
    expected = _torch_reference(op, x, kw).numpy()
    if op == "rms_norm":
        # normlab's rule: a non-finite mean square makes the whole row NaN (PyTorch: 0 for finite values)
        k = len(kw["normalized_shape"]) if not isinstance(kw["normalized_shape"], int) else 1
        rows = ~np.isfinite(np.asarray(x, np.float64)).reshape((*x.shape[: x.ndim - k], -1)).all(
            axis=-1
        )
        expected = expected.copy()
        expected[rows] = np.nan
    if (
        op in ("batch_norm", "instance_norm")
        and kw["use_input_stats"] is False
        and kw["eps"] is None
    ):
        return
    tol = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-9}[x.dtype.name]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected), err_msg=f"{op} NaN places")
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(
        y[finite].astype(np.float64),
        expected[finite],
        rtol=tol,
        atol=tol * max(1.0, np.abs(expected[finite]).max(initial=0)),
    )


@given(functional_calls())
@_settings(1.0)
def test_functional_op_is_right_or_refuses(call):
    op, x, kw = call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            if op in ("batch_norm", "instance_norm", "layer_norm", "rms_norm"):
                y, _ = getattr(F, f"{op}_forward")(x, **kw)
            elif op == "group_norm":
                y, _ = F.group_norm_forward(x, **kw)
            elif op == "moments":
                mean, var = F.moments(x, **kw)
                # the anchor is NumPy's float64 mean and variance (PyTorch's var_mean gives NaN for the
                # mean of [inf, 1], where the mean is inf)
                x64 = np.asarray(x, np.float64)
                with np.errstate(all="ignore"):
                    expected_mean = np.mean(x64, axis=kw["axes"])
                    expected_var = np.var(x64, axis=kw["axes"])
                for got, want in ((mean, expected_mean), (var, expected_var)):
                    np.testing.assert_allclose(
                        got.astype(float), want, rtol=1e-2, atol=1e-2, equal_nan=True
                    )
                return
            elif op == "update_running_stats":
                rm, rv = F.update_running_stats(np.zeros(3), np.ones(3), **kw)
                f = kw["factor"]
                np.testing.assert_allclose(rm, f * np.asarray(kw["batch_mean"]), rtol=1e-6)
                np.testing.assert_allclose(rv, 1 - f + f * np.asarray(kw["batch_var"]), rtol=1e-6)
                return
            else:
                which = kw["which"]
                cache = kw["cache"]
                if cache == "other-shape":  # a real cache, of another input's shape
                    _, cache = F.layer_norm_forward(np.ones((2, 5)), 5)
                    if np.shape(x) == (2, 5):
                        return
                getattr(F, f"{which}_backward")(x, cache)
                raise AssertionError(f"{which}_backward accepted cache {kw['cache']!r}")
        except (ValueError, TypeError) as err:
            names = (op, "moments", "update_running_stats", f"{kw.get('which')}_backward")
            assert _names_the_op(err, *names), (
                f"{op}: {type(err).__name__} does not name the op: {err}"
            )
            return
    _check_against_torch(op, x, kw, y)


# --------------------------------------------------------------------------- (b) malformed layer calls
LAYERS = {
    "BatchNorm1d": lambda c: nn.BatchNorm1d(c),
    "BatchNorm2d": lambda c: nn.BatchNorm2d(c, affine=False),
    "InstanceNorm1d": lambda c: nn.InstanceNorm1d(c, track_running_stats=True, affine=True),
    "LayerNorm": lambda c: nn.LayerNorm((c, 4)),
    "GroupNorm": lambda c: nn.GroupNorm(1, c),
    "RMSNorm": lambda c: nn.RMSNorm(4),
}


def _state(layer):
    return {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}


@given(
    kind=st.sampled_from(sorted(LAYERS)),
    x=arrays(min_rank=0, max_rank=5),
    training=st.booleans(),
    path=st.sampled_from(["reference", "numba"]),
)
@_settings(80 / 150)
def test_layer_is_right_or_refuses(kind, x, training, path):
    kernels.use(path)
    layer = LAYERS[kind](3).train(training)
    before = _state(layer)
    label = layer._label()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            y = layer(x)
        except (ValueError, TypeError) as err:
            assert str(err).startswith(label), f"{type(err).__name__} does not name {label}: {err}"
            after = _state(layer)
            assert after.keys() == before.keys()
            for key in before:
                np.testing.assert_array_equal(
                    after[key], before[key], err_msg=f"{key} changed on error"
                )
            return
    assert y.shape == x.shape and y.dtype == x.dtype
    finite = np.isfinite(x.astype(np.float64)).all()
    if not finite and y.size:
        # a non-finite input is not hidden: it reaches the output (as inf through an eval BN's affine map, as
        # NaN through batch statistics); a warning names the layer when statistics were taken from it
        assert not np.isfinite(y.astype(np.float64)).all()
        uses_stats = training or kind in ("LayerNorm", "GroupNorm", "RMSNorm")
        if uses_stats:
            assert any(label in str(w.message) for w in caught), f"no warning naming {label}"
            for key in ("running_mean", "running_var"):
                if key in before:
                    np.testing.assert_array_equal(
                        _state(layer)[key], before[key], err_msg=f"{key} learnt NaN"
                    )


@given(
    kind=st.sampled_from(["BatchNorm1d", "InstanceNorm2d", "LayerNorm", "GroupNorm", "RMSNorm"]),
    first=st.sampled_from([3, 0, -1, 2.5, True, "3", None, (), (3, 0), [2, 2]]),
    eps=st.sampled_from([1e-5, 0.0, -1e-5, float("nan"), float("inf"), True, "1e-5"]),
    dtype=st.sampled_from([None, "float32", np.float64, "int32", np.int64, bool, "nonsense", 3]),
)
@_settings(80 / 150)
def test_constructor_refuses_clearly(kind, first, eps, dtype):
    try:
        if kind == "GroupNorm":
            layer = nn.GroupNorm(first, 6, eps=eps, dtype=dtype)
        else:
            layer = getattr(nn, kind)(first, eps=eps, dtype=dtype)
    except (ValueError, TypeError) as err:
        assert str(err).startswith(kind), f"{type(err).__name__} does not name {kind}: {err}"
        return
    # accepted: then every argument was valid
    assert dtype in (None, "float32", np.float64)
    assert isinstance(eps, float) and math.isfinite(eps) and eps >= 0
    assert layer.eps == eps
