"""One module per experiment; importing this package registers them all, in the order of EXPERIMENTS.md
(the order `normlab lab list` shows and `normlab lab run all` runs)."""

# isort: off
from normlab.lab.experiments import init_scale  # noqa: F401
from normlab.lab.experiments import bn_vs_plain  # noqa: F401
from normlab.lab.experiments import bn_paper_mnist  # noqa: F401
from normlab.lab.experiments import weight_scale  # noqa: F401
from normlab.lab.experiments import batch_size  # noqa: F401
from normlab.lab.experiments import learning_rate  # noqa: F401
from normlab.lab.experiments import regularization  # noqa: F401
from normlab.lab.experiments import cnn_trio  # noqa: F401
from normlab.lab.experiments import adaline  # noqa: F401
from normlab.lab.experiments import eval_pitfalls  # noqa: F401
from normlab.lab.experiments import activations  # noqa: F401
from normlab.lab.experiments import lenet_bn  # noqa: F401
from normlab.lab.experiments import bn_order  # noqa: F401
from normlab.lab.experiments import ics  # noqa: F401
from normlab.lab.experiments import landscape  # noqa: F401
from normlab.lab.experiments import renorm  # noqa: F401
from normlab.lab.experiments import ghost_bn  # noqa: F401
from normlab.lab.experiments import sync_bn  # noqa: F401
from normlab.lab.experiments import accumulation  # noqa: F401
# isort: on
