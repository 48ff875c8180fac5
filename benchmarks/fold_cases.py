"""Inference rows: batch norm folded into the neighbouring Linear/Conv2d (``nl.fold_batch_norm``) against the
same model unfolded, eval-mode forward under ``no_grad``.

In these rows the columns mean: ``normlab`` = the folded normlab model, ``naive`` = the *unfolded* normlab
model (so naive/normlab is the speedup folding brings), ``torch`` = the folded model converted with
``nl.interop.to_torch`` (the same computation in PyTorch).  Models: ``lenet-bn`` (4 batch norm layers) on a
batch of 256 images and the ``bn-vs-plain`` MLP (2 batch norm layers) on a batch of 1,024 vectors, with
random running statistics as after training.  The untimed ``check`` verifies that the three outputs agree
(float32, within 1e-5 relative to the output's scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.registry import Case

TOLERANCE = 1e-5


def _randomize(model: Any) -> Any:
    rng = np.random.default_rng(0)
    for m in model.modules():
        if m._buffers.get("running_mean") is not None:
            m.running_mean = rng.normal(0, 0.5, m.running_mean.shape).astype(np.float32)
            m.running_var = rng.uniform(0.5, 2.0, m.running_var.shape).astype(np.float32)
            m.num_batches_tracked = np.array(5, dtype=np.int64)
    return model.eval()


def _lenet() -> Any:
    from normlab.lab.experiments.lenet_bn import lenet

    return lenet(batch_norm=True, rng=np.random.default_rng(0))


def _mlp() -> Any:
    from normlab.lab.common import mlp

    return mlp([784, 128, 64, 10], norm="bn", rng=np.random.default_rng(0))


def _implementations(
    build: Callable[[], Any], shape: tuple[int, ...]
) -> dict[str, Callable[[], Any]]:
    import torch

    import normlab as nl

    model = _randomize(build())
    folded = nl.fold_batch_norm(model)
    module = nl.interop.to_torch(folded).eval()
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    xt = torch.from_numpy(x)

    def run_normlab(m: Any) -> Callable[[], Any]:
        def run() -> Any:
            with nl.no_grad():
                return m(x)

        return run

    def run_torch() -> Any:
        with torch.no_grad():
            return module(xt).numpy()

    return {"normlab": run_normlab(folded), "torch": run_torch, "naive": run_normlab(model)}


def _check(build: Callable[[], Any], shape: tuple[int, ...]) -> Callable[[], str]:
    def check() -> str:
        outputs = {name: fn() for name, fn in _implementations(build, shape).items()}
        scale = max(1.0, float(np.abs(outputs["naive"]).max()))
        diffs = {
            name: float(np.abs(outputs[name] - outputs["naive"]).max())
            for name in ("normlab", "torch")
        }
        if max(diffs.values()) > TOLERANCE * scale:
            raise AssertionError(f"folded outputs differ from the unfolded model's: {diffs}")
        return f"{shape}: max |folded - unfolded| {diffs['normlab']:.2g} (normlab), {diffs['torch']:.2g} (torch)"

    return check


def cases(quick: bool) -> list[Case]:
    rows = [
        ("LeNet-BN inference, BN folded (naive: unfolded)", _lenet, (256, 1, 28, 28)),
        ("MLP-BN inference, BN folded (naive: unfolded)", _mlp, (1024, 784)),
    ]
    return [
        Case(
            name=name,
            group="inference",
            shape=shape,
            bytes_moved=0,
            setup=lambda build=build, shape=shape: _implementations(build, shape),
            check=_check(build, shape),
        )
        for name, build, shape in rows
    ]
