"""normlab: batch normalization and its family, from first principles.

Examples:
    >>> import numpy as np
    >>> import normlab as nl
    >>> bn = nl.nn.BatchNorm1d(3)
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, size=(64, 3)).astype(np.float32))
    >>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5))
    True
"""

from normlab import data, doctor, functional, nn, optim  # doctor: callable, nl.doctor(model)
from normlab.backend import is_grad_enabled, no_grad
from normlab.callbacks import (
    Callback,
    EarlyStopping,
    LRSchedulerCallback,
    ModelCheckpoint,
    TerminateOnNaN,
)
from normlab.checkpoint import (
    Checkpoint,
    CheckpointError,
    load,
    load_checkpoint,
    read_metadata,
    save,
    save_checkpoint,
)
from normlab.interop import fold_batch_norm
from normlab.nn.lifecycle import freeze_batch_norm, recalibrate_batch_norm, unfreeze_batch_norm
from normlab.nn.out_of_memory import OutOfMemoryError
from normlab.train import History, evaluate, fit, predict
from normlab.version import __version__

__all__ = [
    "Callback",
    "Checkpoint",
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LRSchedulerCallback",
    "ModelCheckpoint",
    "OutOfMemoryError",
    "TerminateOnNaN",
    "__version__",
    "data",
    "doctor",
    "evaluate",
    "fit",
    "fold_batch_norm",
    "freeze_batch_norm",
    "functional",
    "is_grad_enabled",
    "load",
    "load_checkpoint",
    "nn",
    "no_grad",
    "optim",
    "predict",
    "read_metadata",
    "recalibrate_batch_norm",
    "save",
    "save_checkpoint",
    "unfreeze_batch_norm",
]
