"""Throughput of the data pipeline: synthetic renderer, batching, real-data loading.

Usage:
  jax3dmmstn benchmark data_pipeline [--batch 64] [--batches 8]

Prints images/s (wall clock) and CPU seconds per image for:
  * render: the jitted renderer alone on pre-sampled scenes (224 x 224);
  * synthetic: SyntheticFaces.load_batch (scene sampling + render), the source
    the training loop reads;
  * pipeline: BatchIterator over the synthetic stream with mirror pairs and a
    background prefetch thread, as training consumes it (images/s counts the
    mirrored images too);
  * folder: ImageFolderDataset of 450 x 450 JPEG + .pts files with random crop,
    resize to 224 and flip (the real-data path);
and, as a reference measured in the same run, a PIL decode + resize of one
450 x 450 JPEG (the cheapest real-data step). The load average is printed
because the machine may be shared: CPU s/image is the figure least affected.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from jax3dmmstn.data import batching, loaders, preprocess, render, synthetic
from jax3dmmstn.facemodel.synthetic import synthetic_face_model

TARGET_IMAGES_PER_SECOND = 200.0


def _timed(fn, repeats: int):
    fn()  # warm-up (compilation)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _report(name: str, images: int, wall: float, cpu: float) -> float:
    rate = images / wall
    print(
        f"{name:10s} {rate:8.1f} images/s   {1e3 * cpu / images:6.2f} CPU ms/image"
        f"   ({rate / TARGET_IMAGES_PER_SECOND:4.2f}x the {TARGET_IMAGES_PER_SECOND:.0f}/s target)"
    )
    return rate


def _write_folder(root: str, count: int, rng) -> None:
    os.makedirs(root, exist_ok=True)
    for i in range(count):
        image = rng.integers(0, 255, (450, 450, 3)).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, f"{i:04d}.jpg"), quality=90)
        points = rng.uniform(120, 330, (68, 2))
        loaders.write_pts(os.path.join(root, f"{i:04d}.pts"), points)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark data_pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    print(
        f"cores: {os.cpu_count()}, load average at start: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    model = synthetic_face_model()
    source = synthetic.SyntheticFaces(model, render.RenderConfig(), seed=0)
    renderer = source.renderer
    print(
        f"model: {model.n_vertices} vertices; renderer: {renderer.num_samples} surface "
        f"samples per face"
    )
    batch, repeats = args.batch, args.batches

    chunk = 32
    scenes = renderer.sample_scenes([np.random.default_rng(i) for i in range(chunk)])
    wall, cpu = _timed(lambda: renderer.render(scenes), repeats * batch // chunk)
    render_rate = _report("render", repeats * batch, wall, cpu)

    step = iter(range(10**9))
    wall, cpu = _timed(lambda: source.load_batch(np.arange(batch) + batch * next(step)), repeats)
    synthetic_rate = _report("synthetic", repeats * batch, wall, cpu)

    iterator = batching.BatchIterator(
        source, batch, seed=0, mirror=True, prefetch=2, process_index=0, process_count=1
    )
    next(iterator)
    wall, cpu = _timed(lambda: next(iterator), repeats)
    iterator.close()
    _report("pipeline", 2 * repeats * batch, wall, cpu)

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        _write_folder(root, batch, rng)
        folder = loaders.ImageFolderDataset(root)
        transform = lambda ex, r: preprocess.random_augment(ex, r, 224, flip_probability=0.5)
        folder_iter = batching.BatchIterator(
            folder, batch, seed=0, transform=transform, prefetch=2, process_index=0, process_count=1
        )
        next(folder_iter)
        wall, cpu = _timed(lambda: next(folder_iter), repeats)
        folder_iter.close()
        _report("folder", repeats * batch, wall, cpu)
        path = folder.paths[0]
        wall, cpu = _timed(
            lambda: Image.open(path).convert("RGB").resize((224, 224)), repeats * batch
        )
        _report("reference", repeats * batch, wall, cpu)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = min(render_rate, synthetic_rate) >= TARGET_IMAGES_PER_SECOND
    print("renderer meets the target" if ok else "renderer is BELOW the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
