"""What the data pipeline does with bad input: fail, or skip and count.

Every problem with one example (an unreadable image, a missing or malformed .pts
file, NaN landmarks, an image of the wrong size) raises ``DataError`` with a
message that names the file (or the record) and says what is wrong. Loaders take
``on_error`` (the config option ``data.on_error``):

* ``"fail"`` (default): the ``DataError`` propagates, the run stops at once.
* ``"skip"``: the example is dropped, the problem is counted and remembered in a
  ``DataErrorLog`` (``log.count``, ``log.messages``, ``log.summary()``), and a
  warning is logged for the first few. Skipping is deterministic: a dataset
  scanned at construction drops bad entries from its index; an example that only
  fails when it is decoded is replaced by the next readable one (``i + 1``, ...),
  so the same step always sees the same data.

Checks happen in numpy before anything reaches ``jit``, so bad input never shows
up as a shape error deep inside a compiled function.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import List

logger = logging.getLogger(__name__)

ERROR_POLICIES = ("fail", "skip")

# Warn for this many skipped examples, then only count (a dataset with thousands
# of bad files should not flood the log; log.summary() has the total).
_MAX_WARNINGS = 20
_MAX_MESSAGES = 1000


class DataError(ValueError):
    """One example (named in the message) cannot be used."""


def check_policy(on_error: str) -> str:
    """Returns ``on_error`` if it is a known policy, else raises ValueError."""
    if on_error not in ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {ERROR_POLICIES}, got {on_error!r}")
    return on_error


@dataclasses.dataclass
class DataErrorLog:
    """Counts and remembers the examples skipped under ``on_error="skip"``."""

    count: int = 0
    messages: List[str] = dataclasses.field(default_factory=list)

    def record(self, error: Exception) -> None:
        self.count += 1
        if len(self.messages) < _MAX_MESSAGES:
            self.messages.append(str(error))
        if self.count <= _MAX_WARNINGS:
            logger.warning("skipping bad example (%d so far): %s", self.count, error)

    def summary(self) -> str:
        if not self.count:
            return "no examples skipped"
        head = "; ".join(self.messages[:3])
        return f"{self.count} examples skipped, e.g. {head}"


def handle(error: DataError, on_error: str, log: DataErrorLog | None) -> None:
    """Applies the policy to one bad example: re-raises, or records it."""
    if check_policy(on_error) == "fail":
        raise error
    if log is not None:
        log.record(error)
