"""Devices and processes: jit or pmap, replicating the state, multi-host set-up.

One device: ``jax.jit``. Several (local or across processes): ``jax.pmap`` over the local
devices, each device holding ``global_batch / device_count`` examples (batches are sharded by
:class:`jax3dmmstn.data.batching.BatchIterator`), gradients averaged with ``lax.pmean``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

logger = logging.getLogger(__name__)

PyTree = Any

AXIS_NAME = "batch"


def choose_parallelism(config) -> str:
    """'jit' or 'pmap' from ``config.parallel`` ('auto': pmap when there are several devices)."""
    mode = config.get("parallel", "auto")
    if mode == "auto":
        return "pmap" if jax.device_count() > 1 else "jit"
    if mode not in ("jit", "pmap"):
        raise ValueError(f"parallel must be 'auto', 'jit' or 'pmap', got {mode!r}")
    if mode == "jit" and jax.process_count() > 1:
        raise ValueError("parallel='jit' runs on one device; use 'pmap' with several processes")
    return mode


def replicate(tree: PyTree) -> PyTree:
    """Host copies stacked along a new leading axis, one per local device (pmap shards it)."""
    n = jax.local_device_count()
    return jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), jax.device_get(tree)
    )


def unreplicate(tree: PyTree) -> PyTree:
    """The first local replica as host arrays (no cross-device or cross-process gather)."""

    def first(x):
        if isinstance(x, jax.Array):
            return np.asarray(x.addressable_shards[0].data)[0]
        return np.asarray(x)[0]

    return jax.tree.map(first, tree)


class DistributedStep(NamedTuple):
    """A compiled step, the state on the devices, and how to bring the state back.

    step: (device state, batch) -> (device state, metrics); state: the device state;
    to_host: device state -> host :class:`~jax3dmmstn.training.state.TrainState`.
    """

    step: Callable
    state: Any
    to_host: Callable


def distribute(step_fn: Callable, state, mode: str) -> DistributedStep:
    """Compile ``step_fn`` (made with ``axis_name=AXIS_NAME`` for pmap) and place ``state``.

    The state is donated: the step updates it in place on the devices.
    """
    if mode == "pmap":
        compiled = jax.pmap(step_fn, axis_name=AXIS_NAME, donate_argnums=(0,))
        return DistributedStep(compiled, replicate(state), unreplicate)
    compiled = jax.jit(step_fn, donate_argnums=(0,))
    return DistributedStep(compiled, jax.device_put(state), jax.device_get)


# --------------------------------------------------------------------------------------------
# Multi-host set-up.
# --------------------------------------------------------------------------------------------
def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize_distributed(
    mode: str = "env",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cpu_collectives: str = "gloo",
) -> None:
    """``jax.distributed.initialize`` from the arguments, then the environment, as ``mode`` says.

    mode 'env': initialise only when a coordinator address is given (argument or
    JAX_COORDINATOR_ADDRESS); 'auto': always (clusters jax.distributed detects by itself:
    SLURM, Cloud TPU, ...); 'off': never. An address needs the number of processes and this
    process's index (arguments or JAX_NUM_PROCESSES, JAX_PROCESS_ID). ``cpu_collectives``
    ('gloo' or 'mpi') is what processes computing on CPUs talk through.
    Call before anything else touches the devices.
    """
    if mode not in ("env", "auto", "off"):
        raise ValueError(f"distributed mode must be 'env', 'auto' or 'off', got {mode!r}")
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    if mode == "off" or (mode == "env" and not address):
        return
    if address and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator address {address!r} needs the number of processes and the process "
            "id (arguments, or JAX_NUM_PROCESSES and JAX_PROCESS_ID)"
        )
    # Only used when the processes compute on CPUs; harmless on accelerators.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    kwargs = {}
    if address:
        kwargs = dict(
            coordinator_address=address, num_processes=num_processes, process_id=process_id
        )
    jax.distributed.initialize(**kwargs)
    logger.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
