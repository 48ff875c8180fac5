"""The naive NumPy baseline: normalization written step by step, as the seed tutorials write batch norm.

Forward keeps every intermediate (mu, xc, var, std, xn) and backward walks the chain back through them one
elementwise step at a time (dbeta, dgamma, dxn, dxc, dstd, dvar, dmu): each step is a full pass over memory
and most allocate a temporary.  This is the code normlab's kernels are measured against, not a reference for
correctness (that is ``normlab.functional``).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-5


def batchnorm_forward(x, gamma, beta, eps=EPS):
    """Textbook batch norm of x (N, D): statistics over the batch axis, per feature."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + eps)
    xn = xc / std
    out = gamma * xn + beta
    return out, (xc, std, xn, gamma)


def batchnorm_backward(dout, cache):
    xc, std, xn, gamma = cache
    n = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = np.sum(xn * dout, axis=0)
    dxn = gamma * dout
    dxc = dxn / std
    dstd = -np.sum((dxn * xc) / (std * std), axis=0)
    dvar = 0.5 * dstd / std
    dxc += (2.0 / n) * xc * dvar
    dmu = np.sum(dxc, axis=0)
    dx = dxc - dmu / n
    return dx, dgamma, dbeta


def batchnorm2d_forward(x, gamma, beta, eps=EPS):
    """Per-channel batch norm of x (N, C, H, W) the tutorial way: move C last, flatten, 2-D batch norm."""
    n, c, h, w = x.shape
    flat = x.transpose(0, 2, 3, 1).reshape(-1, c)
    out, cache = batchnorm_forward(flat, gamma, beta, eps)
    return out.reshape(n, h, w, c).transpose(0, 3, 1, 2), (cache, x.shape)


def batchnorm2d_backward(dout, cache):
    inner, (n, c, h, w) = cache
    dflat = dout.transpose(0, 2, 3, 1).reshape(-1, c)
    dx, dgamma, dbeta = batchnorm_backward(dflat, inner)
    return dx.reshape(n, h, w, c).transpose(0, 3, 1, 2), dgamma, dbeta


def norm_forward(x, axes, gamma, beta, eps=EPS, center=True):
    """The same step-by-step chain over any ``axes`` (layer, group, instance norm; RMS norm with
    ``center=False``); gamma and beta already shaped to broadcast against x."""
    mu = x.mean(axis=axes, keepdims=True) if center else 0.0
    xc = x - mu
    var = np.mean(xc**2, axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    xn = xc / std
    out = gamma * xn + beta
    return out, (xc, std, xn, gamma, axes, center)


def norm_backward(dout, cache, param_axes):
    """Backward of :func:`norm_forward`; parameter gradients summed over ``param_axes``."""
    xc, std, xn, gamma, axes, center = cache
    n = np.prod([xc.shape[a] for a in axes])
    dbeta = dout.sum(axis=param_axes)
    dgamma = np.sum(xn * dout, axis=param_axes)
    dxn = gamma * dout
    dxc = dxn / std
    dstd = -np.sum((dxn * xc) / (std * std), axis=axes, keepdims=True)
    dvar = 0.5 * dstd / std
    dxc += (2.0 / n) * xc * dvar
    if not center:
        return dxc, dgamma, dbeta
    dmu = np.sum(dxc, axis=axes, keepdims=True)
    return dxc - dmu / n, dgamma, dbeta
