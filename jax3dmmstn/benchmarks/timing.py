"""Shared helpers of the benchmarks: interleaved timing, machine load, compiled memory."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Mapping


def load_average() -> tuple | None:
    """``os.getloadavg()`` (1, 5, 15 min), None where there is none."""
    return tuple(round(x, 2) for x in os.getloadavg()) if hasattr(os, "getloadavg") else None


def import_torch():
    """torch, or None when the optional extra is not installed."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    return torch


def torch_thread_variants(torch, fn) -> dict:
    """``fn`` run by torch with 1 thread and with one per core: two entries to time.

    On a shared, busy machine torch's OpenMP threads can wait on each other for much
    longer than the work takes, so both settings are timed and the faster one is the
    comparison (:func:`torch_summary`); on an idle machine that is the multi-threaded one.
    """
    cores = os.cpu_count() or 1

    def with_threads(n):
        def run():
            torch.set_num_threads(n)
            return fn()

        return run

    variants = {"torch_1": with_threads(1)}
    if cores > 1:
        variants[f"torch_{cores}"] = with_threads(cores)
    return variants


def torch_summary(times: Mapping[str, dict], jax_s: float) -> dict:
    """torch's figures from :func:`interleaved`'s ``torch_<threads>`` entries, and the ratio."""
    per_threads = {
        int(name.split("_")[1]): t["median_s"] for name, t in times.items() if name.startswith("torch_")
    }
    best = min(per_threads, key=per_threads.get)
    return dict(
        torch_s=per_threads[best],
        torch_threads=best,
        torch_s_by_threads=per_threads,
        ratio=jax_s / per_threads[best],
    )


TORCH_HEADER = "torch ms (threads) | JAX / torch"
TORCH_RULE = "---:|---:"


def torch_cells(row: Mapping) -> str:
    """The two table cells of :data:`TORCH_HEADER` ("- | -" without torch)."""
    if "torch_s" not in row:
        return "- | -"
    return f"{1e3 * row['torch_s']:.1f} ({row['torch_threads']}) | {row['ratio']:.2f}"


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, dict]:
    """Times each ``fn`` (which must block until done) ``repeats`` times, interleaved.

    The functions alternate inside every repeat (the order reversed every other repeat),
    so a busy, shared machine slows all alike. Returns ``{name: {median_s, min_s}}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list] = {name: [] for name in fns}
    items = list(fns.items())
    for i in range(repeats):
        for name, fn in items if i % 2 == 0 else items[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: dict(median_s=statistics.median(v), min_s=min(v), repeats=len(v))
        for name, v in times.items()
    }


def compiled_memory(compiled) -> dict | None:
    """Bytes from XLA's ``memory_analysis()`` of a compiled function (None if unavailable).

    ``peak_bytes`` = arguments + outputs + temporaries - aliased (what the call needs at
    its peak, the generated code's own buffers included).
    """
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if stats is None:
        return None
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    out = {f: int(getattr(stats, f, 0) or 0) for f in fields}
    out["peak_bytes"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    return out


def mib(n_bytes: int | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 2**20:.1f}"
