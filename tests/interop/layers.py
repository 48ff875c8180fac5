"""One small model per convertible layer and constructor option, with its input shape (without batch)."""

from __future__ import annotations

from collections.abc import Callable

from normlab import nn

LayerCase = tuple[Callable[[], nn.Module], tuple[int, ...]]

LAYERS: dict[str, LayerCase] = {
    "Linear": (lambda: nn.Linear(5, 3, rng=0), (5,)),
    "Linear-nobias": (lambda: nn.Linear(5, 3, bias=False, rng=0), (5,)),
    "Conv2d": (lambda: nn.Conv2d(2, 3, 3, rng=0), (2, 6, 6)),
    "Conv2d-options": (
        lambda: nn.Conv2d(
            2, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False, rng=0
        ),
        (2, 7, 6),
    ),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (2, 6, 6)),
    "MaxPool2d-pad": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 7)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (2, 6, 6)),
    "AvgPool2d-pad-include": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 7, 7)),
    "AvgPool2d-pad-exclude": (
        lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        (2, 7, 7),
    ),
    "Flatten": (lambda: nn.Flatten(), (2, 3, 4)),
    "Flatten-1-2": (lambda: nn.Flatten(1, 2), (2, 3, 4)),
    "Dropout": (lambda: nn.Dropout(0.3, seed=0), (6,)),
    "ReLU": (lambda: nn.ReLU(), (6,)),
    "Sigmoid": (lambda: nn.Sigmoid(), (6,)),
    "Tanh": (lambda: nn.Tanh(), (6,)),
    "GELU": (lambda: nn.GELU(), (6,)),
    "GELU-tanh": (lambda: nn.GELU("tanh"), (6,)),
    "Softmax": (lambda: nn.Softmax(), (6,)),
    "Softmax-dim1": (lambda: nn.Softmax(dim=1), (3, 4)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4), (4,)),
    "BatchNorm1d-3d": (lambda: nn.BatchNorm1d(4, eps=1e-3, momentum=None), (4, 5)),
    "BatchNorm1d-noaffine": (lambda: nn.BatchNorm1d(4, affine=False), (4,)),
    "BatchNorm1d-nostats": (lambda: nn.BatchNorm1d(4, track_running_stats=False), (4,)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3), (3, 4, 4)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(2), (2, 3, 3, 3)),
    "InstanceNorm1d": (lambda: nn.InstanceNorm1d(3, affine=True), (3, 5)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(3), (3, 4, 4)),
    "InstanceNorm2d-stats": (
        lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (3, 4, 4),
    ),
    "InstanceNorm3d": (lambda: nn.InstanceNorm3d(2, affine=True), (2, 3, 3, 3)),
    "LayerNorm": (lambda: nn.LayerNorm(6), (6,)),
    "LayerNorm-2d": (lambda: nn.LayerNorm((3, 4), eps=1e-3), (2, 3, 4)),
    "LayerNorm-nobias": (lambda: nn.LayerNorm(6, bias=False), (6,)),
    "LayerNorm-noaffine": (lambda: nn.LayerNorm(6, elementwise_affine=False), (6,)),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (4, 3, 3)),
    "GroupNorm-noaffine": (lambda: nn.GroupNorm(3, 6, affine=False), (6, 5)),
    "RMSNorm": (lambda: nn.RMSNorm(6), (6,)),
    "RMSNorm-eps": (lambda: nn.RMSNorm((2, 3), eps=1e-4), (2, 3)),
    "RMSNorm-noaffine": (lambda: nn.RMSNorm(6, elementwise_affine=False), (6,)),
}
