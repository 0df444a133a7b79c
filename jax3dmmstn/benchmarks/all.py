"""Every figure in one run: sampler, chain, training step (both localisers), fitting, data.

    jax3dmmstn benchmark all                 # a few minutes on 2 cores (VGG-16 dominates)
    jax3dmmstn benchmark all --quick         # fewer repeats, no VGG-16 at B = 32
    jax3dmmstn benchmark all --json all.json

Prints one table (and writes JSON): for each figure the JAX time, torch's time measured in
the same process and interleaved (sampler, chain, training steps; the PyTorch versions of
:mod:`.torch_reference`), the ratio, and XLA's peak memory of the compiled JAX computation.
torch is optional: without it the torch columns are empty. The machine's load average is
recorded with every figure, since a shared machine slows both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.benchmarks import timing


def _sampler_rows(torch, repeats: int) -> list[dict]:
    from jax3dmmstn.benchmarks import sampler as sampler_bench

    rows = []
    for grid_only in (True, False):
        name = "sampler fwd + d/dgrid" if grid_only else "sampler fwd + both gradients"
        if torch is None:
            r = sampler_bench.measure_jax(32, 224, 112, repeats, 2, grid_only)
        else:
            r = sampler_bench.measure(torch, 32, 224, 112, repeats, 2, grid_only)
        rows.append(dict(figure=name, batch=32, jax_s=r["jax_s"], **_torch_part(r)))
    return rows


def _torch_part(r: dict) -> dict:
    keys = ("torch_s", "torch_threads", "torch_s_by_threads", "ratio", "memory")
    return {k: r[k] for k in keys if k in r}


def _chain_rows(torch, repeats: int, batches, model_path) -> list[dict]:
    from jax3dmmstn.benchmarks import chain

    model = chain.load_model(model_path)
    rows = []
    for batch in batches:
        r = chain.measure(model, batch, repeats, 2, torch)
        rows.append(
            dict(figure="chain fwd + d/dtheta", batch=batch, jax_s=r["jax_s"], **_torch_part(r))
        )
        rows.append(dict(figure="  of which visibility mask", batch=batch, jax_s=r["jax_mask_s"]))
    return rows


def _train_rows(torch, localisers, batches, steps: int | None) -> list[dict]:
    from jax3dmmstn.benchmarks import train_step

    rows = []
    for batch in batches:
        for localiser in localisers:
            n = steps or (3 if localiser == "vgg16" else 10)
            r = train_step.bench(localiser, batch, n, "float32", torch=torch)
            rows.append(
                dict(
                    figure=f"training step, {localiser}",
                    batch=batch,
                    jax_s=r["step_s"],
                    **_torch_part(r),
                )
            )
    return rows


def _fit_rows() -> list[dict]:
    from jax3dmmstn import fitting
    from jax3dmmstn.benchmarks import fit as fit_bench
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    model = synthetic_face_model(resolution=112)
    landmarks, mean_l, basis_l = fit_bench.make_inputs(model, 8)
    _, seconds = fit_bench.timed(lambda: fitting.fit_landmarks(landmarks, None, mean_l, basis_l), 10)
    return [dict(figure="landmark fit (Levenberg-Marquardt)", batch=8, jax_s=seconds)]


def _data_rows(batch: int = 32) -> list[dict]:
    from jax3dmmstn.data import render, synthetic
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    source = synthetic.SyntheticFaces(synthetic_face_model(), render.RenderConfig(), seed=0)
    source.load_batch(np.arange(batch))  # compile
    start = time.perf_counter()
    repeats = 3
    for i in range(repeats):
        source.load_batch(np.arange(batch) + batch * (i + 1))
    seconds = (time.perf_counter() - start) / repeats
    return [dict(figure="synthetic data batch (render)", batch=batch, jax_s=seconds)]


def run(quick: bool = False, with_torch: bool = True, model_path=None, vgg: bool = True) -> dict:
    torch = timing.import_torch() if with_torch else None
    repeats = 7 if quick else 20
    sections = [
        ("sampler", lambda: _sampler_rows(torch, repeats)),
        ("chain", lambda: _chain_rows(torch, repeats, (8, 32), model_path)),
        (
            "train_step",
            lambda: _train_rows(
                torch,
                ("small_cnn", "vgg16") if vgg else ("small_cnn",),
                (8,) if quick else (8, 32),
                None,
            ),
        ),
        ("fit", _fit_rows),
        ("data_pipeline", _data_rows),
    ]
    rows = []
    for name, fn in sections:
        load = timing.load_average()
        for row in fn():
            row.update(section=name, load_average=load)
            rows.append(row)
            print(_line(row), flush=True)
    return dict(
        jax=jax.__version__,
        torch=None if torch is None else torch.__version__,
        cores=os.cpu_count(),
        backend=jax.default_backend(),
        rows=rows,
    )


def _line(r: dict) -> str:
    return (
        f"| {r['figure']} | {r['batch']} | {1e3 * r['jax_s']:.1f} | {timing.torch_cells(r)} | "
        f"{timing.mib((r.get('memory') or {}).get('peak_bytes'))} | {r['load_average'][0]:.1f} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark all", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, batch 8 training only")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--no-vgg", action="store_true", help="leave out the VGG-16 training steps")
    parser.add_argument("--model", default=None, help="the original's model.mat for the chain")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    print(
        f"# jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores; "
        "medians; torch interleaved in the same process (threads: the faster of 1 and all)"
    )
    print(
        "| figure | B | JAX ms | " + timing.TORCH_HEADER + " | JAX peak MiB | load |\n"
        "|---|---:|---:|" + timing.TORCH_RULE + "|---:|---:|"
    )
    results = run(args.quick, not args.no_torch, args.model, not args.no_vgg)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0
