"""Optimizers (SGD, AdaGrad, RMSProp, Adam, AdamW) and learning-rate schedules; they update Parameters only."""

from normlab.optim.adaptive import AdaGrad, Adagrad, Adam, AdamW, RMSProp, RMSprop
from normlab.optim.groups import param_groups_no_decay
from normlab.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
    StepLR,
    warmup_cosine,
)
from normlab.optim.optimizer import Optimizer, OptimizerStateError
from normlab.optim.sgd import SGD

__all__ = [
    "SGD",
    "AdaGrad",
    "Adagrad",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "LRScheduler",
    "LinearLR",
    "Optimizer",
    "OptimizerStateError",
    "RMSProp",
    "RMSprop",
    "SequentialLR",
    "StepLR",
    "param_groups_no_decay",
    "warmup_cosine",
]
