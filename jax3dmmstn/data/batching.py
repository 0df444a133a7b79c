"""Deterministic, sharded batching with background prefetch.

Order: step ``s`` of a run reads the global stream positions
``s * G .. (s + 1) * G - 1`` (G = global batch size). For a finite dataset of N
examples, position p is example ``perm_e[p % N]`` with ``e = p // N`` the epoch and
``perm_e`` a permutation drawn from ``(seed, e)``; for an endless source (the
synthetic faces) the position is the example index. Augmentation randomness is
keyed on ``(seed, position)``. So the data of a step depends only on the seed and
the step: a run resumed at step s (``start_step=s``) sees exactly what the
uninterrupted run saw, whatever the number of processes or devices.

Sharding: each process (``jax.process_index()`` of ``jax.process_count()``) loads
only its contiguous slice of the global batch, ``G / process_count`` examples,
and ``split_for_devices`` reshapes a local batch to ``[local devices, per device,
...]`` (for ``pmap``); ``to_global_arrays`` builds one global ``jax.Array`` per key
sharded along a mesh axis (for ``jit`` / ``shard_map``). With ``mirror=True`` each
example is followed by its horizontal flip (the original's siamese pairs), which
doubles every count and keeps pairs on one device.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Protocol, Sequence

import numpy as np

from jax3dmmstn.data import preprocess

Batch = Dict[str, np.ndarray]
# Keys of an example that are metadata, not arrays (left out of batches).
METADATA_KEYS = ("source",)


class BatchSource(Protocol):
    """What ``BatchIterator`` reads from."""

    num_examples: Optional[int]  # None: endless stream

    def load_batch(self, indices: np.ndarray, positions: np.ndarray) -> Batch:
        """Collated examples ``indices`` (positions: stream positions, for randomness)."""


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of ``num_examples`` from (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_examples)


def global_batch_indices(
    step: int, global_batch_size: int, num_examples: Optional[int], seed: int, shuffle: bool = True
) -> np.ndarray:
    """Example indices of the whole global batch of ``step``.

    Args:
      step: training step (0-based).
      global_batch_size: G.
      num_examples: N, or None for an endless stream (index = position).
      seed: order seed.
      shuffle: False reads the dataset in order, epoch after epoch.
    Returns:
      ``[G]`` int64 indices into the dataset.
    """
    if step < 0 or global_batch_size <= 0:
        raise ValueError(
            f"need step >= 0 and global_batch_size > 0, got {step}, {global_batch_size}"
        )
    positions = step * global_batch_size + np.arange(global_batch_size, dtype=np.int64)
    if num_examples is None:
        return positions
    if num_examples <= 0:
        raise ValueError("the dataset is empty")
    epochs, within = np.divmod(positions, num_examples)
    if not shuffle:
        return within
    out = np.empty_like(positions)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = epoch_permutation(num_examples, seed, int(epoch))[within[sel]]
    return out


def process_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """The contiguous part of the global batch that process ``process_index`` loads."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by "
            f"the {process_count} processes"
        )
    per_process = global_batch_size // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


def split_for_devices(batch: Batch, num_devices: int) -> Batch:
    """``[B, ...]`` -> ``[num_devices, B / num_devices, ...]`` for every key (row-major).

    Device d gets rows ``d * B/n .. (d + 1) * B/n - 1``, so consecutive pairs stay
    together whenever B/n is even.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % num_devices:
            raise ValueError(
                f"batch['{key}'] has {value.shape[0]} rows, not divisible by {num_devices} devices"
            )
        out[key] = value.reshape((num_devices, value.shape[0] // num_devices) + value.shape[1:])
    return out


def merge_devices(batch: Batch) -> Batch:
    """Inverse of ``split_for_devices``: ``[n, B/n, ...]`` -> ``[B, ...]``."""
    return {k: np.asarray(v).reshape((-1,) + np.shape(v)[2:]) for k, v in batch.items()}


def collate(examples: Sequence[Dict[str, Any]]) -> Batch:
    """Stacks examples into a batch (metadata keys such as ``source`` are left out).

    Raises:
      ValueError: examples with different keys or shapes, naming the sources.
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    keys = [k for k in examples[0] if k not in METADATA_KEYS]
    out = {}
    for key in keys:
        values = []
        for ex in examples:
            if key not in ex:
                raise ValueError(
                    f"{ex.get('source', 'an example')} has no '{key}' while "
                    f"{examples[0].get('source', 'the first example')} has it"
                )
            values.append(np.asarray(ex[key]))
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            bad = next(ex for ex, v in zip(examples, values) if v.shape != values[0].shape)
            raise ValueError(
                f"cannot batch '{key}': {bad.get('source', 'an example')} has shape "
                f"{np.shape(bad[key])}, {examples[0].get('source', 'the first example')} "
                f"has {values[0].shape} (crop/resize to one size first)"
            )
        out[key] = np.stack(values)
    return out


class DatasetSource:
    """A finite sequence dataset (``len``, ``[i]``) as a ``BatchSource``.

    Args:
      dataset: the examples.
      transform: optional ``f(example, rng) -> example`` (crop, augmentation); rng
        is a numpy Generator seeded from (seed, stream position).
      seed: augmentation seed.
    """

    def __init__(self, dataset, transform: Optional[Callable] = None, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.num_examples = len(dataset)

    def load_batch(self, indices: np.ndarray, positions: np.ndarray) -> Batch:
        examples = []
        for index, position in zip(indices, positions):
            example = self.dataset[int(index)]
            if self.transform is not None:
                rng = np.random.default_rng([self.seed, int(position), 0xA06])
                example = self.transform(example, rng)
            examples.append(example)
        return collate(examples)


class Prefetcher:
    """Runs an iterator in a background thread, ``size`` items ahead.

    Exceptions of the producer are re-raised in the consumer. Call ``close()`` (or
    use it as a context manager) to stop the thread early.
    """

    _DONE = object()

    def __init__(self, iterator: Iterator, size: int = 2):
        if size < 1:
            raise ValueError(f"prefetch size must be >= 1, got {size}")
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                if not self._put((item, None)):
                    return
        except BaseException as error:  # handed to the consumer
            self._put((None, error))
            return
        self._put((self._DONE, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item, error = self._queue.get()
        if error is not None:
            self.close()
            raise error
        if item is self._DONE:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()
        # Unblock a producer waiting on a full queue.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _jax_process_layout():
    import jax  # deferred: batching math needs no jax

    return jax.process_index(), jax.process_count(), jax.local_device_count()


class BatchIterator:
    """Endless iterator of this process's batches, from ``start_step`` on.

    Yields dicts of numpy arrays: ``[B_local, ...]``, or ``[local devices,
    B_local / local devices, ...]`` with ``split_devices=True``; with ``mirror``
    every count is doubled (example, mirror, example, mirror, ...). ``step`` is the
    step of the batch that the next ``next()`` returns.

    Args:
      source: a ``BatchSource`` or a sequence dataset (wrapped in ``DatasetSource``
        with ``transform``).
      global_batch_size: examples per step over all processes (before mirroring).
      seed: order (and augmentation) seed.
      start_step: first step (resume from a checkpoint's step).
      shuffle: epoch-wise shuffling for finite datasets.
      transform: per-example ``f(example, rng)`` when ``source`` is a dataset.
      mirror: append each example's horizontal flip (siamese pairs).
      flip_permutation: landmark permutation for the flip (default from L).
      process_index, process_count, num_local_devices: default from jax.
      split_devices: reshape to ``[num_local_devices, ...]``.
      check_devices: check that the rows split over ``num_local_devices`` (mirror
        pairs on one device) without reshaping (for a sharded global array).
      prefetch: batches prepared ahead in a background thread (0: none).
    """

    def __init__(
        self,
        source,
        global_batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        *,
        shuffle: bool = True,
        transform: Optional[Callable] = None,
        mirror: bool = False,
        flip_permutation: Optional[np.ndarray] = None,
        process_index: Optional[int] = None,
        process_count: Optional[int] = None,
        num_local_devices: Optional[int] = None,
        split_devices: bool = False,
        check_devices: bool = False,
        prefetch: int = 2,
    ):
        if not hasattr(source, "load_batch"):
            source = DatasetSource(source, transform, seed)
        elif transform is not None:
            raise ValueError("transform applies to datasets; a BatchSource transforms itself")
        if (
            process_index is None
            or process_count is None
            or ((split_devices or check_devices) and num_local_devices is None)
        ):
            jax_index, jax_count, jax_devices = _jax_process_layout()
            process_index = jax_index if process_index is None else process_index
            process_count = jax_count if process_count is None else process_count
            num_local_devices = jax_devices if num_local_devices is None else num_local_devices
        self.source = source
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.mirror = mirror
        self.flip_permutation = flip_permutation
        self.split_devices = split_devices
        self.num_local_devices = num_local_devices or 1
        self._slice = process_slice(global_batch_size, process_index, process_count)
        local = self._slice.stop - self._slice.start
        rows = local * (2 if mirror else 1)
        per_device = split_devices or check_devices
        if per_device and rows % self.num_local_devices:
            raise ValueError(
                f"{rows} rows per process do not split over {self.num_local_devices} local devices"
            )
        if per_device and mirror and (rows // self.num_local_devices) % 2:
            raise ValueError("with mirror pairs each device needs an even number of rows")
        self.step = start_step
        self._prefetch = prefetch
        self._prefetcher = None

    def batch_at(self, step: int) -> Batch:
        """This process's batch of ``step`` (pure function of seed and step)."""
        indices = global_batch_indices(
            step, self.global_batch_size, self.source.num_examples, self.seed, self.shuffle
        )
        positions = step * self.global_batch_size + np.arange(
            self.global_batch_size, dtype=np.int64
        )
        batch = self.source.load_batch(indices[self._slice], positions[self._slice])
        if self.mirror:
            batch = preprocess.with_mirrors(batch, self.flip_permutation)
        if self.split_devices:
            batch = split_for_devices(batch, self.num_local_devices)
        return batch

    def _generate(self, first_step: int):
        step = first_step
        while True:
            yield self.batch_at(step)
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._prefetch <= 0:
            batch = self.batch_at(self.step)
        else:
            if self._prefetcher is None:
                self._prefetcher = Prefetcher(self._generate(self.step), self._prefetch)
            batch = next(self._prefetcher)
        self.step += 1
        return batch

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def to_global_arrays(local_batch: Batch, mesh, axis_name: str = "data") -> Dict[str, Any]:
    """This process's rows -> global ``jax.Array``s sharded along ``axis_name``.

    Every process passes its own ``[B_local, ...]`` (as ``BatchIterator`` yields
    them without ``split_devices``); the result has the global leading size
    ``B_local * process_count`` and leading-axis sharding over the mesh axis.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    out = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        spec = PartitionSpec(axis_name, *([None] * (value.ndim - 1)))
        out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)
    return out
