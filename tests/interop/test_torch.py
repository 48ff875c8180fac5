"""to_torch / from_torch: bit-exact round trips of parameters and buffers, equal eval outputs, modes kept,
clear errors for layers without a counterpart, and a model trained in PyTorch evaluating the same in normlab."""

from __future__ import annotations

import numpy as np
import pytest

import normlab as nl
from interop.layers import LAYERS
from interop.zoo import NETWORKS, NOT_CONVERTIBLE, inputs, network, randomize_norm_state
from normlab import nn
from normlab.interop import UnsupportedLayerError, from_torch, to_torch

torch = pytest.importorskip("torch")


def _normlab_eval(model: nn.Module, x: np.ndarray) -> np.ndarray:
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    with nl.no_grad():
        y = model(x)
    for m, mode in was:
        m.training = mode
    return y


def _torch_eval(module, x: np.ndarray) -> np.ndarray:
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _assert_state_identical(model: nn.Module, module) -> None:
    ours = model.state_dict()
    theirs = module.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        other = theirs[key].numpy()
        assert value.dtype == other.dtype and value.shape == other.shape, key
        assert np.array_equal(value, other), key


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_every_layer_round_trips_bit_exact_with_equal_outputs(name: str, dtype: type) -> None:
    build, shape = LAYERS[name]
    model = randomize_norm_state(nn.Sequential(build()).to(dtype), seed=2)
    module = to_torch(model)
    _assert_state_identical(model, module)
    back = from_torch(module)
    _assert_state_identical(back, module)
    assert type(back[0]) is type(model[0])
    assert back[0].get_config() == model[0].get_config()
    x = inputs(shape, dtype=dtype)
    expected = _normlab_eval(model, x)
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    assert np.max(np.abs(_torch_eval(module, x) - expected), initial=0) <= tolerance
    assert np.max(np.abs(_normlab_eval(back, x) - expected), initial=0) <= tolerance


# float32 tolerance on a network's output, relative to max(1, |output|): 1e-6, except where one dot product
# sums 16,900 products (cnn-trio's wide model: its Linear(16900, 10)) and the two libraries' summation orders
# differ by a few ulps more (measured 1.8e-6); float64 agrees to 1e-12 everywhere
FLOAT32_TOLERANCE = {"cnn-trio:wide+bn": 4e-6}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_network_converts_with_equal_outputs(name: str, dtype: type) -> None:
    model, shape = network(name, dtype)
    if name in NOT_CONVERTIBLE:
        with pytest.raises(
            UnsupportedLayerError, match=rf"\({NOT_CONVERTIBLE[name]}\) has no PyTorch"
        ):
            to_torch(model)
        return
    module = to_torch(model)
    _assert_state_identical(model, module)
    x = inputs(shape, dtype=dtype)
    expected = _normlab_eval(model, x)
    tolerance = FLOAT32_TOLERANCE.get(name, 1e-6) if dtype == np.float32 else 1e-12
    assert np.max(np.abs(_torch_eval(module, x) - expected)) <= tolerance * max(
        1, np.abs(expected).max()
    )
    back = from_torch(module)
    _assert_state_identical(back, module)
    assert np.array_equal(_normlab_eval(back, x), expected)


def test_folded_network_converts() -> None:
    model, shape = network("lenet-bn")
    folded = nl.fold_batch_norm(model)
    module = to_torch(folded)
    x = inputs(shape)
    assert np.max(np.abs(_torch_eval(module, x) - _normlab_eval(folded, x))) <= 1e-6


def test_modes_are_kept_per_module_both_ways() -> None:
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.BatchNorm1d(4), nn.Sequential(nn.Dropout(0.5)))
    model.train()
    model[1].eval()
    module = to_torch(model)
    assert [m.training for m in module.modules()] == [True, True, False, True, True]
    module[2].eval()
    back = from_torch(module)
    assert [m.training for _, m in back.named_modules()] == [True, True, False, False, False]


def test_training_step_matches_after_conversion() -> None:
    """Modes and running statistics carried over: one training-mode forward updates both alike."""
    model = randomize_norm_state(nn.Sequential(nn.Linear(4, 3, rng=0), nn.BatchNorm1d(3)))
    module = to_torch(model)
    x = inputs((4,), batch=16)
    y = model(x)
    with torch.no_grad():
        y_t = module(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(y - y_t)) <= 1e-5
    _, bn_t = module
    assert np.allclose(model[1].running_var, bn_t.running_var.numpy(), atol=1e-6)
    assert int(model[1].num_batches_tracked) == int(bn_t.num_batches_tracked) == 6


def test_unsupported_normlab_layers_are_named() -> None:
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    with pytest.raises(UnsupportedLayerError, match=r"'1' \(Scale\) has no PyTorch counterpart"):
        to_torch(nn.Sequential(nn.Linear(2, 2, rng=0), Scale()))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(BatchNorm1d\).*running_var='biased'"):
        to_torch(nn.Sequential(nn.BatchNorm1d(2, running_var="biased")))
    with pytest.raises(UnsupportedLayerError, match=r"InstanceNorm2d.*momentum=None"):
        to_torch(nn.InstanceNorm2d(2, momentum=None, track_running_stats=True))
    with pytest.raises(TypeError, match="expected a normlab Module"):
        to_torch(torch.nn.Linear(2, 2))


def test_unsupported_torch_modules_are_named() -> None:
    T = torch.nn
    cases = [
        (
            T.Sequential(T.Linear(2, 2), T.LeakyReLU()),
            r"'1' \(LeakyReLU\) has no normlab counterpart",
        ),
        (T.Conv2d(4, 4, 3, groups=2), r"groups=2"),
        (T.Conv2d(4, 4, 3, padding="same"), r"padding='same'"),
        (T.Conv2d(4, 4, 3, padding_mode="reflect"), r"padding_mode='reflect'"),
        (T.MaxPool2d(2, ceil_mode=True), r"ceil_mode=True"),
        (T.Softmax(), r"dim=None"),
        (T.Linear(2, 2).half(), r"float16"),
    ]
    for module, message in cases:
        with pytest.raises(UnsupportedLayerError, match=message):
            from_torch(module)
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module"):
        from_torch(nn.Linear(2, 2, rng=0))


def test_model_trained_in_torch_gives_the_same_accuracy_in_normlab() -> None:
    """One epoch of SGD in PyTorch on the MNIST sample, converted: the same test accuracy in normlab."""
    from normlab.data import flatten, load_mnist, scale_01

    splits = load_mnist("sample")
    x_train = flatten(scale_01(splits.train.x)).astype(np.float32)
    x_test = flatten(scale_01(splits.test.x)).astype(np.float32)
    torch.manual_seed(0)
    T = torch.nn
    module = T.Sequential(T.Linear(784, 64), T.BatchNorm1d(64), T.ReLU(), T.Linear(64, 10))
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(splits.train.y)
    order = torch.randperm(len(yt))
    module.train()
    for start in range(0, len(yt), 64):
        idx = order[start : start + 64]
        opt.zero_grad()
        T.functional.cross_entropy(module(xt[idx]), yt[idx]).backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        torch_pred = module(torch.from_numpy(x_test)).argmax(1).numpy()
    model = from_torch(module)
    assert not model.training and int(model[1].num_batches_tracked) == len(range(0, len(yt), 64))
    ours = nl.predict(model, x_test).argmax(1)
    torch_accuracy = float(np.mean(torch_pred == splits.test.y))
    normlab_accuracy = nl.evaluate(model, x_test, splits.test.y)["accuracy"]
    assert torch_accuracy > 0.8  # it did learn
    assert normlab_accuracy == torch_accuracy
    assert np.array_equal(ours, torch_pred)
