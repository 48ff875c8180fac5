"""One module per experiment; importing this package registers them all (in this order)."""

from normlab.lab.experiments import (  # noqa: F401
    bn_paper_mnist,
    bn_vs_plain,
    init_scale,
    learning_rate,
    regularization,
    weight_scale,
)
