"""One module per experiment; importing this package registers them all (in this order)."""

from normlab.lab.experiments import (  # noqa: F401
    activations,
    adaline,
    bn_vs_plain,
    eval_pitfalls,
    init_scale,
)
