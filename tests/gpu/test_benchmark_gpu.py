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


@pytest.mark.parametrize("setup_name", ["MLP", "LENET"])
def test_the_epoch_rows_run_both_libraries_from_the_same_weights(setup_name):
    """The epoch row's code, on array-api-strict's device1 (the GPU's stand-in) and PyTorch on the CPU, two
    batches of the MNIST sample: the first-epoch losses agree, so both trained the same network on the same
    batches."""
    pytest.importorskip("torch")
    from benchmarks import epoch_cases

    from helpers.devices import STRICT
    from normlab import kernels

    kernels.use("reference")
    try:
        row = gpu.epoch_row(
            getattr(epoch_cases, setup_name), STRICT.target, STRICT.put, lambda: None, "cpu", 2
        )
    finally:
        kernels.use()
    assert row.steps == 2 and row.normlab_ms > 0 and row.torch_ms > 0
    assert abs(row.normlab_loss - row.torch_loss) < 1e-4 * max(1.0, abs(row.torch_loss))
    table = gpu.format_epochs([row])
    assert row.name in table and f"{row.ratio:.2f}x" in table
