"""What a running training shows: a tqdm bar on a terminal, plain log lines anywhere else.

Batch systems (SLURM, Kubernetes, ``nohup``) write stdout to files, where a redrawn bar
turns into one huge line of carriage returns; there the run prints one line per logged
step and per evaluation instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TextIO

from tqdm import tqdm


def _row_text(row: Mapping) -> str:
    return (
        f"loss={row['loss/total']:.4g} landmark={row['loss/landmark']:.4g} "
        f"{row['images_per_s']:.0f} img/s"
    )


class ProgressBar:
    """A tqdm bar (interactive terminals)."""

    def __init__(self, total: int, initial: int, stream: TextIO):
        self._bar = tqdm(
            total=total,
            initial=initial,
            unit="step",
            dynamic_ncols=True,
            mininterval=2.0,
            file=stream,
        )

    def step(self) -> None:
        self._bar.update(1)

    def train_row(self, step: int, row: Mapping) -> None:
        del step
        self._bar.set_postfix_str(_row_text(row))

    def message(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


class LogLines:
    """One flushed line per logged step, evaluation and event (logs, pipes, files)."""

    def __init__(self, total: int, stream: TextIO):
        self._total = total
        self._stream = stream

    def step(self) -> None:
        pass

    def train_row(self, step: int, row: Mapping) -> None:
        self.message(f"step {step}/{self._total}: {_row_text(row)}")

    def message(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def close(self) -> None:
        pass


class Silent:
    """Processes other than the first one print nothing."""

    def step(self) -> None:
        pass

    def train_row(self, step: int, row: Mapping) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(config, total: int, initial: int, enabled: bool, stream: TextIO | None = None):
    """A tqdm bar when ``stream`` (stderr) is a terminal and ``config.progress_bar`` allows it,
    else plain lines on stdout; nothing when not ``enabled`` (processes other than 0)."""
    if not enabled:
        return Silent()
    stream = stream or sys.stderr
    if bool(config.get("progress_bar", True)) and stream.isatty():
        return ProgressBar(total, initial, stream)
    return LogLines(total, sys.stdout)
