"""Training resumed from a checkpoint ends bit-identical to an uninterrupted run: parameters, buffers and
optimizer state, with dropout, batch norm, shuffling and an LR schedule in play."""

from __future__ import annotations

import numpy as np

import normlab as nl
from helpers.training import (
    assert_same_optimizer_state,
    assert_same_state,
    blobs,
    bn_mlp,
)
from normlab import nn, optim


def _setup(model_seed: int) -> tuple[nn.Module, optim.Optimizer, optim.LRScheduler]:
    model = bn_mlp(seed=model_seed, dropout=0.3)
    opt = optim.Adam(optim.param_groups_no_decay(model, 1e-3), lr=0.01, amsgrad=True)
    sched = optim.StepLR(opt, step_size=1, gamma=0.7)
    return model, opt, sched


def test_fit_resumed_at_an_epoch_boundary_equals_uninterrupted(tmp_path) -> None:
    x, y = blobs(120)
    kwargs = {"epochs": 4, "batch_size": 16, "seed": 21, "verbose": 0}

    model, opt, sched = _setup(0)
    nl.fit(model, x, y, optimizer=opt, callbacks=[nl.LRSchedulerCallback(sched)], **kwargs)

    first, opt1, sched1 = _setup(0)
    path = tmp_path / "epoch-{epoch}.safetensors"
    nl.fit(
        first,
        x,
        y,
        optimizer=opt1,
        callbacks=[nl.LRSchedulerCallback(sched1), nl.ModelCheckpoint(path)],
        **(kwargs | {"epochs": 2}),
    )
    # fresh objects, built with other seeds: everything that matters must come from the file
    resumed, opt2, sched2 = _setup(123)
    ckpt = nl.load_checkpoint(tmp_path / "epoch-2.safetensors", resumed, opt2, scheduler=sched2)
    assert ckpt.epoch == 2
    nl.fit(
        resumed,
        x,
        y,
        optimizer=opt2,
        callbacks=[nl.LRSchedulerCallback(sched2)],
        initial_epoch=ckpt.epoch,
        **kwargs,
    )

    assert_same_state(resumed, model)
    assert_same_optimizer_state(opt2, opt)
    assert sched2.last_epoch == sched.last_epoch == 4


def _manual_steps(model, opt, loader, loss, steps: int) -> None:
    """A hand-written loop, as the seeds write it: forward, loss, backward, step."""
    done = 0
    while done < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss(model(xb), yb)
            model.backward(loss.backward())
            opt.step()
            done += 1
            if done == steps:
                return


def test_manual_loop_resumed_mid_epoch_equals_uninterrupted(tmp_path) -> None:
    """N steps, checkpoint in the middle of an epoch (model, optimizer, the DataLoader's position and
    generator, the dropout generator), fresh objects built from other seeds, N more steps == 2N steps."""
    from normlab.data import DataLoader

    x, y = blobs(100)
    n = 5  # batches of 16: 7 per epoch, so the checkpoint falls inside the first epoch

    def setup(seed: int):
        model = bn_mlp(seed=seed, dropout=0.4)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        return model, opt, DataLoader(x, y, batch_size=16, seed=seed)

    model, opt, loader = setup(0)
    _manual_steps(model, opt, loader, nn.CrossEntropyLoss(), 2 * n)

    first, opt1, loader1 = setup(0)
    _manual_steps(first, opt1, loader1, nn.CrossEntropyLoss(), n)
    nl.save_checkpoint(tmp_path / "c.safetensors", first, opt1, epoch=0, loader=loader1)

    resumed, opt2, loader2 = setup(77)
    ckpt = nl.load_checkpoint(tmp_path / "c.safetensors", resumed, opt2, loader=loader2)
    assert ckpt.loader_state["batch"] == n
    _manual_steps(resumed, opt2, loader2, nn.CrossEntropyLoss(), n)

    assert_same_state(resumed, model)
    assert_same_optimizer_state(opt2, opt)
    # the dropout stream continues where the uninterrupted one is
    np.testing.assert_array_equal(resumed[3].generator.random(4), model[3].generator.random(4))


def test_fit_on_a_data_loader_resumed_equals_uninterrupted(tmp_path) -> None:
    """With ``normlab.data.DataLoader`` as the batch source, ModelCheckpoint saves the loader's state too and
    load_checkpoint(loader=...) restores it: the resumed epochs see the same batches."""
    from normlab.data import DataLoader

    x, y = blobs(90)
    kwargs = {"epochs": 4, "seed": 5, "verbose": 0}

    def setup(seed: int):
        model = bn_mlp(seed=seed, dropout=0.3)
        return (
            model,
            optim.RMSProp(model.parameters(), lr=0.01, momentum=0.5),
            DataLoader(x, y, batch_size=16, seed=seed),
        )

    model, opt, loader = setup(0)
    nl.fit(model, loader, optimizer=opt, **kwargs)

    first, opt1, loader1 = setup(0)
    nl.fit(
        first,
        loader1,
        optimizer=opt1,
        callbacks=[nl.ModelCheckpoint(tmp_path / "c.safetensors", every=3)],
        **kwargs | {"epochs": 3},
    )
    resumed, opt2, loader2 = setup(31)
    ckpt = nl.load_checkpoint(tmp_path / "c.safetensors", resumed, opt2, loader=loader2)
    assert ckpt.epoch == 3 and ckpt.loader_state["batch_size"] == 16
    nl.fit(resumed, loader2, optimizer=opt2, initial_epoch=ckpt.epoch, **kwargs)

    assert_same_state(resumed, model)
    assert_same_optimizer_state(opt2, opt)
