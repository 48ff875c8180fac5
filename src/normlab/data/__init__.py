"""Data for normlab: MNIST (bundled sample, verified downloader), Iris, transforms and a mini-batch loader;
image folders read by Pillow (:class:`ImageFolder`), seeded augmentation (:mod:`normlab.data.augment`), and
CIFAR-10 / Fashion-MNIST downloaded on request (:mod:`normlab.data.color_datasets`).

Everything works offline on the bundled data; only :func:`download_mnist` (or ``load_mnist(..., download=True)``,
or ``normlab data download mnist``) touches the network.

Examples:
    >>> from normlab.data import load_mnist, DataLoader, scale_01, flatten
    >>> train, val, test = load_mnist("sample")
    >>> train.x.shape, train.x.dtype.name, train.y.dtype.name
    ((6000, 28, 28), 'uint8', 'int64')
    >>> loader = DataLoader(flatten(scale_01(train.x)), train.y, batch_size=100, seed=0)
    >>> len(loader), next(iter(loader))[0].shape
    (60, (100, 784))
"""

from normlab.data.augment import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    compute_mean_std,
)
from normlab.data.color_datasets import (
    CIFAR10,
    FASHION_MNIST,
    download_remote,
    load_cifar10,
    load_fashion_mnist,
)
from normlab.data.download import MNIST_MIRRORS, MNIST_SHA256, data_home, download_mnist
from normlab.data.errors import DataError
from normlab.data.idx import read_idx, write_idx
from normlab.data.images import ImageFolder
from normlab.data.iris import IrisData, load_iris
from normlab.data.loader import DataLoader
from normlab.data.mnist import Labeled, Splits, load_mnist
from normlab.data.transforms import Standardizer, flatten, one_hot, scale_01

__all__ = [
    "CIFAR10",
    "FASHION_MNIST",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "ColorJitter",
    "Compose",
    "DataError",
    "DataLoader",
    "ImageFolder",
    "IrisData",
    "Labeled",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Splits",
    "Standardizer",
    "compute_mean_std",
    "data_home",
    "download_mnist",
    "download_remote",
    "flatten",
    "load_cifar10",
    "load_fashion_mnist",
    "load_iris",
    "load_mnist",
    "one_hot",
    "read_idx",
    "scale_01",
    "write_idx",
]
