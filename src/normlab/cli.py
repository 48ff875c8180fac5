"""The ``normlab`` command: the demo, the lab, training from a config, evaluation, the doctor, data and info.

Exit codes: 0 success, 1 a failure while working (missing file, bad config contents, failed download),
2 a usage error (unknown command, option or experiment).  Errors are one line on stderr, without a traceback
(set ``NORMLAB_DEBUG=1`` to see it).  Progress goes to stderr, only when stderr is a terminal; results go to
stdout, as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DEMO_EXPERIMENTS = ("init-scale", "bn-vs-plain")


class CLIError(Exception):
    """A failure to report as one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------------------- output
def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _progress() -> tuple[Callable[[str], None] | None, Any]:
    """A status line on stderr when it is a terminal; ``(None, None)`` when output is piped."""
    console = _console(stderr=True)
    if not console.is_terminal:
        return None, None
    status = console.status("starting", spinner="dots")
    status.start()
    return status.update, status


class _ExperimentLines:
    """One line as each experiment starts and one as it ends (name, verdict, wall time), for output that
    is not a terminal (CI logs, ``| tee``), where the status line is not shown and the results table only
    comes at the end.  Written to ``stream``, flushed at once."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def start(self, name: str, i: int, total: int) -> None:
        print(f"[{i}/{total}] {name}: started", file=self.stream, flush=True)

    def end(self, run: Any, i: int, total: int) -> None:
        print(
            f"[{i}/{total}] {run.name}: {run.result.verdict} ({run.wall_time:.1f} s)",
            file=self.stream,
            flush=True,
        )


def _experiment_lines(as_json: bool) -> _ExperimentLines | None:
    """Lines on stdout when it is redirected (on stderr with ``--json``, whose stdout is the JSON);
    ``None`` on a terminal, which keeps the status line and the table."""
    stream = sys.stderr if as_json else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else _ExperimentLines(stream)


def _print_json(value: Any) -> None:
    from normlab.lab.base import _jsonable

    print(json.dumps(_jsonable(value), indent=2))


# ------------------------------------------------------------------------------------------- lab
def _run_lab(
    names: Sequence[str],
    *,
    mode: str,
    seed: int,
    data: str,
    out: str | None,
    as_json: bool,
    title: str,
    device: str = "cpu",
) -> int:
    from normlab.lab import REGISTRY, UnknownExperimentError, resolve_names, run_experiments
    from normlab.lab.base import check_data, check_device
    from normlab.lab.runner import default_out_dir
    from normlab.nn import check_device as device_here

    try:
        names = resolve_names(names)
        for name in names:
            check_data(REGISTRY[name], data)
            check_device(REGISTRY[name], device)
    except (UnknownExperimentError, ValueError) as e:
        raise CLIError(str(e), EXIT_USAGE) from None
    try:
        device_here(device)  # CUDA asked for where there is none: nothing is written
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {device}: {e}") from None
    out_dir = Path(out) if out else default_out_dir()
    update, status = _progress()
    lines = _experiment_lines(as_json)
    try:
        summary = run_experiments(
            names,
            out_dir,
            mode=mode,
            seed=seed,
            data=data,
            device=device,
            progress=update,
            title=title,
            on_start=None if lines is None else lines.start,
            on_end=None if lines is None else lines.end,
        )
    finally:
        if status is not None:
            status.stop()
    if as_json:
        _print_json(
            {
                "report": str(summary.report),
                "out_dir": str(summary.out_dir),
                "wall_time_s": summary.wall_time,
                "experiments": [
                    {
                        "name": r.name,
                        "verdict": r.result.verdict,
                        "measured": r.result.measured,
                        "summary": r.result.summary,
                        "wall_time_s": r.wall_time,
                    }
                    for r in summary.runs
                ],
            }
        )
        return EXIT_OK
    _print_results(summary)
    return EXIT_OK


def _print_results(summary) -> None:
    from rich.table import Table

    table = Table(title=f"normlab lab: {len(summary.runs)} experiment(s)")
    table.add_column("experiment", no_wrap=True)
    table.add_column("claim")
    table.add_column("verdict", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for r in summary.runs:
        color = "green" if r.result.verdict == "holds" else "red"
        table.add_row(
            r.name, r.result.claim, f"[{color}]{r.result.verdict}[/{color}]", f"{r.wall_time:.1f} s"
        )
    console = _console()
    console.print(table)
    for r in summary.runs:
        console.print(f"[bold]{r.name}[/bold]: {r.result.measured}")
    # plain print: the path must stay on one line, whatever the terminal width (scripts grep for it)
    print(f"Report: {summary.report.resolve()}  (total {summary.wall_time:.1f} s)")


def _cmd_demo(args: argparse.Namespace) -> int:
    return _run_lab(
        DEMO_EXPERIMENTS,
        mode="quick",
        seed=args.seed,
        data="sample",
        out=args.out,
        as_json=args.json,
        title="normlab demo: does batch norm do what the tutorials say?",
        device=args.device,
    )


def _cmd_lab_list(args: argparse.Namespace) -> int:
    from normlab.lab import REGISTRY

    if args.json:
        _print_json(
            [
                {
                    "name": e.name,
                    "claim": e.claim,
                    "source": e.source,
                    "data": list(e.data),
                    "on_device": e.on_device,
                }
                for e in REGISTRY.values()
            ]
        )
        return EXIT_OK
    from rich.table import Table

    table = Table(title="normlab lab experiments")
    table.add_column("name", no_wrap=True)
    table.add_column("claim")
    table.add_column("source")
    for e in REGISTRY.values():
        table.add_row(e.name, e.claim, e.source)
    _console().print(table)
    return EXIT_OK


def _cmd_lab_run(args: argparse.Namespace) -> int:
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    return _run_lab(
        args.names,
        mode=mode,
        seed=args.seed,
        data=args.data,
        out=args.out,
        as_json=args.json,
        title="normlab lab report",
        device=args.device,
    )


# ------------------------------------------------------------------------------------------- train, eval
def _rank_device(device: str, world: Any) -> str:
    """The device of this rank: ``cuda`` under mpiexec is one GPU per process of a node (MPICH's local
    rank), as torchrun's LOCAL_RANK; ``cpu`` and ``cuda:N`` are taken as given."""
    if device != "cuda" or world.size == 1:
        return device
    return f"cuda:{int(os.environ.get('MPI_LOCALRANKID', world.rank))}"


def _to_device(model: Any, device: str) -> None:
    """``model.to(device)`` before any file is written; a device that is not here exits 1 saying why."""
    if device == "cpu":
        return
    try:
        model.to(device)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {device}: {e}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    if args.procs is not None or args.hostfile:
        from normlab.distributed import DistributedError
        from normlab.distributed.launch import launch_train
        from normlab.lab.runner import default_out_dir

        # one run directory, chosen here, for every rank
        out = Path(args.out) if args.out else default_out_dir(Path("runs") / "train")
        try:
            return launch_train(args, out)
        except DistributedError as e:
            raise CLIError(str(e)) from e
    import normlab as nl
    from normlab.callbacks import ModelCheckpoint
    from normlab.config import build_model, build_optimizer, load_config, load_data
    from normlab.distributed import get_world
    from normlab.lab.base import write_json
    from normlab.lab.runner import default_out_dir
    from normlab.nn import convert_sync_batchnorm

    world = get_world()  # under mpiexec: rank 0 writes and prints, batch norms are synchronized
    cfg = load_config(args.config)
    data = load_data(cfg)
    model = build_model(cfg, data.n_inputs, data.n_classes)
    if world.size > 1:
        model = convert_sync_batchnorm(model)
    _to_device(model, _rank_device(args.device, world))
    optimizer = build_optimizer(cfg, model)
    initial_epoch = 0
    if args.resume:
        checkpoint = nl.load_checkpoint(_existing(args.resume), model, optimizer)
        initial_epoch = checkpoint.epoch
        if initial_epoch >= cfg.epochs:
            raise CLIError(
                f"{args.resume}: already trained for {initial_epoch} epochs; the config asks for {cfg.epochs}"
            )
    out = Path(args.out) if args.out else default_out_dir(Path("runs") / "train")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.as_dict())  # `normlab eval` reads it back
        write_json(
            out / "run.json",
            {"config_file": cfg.source, "resumed_from": args.resume, "command": sys.argv},
        )
    history = nl.fit(
        model,
        data.train.x,
        data.train.y,
        optimizer=optimizer,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        validation_data=(data.val.x, data.val.y),
        callbacks=[
            ModelCheckpoint(out / "checkpoint-epoch{epoch}.safetensors", every=cfg.checkpoint_every)
        ]
        if world.is_main
        else [],
        verbose=0 if args.json else 1,
        seed=cfg.seed,
        initial_epoch=initial_epoch,
    )
    if not world.is_main:
        return EXIT_OK
    model_path = nl.save(model, out / "model.safetensors")
    write_json(out / "history.json", history.to_dict())
    test = nl.evaluate(model, data.test.x, data.test.y)
    result = {
        "model": str(model_path),
        "out_dir": str(out),
        "epochs": cfg.epochs,
        "resumed_at_epoch": initial_epoch,
        "last_epoch": history.epochs[-1] if history.epochs else {},
        "test": test,
    }
    if args.json:
        _print_json(result)
    else:
        print(f"test: {_metrics_line(test)}")
        print(f"model: {model_path}  (checkpoints in {out})")
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    import normlab as nl
    from normlab.config import as_model_input, load_config, load_data, reads_flat_input

    path = _existing(args.checkpoint)
    model = nl.load(path)
    _to_device(model, args.device)
    config_file = path.parent / "config.json"
    if config_file.is_file():  # written by `normlab train` next to its checkpoints
        cfg = load_config(config_file)
        if args.data:
            cfg.data["split"] = args.data
        part = getattr(load_data(cfg), args.split)
    else:
        from normlab.data import load_mnist

        part = as_model_input(
            getattr(load_mnist(args.data or "sample"), args.split), reads_flat_input(model)
        )
    try:
        metrics = nl.evaluate(model, part.x, part.y)
    except ValueError as e:
        raise CLIError(f"{path}: the model does not fit the {args.split} data: {e}") from None
    metrics |= {"checkpoint": str(path), "split": args.split, "samples": len(part.y)}
    if args.json:
        _print_json(metrics)
    else:
        print(f"{path} on {len(part.y)} {args.split} samples: {_metrics_line(metrics)}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- doctor
def _doctor_data(path: Path, model: Any, data: str, limit: int) -> tuple[Any, Any]:
    """``(x, y)`` for ``normlab doctor --data``: the MNIST test split (``sample``/``full``, shaped as the model
    reads it; or the data of the config.json next to the checkpoint) or an ``.npz`` file with ``x`` (and
    optionally ``y``)."""
    import numpy as np

    from normlab.config import as_model_input, load_config, load_data, reads_flat_input

    if data in ("sample", "full"):
        config_file = path.parent / "config.json"
        if config_file.is_file():  # written by `normlab train` next to its checkpoints
            cfg = load_config(config_file)
            cfg.data["split"] = data
            part = load_data(cfg).test
        else:
            from normlab.data import load_mnist

            part = as_model_input(load_mnist(data).test, reads_flat_input(model))
        return part.x[:limit], part.y[:limit]
    file = Path(data)
    if not file.is_file() or file.suffix != ".npz":
        raise CLIError(
            f"--data {data}: expected 'sample', 'full' or an existing .npz file", EXIT_USAGE
        )
    with np.load(file, allow_pickle=False) as arrays:
        if "x" not in arrays:
            raise CLIError(f"{data}: the .npz file holds no array 'x' (found {sorted(arrays)})")
        x = np.asarray(arrays["x"], dtype=np.float32)
        y = np.asarray(arrays["y"]) if "y" in arrays else None
    return x[:limit], None if y is None else y[:limit]


def _cmd_doctor(args: argparse.Namespace) -> int:
    import normlab as nl
    from normlab.doctor import DoctorError

    path = _existing(args.checkpoint)
    model = nl.load(path)  # a CheckpointError names what is wrong with a file that is not normlab's
    x = y = None
    if args.data:
        x, y = _doctor_data(path, model, args.data, args.limit)
    try:
        report = nl.doctor(model, x, labels=y)
    except DoctorError as e:
        raise CLIError(f"{path}: {e}") from None
    failing = report.at_or_above(args.fail_on)
    code = EXIT_FAILURE if failing else EXIT_OK
    if args.json:
        _print_json(
            {"checkpoint": str(path), "fail_on": args.fail_on, "exit_code": code} | report.to_dict()
        )
        return code
    from rich.table import Table

    console = _console()
    if report.findings:
        table = Table(title=f"normlab doctor: {path}")
        for column in ("severity", "code", "layer", "finding", "evidence", "fix"):
            table.add_column(column, no_wrap=column in ("severity", "code", "layer"))
        colors = {"error": "red", "warning": "yellow", "info": "cyan"}
        for f in report.findings:
            c = colors[f.severity]
            evidence = ", ".join(f"{k}={v}" for k, v in f.evidence.items())
            table.add_row(
                f"[{c}]{f.severity}[/{c}]", f.code, f.layer or "<model>", f.message, evidence, f.fix
            )
        console.print(table)
    for note in report.notes:
        print(note)
    data_line = f"{len(x)} samples" if x is not None else "no data (static checks only)"
    print(
        f"{len(report.findings)} finding(s), {len(failing)} at or above {args.fail_on}; "
        f"{len(report.normalization_layers)} normalization layer(s); {data_line}"
    )
    return code


def _existing(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{path}: no such checkpoint file")
    return p


def _metrics_line(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


# ------------------------------------------------------------------------------------------- data, info
def _cmd_data_download(args: argparse.Namespace) -> int:
    from normlab.data import download_mnist

    def say(line: str) -> None:
        print(line, file=sys.stderr)

    if args.dataset != "mnist":
        from normlab.data.color_datasets import REMOTES, download_remote

        remote = REMOTES[args.dataset]
        print(f"{remote.name} is in {download_remote(remote, args.root, log=say)}")
        return EXIT_OK
    directory = download_mnist(args.root, log=say)
    print(f"MNIST is in {directory}")
    return EXIT_OK


def _cmd_data_show(args: argparse.Namespace) -> int:
    from normlab.data.show import samples, write_grid

    images, labels, title = samples(
        args.source, args.count, args.seed, (args.size, args.size), args.root
    )
    print(f"{write_grid(images, labels, args.out, title)}: {len(images)} images of {args.source}")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from normlab import kernels
    from normlab.data import data_home
    from normlab.system import machine_description
    from normlab.version import __version__

    info = {"normlab": __version__} | machine_description()
    try:
        info["kernels"] = kernels.describe()
    except (ImportError, ValueError) as exc:  # NORMLAB_KERNELS misspelled, or =numba without numba
        raise CLIError(f"normalization kernels unavailable: {exc}") from None
    from normlab.kernels import cuda as cuda_kernels  # imports no CUDA; describe() never raises

    info["gpu"] = cuda_kernels.describe()
    info["data cache"] = str(data_home())
    if args.json:
        _print_json(info)
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
        print("(set NORMLAB_DATA to change the data cache)")
    return EXIT_OK


# ------------------------------------------------------------------------------------------- export
def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,28,28, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes like 1,28,28, got {text!r}")
    return shape


def _cmd_export(args: argparse.Namespace) -> int:
    from normlab.interop.command import export_checkpoint, summary_lines

    if not args.onnx and not args.torch:
        raise CLIError("export: give --onnx OUT.onnx and/or --torch OUT.pt", EXIT_USAGE)
    path = _existing(args.checkpoint)
    summary = export_checkpoint(
        path,
        onnx_path=args.onnx,
        torch_path=args.torch,
        fold=args.fold,
        opset=args.opset,
        input_shape=args.input_shape,
        force=args.force,
    )
    if args.json:
        _print_json(summary)
    else:
        print("\n".join(summary_lines(summary)))
    return EXIT_OK


# ------------------------------------------------------------------------------------------- parser
def _device_arg(text: str) -> str:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N`` (checked for presence later, when the model moves)."""
    kind, colon, index = text.partition(":")
    if text == "cpu" or (kind == "cuda" and (not colon or index.isdigit())):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")


DEVICE_OPTION: dict[str, Any] = {
    "type": _device_arg,
    "default": "cpu",
    "metavar": "DEVICE",
    "help": "cpu (NumPy, the default), cuda or cuda:N (CuPy arrays on that GPU; pip install "
    "'normlab[gpu]')",
}

PROCS_HELP = """\
Several processes (--procs K):
  normlab train CONFIG --procs K runs `mpiexec -n K python -m normlab train CONFIG --out DIR`
  (needs: pip install 'normlab[distributed]', which brings mpi4py and the mpich wheel). Each
  global batch of batch_size samples is split over the K ranks, batch norms become
  SyncBatchNorm and gradients are averaged, so the run computes what one process computes;
  rank 0 prints, writes the checkpoints and the model.

Several hosts (--hostfile FILE): FILE lists one host per line, with how many processes it
takes, e.g.
    node1:4
    node2:4
  and `--procs 8 --hostfile FILE` starts 4 ranks on each (mpiexec -f FILE). Every host needs
  the same Python environment and normlab at the same path, the config and the data at the
  same path, and password-less ssh from this host; checkpoints go to DIR on node1 (rank 0).
  You may also run mpiexec yourself: mpiexec -n K -f FILE python -m normlab train CONFIG --out DIR
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="normlab",
        description="Batch normalization and its family, from first principles: experiments, training, data.",
        epilog="Run `normlab COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="the main job: quick init-scale and bn-vs-plain on the bundled MNIST sample",
        description="Run the quick forms of the init-scale and bn-vs-plain experiments on the bundled "
        "MNIST sample, print a results table and the path of the HTML report.",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", metavar="DIR", help="run directory (default runs/<date-time>)")
    demo.add_argument("--device", **DEVICE_OPTION)
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(func=_cmd_demo)

    lab = sub.add_parser("lab", help="list and run the lab's experiments", description="The lab.")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    lab_list = lab_sub.add_parser("list", help="list the experiments and their claims")
    lab_list.add_argument("--json", action="store_true", help="print the list as JSON")
    lab_list.set_defaults(func=_cmd_lab_list)
    lab_run = lab_sub.add_parser(
        "run",
        help="run experiments (NAME... or 'all') and write a report",
        description="Run experiments into a run directory (config, metrics, figures, report.html).",
    )
    lab_run.add_argument("names", nargs="+", metavar="NAME", help="experiment names, or 'all'")
    size = lab_run.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="the quick mode (seconds to a minute each)"
    )
    size.add_argument("--tiny", action="store_true", help="the smallest mode (a smoke test)")
    lab_run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    lab_run.add_argument("--out", metavar="DIR", help="run directory (default runs/<date-time>)")
    lab_run.add_argument(
        "--data",
        choices=["sample", "full", "cifar10", "fashion-mnist"],
        default="sample",
        help="MNIST: the bundled sample (default) or the full set (after `normlab data download mnist`); "
        "cifar10 / fashion-mnist (after `normlab data download NAME`) for the experiments that train on "
        "images: cnn-trio, batch-size, lenet-bn",
    )
    lab_run.add_argument(
        "--device",
        **(
            DEVICE_OPTION
            | {
                "help": "cpu (the default), cuda or cuda:N: where the experiments train their "
                "models; pip install 'normlab[gpu]'"
            }
        ),
    )
    lab_run.add_argument("--json", action="store_true", help="print the results as JSON")
    lab_run.set_defaults(func=_cmd_lab_run)

    train = sub.add_parser(
        "train",
        help="train a model described by a config file (TOML/JSON), with checkpoints",
        description="Train a model from a config (see normlab.config for the format), checkpointing every "
        "few epochs; --resume continues from a checkpoint exactly where it stopped.",
        epilog=PROCS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("config", help="the config file (.toml or .json)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue from this checkpoint")
    train.add_argument(
        "--out", metavar="DIR", help="run directory (default runs/train/<date-time>)"
    )
    train.add_argument(
        "--json", action="store_true", help="print the results as JSON (no progress bar)"
    )
    train.add_argument(
        "--device",
        **(
            DEVICE_OPTION
            | {
                "help": DEVICE_OPTION["help"]
                + "; with --procs, cuda is one GPU per process of a node"
            }
        ),
    )
    train.add_argument(
        "--procs",
        type=int,
        metavar="K",
        help="data-parallel training on K processes: runs mpiexec -n K for you (see below)",
    )
    train.add_argument(
        "--hostfile",
        metavar="FILE",
        help="with --procs: spread the K processes over the hosts listed in FILE (see below)",
    )
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate a saved model or checkpoint",
        description="Evaluate a model or checkpoint on MNIST (or the data of the config.json next to it).",
    )
    evaluate.add_argument("checkpoint", help="a file written by `normlab train` or normlab.save")
    evaluate.add_argument(
        "--split", choices=["train", "val", "test"], default="test", help="default test"
    )
    evaluate.add_argument(
        "--data", choices=["sample", "full"], help="MNIST sample (default) or full"
    )
    evaluate.add_argument("--device", **DEVICE_OPTION)
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(func=_cmd_eval)

    doctor = sub.add_parser(
        "doctor",
        help="find batch-norm mistakes in a saved model (exit 1 if any at or above --fail-on)",
        description="Examine a model or checkpoint for batch-norm mistakes (codes BN001...; see "
        "normlab.doctor).  Static checks always; with --data, checks that run the model on the data.",
    )
    doctor.add_argument("checkpoint", help="a file written by `normlab train` or normlab.save")
    doctor.add_argument(
        "--data",
        metavar="sample|full|PATH",
        help="run the data checks on the MNIST test split (sample or full) or on an .npz file with "
        "arrays x (and y, for accuracy costs)",
    )
    doctor.add_argument(
        "--limit",
        type=int,
        default=2000,
        help="at most this many samples of the data (default 2000)",
    )
    doctor.add_argument(
        "--fail-on",
        choices=["info", "warning", "error"],
        default="warning",
        help="exit 1 if a finding has this severity or above (default warning)",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=_cmd_doctor)

    data = sub.add_parser("data", help="data sets: download, show samples")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    download = data_sub.add_parser("download", help="download a data set and verify its checksums")
    download.add_argument(
        "dataset",
        choices=["mnist", "cifar10", "fashion-mnist"],
        help="the data set (Iris and the MNIST sample are bundled)",
    )
    download.add_argument(
        "--root",
        metavar="DIR",
        help="data directory; files go to DIR/<dataset> (default: $NORMLAB_DATA, else the cache dir)",
    )
    download.set_defaults(func=_cmd_data_download)
    show = data_sub.add_parser("show", help="write a PNG grid of sample images with their labels")
    show.add_argument(
        "source", help="a folder of class subfolders, or mnist | fashion-mnist | cifar10"
    )
    show.add_argument("--out", default="samples.png", help="the PNG to write (default samples.png)")
    show.add_argument("--count", type=int, default=32, help="images to show (default 32)")
    show.add_argument(
        "--size", type=int, default=64, help="folder images are resized to SIZE x SIZE"
    )
    show.add_argument("--seed", type=int, default=0, help="which images (default 0)")
    show.add_argument("--root", metavar="DIR", help="data directory of the downloaded sets")
    show.set_defaults(func=_cmd_data_show)

    export = sub.add_parser(
        "export",
        help="export a saved model to ONNX and/or PyTorch, verified against normlab",
        description="Export a model or checkpoint (eval mode) to an ONNX file and/or a PyTorch file "
        "(state dict + architecture); each output is checked against normlab on a probe batch before it "
        "is written atomically.",
    )
    export.add_argument("checkpoint", help="a file written by `normlab train` or normlab.save")
    export.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX model here")
    export.add_argument(
        "--torch", metavar="OUT.pt", help="write a PyTorch state dict + architecture"
    )
    export.add_argument(
        "--fold", action="store_true", help="fold batch norm into Linear/Conv2d first"
    )
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 13 to 23 (default 17)")
    export.add_argument(
        "--input-shape",
        type=_shape,
        metavar="C,H,W",
        help="input without the batch axis (default: from a first Linear, else MNIST images)",
    )
    export.add_argument("--force", action="store_true", help="replace existing output files")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(func=_cmd_export)

    info = sub.add_parser("info", help="versions, machine, kernels in use, data cache location")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(func=_cmd_info)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors, 0 on --help
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    from normlab.checkpoint import CheckpointError
    from normlab.data import DataError

    try:
        return int(args.func(args))
    except CLIError as e:
        print(f"normlab: error: {_one_line(e)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("normlab: interrupted", file=sys.stderr)
        return 130
    except (DataError, CheckpointError, OSError, ValueError, TypeError, KeyError) as e:
        if os.environ.get("NORMLAB_DEBUG"):
            raise
        print(f"normlab: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
