"""Out of memory: a failed allocation names the layer (and its path in the model), the pass, the size that
failed and what the device had, and is still a ``MemoryError``.

The failures are real allocations, not raised by hand: inputs that are broadcast views of one number
(no memory of their own, but a layer's output of that shape cannot be allocated: NumPy refuses at once), and a
subprocess under an address-space limit (``ulimit -v``) whose backward pass cannot get its gradient arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import normlab as nl
from helpers.devices import DEVICE1, xs
from normlab import nn, optim

# rows: 2**46 x 16 bytes is 1 PiB, more than any machine (or a 48-bit address space) holds
HUGE = 2**46


def _huge(*shape: int) -> np.ndarray:
    """A read-only float32 array of ``(HUGE, *shape)`` that occupies 4 bytes."""
    return np.broadcast_to(np.float32(1.0), (HUGE, *shape))


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in model.state_dict().items()}


def test_forward_names_the_layer_its_path_and_the_size() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(8, 4)), nn.BatchNorm1d(4), nn.ReLU())
    before = _state(model)
    with pytest.raises(nl.OutOfMemoryError) as info:
        model(_huge(8))
    err = info.value
    assert isinstance(err, MemoryError)  # `except MemoryError` still catches it
    assert err.requested == HUGE * 4 * 4  # the (HUGE, 4) float32 output of the Linear layer
    assert (err.phase, err.path, err.device) == ("forward", "0.0", "cpu")
    message = str(err)
    assert message.startswith(
        "Linear(in_features=8, out_features=4, bias=True) (at '0.0' in the model)"
    )
    assert "out of memory in forward on cpu: allocating 1024.00 TiB failed" in message
    assert f"input ({HUGE}, 8) float32" in message
    assert "smaller batch" in message
    after = _state(model)  # the batch norm never ran: its statistics are as they were
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert int(model[1].num_batches_tracked) == 0


def test_conv_forward_names_the_conv() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    x = np.broadcast_to(np.float32(0.5), (2**30, 3, 32, 32))
    with pytest.raises(MemoryError, match=r"^Conv2d\(3, 8.*\(at '0' in the model\)") as info:
        model(x)
    assert info.value.requested is not None and info.value.requested >= 2**30 * 8 * 30 * 30 * 4


def test_the_model_itself_has_no_path() -> None:
    layer = nn.Linear(8, 4)
    with pytest.raises(nl.OutOfMemoryError) as info:
        layer(_huge(8))
    assert info.value.path is None
    assert str(info.value).startswith(
        "Linear(in_features=8, out_features=4, bias=True): out of memory"
    )


def test_optimizer_step_names_the_parameter() -> None:
    # a parameter as large as the broadcast view: Adam's first step must allocate its two moment arrays
    big = nn.Parameter(np.broadcast_to(np.float32(0.0), (HUGE,)))
    big.grad = np.broadcast_to(np.float32(1.0), (HUGE,))
    small = nn.Parameter(np.zeros(3, np.float32))
    small.grad = np.ones(3, np.float32)
    opt = optim.Adam([small, big], lr=0.1)
    with pytest.raises(MemoryError, match=r"^Adam\.step, parameter 1 of group 0: out of memory"):
        opt.step()


def test_move_names_the_array_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from normlab.nn import module as module_mod

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    arrays_before = [p.data for p in model.parameters()] + list(model.buffers())
    real = module_mod._namespace_mover(DEVICE1)
    moves = []

    def mover(device: object):  # the fourth array's copy asks for more than any machine has
        def move(a: np.ndarray) -> object:
            moves.append(a.shape)
            if len(moves) == 4:
                return np.empty((HUGE, 4), np.float64)
            return real(a)

        return move

    monkeypatch.setattr(module_mod, "_namespace_mover", mover)
    with pytest.raises(nl.OutOfMemoryError) as info:
        model.to(DEVICE1)
    # named_modules order: '0.weight', '0.bias', '1.weight', '1.bias', ...: the fourth is 1.bias
    assert "moving '1.bias'" in str(info.value)
    assert info.value.requested == HUGE * 4 * 8
    arrays_after = [p.data for p in model.parameters()] + list(model.buffers())
    assert all(a is b for a, b in zip(arrays_before, arrays_after, strict=True))


def test_loader_names_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = nl.data.DataLoader(
        np.zeros((10, 3), np.float32), np.zeros(10, np.int64), batch_size=4, device=DEVICE1
    )
    assert isinstance(next(iter(loader))[0], type(xs.asarray(0.0)))

    def move(a: np.ndarray) -> object:
        return np.empty((HUGE, *a.shape), a.dtype)

    monkeypatch.setattr(loader, "_move", move)
    with pytest.raises(
        MemoryError, match=r"DataLoader\(batch_size=4.*input \(4, 3\) float32"
    ) as info:
        next(iter(loader))
    assert info.value.requested == HUGE * 4 * 3 * 4


def test_cupy_message_gives_the_size() -> None:
    from normlab.nn.out_of_memory import requested_bytes

    # CuPy's OutOfMemoryError keeps the size only in its message, in this form
    cupy_like = MemoryError(
        "Out of memory allocating 1,610,612,736 bytes (allocated so far: 2,048 bytes)."
    )
    assert requested_bytes(cupy_like) == 1_610_612_736
    assert requested_bytes(MemoryError("no size here")) is None


_BACKWARD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import normlab as nl
    from normlab import nn

    def mapped() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(64, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 10))
    loss = nn.CrossEntropyLoss()
    x = rng.normal(size=(20000, 64)).astype(np.float32)
    loss(model(x), rng.integers(0, 10, 20000))
    grad = loss.backward()
    # from here on the process may map 50 MiB more: backward's (20000, 2048) float32 gradient (156 MiB)
    resource.setrlimit(resource.RLIMIT_AS, (mapped() + 50 * 2**20, resource.RLIM_INFINITY))
    try:
        model.backward(grad)
    except MemoryError as err:
        print(json.dumps({"type": type(err).__name__, "phase": err.phase, "path": err.path,
                          "requested": err.requested, "message": str(err)}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc")
def test_backward_under_an_address_space_limit(tmp_path: Path) -> None:
    script = tmp_path / "backward.py"
    script.write_text(_BACKWARD)
    env = {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "NORMLAB_KERNELS": "reference"}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["type"] == "OutOfMemoryError"
    # the last layer runs backward first
    assert (report["phase"], report["path"]) == ("backward", "3")
    assert report["requested"] >= 20000 * 2048 * 4  # its input gradient, at least
    assert report["message"].startswith("Linear(in_features=2048, out_features=10, bias=True)")
    assert "grad_output (20000, 10) float32" in report["message"]
    assert "may map at most" in report["message"]  # the limit that was hit is named


def test_a_custom_module_is_named_and_a_staticmethod_forward_is_left_alone() -> None:
    class Widen(nn.Module):
        """A user's module: its forward allocates (HUGE, 4) and its extra_repr is broken."""

        def forward(self, x: np.ndarray) -> np.ndarray:
            return np.broadcast_to(x[0, 0], (HUGE, 4)) * 2.0

        def extra_repr(self) -> str:
            raise RuntimeError("broken extra_repr")

    class Plain(nn.Module):
        forward = staticmethod(lambda x: x + 1)

    with pytest.raises(nl.OutOfMemoryError, match=r"^Widen: out of memory in forward"):
        Widen()(np.ones((3, 8), np.float32))
    assert Plain()(np.zeros(2)).tolist() == [1.0, 1.0]
