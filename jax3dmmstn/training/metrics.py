"""The metrics log, ``workdir/metrics.jsonl``: one JSON row per logged step or evaluation,
each with 'split' ('train' or 'eval') and 'step'."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from jax3dmmstn.training.step import LOSS_TERMS


def read_metrics(path: str) -> list[dict]:
    """Rows of a JSONL metrics file (skipping a torn last line of a killed run)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _plain(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value.tolist()


class MetricsWriter:
    """Appends JSON rows to ``workdir/metrics.jsonl`` (process 0 only)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run re-does those steps)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(tmp, self.path)

    def write(self, row: Mapping) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps({k: _plain(v) for k, v in row.items()}) + "\n")


def step_scalars(metrics: Mapping) -> dict:
    """Loss terms and grad norm of a (maybe replicated) step's metrics dict, as floats."""
    out = {}
    for name in LOSS_TERMS + ("total",):
        out[f"loss/{name}"] = float(np.ravel(metrics[name])[0])
    out["grad_norm"] = float(np.ravel(metrics["grad_norm"])[0])
    return out
