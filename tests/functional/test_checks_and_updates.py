"""The shared argument checks name the op, the argument, the expected and the received value; the reference
update rules equal PyTorch's optimizers step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normlab import functional as F
from normlab.functional import checks


def test_checks_name_op_argument_expected_and_received():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(
        ValueError,
        match=r"ln: expected input whose trailing dimensions are \(5,\) \(normalized_shape\), got input of shape \(2, 3, 4\)",
    ):
        checks.check_trailing(x, (5,), "ln")
    with pytest.raises(
        ValueError,
        match=r"gn: expected input \(N, C, \*\) with C divisible by num_groups=2, got shape \(2, 3, 4\)",
    ):
        checks.check_groups(x, 2, "gn")
    with pytest.raises(
        ValueError, match=r"in: expected input of shape \(N, C, \*spatial\), got shape \(3, 4\)"
    ):
        checks.check_min_rank(x[0], 3, "(N, C, *spatial)", "in")
    with pytest.raises(
        ValueError, match="bn: training=False needs running_mean and running_var, got None"
    ):
        checks.check_given_stats(False, None, None, "training", "bn")
    with pytest.raises(
        ValueError, match=r"op backward: expected a gradient of shape \(2, 3\), got \(3, 2\)"
    ):
        checks.check_gradient(np.zeros((3, 2)), (2, 3), "op backward")


def test_training_is_batch_norms_use_input_stats_under_pytorchs_name():
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    for flag in (True, False):
        a, _ = F.batch_norm_forward(x, None, None, rm, rv, training=flag)
        b, _ = F.batch_norm_forward(x, None, None, rm, rv, use_input_stats=flag)
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="same flag; got both"):
        F.batch_norm_forward(x, use_input_stats=True, training=True)


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
        {"momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01, "nesterov": False},
        {"momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0, "nesterov": True},
    ],
    ids=str,
)
def test_sgd_update_matches_torch(kw):
    rng = np.random.default_rng(1)
    p = rng.normal(size=7)
    tp = torch.tensor(p.copy(), requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, **kw)
    buffer = None
    for _ in range(4):
        g = rng.normal(size=7)
        buffer = F.sgd_update(p, g, buffer, lr=0.1, **kw)
        tp.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-12)
