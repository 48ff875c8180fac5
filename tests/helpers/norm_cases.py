"""The table of normalization-layer cases shared by the PyTorch parity and gradient-check tests.

Each case names a layer that exists under the same name in ``normlab.nn`` and ``torch.nn``, its constructor
arguments, an input shape, a dtype, and whether the input is a non-contiguous view.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normlab import nn


@dataclass(frozen=True)
class NormCase:
    layer: str
    args: tuple[Any, ...]
    shape: tuple[int, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float64"
    # "contiguous", "strided" (every other element of a wider array) or "transposed" (axes 0, 1 swapped)
    layout: str = "contiguous"

    @property
    def id(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.layer}{self.args}{'[' + kw + ']' if kw else ''}-{self.shape}-{self.dtype}-{self.layout}"

    def build(self, dtype: str | None = None) -> nn.Module:
        return getattr(nn, self.layer)(
            *self.args, **self.kwargs, dtype=np.dtype(dtype or self.dtype)
        )

    def make_input(
        self, rng: np.random.Generator, mean: float = 3.0, std: float = 2.0
    ) -> np.ndarray:
        """Input with a non-zero mean, in the case's dtype and memory layout."""
        dt = np.dtype(self.dtype)
        if self.layout == "strided":
            wide = rng.normal(mean, std, size=(*self.shape[:-1], 2 * self.shape[-1])).astype(dt)
            x = wide[..., ::2]
        elif self.layout == "transposed":
            swapped = (self.shape[1], self.shape[0], *self.shape[2:])
            x = np.swapaxes(rng.normal(mean, std, size=swapped).astype(dt), 0, 1)
        else:
            x = rng.normal(mean, std, size=self.shape).astype(dt)
        assert x.shape == self.shape
        assert (self.layout == "contiguous") == x.flags.c_contiguous
        return x


def randomize(module: nn.Module, rng: np.random.Generator) -> nn.Module:
    """Give parameters and running statistics values away from their identity init, so that every
    gradient term and every use of the running statistics shows in a comparison."""
    for name, p in module.named_parameters():
        base = 1.0 if name.endswith("weight") else 0.0
        p.data = (base + 0.5 * rng.standard_normal(p.shape)).astype(p.dtype)
    for m in module.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean = rng.normal(0.5, 1.0, m.running_mean.shape).astype(m.running_mean.dtype)
            m.running_var = rng.uniform(0.5, 2.0, m.running_var.shape).astype(m.running_var.dtype)
    return module


def _batch_norm_cases() -> list[NormCase]:
    cases = []
    for affine, momentum, track, dtype in itertools.product(
        (True, False), (0.1, None), (True, False), ("float32", "float64")
    ):
        kw = {"affine": affine, "momentum": momentum, "track_running_stats": track}
        cases.append(NormCase("BatchNorm1d", (5,), (8, 5), kw, dtype))
    for dtype, layout in itertools.product(
        ("float32", "float64"), ("contiguous", "strided", "transposed")
    ):
        cases.append(NormCase("BatchNorm1d", (4,), (6, 4, 7), {}, dtype, layout))
        cases.append(NormCase("BatchNorm2d", (3,), (4, 3, 5, 6), {}, dtype, layout))
    for affine, track in ((False, True), (True, False)):
        kw = {"affine": affine, "track_running_stats": track, "momentum": None}
        cases.append(NormCase("BatchNorm2d", (3,), (4, 3, 5, 6), kw, "float32"))
    cases.append(
        NormCase("BatchNorm1d", (5,), (8, 5), {"eps": 1e-3, "momentum": 0.3}, "float64", "strided")
    )
    cases.append(NormCase("BatchNorm3d", (2,), (3, 2, 3, 4, 5), {}, "float32"))
    cases.append(
        NormCase("BatchNorm3d", (2,), (3, 2, 3, 4, 5), {"momentum": None}, "float64", "transposed")
    )
    return cases


def _other_cases() -> list[NormCase]:
    cases = []
    for dtype in ("float32", "float64"):
        cases += [
            NormCase("LayerNorm", (6,), (4, 6), {}, dtype),
            NormCase("LayerNorm", ((3, 5),), (2, 4, 3, 5), {}, dtype, "strided"),
            NormCase("LayerNorm", ((3, 4, 5),), (2, 3, 4, 5), {"bias": False}, dtype),
            NormCase("LayerNorm", (7,), (3, 7), {"elementwise_affine": False, "eps": 1e-3}, dtype),
            NormCase("GroupNorm", (1, 6), (3, 6, 4, 5), {}, dtype),
            NormCase("GroupNorm", (2, 6), (3, 6, 4, 5), {}, dtype, "transposed"),
            NormCase("GroupNorm", (6, 6), (3, 6, 4, 5), {"affine": False}, dtype),
            NormCase("GroupNorm", (3, 6), (4, 6, 7), {"eps": 1e-3}, dtype, "strided"),
            NormCase("InstanceNorm1d", (4,), (3, 4, 9), {}, dtype),
            NormCase("InstanceNorm2d", (3,), (2, 3, 5, 5), {"affine": True}, dtype, "strided"),
            NormCase("InstanceNorm2d", (3,), (2, 3, 5, 5), {"track_running_stats": True}, dtype),
            NormCase(
                "InstanceNorm3d",
                (2,),
                (2, 2, 3, 4, 3),
                {"affine": True, "track_running_stats": True, "momentum": 0.3},
                dtype,
            ),
            NormCase("RMSNorm", (8,), (5, 8), {}, dtype),
            NormCase("RMSNorm", ((4, 6),), (2, 3, 4, 6), {"eps": 1e-6}, dtype, "transposed"),
            NormCase("RMSNorm", (5,), (4, 5), {"elementwise_affine": False}, dtype),
        ]
    return cases


CASES: list[NormCase] = _batch_norm_cases() + _other_cases()
