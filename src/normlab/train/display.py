"""The progress display of ``fit``: a rich bar on a terminal, plain lines in logs and pipes."""

from __future__ import annotations

import sys
from typing import Any


def console() -> Any:
    from rich.console import Console

    return Console(file=sys.stdout)


class Display:
    """A rich progress bar per epoch on a terminal with ``verbose=1``; one plain line per epoch when the
    output is not a terminal or ``verbose=2``; nothing with ``verbose=0``."""

    def __init__(self, verbose: int, epochs: int, steps: int) -> None:
        self.epochs, self.steps = epochs, steps
        self.console = console() if verbose else None
        self.progress: Any = None
        self.task: Any = None
        if verbose == 1 and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=self.console,
            )
            self.progress.start()

    def epoch_begin(self, epoch: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(
                f"Epoch {epoch + 1}/{self.epochs}", total=self.steps, metrics=""
            )

    def batch_end(self, running: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, metrics=format_values(running))

    def epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, metrics=format_values(logs))
        elif self.console is not None:  # plain lines for logs and pipes: no control codes
            print(
                f"Epoch {epoch + 1}/{self.epochs} - {format_values(logs)}",
                file=self.console.file,
                flush=True,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def format_values(values: dict[str, float]) -> str:
    return " - ".join(f"{k} {v:.4g}" for k, v in values.items() if k not in ("epoch", "lr"))
