"""Benchmark rows for the normalization ops: training-mode forward + backward, float32.

Each row runs three implementations on the same arrays:

* ``normlab``: the active ops (:func:`normlab.kernels.resolve`, the numba kernels unless ``NORMLAB_KERNELS`` says
  otherwise), ``y, cache = op_forward(...)`` then ``op_backward(dy, cache)``;
* ``torch``: ``torch.nn.functional`` forward on an input that requires grad, affine parameters that require
  grad, then ``y.backward(dy)``;
* ``naive``: the step-by-step NumPy of :mod:`benchmarks.naive`.

Bytes moved are those of the minimal algorithm: forward reads x and writes y, backward reads x and dy and
writes dx, so 5 x the input's size (statistics and parameters are negligible).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from benchmarks import naive
from benchmarks.registry import Case

EPS = 1e-5


def _inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, size=shape).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    return x, dy


def _torch_run(forward: Callable, x, dy, params):
    import torch

    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    ps = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]

    def run():
        y = forward(xt, *ps)
        y.backward(dyt)
        xt.grad = None
        for p in ps:
            p.grad = None

    return run


def batch_norm(shape) -> Case:
    def setup():
        import torch.nn.functional as tf

        from normlab import kernels

        x, dy = _inputs(shape)
        ops = kernels.resolve("batch_norm", x)  # the op a layer would run on x
        c = shape[1]
        w, b = np.linspace(0.5, 1.5, c, dtype=np.float32), np.linspace(-1, 1, c, dtype=np.float32)

        def ours():
            _, cache = ops.forward(x, w, b, use_input_stats=True, eps=EPS)
            ops.backward(dy, cache)

        def textbook():
            if x.ndim == 2:
                _, cache = naive.batchnorm_forward(x, w, b)
                naive.batchnorm_backward(dy, cache)
            else:
                _, cache = naive.batchnorm2d_forward(x, w, b)
                naive.batchnorm2d_backward(dy, cache)

        def torch_fwd(xt, wt, bt):
            return tf.batch_norm(xt, None, None, wt, bt, training=True, eps=EPS)

        return {"normlab": ours, "torch": _torch_run(torch_fwd, x, dy, (w, b)), "naive": textbook}

    kind = "BN" if len(shape) == 2 else "BN2d"
    return Case(f"{kind} {shape}", "batch_norm", shape, 5 * 4 * math.prod(shape), setup)


def layer_norm(shape, normalized) -> Case:
    def setup():
        import torch.nn.functional as tf

        from normlab import kernels

        x, dy = _inputs(shape)
        ops = kernels.resolve("layer_norm", x)  # the op a layer would run on x
        w = np.linspace(0.5, 1.5, math.prod(normalized), dtype=np.float32).reshape(normalized)
        b = w - 1.0
        axes = tuple(range(len(shape) - len(normalized), len(shape)))

        def ours():
            _, cache = ops.forward(x, normalized, w, b, EPS)
            ops.backward(dy, cache)

        def textbook():
            _, cache = naive.norm_forward(x, axes, w, b)
            naive.norm_backward(dy, cache, tuple(range(len(shape) - len(normalized))))

        def torch_fwd(xt, wt, bt):
            return tf.layer_norm(xt, normalized, wt, bt, EPS)

        return {"normlab": ours, "torch": _torch_run(torch_fwd, x, dy, (w, b)), "naive": textbook}

    return Case(f"LN {shape}", "layer_norm", shape, 5 * 4 * math.prod(shape), setup)


def rms_norm(shape, normalized) -> Case:
    def setup():
        import torch.nn.functional as tf

        from normlab import kernels

        x, dy = _inputs(shape)
        ops = kernels.resolve("rms_norm", x)  # the op a layer would run on x
        w = np.linspace(0.5, 1.5, math.prod(normalized), dtype=np.float32).reshape(normalized)
        axes = tuple(range(len(shape) - len(normalized), len(shape)))

        def ours():
            _, cache = ops.forward(x, normalized, w, EPS)
            ops.backward(dy, cache)

        def textbook():
            _, cache = naive.norm_forward(x, axes, w, 0.0, center=False)
            naive.norm_backward(dy, cache, tuple(range(len(shape) - len(normalized))))

        def torch_fwd(xt, wt):
            return tf.rms_norm(xt, normalized, wt, EPS)

        return {"normlab": ours, "torch": _torch_run(torch_fwd, x, dy, (w,)), "naive": textbook}

    return Case(f"RMS {shape}", "rms_norm", shape, 5 * 4 * math.prod(shape), setup)


def group_norm(shape, groups) -> Case:
    def setup():
        import torch.nn.functional as tf

        from normlab import kernels

        x, dy = _inputs(shape)
        ops = kernels.resolve("group_norm", x)  # the op a layer would run on x
        n, c = shape[:2]
        w, b = np.linspace(0.5, 1.5, c, dtype=np.float32), np.linspace(-1, 1, c, dtype=np.float32)
        view = (n, groups, c // groups, -1)  # statistics over axes 2 and 3, per (sample, group)
        pview = (1, groups, c // groups, 1)  # gamma and beta per channel

        def ours():
            _, cache = ops.forward(x, groups, w, b, EPS)
            ops.backward(dy, cache)

        def textbook():
            _, cache = naive.norm_forward(
                x.reshape(view), (2, 3), w.reshape(pview), b.reshape(pview)
            )
            naive.norm_backward(dy.reshape(view), cache, (0, 3))

        def torch_fwd(xt, wt, bt):
            return tf.group_norm(xt, groups, wt, bt, EPS)

        return {"normlab": ours, "torch": _torch_run(torch_fwd, x, dy, (w, b)), "naive": textbook}

    return Case(f"GN({groups}) {shape}", "group_norm", shape, 5 * 4 * math.prod(shape), setup)


def instance_norm(shape) -> Case:
    def setup():
        import torch.nn.functional as tf

        from normlab import kernels

        x, dy = _inputs(shape)
        ops = kernels.resolve("instance_norm", x)  # the op a layer would run on x
        c = shape[1]
        w, b = np.linspace(0.5, 1.5, c, dtype=np.float32), np.linspace(-1, 1, c, dtype=np.float32)
        cshape = (1, c) + (1,) * (len(shape) - 2)
        axes = tuple(range(2, len(shape)))

        def ours():
            _, cache = ops.forward(x, w, b, use_input_stats=True, eps=EPS)
            ops.backward(dy, cache)

        def textbook():
            _, cache = naive.norm_forward(x, axes, w.reshape(cshape), b.reshape(cshape))
            naive.norm_backward(dy, cache, (0, *axes))

        def torch_fwd(xt, wt, bt):
            return tf.instance_norm(xt, weight=wt, bias=bt, use_input_stats=True, eps=EPS)

        return {"normlab": ours, "torch": _torch_run(torch_fwd, x, dy, (w, b)), "naive": textbook}

    return Case(f"IN {shape}", "instance_norm", shape, 5 * 4 * math.prod(shape), setup)


def cases(quick: bool = False) -> list[Case]:
    """The normalization rows of issue 6 (``quick`` keeps every shape; the runner repeats less)."""
    return [
        batch_norm((256, 1024)),
        batch_norm((4096, 1024)),
        batch_norm((65536, 256)),
        batch_norm((64, 64, 32, 32)),
        batch_norm((32, 256, 14, 14)),
        layer_norm((4096, 1024), (1024,)),
        group_norm((32, 256, 14, 14), 32),
        instance_norm((32, 64, 32, 32)),
        rms_norm((4096, 1024), (1024,)),
    ]
