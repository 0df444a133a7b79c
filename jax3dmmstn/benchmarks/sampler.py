"""Bilinear sampler speed: jax3dmmstn.core.sampler vs torch grid_sample, forward + backward.

    jax3dmmstn benchmark sampler          # full run (a few minutes on 2 cores)
    jax3dmmstn benchmark sampler --quick  # short run
    jax3dmmstn benchmark sampler --json out.json

What is timed, in ONE process, on the CPU:

* JAX: ``jax.jit`` of ``jax.vjp(bilinear_sample, image, grid)`` followed by the
  pullback of a fixed cotangent, returning the output, d/dimage and d/dgrid
  (``block_until_ready`` on all three).
* torch: ``grid_sample(align_corners=True, padding_mode="zeros")`` on an NCHW
  image with ``requires_grad``, then ``torch.autograd.grad`` for the image and
  the grid. torch runs with 1 intra-op thread and with one per core, interleaved;
  the faster of the two is the comparison (on a busy, shared machine torch's
  threads can wait on each other far longer than the work takes).
* Also "grid only": the same with the image a constant, i.e. only d/dgrid (what
  a 3DMM-STN needs when the image is the network input). Under jit XLA removes
  the unused d/dimage scatter; torch skips it through its output mask.

The two sides alternate inside each repeat so that a shared, busy machine slows
both alike; each figure is the median over the repeats after warm-up. The grid
is a smooth random similarity warp (rotation, scale 0.5-0.8, shift, a gentle
bend) like the grids a 3DMM-STN produces, with a few samples off the image.

torch is an optional dependency (``pip install jax3dmmstn[torch]``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.benchmarks import timing
from jax3dmmstn.core.sampler import bilinear_sample


def _import_torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        sys.exit(
            "jax3dmmstn benchmark sampler compares against torch.nn.functional."
            "grid_sample, but torch is not installed: pip install "
            "'jax3dmmstn[torch]' (or pip install torch)."
        )
    return torch


def face_like_grid(rng: np.random.Generator, batch: int, size: int) -> np.ndarray:
    """Smooth warps like a 3DMM-STN's: ``[batch, size, size, 2]`` float32 (x, y)."""
    t = np.linspace(-1, 1, size)
    xx, yy = np.meshgrid(t, t)
    angle = rng.uniform(-0.3, 0.3, (batch, 1, 1))
    scale = rng.uniform(0.5, 0.8, (batch, 1, 1))
    shift_x, shift_y = rng.uniform(-0.3, 0.3, (2, batch, 1, 1))
    cos, sin = np.cos(angle), np.sin(angle)
    gx = scale * (cos * xx - sin * yy) + shift_x + 0.05 * np.sin(3 * yy)
    gy = scale * (sin * xx + cos * yy) + shift_y
    return np.stack([gx, gy], -1).astype(np.float32)


def _jax_step(grid_only: bool):
    """jit(forward + pullback); d/dimage too unless ``grid_only``."""
    if grid_only:

        def step(image, grid, cotangent):
            out, pullback = jax.vjp(lambda g: bilinear_sample(image, g), grid)
            return out, pullback(cotangent)[0]
    else:

        def step(image, grid, cotangent):
            out, pullback = jax.vjp(bilinear_sample, image, grid)
            return (out,) + pullback(cotangent)

    return jax.jit(step)


def _torch_step(torch, grid_only: bool, image_nchw, grid, cotangent_nchw):
    image = image_nchw if grid_only else image_nchw.clone().requires_grad_(True)
    grid = grid.clone().requires_grad_(True)
    wrt = (grid,) if grid_only else (image, grid)

    def step():
        out = torch.nn.functional.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return out, torch.autograd.grad(out, wrt, cotangent_nchw)

    return step


def measure(
    torch,
    batch: int,
    in_size: int,
    out_size: int,
    repeats: int,
    warmup: int,
    grid_only: bool,
    seed: int = 0,
) -> dict:
    """Median (and min) seconds per forward+backward of JAX and torch (``torch`` None: JAX only).

    torch runs with 1 thread and with one per core (interleaved); the faster is the
    comparison (``timing.torch_summary``).
    """
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(batch, in_size, in_size, 3)).astype(np.float32)
    grid = face_like_grid(rng, batch, out_size)
    cotangent = rng.normal(size=(batch, out_size, out_size, 3)).astype(np.float32)

    jax_args = tuple(jax.device_put(a) for a in (image, grid, cotangent))
    compiled = _jax_step(grid_only).lower(*jax_args).compile()
    fns = {"jax": lambda: jax.block_until_ready(compiled(*jax_args))}
    if torch is not None:
        run_torch = _torch_step(
            torch,
            grid_only,
            torch.from_numpy(image).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(grid),
            torch.from_numpy(cotangent).permute(0, 3, 1, 2).contiguous(),
        )
        fns.update(timing.torch_thread_variants(torch, run_torch))
    times = timing.interleaved(fns, repeats, warmup)
    result = dict(
        batch=batch,
        in_size=in_size,
        out_size=out_size,
        grid_only=grid_only,
        jax_s=times["jax"]["median_s"],
        jax_min_s=times["jax"]["min_s"],
        repeats=repeats,
        memory=timing.compiled_memory(compiled),
    )
    if torch is not None:
        result.update(timing.torch_summary(times, result["jax_s"]))
    return result


def measure_jax(batch, in_size, out_size, repeats, warmup, grid_only, seed=0) -> dict:
    """:func:`measure` without torch."""
    return measure(None, batch, in_size, out_size, repeats, warmup, grid_only, seed)


def measure_pieces(
    batch: int, in_size: int, out_size: int, repeats: int, warmup: int, seed: int = 0
) -> dict:
    """Median seconds of the JAX sampler's pieces, each jitted on its own.

    forward; forward + d/dgrid; forward + d/dimage; forward + both. The cost of
    a gradient is the difference to the forward pass.
    """
    rng = np.random.default_rng(seed)
    image = jnp.asarray(rng.uniform(size=(batch, in_size, in_size, 3)), jnp.float32)
    grid = jnp.asarray(face_like_grid(rng, batch, out_size))
    cotangent = jnp.asarray(rng.normal(size=(batch, out_size, out_size, 3)), jnp.float32)

    def with_pullback(wrt_image: bool, wrt_grid: bool):
        def step(image, grid, cotangent):
            if wrt_image and wrt_grid:
                out, pullback = jax.vjp(bilinear_sample, image, grid)
            elif wrt_image:
                out, pullback = jax.vjp(lambda i: bilinear_sample(i, grid), image)
            else:
                out, pullback = jax.vjp(lambda g: bilinear_sample(image, g), grid)
            return (out,) + pullback(cotangent)

        return step

    steps = {
        "forward": lambda i, g, c: bilinear_sample(i, g),
        "forward + d/dgrid": with_pullback(False, True),
        "forward + d/dimage": with_pullback(True, False),
        "forward + both": with_pullback(True, True),
    }
    jitted = {k: jax.jit(f) for k, f in steps.items()}
    for _ in range(warmup):
        for f in jitted.values():
            jax.block_until_ready(f(image, grid, cotangent))
    times = {k: [] for k in jitted}
    for _ in range(repeats):
        for k, f in jitted.items():
            start = time.perf_counter()
            jax.block_until_ready(f(image, grid, cotangent))
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _table(rows: list[dict], title: str) -> str:
    lines = [
        f"**{title}**",
        "",
        "| B | image | output | gradients | JAX ms | torch ms (threads) | JAX / torch |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['in_size']}² | {r['out_size']}² | "
            f"{'grid only' if r['grid_only'] else 'image + grid'} | "
            f"{1e3 * r['jax_s']:.1f} | {1e3 * r['torch_s']:.1f} ({r['torch_threads']}) | "
            f"{r['ratio']:.2f} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark sampler", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per configuration (default 30, quick 7)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write results here")
    parser.add_argument(
        "--pieces",
        action="store_true",
        help="also time the JAX forward pass, d/dgrid and "
        "d/dimage separately (B = 32, 112² output)",
    )
    return parser


def _load_average():
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def _machine_info(torch, repeats: int, warmup: int) -> dict:
    """Versions, threads and load; printed as the report's header."""
    info = dict(
        cores=os.cpu_count() or 1,
        torch_threads=f"1 and {os.cpu_count() or 1} (the faster counts)",
        jax=jax.__version__,
        torch=torch.__version__,
        backend=jax.default_backend(),
        machine=platform.processor() or platform.machine(),
        load_average_start=_load_average(),
    )
    print(
        f"# Bilinear sampler, forward + backward, {info['backend']} "
        f"({info['cores']} cores); torch {info['torch']} with "
        f"{info['torch_threads']} threads, jax {info['jax']}"
    )
    print(
        f"# median of {repeats} repeats after {warmup} warm-up runs; "
        f"load average at start {info['load_average_start']}\n"
    )
    return info


def _print_pieces(pieces: dict) -> None:
    print("\n**JAX pieces (B = 32, 224² -> 112², each jitted alone)**\n")
    print("| computation | ms |\n|---|---:|")
    for name, seconds in pieces.items():
        print(f"| {name} | {1e3 * seconds:.1f} |")


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    torch = _import_torch()
    repeats = args.repeats or (7 if args.quick else 30)
    warmup = 2 if args.quick else 3
    in_size = 224
    info = _machine_info(torch, repeats, warmup)

    run = lambda b, o, g: measure(torch, b, in_size, o, repeats, warmup, g)
    headline = [run(32, 112, False), run(32, 112, True)]
    print(_table(headline, "B = 32, 224² x 3 -> 112²"))
    print(
        f"\nJAX / torch time, image + grid gradients: {headline[0]['ratio']:.2f}"
        f"; grid gradient only: {headline[1]['ratio']:.2f}\n"
    )
    batches = (1, 32) if args.quick else (1, 8, 32, 64)
    by_batch = [run(b, 112, False) for b in batches]
    print(_table(by_batch, "Scaling with the batch (output 112²)"))
    print()
    sizes = (56, 224) if args.quick else (56, 112, 224)
    by_size = [run(32, o, False) for o in sizes]
    print(_table(by_size, "Scaling with the output resolution (B = 32)"))

    pieces = None
    if args.pieces:
        pieces = measure_pieces(32, in_size, 112, repeats, warmup)
        _print_pieces(pieces)
    info["load_average_end"] = _load_average()
    print(f"\n# load average at end {info['load_average_end']}")
    results = dict(
        info=info, headline=headline, by_batch=by_batch, by_output_size=by_size, jax_pieces_s=pieces
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
