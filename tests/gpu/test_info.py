"""``normlab info`` has a GPU line: the device with CUDA and CuPy versions, or why there is none."""

from __future__ import annotations

import json

from normlab.cli import main
from normlab.kernels import cuda as K


def test_info_names_the_gpu_or_says_why_not(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ok, reason = K.status()
    if ok:
        assert info["gpu"].startswith(reason) and "CuPy" in info["gpu"], info["gpu"]
    else:
        assert info["gpu"] == reason and reason.startswith("no CUDA device: "), info["gpu"]
