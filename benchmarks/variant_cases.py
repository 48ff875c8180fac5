"""Benchmark rows for the variants: Batch Renorm and Ghost BN, training forward + backward, float32.

* ``normlab``: the layer (:class:`normlab.nn.BatchRenorm2d`, :class:`normlab.nn.BatchNorm2d` with
  ``virtual_batch_size``), whose batch norm underneath is the active kernel;
* ``torch``: for Batch Renorm, **Keras 3's** ``BatchNormalization(renorm=True)`` on its torch backend (the
  parity anchor; ``KERAS_BACKEND=torch``); for Ghost BN, ``torch.nn.functional.batch_norm`` on each chunk;
* ``naive``: the textbook NumPy batch norm of :mod:`benchmarks.naive` (renorm's r, d applied after it; Ghost
  BN as one call per chunk).
"""

from __future__ import annotations

import math
import os

import numpy as np

from benchmarks import naive
from benchmarks.registry import Case

EPS = 1e-3


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(1.0, 2.0, size=shape).astype(np.float32),
        rng.normal(size=shape).astype(np.float32),
    )


def batch_renorm(shape) -> Case:
    def setup():
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras
        import torch

        from normlab import nn

        x, dy = _inputs(shape)
        c = shape[1]
        clipping = {"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0}
        layer = nn.BatchRenorm2d(c, eps=EPS, renorm_clipping=clipping)
        ref = keras.layers.BatchNormalization(
            axis=1, epsilon=EPS, renorm=True, renorm_clipping=clipping, renorm_momentum=0.9
        )
        ref.build((None, *shape[1:]))
        xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
        w = np.ones(c, np.float32)
        mu, sigma = np.zeros(c, np.float32), np.ones(c, np.float32)

        def ours():
            layer(x)
            layer.backward(dy)

        def keras_torch():
            ref(xt, training=True).backward(dyt)
            xt.grad = None

        def textbook():  # batch norm, then the renorm correction from the moving statistics
            y, cache = naive.batchnorm2d_forward(x, w, 0 * w, eps=EPS)
            axes = (0, 2, 3)
            mean, std = x.mean(axis=axes), np.sqrt(x.var(axis=axes) + EPS)
            r = np.clip(std / sigma, 1 / 3.0, 3.0).reshape(1, c, 1, 1)
            d = np.clip((mean - mu) / sigma, -5.0, 5.0).reshape(1, c, 1, 1)
            _ = y * r + d
            naive.batchnorm2d_backward(dy * r, cache)

        return {"normlab": ours, "torch": keras_torch, "naive": textbook}

    return Case(f"BRN2d {shape}", "batch_renorm", shape, 5 * 4 * math.prod(shape), setup)


def ghost_batch_norm(shape, v) -> Case:
    def setup():
        import torch
        import torch.nn.functional as tf

        from normlab import nn

        x, dy = _inputs(shape)
        c = shape[1]
        layer = nn.BatchNorm2d(c, eps=EPS, virtual_batch_size=v)
        w, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        xt, dyt = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
        wt = torch.from_numpy(w.copy()).requires_grad_(True)
        bt = torch.from_numpy(b.copy()).requires_grad_(True)

        def ours():
            layer(x)
            layer.backward(dy)

        def torch_chunks():
            chunks = [
                tf.batch_norm(part, None, None, wt, bt, training=True, eps=EPS)
                for part in torch.split(xt, v)
            ]
            torch.cat(chunks).backward(dyt)
            xt.grad = wt.grad = bt.grad = None

        def textbook():
            for i in range(0, shape[0], v):
                _, cache = naive.batchnorm2d_forward(x[i : i + v], w, b, eps=EPS)
                naive.batchnorm2d_backward(dy[i : i + v], cache)

        return {"normlab": ours, "torch": torch_chunks, "naive": textbook}

    return Case(f"GBN2d {shape} v={v}", "ghost_batch_norm", shape, 5 * 4 * math.prod(shape), setup)


def cases(quick: bool = False) -> list[Case]:
    return [batch_renorm((64, 64, 32, 32)), ghost_batch_norm((256, 64, 16, 16), 32)]
