"""Every network the lab builds trains on a second device as it does on NumPy.

array-api-strict's ``device1`` stands in for a GPU (it refuses NumPy conversions and mixing devices).  Each
builder's network, in float64, is moved there with ``Module.to`` and trained for one epoch by ``fit``
(momentum SGD, reference kernels, three batches); the parameters, the running statistics and ``predict``'s
outputs must equal the same run on NumPy to 1e-10.
"""

from __future__ import annotations

import pytest

from helpers.device_cases import NETWORKS, check_network
from helpers.devices import STRICT
from normlab import kernels


@pytest.fixture(autouse=True)
def reference_kernels():
    kernels.use("reference")
    yield
    kernels.use()


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_lab_network_trains_on_device1_as_on_numpy(name: str) -> None:
    check_network(name, STRICT)
