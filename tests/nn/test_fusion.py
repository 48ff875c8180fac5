"""``nn.fuse``: a new model whose BatchNormAct modules hold the user's own layers, so training it trains the
user's model; the reference of BatchNormAct is the two layers in sequence, the fused kernel bit for bit equal."""

from __future__ import annotations

import numpy as np
import pytest

from normlab import kernels, nn, optim


@pytest.fixture(autouse=True)
def restore_selection():
    yield
    kernels.use()


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(6, 5, rng=0),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Sequential(nn.Linear(5, 4, rng=1), nn.BatchNorm1d(4), nn.Sigmoid()),
        nn.BatchNorm1d(4),
        nn.Tanh(),
        nn.Linear(4, 2, rng=2),
    )


def test_fuse_returns_a_new_model_holding_the_same_layers():
    model = _model()
    keys = list(model.state_dict())
    fused = nn.fuse(model)
    assert fused is not model and list(model.state_dict()) == keys
    assert [type(m).__name__ for m in fused] == [
        "Linear",
        "BatchNormAct",
        "Sequential",
        "BatchNorm1d",  # followed by Tanh: nothing to fuse
        "Tanh",
        "Linear",
    ]
    assert fused[1].bn is model[1] and fused[1].act is model[2] and fused[0] is model[0]
    inner = fused[2]
    assert inner is not model[3] and inner[1].bn is model[3][1] and inner[1].act is model[3][2]
    assert {id(p) for p in fused.parameters()} == {id(p) for p in model.parameters()}
    assert {id(b) for b in fused.buffers()} == {id(b) for b in model.buffers()}
    assert (
        isinstance(model[3], nn.Sequential) and len(model[3]) == 3
    )  # the user's model is untouched


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_training_the_fused_model_trains_the_users_model(backend):
    kernels.use(backend)
    model, twin = _model(), _model()
    fused = nn.fuse(model)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    for net in (fused, twin):
        opt = optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            y = net(x)
            net.backward(y - 1)
            opt.step()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), twin.state_dict().items(), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_fused_model_keeps_requires_input_grad():
    fused = nn.fuse(_model().requires_input_grad_(False))
    assert not fused.requires_input_grad and not fused[0].requires_input_grad
    y = fused(np.ones((4, 6), np.float32) + np.arange(6, dtype=np.float32))
    assert fused.backward(np.ones_like(y)) is None


def test_batch_norm_act_runs_the_fused_kernel_only_where_the_backend_has_it():
    kernels.use("numba")
    act = nn.BatchNormAct(nn.BatchNorm1d(3), nn.ReLU())
    act(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    assert act.act._cache is None  # fused: the ReLU layer did not run
    act.backward(np.ones((5, 3), np.float32))
    act(np.random.default_rng(0).normal(size=(5, 3)).astype(np.float16))  # no float16 kernel
    assert act.act._cache is not None  # the reference: the two layers in sequence
    act.backward(np.ones((5, 3), np.float16))
    with pytest.raises(RuntimeError, match="backward needs a forward pass first"):
        act.backward(np.ones((5, 3), np.float16))
