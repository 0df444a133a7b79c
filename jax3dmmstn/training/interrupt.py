"""Stopping a run cleanly on SIGTERM (batch schedulers, ``kill``) and Ctrl-C (SIGINT).

The handler only raises a flag; the loop checks it after each step, saves a checkpoint of
the step it reached and raises :class:`TrainingInterrupted`, so nothing done so far is lost
and the same command resumes the run.
"""

from __future__ import annotations

import signal
import threading


class TrainingInterrupted(Exception):
    """The run stopped on a signal after saving its checkpoint at ``step``."""

    def __init__(self, signum: int, step: int):
        self.signum = signum
        self.step = step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; the checkpoint of that step is saved")


class StopRequests:
    """Context manager: SIGTERM and SIGINT set ``signum`` instead of killing the process.

    Only the main thread can install handlers; elsewhere (a notebook's worker thread) the
    signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        del frame
        self.signum = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
