"""benchmarks/gpu.py on a machine without CUDA: it says why and measures nothing (exit status 2)."""

from __future__ import annotations

import pytest
from benchmarks import gpu


def test_without_cuda_the_benchmark_says_why_and_exits_2(capsys):
    reason = gpu.cuda_unavailable()
    if reason is None:
        pytest.skip("CUDA is available here: benchmarks/gpu.py would measure (run it by hand)")
    assert gpu.main(["--quick"]) == gpu.EXIT_NO_CUDA
    err = capsys.readouterr().err
    assert err.startswith("benchmarks/gpu.py: nothing measured: ") and reason in err


def test_case_list_covers_the_issue_shapes():
    names = {(name, shape, dtype) for name, shape, dtype, _ in gpu._cases(quick=False)}
    for shape in [(256, 64, 56, 56), (128, 32, 112, 112), (64, 256, 28, 28), (32, 512, 14, 14)]:
        assert ("BN2d NCHW", shape, "float32") in names
    assert ("BN2d channels-last", (256, 64, 56, 56), "float32") in names
    assert ("BN2d NCHW", (256, 64, 56, 56), "bfloat16") in names
    assert ("BN1d", (65536, 1024), "float32") in names
    assert ("LayerNorm", (65536, 1024), "float32") in names
    assert ("GroupNorm(32)", (256, 64, 56, 56), "float32") in names
