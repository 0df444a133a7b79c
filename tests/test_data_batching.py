"""Deterministic sharded batching and prefetch (jax3dmmstn.data.batching)."""

import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from jax3dmmstn.data import batching


class _CountingSource:
    """An in-memory BatchSource: example i is the number i in every field."""

    def __init__(self, n, width=4):
        self.num_examples = n
        self.width = width
        self.calls = []

    def load_batch(self, indices, positions):
        self.calls.append(np.array(indices))
        indices = np.asarray(indices)
        image = np.broadcast_to(indices[:, None, None, None], (len(indices), 2, self.width, 3))
        landmarks = np.stack([indices * 1.0, indices + 0.5], -1)[:, None, :].repeat(2, 1)
        return {
            "image": image.astype(np.float32),
            "landmarks": landmarks.astype(np.float32),
            "landmark_visible": np.ones((len(indices), 2), np.float32),
            "position": np.asarray(positions),
        }


def test_global_batch_indices_cover_each_epoch_once_and_depend_on_seed_only():
    n, g = 10, 4
    steps = [batching.global_batch_indices(s, g, n, seed=3) for s in range(5)]
    stream = np.concatenate(steps)  # 20 positions = 2 epochs
    np.testing.assert_array_equal(np.sort(stream[:10]), np.arange(10))
    np.testing.assert_array_equal(np.sort(stream[10:]), np.arange(10))
    assert not np.array_equal(stream[:10], stream[10:])  # reshuffled per epoch
    np.testing.assert_array_equal(batching.global_batch_indices(2, g, n, seed=3), steps[2])
    assert not np.array_equal(batching.global_batch_indices(0, g, n, seed=4), steps[0])
    np.testing.assert_array_equal(
        batching.global_batch_indices(1, 4, 10, 0, shuffle=False), [4, 5, 6, 7]
    )
    np.testing.assert_array_equal(batching.global_batch_indices(3, 4, None, 0), [12, 13, 14, 15])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_slices_reassemble_the_global_batch(process_count):
    source = _CountingSource(37)
    g = 8
    parts = [
        batching.BatchIterator(
            source,
            g,
            seed=1,
            process_index=p,
            process_count=process_count,
            num_local_devices=1,
            prefetch=0,
        ).batch_at(5)
        for p in range(process_count)
    ]
    image = np.concatenate([p["image"] for p in parts])
    expected = batching.global_batch_indices(5, g, 37, seed=1)
    np.testing.assert_array_equal(image[:, 0, 0, 0], expected)
    np.testing.assert_array_equal(np.concatenate([p["position"] for p in parts]), np.arange(40, 48))
    with pytest.raises(ValueError, match="not divisible"):
        batching.process_slice(10, 0, 4)


@pytest.mark.parametrize("num_devices", [1, 2, 8])
def test_split_for_devices_and_merge_are_exact_inverses(num_devices):
    source = _CountingSource(100)
    it = batching.BatchIterator(
        source,
        16,
        seed=2,
        process_index=0,
        process_count=1,
        num_local_devices=num_devices,
        split_devices=True,
        mirror=True,
        flip_permutation=np.array([1, 0]),
        prefetch=0,
    )
    batch = it.batch_at(0)
    assert batch["image"].shape == (num_devices, 32 // num_devices, 2, 4, 3)
    merged = batching.merge_devices(batch)
    flat = batching.global_batch_indices(0, 16, 100, seed=2)
    # Rows are example, mirror, example, mirror...: pairs on the same device.
    np.testing.assert_array_equal(merged["image"][0::2, 0, 0, 0], flat)
    np.testing.assert_array_equal(merged["image"][1::2, 0, -1, 0], flat)
    # The mirror's landmarks are flipped (x -> W - x) and swapped.
    np.testing.assert_allclose(merged["landmarks"][1::2, 0, 0], 4 - flat)
    for d in range(num_devices):
        rows = batch["image"][d, :, 0, 0, 0]
        np.testing.assert_array_equal(rows[0::2], rows[1::2])
    with pytest.raises(ValueError, match="not divisible"):
        batching.split_for_devices({"x": np.zeros((6, 2))}, 4)


def test_resumed_iterator_sees_the_same_batches():
    source = _CountingSource(23)
    with batching.BatchIterator(
        source, 4, seed=9, process_index=0, process_count=1, prefetch=3
    ) as full:
        first = [next(full)["image"][:, 0, 0, 0] for _ in range(10)]
    with batching.BatchIterator(
        source, 4, seed=9, start_step=6, process_index=0, process_count=1, prefetch=3
    ) as resumed:
        later = [next(resumed)["image"][:, 0, 0, 0] for _ in range(4)]
        assert resumed.step == 10
    for a, b in zip(first[6:], later):
        np.testing.assert_array_equal(a, b)


def test_dataset_source_transform_is_keyed_on_position():
    dataset = [
        {
            "image": np.full((2, 2, 3), i, np.uint8),
            "landmarks": np.zeros((2, 2), np.float32),
            "landmark_visible": np.ones(2, np.float32),
            "source": f"ex{i}",
        }
        for i in range(6)
    ]

    def transform(example, rng):
        out = dict(example)
        out["noise"] = np.float32(rng.uniform())
        return out

    it = batching.BatchIterator(
        dataset, 6, seed=0, transform=transform, process_index=0, process_count=1, prefetch=0
    )
    a, b = it.batch_at(0), it.batch_at(1)
    assert "source" not in a
    # Same example in another epoch gets other randomness; same step, same values.
    assert not np.allclose(np.sort(a["noise"]), np.sort(b["noise"]))
    np.testing.assert_array_equal(it.batch_at(1)["noise"], b["noise"])


def test_collate_names_the_example_of_the_wrong_size():
    good = {"image": np.zeros((4, 4, 3)), "source": "a.png"}
    bad = {"image": np.zeros((5, 4, 3)), "source": "b.png"}
    with pytest.raises(ValueError, match=r"b.png has shape \(5, 4, 3\)"):
        batching.collate([good, bad])
    with pytest.raises(ValueError, match="b.png has no 'landmarks'"):
        batching.collate([dict(good, landmarks=np.zeros(2)), dict(bad, image=good["image"])])


def test_prefetcher_runs_ahead_and_forwards_errors():
    produced = []

    def gen():
        for i in range(5):
            produced.append(i)
            yield i
        raise RuntimeError("disk on fire")

    pre = batching.Prefetcher(gen(), size=2)
    deadline = time.time() + 5
    while len(produced) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert len(produced) >= 3  # filled the queue before anyone asked
    assert [next(pre) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError, match="disk on fire"):
        next(pre)
    # close() stops an endless producer.
    endless = batching.Prefetcher(iter(int, 1), size=2)
    assert next(endless) == 0
    endless.close()
    assert not any(t.name == endless._thread.name and t.is_alive() for t in threading.enumerate())


_EIGHT_DEVICES = textwrap.dedent("""
    import numpy as np, jax
    from jax.sharding import Mesh
    from jax3dmmstn.data import batching
    assert jax.local_device_count() == 8
    class Source:
        num_examples = 50
        def load_batch(self, indices, positions):
            return {"x": np.asarray(indices, np.float32)[:, None] * np.ones((1, 3), np.float32)}
    it = batching.BatchIterator(Source(), 16, seed=4, split_devices=True, prefetch=0)
    split = it.batch_at(3)
    assert split["x"].shape == (8, 2, 3), split["x"].shape
    expected = batching.global_batch_indices(3, 16, 50, 4)
    np.testing.assert_array_equal(batching.merge_devices(split)["x"][:, 0], expected)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    flat = batching.BatchIterator(Source(), 16, seed=4, prefetch=0).batch_at(3)
    arrays = batching.to_global_arrays(flat, mesh)
    assert arrays["x"].shape == (16, 3)
    assert len(arrays["x"].addressable_shards) == 8
    for shard in arrays["x"].addressable_shards:
        rows = np.asarray(shard.data)[:, 0]
        np.testing.assert_array_equal(rows, expected[shard.index[0]])
    summed = jax.jit(lambda a: a.sum())(arrays["x"])
    np.testing.assert_allclose(float(summed), 3 * expected.sum())
    print("OK")
""")


def test_eight_cpu_devices_split_and_global_arrays():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", _EIGHT_DEVICES], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
