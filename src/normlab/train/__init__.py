"""Training: ``fit``, ``evaluate`` and ``predict``, usable on any Module with ``forward``/``backward``.

One module per job: :mod:`~normlab.train.batches` (cutting data into mini-batches with
:class:`normlab.data.DataLoader`), :mod:`~normlab.train.step` (one training step, :func:`train_step`),
:mod:`~normlab.train.metrics` (metrics and their means), :mod:`~normlab.train.history` (:class:`History`),
:mod:`~normlab.train.display` (the progress display) and :mod:`~normlab.train.loop` (the loops).
"""

from normlab.train.batches import EpochBatches
from normlab.train.history import History
from normlab.train.loop import evaluate, fit, predict
from normlab.train.metrics import Metric, output_accuracy
from normlab.train.step import Step, train_step

__all__ = [
    "EpochBatches",
    "History",
    "Metric",
    "Step",
    "evaluate",
    "fit",
    "output_accuracy",
    "predict",
    "train_step",
]
