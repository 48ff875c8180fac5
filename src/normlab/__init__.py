"""normlab: batch normalization and its family, from first principles.

>>> import numpy as np
>>> import normlab as nl
>>> bn = nl.nn.BatchNorm1d(3)
>>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, size=(64, 3)).astype(np.float32))
>>> bool(np.allclose(y.mean(axis=0), 0, atol=1e-5))
True
"""

from normlab import data, functional, nn
from normlab.backend import is_grad_enabled, no_grad
from normlab.nn.lifecycle import freeze_batch_norm, recalibrate_batch_norm, unfreeze_batch_norm

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "data",
    "freeze_batch_norm",
    "functional",
    "is_grad_enabled",
    "nn",
    "no_grad",
    "recalibrate_batch_norm",
    "unfreeze_batch_norm",
]
