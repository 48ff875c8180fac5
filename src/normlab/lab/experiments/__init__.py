"""One module per experiment; importing this package registers them all (in this order)."""

from normlab.lab.experiments import bn_vs_plain, init_scale  # noqa: F401
