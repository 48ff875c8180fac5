"""One module per experiment; importing this package registers them all (in this order)."""

from normlab.lab.experiments import (  # noqa: F401
    batch_size,
    bn_vs_plain,
    cnn_trio,
    init_scale,
    lenet_bn,
)
