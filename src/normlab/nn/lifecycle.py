"""Batch norm's lifecycle after training: freezing it, and recomputing its population statistics.

These are the two things users of the seed tutorials get wrong most: fine-tuning a model whose batch norm keeps
re-estimating statistics from small batches, and evaluating with running statistics that no longer describe
the data (after the weights changed, or after a reload that lost them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from normlab.backend import copy_array, like, no_grad
from normlab.nn.module import Module, _is_array
from normlab.nn.norm import _BatchNorm, _NormBase


def batch_norm_layers(model: Module) -> list[_BatchNorm]:
    """Every batch norm layer in ``model`` (itself included), in registration order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def freeze_batch_norm(model: Module) -> Module:
    """Freeze every batch norm layer of ``model``: it normalizes with its running statistics and neither
    updates them nor learns ``weight``/``bias``, whatever mode the model is put in later.

    ``model.train()`` then trains everything else while batch norm behaves as in eval mode (the usual
    recipe for fine-tuning with small batches).  Undo with :func:`unfreeze_batch_norm`.  Returns ``model``.
    """
    layers = batch_norm_layers(model)
    for bn in layers:
        if not bn.track_running_stats:
            raise ValueError(
                f"freeze_batch_norm: {bn._label()} has track_running_stats=False, so it has no running "
                "statistics to freeze to"
            )
    for bn in layers:
        bn.frozen = True
        bn.training = False
        bn.requires_grad_(False)
    return model


def unfreeze_batch_norm(model: Module) -> Module:
    """Undo :func:`freeze_batch_norm`: batch norm follows ``train()``/``eval()`` and learns again."""
    for bn in batch_norm_layers(model):
        bn.frozen = False
        bn.requires_grad_(True)
        # re-derive the mode from the nearest module that is not frozen batch norm: the model's flag
    model.train(model.training)
    return model


def recalibrate_batch_norm(model: Module, batches: Iterable[Any]) -> Module:
    """Recompute the population statistics of every layer with running statistics ("precise BN").

    Each layer's running statistics are reset and re-estimated as a cumulative average (``momentum=None``)
    over the forward passes of ``batches`` (arrays, or ``(x, ...)`` tuples whose first item is the input).
    During the passes every other layer is in eval mode (dropout off), nothing is learned and no gradient is
    kept.  Afterwards each module's mode and momentum are restored.  If a batch fails, the model is restored
    exactly as it was and the error is raised.  Returns ``model``.

    Note: the running mean becomes the exact mean over equal-sized batches; the running variance is the
    average of the batches' variances (as PyTorch and Keras estimate it), not the pooled variance.
    """
    layers = [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    if not layers:
        raise ValueError("recalibrate_batch_norm: the model has no layer with running statistics")
    saved_state = {k: copy_array(v) for k, v in model.state_dict().items()}
    # NumPy batches go to the model's device
    where = next((p.data for p in model.parameters()), None)
    saved_modes = [(m, m.training) for m in model.modules()]
    saved_momentum = [(m, m.momentum) for m in layers]
    seen = 0
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.training = True
        with no_grad():
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if isinstance(x, np.ndarray) or not _is_array(x):
                    x = np.asarray(x) if where is None else like(np.asarray(x), where)
                model(x)
                seen += 1
        if seen == 0:
            raise ValueError("recalibrate_batch_norm: no batches were given")
    except BaseException:
        model.load_state_dict(saved_state)
        raise
    finally:
        for m, mode in saved_modes:
            m.training = mode
        for m, momentum in saved_momentum:
            m.momentum = momentum
    return model
