"""End to end: an MLP with batch norm trained on a slice of the bundled MNIST test split.

The data is read straight from the IDX files in ``../shared/data/mnist`` (beside the repository, as on CI);
the test is skipped only when that directory is absent.  (To be switched to ``normlab.data.load_mnist``.)

Stated result: 784-100-BN-ReLU-10 trained on 6 000 images (the first 6 000 of the split) for 5 epochs of SGD
with momentum (lr 0.05, 0.9), batches of 50, seed 0; accuracy on the last 3 000 images of the split must reach
0.93 (it reaches 0.9477; a model that does not learn sits near 0.10).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from normlab import nn, optim

MNIST_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"
THRESHOLD = 0.93


def _read_idx(path: Path, magic: int) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    assert int.from_bytes(data[:4], "big") == magic, (
        f"{path.name}: not an IDX file of the expected kind"
    )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    if not MNIST_DIR.is_dir():
        pytest.skip(f"the bundled MNIST files are not available ({MNIST_DIR} is missing)")
    images = _read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz", 2051)
    labels = _read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 2049)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    x = (images.reshape(len(images), -1) / np.float32(255.0)).astype(np.float32)
    return x, labels.astype(np.int64)


def test_bn_mlp_learns_mnist(mnist, tmp_path) -> None:
    x, y = mnist
    x_train, y_train, x_val, y_val, x_test, y_test = (
        x[:6000],
        y[:6000],
        x[6000:7000],
        y[6000:7000],
        x[7000:],
        y[7000:],
    )
    gen = np.random.default_rng(0)
    model = nn.Sequential(
        nn.Linear(784, 100, bias=False, rng=gen),
        nn.BatchNorm1d(100),
        nn.ReLU(),
        nn.Linear(100, 10, rng=gen),
    )
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = nl.fit(
        model,
        x_train,
        y_train,
        optimizer=opt,
        epochs=5,
        batch_size=50,
        validation_data=(x_val, y_val),
        seed=0,
        verbose=0,
    )
    result = nl.evaluate(model, x_test, y_test)
    print(f"MNIST slice: test accuracy {result['accuracy']:.4f}, history {history.history}")
    assert result["accuracy"] >= THRESHOLD
    assert history["val_accuracy"][-1] >= THRESHOLD

    # the trained model survives a save/load round trip with its running statistics
    loaded = nl.load(nl.save(model, tmp_path / "mnist-mlp.safetensors"))
    np.testing.assert_array_equal(nl.predict(loaded, x_test), nl.predict(model, x_test))
