"""End to end: an MLP with batch norm trained on the bundled MNIST sample with ``normlab.data``.

Stated result: 784-100-BN-ReLU-10 (no bias before BN) trained on the sample's 6 000 training images for 5 epochs
of SGD with momentum (lr 0.05, momentum 0.9), batches of 50 from a ``DataLoader`` (seed 0), ``fit(seed=0)``;
accuracy on the sample's 2 000 test images must reach 0.93 (it reaches 0.9545; a model that does not learn
sits near 0.10), and so must the last epoch's validation accuracy (2 000 images; 0.9485).
"""

from __future__ import annotations

import numpy as np

import normlab as nl
from normlab import nn, optim
from normlab.data import DataLoader, flatten, load_mnist, scale_01

THRESHOLD = 0.93


def test_bn_mlp_learns_mnist(tmp_path) -> None:
    train, val, test = load_mnist("sample")
    x_train, x_val, x_test = (flatten(scale_01(part.x)) for part in (train, val, test))
    gen = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Linear(784, 100, bias=False, rng=gen),
        nn.BatchNorm1d(100),
        nn.ReLU(),
        nn.Linear(100, 10, rng=gen),
    )
    history = nl.fit(
        model,
        DataLoader(x_train, train.y, batch_size=50, seed=0),
        optimizer=optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        epochs=5,
        validation_data=(x_val, val.y),
        seed=0,
        verbose=0,
    )
    result = nl.evaluate(model, x_test, test.y)
    print(f"MNIST sample: test accuracy {result['accuracy']:.4f}; {history.history}")
    assert result["accuracy"] >= THRESHOLD
    assert history["val_accuracy"][-1] >= THRESHOLD

    # the trained model survives a save/load round trip with its running statistics
    loaded = nl.load(nl.save(model, tmp_path / "mnist-mlp.safetensors"))
    np.testing.assert_array_equal(nl.predict(loaded, x_test), nl.predict(model, x_test))
