"""The program that tests/distributed/test_mpi.py runs under ``mpiexec -n K``: ``python mpi_worker.py MODE DIR``.

``equivalence``: every rank computes the one-process reference itself (plain BatchNorm on the concatenated
batch, or BatchNorm per chunk for local BN) and prints ``CHECK name error`` lines, then ``DONE``; any failed
assertion raises, which aborts every rank.  The fault modes (``raise``, ``kill``, ``hang``) write a checkpoint
every step and fail on one rank at step 2; ``bad`` checks the bad-input errors on every rank.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from normlab import distributed, nn, optim
from normlab.distributed import ConsistentError, SingleProcess, set_world
from normlab.train import fit

WORLD = distributed.get_world()
K, RANK = WORLD.size, WORLD.rank
OUT = sys.argv[2] if len(sys.argv) > 2 else "."
TOL_STATS = 1e-12
TOL_PARAMS = 1e-10


def report(line: str) -> None:
    """A result line, in this rank's own file (mpiexec may interleave the ranks' stdout mid-line)."""
    with open(os.path.join(OUT, f"rank{RANK}.txt"), "a") as f:
        f.write(line + "\n")


def check(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """Max abs error <= tol * max(1, max |want|) (relative for values far from 1)."""
    want = np.asarray(want, np.float64)
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0))
    scale = max(1.0, float(np.max(np.abs(want), initial=0)))
    assert err <= tol * scale, f"rank {RANK}: {name}: max error {err:.3e} > {tol:g} * {scale:.3g}"
    if RANK == 0:
        report(f"CHECK {name} {err / scale:.3e}")


def split(n: int) -> list[tuple[int, int]]:
    return [distributed.chunk_bounds(n, K, r) for r in range(K)]


# ------------------------------------------------------------------------------- SyncBN vs one process
def syncbn_matches_batchnorm(counts: list[int], spatial: tuple[int, ...], label: str) -> None:
    rng = np.random.default_rng(7)
    c = 3
    n = sum(counts)
    # a large, per-channel offset: the shifted statistics must keep 1e-12 anyway
    x = rng.normal(size=(n, c, *spatial)) * 2.0 + np.array([1e3, -5.0, 0.1]).reshape(
        (1, c) + (1,) * len(spatial)
    )
    dy = rng.normal(size=x.shape)
    cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[len(spatial)]
    ref = cls(c, dtype=np.float64, momentum=0.3)
    ref.weight.data = rng.normal(size=c)
    ref.bias.data = rng.normal(size=c)
    sync = nn.convert_sync_batchnorm(cls(c, dtype=np.float64, momentum=0.3))
    sync.load_state_dict(ref.state_dict())
    start = sum(counts[:RANK])
    mine = slice(start, start + counts[RANK])
    for _step in range(2):  # two steps: the running statistics are updated twice
        y_ref = ref(x)
        dx_ref = ref.backward(dy)
        y = sync(x[mine])
        dx = sync.backward(dy[mine])
    check(f"syncbn-{label}-forward", y, y_ref[mine], TOL_STATS)
    check(f"syncbn-{label}-dx", dx, dx_ref[mine], TOL_STATS)
    # the local dweight/dbias summed over ranks are the one-process ones (the gradient average then / K)
    for name in ("weight", "bias"):
        total = WORLD.sum(getattr(sync, name).grad, "test sum")
        check(f"syncbn-{label}-d{name}", total, getattr(ref, name).grad, TOL_STATS)
    check(f"syncbn-{label}-running_mean", sync.running_mean, ref.running_mean, TOL_STATS)
    check(f"syncbn-{label}-running_var", sync.running_var, ref.running_var, TOL_STATS)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    sync.eval()
    ref.eval()
    check(f"syncbn-{label}-eval", sync(x[mine]), ref(x)[mine], TOL_STATS)


# ------------------------------------------------------------------------------- training
def mlp(seed: int) -> nn.Sequential:
    gen = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Linear(5, 8, rng=gen, dtype=np.float64),
        nn.BatchNorm1d(8, dtype=np.float64),
        nn.ReLU(),
        nn.Linear(8, 3, rng=gen, dtype=np.float64),
    )


def cnn(seed: int) -> nn.Sequential:
    gen = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=gen, dtype=np.float64),
        nn.BatchNorm2d(4, dtype=np.float64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3, rng=gen, dtype=np.float64),
    )


class ChunkedBatchNorm(nn.Module):
    """The test's model of local BN: one BatchNorm per rank's chunk, sharing weight and bias."""

    def __init__(self, bn: nn.Module, n: int) -> None:
        super().__init__()
        self.bn = bn
        copies = [bn]
        for _ in range(K - 1):
            other = type(bn)(**bn.get_config())
            other.weight, other.bias = bn.weight, bn.bias
            copies.append(other)
        object.__setattr__(self, "copies", copies)
        object.__setattr__(self, "bounds", split(n))

    def forward(self, x: np.ndarray) -> np.ndarray:
        for m in self.copies:
            m.train(self.training)
        return np.concatenate(
            [m(x[a:b]) for m, (a, b) in zip(self.copies, self.bounds, strict=True)]
        )

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [m.backward(dy[a:b]) for m, (a, b) in zip(self.copies, self.bounds, strict=True)]
        )


def chunked(model: nn.Sequential, n: int) -> nn.Sequential:
    for name, child in list(model._modules.items()):
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
            model._modules[name] = ChunkedBatchNorm(child, n)
    return model


def train_steps(model: nn.Module, data: list[tuple[np.ndarray, np.ndarray]]) -> None:
    opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    for xb, yb in data:
        opt.zero_grad()
        loss(model(xb), yb)
        model.backward(loss.backward())
        distributed.average_gradients(model.parameters())
        opt.step()


def params(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.data.reshape(-1) for p in model.parameters()])


def training_matches(build: object, shape: tuple[int, ...], label: str) -> None:
    b = 4
    n = K * b
    rng = np.random.default_rng(11)
    data = [(rng.normal(size=(n, *shape)), rng.integers(0, 3, size=n)) for _ in range(3)]
    mine = slice(RANK * b, (RANK + 1) * b)
    local = [(xb[mine], yb[mine]) for xb, yb in data]

    synced = nn.convert_sync_batchnorm(build(0))
    distributed.check_same_model(synced)
    train_steps(synced, local)
    plain = build(0)
    train_steps(plain, local)  # local BN: every rank normalizes its own 4 samples

    old = set_world(SingleProcess())  # the one-process references, inside this rank
    try:
        whole = build(0)
        train_steps(whole, data)
        ghost = chunked(build(0), n)
        train_steps(ghost, data)
    finally:
        set_world(old)
    check(f"train-{label}-syncbn-vs-one-process", params(synced), params(whole), TOL_PARAMS)
    gap = float(np.max(np.abs(params(plain) - params(whole))))
    assert gap > 1e-4, f"rank {RANK}: local BN should differ from global BN, gap {gap:.2e}"
    if RANK == 0:
        report(f"CHECK train-{label}-localbn-differs-from-global {gap:.3e}")
    check(f"train-{label}-localbn-vs-per-chunk-bn", params(plain), params(ghost), TOL_PARAMS)
    # the replicas agree with each other to the bit (fixed-order sums)
    rows = WORLD.allgather(params(synced), "test replicas")
    assert all(np.array_equal(rows[0], r) for r in rows), "replicas differ"


def fit_matches() -> None:
    """``fit`` unchanged under mpiexec: a global batch of 7 (chunks differ by one) equals one process."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(21, 5))
    y = rng.integers(0, 3, size=21)

    def run() -> tuple[nn.Module, object]:
        model = nn.convert_sync_batchnorm(mlp(1))
        opt = optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        history = fit(model, x, y, optimizer=opt, epochs=2, batch_size=7, seed=5, verbose=0)
        return model, history

    model, history = run()
    old = set_world(SingleProcess())
    try:
        ref, ref_history = run()
    finally:
        set_world(old)
    check("fit-unequal-chunks-params", params(model), params(ref), TOL_PARAMS)
    check("fit-logged-loss", history["loss"], ref_history["loss"], TOL_PARAMS)
    check("fit-logged-accuracy", history["accuracy"], ref_history["accuracy"], TOL_PARAMS)


def fit_on_device_matches() -> None:
    """Data parallelism with the model on a second device (array-api-strict's ``device1``, which refuses
    NumPy conversions: the stand-in for a GPU): SyncBatchNorm's statistics, the gradient all-reduce and the
    state broadcast go through the host.  The result equals the same ranks on NumPy and the one-process run."""
    import array_api_strict as xs

    rng = np.random.default_rng(4)
    x = rng.normal(size=(21, 5))
    y = rng.integers(0, 3, size=21)
    device1, host = xs.Device("device1"), xs.Device("CPU_DEVICE")

    def run(device: object = None) -> tuple[np.ndarray, object]:
        model = nn.convert_sync_batchnorm(mlp(2))
        if device is not None:
            model.to(device)
        opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-3)
        history = fit(model, x, y, optimizer=opt, epochs=2, batch_size=7, seed=6, verbose=0)
        if device is not None:
            assert all(p.data.device == device for p in model.parameters())
        state = [
            v if isinstance(v, np.ndarray) else np.asarray(v.to_device(host))
            for v in model.state_dict().values()
        ]
        return np.concatenate([np.asarray(v, np.float64).ravel() for v in state]), history

    on_device, history = run(device1)
    on_numpy, numpy_history = run()
    old = set_world(SingleProcess())
    try:
        one_process, one_history = run()
    finally:
        set_world(old)
    check("device-fit-vs-numpy-ranks", on_device, on_numpy, 1e-13)
    check("device-fit-vs-one-process", on_device, one_process, TOL_PARAMS)
    check("device-fit-logged-loss", history["loss"], one_history["loss"], TOL_PARAMS)
    check("device-fit-logged-loss-vs-numpy-ranks", history["loss"], numpy_history["loss"], 1e-13)


def sharded_loader() -> None:
    n = 23
    x = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    loader = distributed.ShardedLoader(x, np.arange(n), batch_size=3, seed=4)
    for epoch in range(2):
        seen = np.concatenate([yb for _, yb in loader])
        rows = WORLD.allgather(np.pad(seen, (0, 12 - len(seen)), constant_values=-1), "test")
        everything = np.sort(rows[rows >= 0])
        assert np.array_equal(everything, np.arange(n)), (
            f"epoch {epoch}: shards do not cover the data"
        )
    # the same global batches as a one-process DataLoader with batch K*b and the same seed
    from normlab.data import DataLoader

    ref = DataLoader(np.arange(n), batch_size=3 * K, seed=4)
    fresh = distributed.ShardedLoader(x, np.arange(n), batch_size=3, seed=4)
    for _epoch in range(2):  # the permutation changes with the epoch, alike on both
        for (_, mine), idx in zip(fresh, ref, strict=True):
            a, b = distributed.chunk_bounds(len(idx), K, RANK)
            assert np.array_equal(mine, idx[a:b])
    if RANK == 0:
        report("CHECK sharded-loader 0")


def equivalence() -> None:
    syncbn_matches_batchnorm([4] * K, (), "equal-2d")
    syncbn_matches_batchnorm([1, 5, 2][:K], (), "unequal-2d")
    syncbn_matches_batchnorm([3, 0, 2][:K], (2, 3), "unequal-with-empty-rank-4d")
    training_matches(mlp, (5,), "mlp")
    training_matches(cnn, (1, 6, 6), "cnn")
    fit_matches()
    fit_on_device_matches()
    sharded_loader()
    report(f"DONE rank {RANK}")


# ------------------------------------------------------------------------------- faults
def faulty(mode: str, directory: str) -> None:
    model = nn.convert_sync_batchnorm(mlp(0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    loss = nn.CrossEntropyLoss()
    rng = np.random.default_rng(RANK)
    for step in range(1, 4):
        if step == 2 and RANK == K - 1:
            if mode == "raise":
                raise RuntimeError(f"injected failure on rank {RANK}")
            if mode == "kill":
                report(f"KILLING pid {os.getpid()}")
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(120)
            if mode == "exit":
                sys.exit(1)
        opt.zero_grad()
        loss(model(rng.normal(size=(4, 5))), rng.integers(0, 3, size=4))
        model.backward(loss.backward())
        distributed.average_gradients(model.parameters())
        opt.step()
        distributed.save_checkpoint(os.path.join(directory, "last.nlck"), model, opt, epoch=step)
        print(f"SAVED step {step} rank {RANK}", flush=True)


def bad_input() -> None:
    def expect(kind: type[BaseException], words: str, fn: object) -> None:
        try:
            fn()
        except kind as e:
            assert words in str(e), f"rank {RANK}: {e}"
            report(f"ERROR rank {RANK}: {e}")
        else:
            raise AssertionError(f"rank {RANK}: expected {kind.__name__} ({words})")

    odd = mlp(0) if RANK != 1 else nn.Sequential(nn.Linear(5, 9), nn.ReLU())
    expect(ConsistentError, "differs across ranks", lambda: distributed.check_same_model(odd))
    bn = nn.SyncBatchNorm(3, dtype=np.float64)
    expect(ValueError, "batch axis", lambda: bn(np.ones(3)))
    x, y = np.ones((K - 1, 5)), np.zeros(K - 1, dtype=np.int64)
    model = nn.convert_sync_batchnorm(mlp(0))
    opt = optim.SGD(model.parameters(), lr=0.1)
    expect(
        ConsistentError,
        "larger than the batch",
        lambda: fit(model, x, y, optimizer=opt, batch_size=K - 1, verbose=0),
    )
    expect(
        ConsistentError,
        "larger than the batch",
        lambda: distributed.ShardedLoader(np.ones((3 * K - 1, 2)), batch_size=2),
    )
    # finally, uncaught on every rank: every rank prints it and exits with status 1
    distributed.check_same_model(odd)


if __name__ == "__main__":
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "equivalence":
        equivalence()
    elif mode == "bad":
        bad_input()
    else:
        faulty(mode, directory)
