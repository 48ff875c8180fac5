"""The table of network-layer cases shared by the PyTorch parity and gradient-check tests.

Each case builds the same layer in normlab and in ``torch.nn`` (normlab's parameters are copied into torch by
``load_state_dict`` with normlab's own state-dict keys, which checks that the keys are PyTorch's too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from normlab import nn


@dataclass(frozen=True)
class LayerCase:
    id: str
    ours: Callable[[Any], nn.Module]  # dtype -> normlab module
    theirs: Callable[[Any], torch.nn.Module]  # torch dtype -> torch module
    shape: tuple[int, ...]
    random_in_training: bool = False  # dropout: a fresh mask on every training forward

    def build(self, dtype: str = "float64") -> nn.Module:
        return self.ours(np.dtype(dtype))

    def build_torch(self, ours: nn.Module, dtype: str) -> torch.nn.Module:
        module = self.theirs(getattr(torch, dtype))
        state = {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
        module.load_state_dict(state, strict=True)
        return module


def _no_dtype(build: Callable[[], Any]) -> Callable[[Any], Any]:
    return lambda dtype: build()


T = torch.nn

CASES: list[LayerCase] = [
    LayerCase(
        "Linear(5,3)",
        lambda dt: nn.Linear(5, 3, rng=0, dtype=dt),
        lambda dt: T.Linear(5, 3, dtype=dt),
        (4, 5),
    ),
    LayerCase(
        "Linear(5,3,nobias)-3d",
        lambda dt: nn.Linear(5, 3, bias=False, rng=1, dtype=dt),
        lambda dt: T.Linear(5, 3, bias=False, dtype=dt),
        (2, 3, 5),
    ),
    LayerCase(
        "Conv2d(3,4,3)",
        lambda dt: nn.Conv2d(3, 4, 3, rng=2, dtype=dt),
        lambda dt: T.Conv2d(3, 4, 3, dtype=dt),
        (2, 3, 7, 6),
    ),
    LayerCase(
        "Conv2d(3,4,3,s2,p1)",
        lambda dt: nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=3, dtype=dt),
        lambda dt: T.Conv2d(3, 4, 3, stride=2, padding=1, dtype=dt),
        (2, 3, 7, 8),
    ),
    LayerCase(
        "Conv2d(2,3,(3,2),s(1,2),p(1,2),d2,nobias)",
        lambda dt: nn.Conv2d(
            2, 3, (3, 2), stride=(1, 2), padding=(1, 2), dilation=2, bias=False, rng=4, dtype=dt
        ),
        lambda dt: T.Conv2d(
            2, 3, (3, 2), stride=(1, 2), padding=(1, 2), dilation=2, bias=False, dtype=dt
        ),
        (2, 2, 6, 7),
    ),
    LayerCase(
        "Conv2d(4,2,1)",
        lambda dt: nn.Conv2d(4, 2, 1, rng=5, dtype=dt),
        lambda dt: T.Conv2d(4, 2, 1, dtype=dt),
        (3, 4, 3, 3),
    ),
    LayerCase(
        "MaxPool2d(2)",
        _no_dtype(lambda: nn.MaxPool2d(2)),
        _no_dtype(lambda: T.MaxPool2d(2)),
        (2, 3, 6, 7),
    ),
    LayerCase(
        "MaxPool2d(3,s2,p1)",
        _no_dtype(lambda: nn.MaxPool2d(3, stride=2, padding=1)),
        _no_dtype(lambda: T.MaxPool2d(3, stride=2, padding=1)),
        (2, 2, 7, 7),
    ),
    LayerCase(
        "MaxPool2d((2,3),s(1,2))",
        _no_dtype(lambda: nn.MaxPool2d((2, 3), stride=(1, 2))),
        _no_dtype(lambda: T.MaxPool2d((2, 3), stride=(1, 2))),
        (2, 2, 5, 7),
    ),
    LayerCase(
        "AvgPool2d(2)",
        _no_dtype(lambda: nn.AvgPool2d(2)),
        _no_dtype(lambda: T.AvgPool2d(2)),
        (2, 3, 6, 6),
    ),
    LayerCase(
        "AvgPool2d(3,s2,p1)",
        _no_dtype(lambda: nn.AvgPool2d(3, stride=2, padding=1)),
        _no_dtype(lambda: T.AvgPool2d(3, stride=2, padding=1)),
        (2, 2, 7, 6),
    ),
    LayerCase(
        "AvgPool2d(3,s2,p1,exclude-pad)",
        _no_dtype(lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
        _no_dtype(lambda: T.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
        (2, 2, 7, 6),
    ),
    LayerCase(
        "Flatten()", _no_dtype(lambda: nn.Flatten()), _no_dtype(lambda: T.Flatten()), (2, 3, 4, 2)
    ),
    LayerCase(
        "Flatten(1,2)",
        _no_dtype(lambda: nn.Flatten(1, 2)),
        _no_dtype(lambda: T.Flatten(1, 2)),
        (2, 3, 4, 2),
    ),
    LayerCase("ReLU", _no_dtype(lambda: nn.ReLU()), _no_dtype(lambda: T.ReLU()), (4, 6)),
    LayerCase("Sigmoid", _no_dtype(lambda: nn.Sigmoid()), _no_dtype(lambda: T.Sigmoid()), (4, 6)),
    LayerCase("Tanh", _no_dtype(lambda: nn.Tanh()), _no_dtype(lambda: T.Tanh()), (4, 6)),
    LayerCase("GELU", _no_dtype(lambda: nn.GELU()), _no_dtype(lambda: T.GELU()), (4, 6)),
    LayerCase(
        "GELU(tanh)", _no_dtype(lambda: nn.GELU("tanh")), _no_dtype(lambda: T.GELU("tanh")), (4, 6)
    ),
    LayerCase(
        "Softmax(1)", _no_dtype(lambda: nn.Softmax(1)), _no_dtype(lambda: T.Softmax(1)), (3, 5, 2)
    ),
    LayerCase(
        "Softmax(-1)", _no_dtype(lambda: nn.Softmax()), _no_dtype(lambda: T.Softmax(-1)), (4, 6)
    ),
    LayerCase(
        "Dropout(0.3)-eval",
        _no_dtype(lambda: nn.Dropout(0.3, seed=0).eval()),
        _no_dtype(lambda: T.Dropout(0.3).eval()),
        (4, 6),
        random_in_training=True,
    ),
    LayerCase(
        # no bias before batch norm: BN's mean subtraction cancels it (its gradient is exactly 0 in training)
        "MLP(Linear,BN,ReLU,Linear)",
        lambda dt: nn.Sequential(
            nn.Linear(6, 5, bias=False, rng=6, dtype=dt),
            nn.BatchNorm1d(5, dtype=dt),
            nn.ReLU(),
            nn.Linear(5, 3, rng=7, dtype=dt),
        ),
        lambda dt: T.Sequential(
            T.Linear(6, 5, bias=False, dtype=dt),
            T.BatchNorm1d(5, dtype=dt),
            T.ReLU(),
            T.Linear(5, 3, dtype=dt),
        ),
        (8, 6),
    ),
    LayerCase(
        "CNN(Conv,BN2d,ReLU,MaxPool,Flatten,Linear)",
        lambda dt: nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, bias=False, rng=8, dtype=dt),
            nn.BatchNorm2d(3, dtype=dt),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, 4, rng=9, dtype=dt),
        ),
        lambda dt: T.Sequential(
            T.Conv2d(2, 3, 3, padding=1, bias=False, dtype=dt),
            T.BatchNorm2d(3, dtype=dt),
            T.ReLU(),
            T.MaxPool2d(2),
            T.Flatten(),
            T.Linear(3 * 3 * 3, 4, dtype=dt),
        ),
        (3, 2, 6, 7),
    ),
]
