"""Training-step speed of the 3DMM-STN for both localisers: images/s (and % of peak on a GPU).

    jax3dmmstn benchmark train_step                 # both localisers, batch 32, float32
    jax3dmmstn benchmark train_step --localisers small_cnn --steps 20
    jax3dmmstn benchmark train_step --dtype bfloat16 --json out.json   # on an accelerator

What is timed: one jitted training step of ``jax3dmmstn.training.make_train_step`` (forward,
losses, backward, optimiser update; the configs' loss and optimiser) on a batch of
``--batch`` 224 x 224 images, the 112 x 112 synthetic face model's geometry, sampler and
visibility included. ``small_cnn`` is the synthetic config's localiser (64 x 64 input);
``vgg16`` is the VGG-Face network of the matconvnet config (224 x 224 input). Each figure is
the median step time after one compile-and-warm-up step. FLOPs are XLA's own count for the
compiled step (cost_analysis); the fraction of peak uses the device's dense peak for the
compute dtype (table below; pass --peak-tflops to override).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn import training
from jax3dmmstn import configs as config_files
from jax3dmmstn.facemodel.synthetic import synthetic_face_model

# Dense peak TFLOP/s by device kind: (float32 without tensor cores, bfloat16 tensor cores).
PEAK_TFLOPS = {
    "H100": (67.0, 989.0),  # SXM; H200 has the same compute
    "H200": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L4": (30.3, 121.0),
    "V100": (15.7, 125.0),
}


def load_config(name: str):
    return config_files.load_config(name)


def config_for(localiser: str, dtype: str):
    config = load_config("synthetic" if localiser == "small_cnn" else "matconvnet")
    config.morphable_model = load_config("synthetic").morphable_model
    config.morphable_model.resolution = 112
    config.model.dtype = dtype
    return config


def peak_tflops(device, dtype: str, override: float | None) -> float | None:
    if override:
        return override
    if device.platform != "gpu":
        return None
    for name, (fp32, bf16) in PEAK_TFLOPS.items():
        if name in device.device_kind:
            return bf16 if dtype == "bfloat16" else fp32
    return None


def bench(localiser: str, batch: int, steps: int, dtype: str, peak_override) -> dict:
    config = config_for(localiser, dtype)
    face_model = synthetic_face_model(resolution=int(config.morphable_model.resolution))
    model = training.build_model(config, face_model)
    params = training.init_params(model, config, jax.random.PRNGKey(0))
    tx = training.make_optimizer(config.optim, 1000)
    state = jax.device_put(training.create_train_state(params, tx, seed=0))
    rng = np.random.default_rng(0)
    landmarks = face_model.mean[face_model.landmarks["aflw21"], :2] * 0.7 + 112.0
    data = dict(
        image=jnp.asarray(rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)),
        landmarks=jnp.asarray(np.broadcast_to(landmarks, (batch, 21, 2)), jnp.float32),
        landmark_visible=jnp.ones((batch, 21), jnp.float32),
    )
    step = jax.jit(training.make_train_step(model.apply, tx, config.loss), donate_argnums=0)
    compiled = step.lower(state, data).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    start = time.perf_counter()
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    device = jax.devices()[0]
    peak = peak_tflops(device, dtype, peak_override)
    result = dict(
        localiser=localiser,
        batch=batch,
        dtype=dtype,
        steps=steps,
        step_s=median,
        images_per_s=batch / median,
        first_step_s=first,
        gflop_per_step=flops / 1e9,
        achieved_tflops=flops / median / 1e12,
        device=f"{device.platform}:{device.device_kind}",
        n_params=int(sum(np.size(x) for x in jax.tree.leaves(params))),
    )
    if peak:
        result.update(peak_tflops=peak, fraction_of_peak=flops / median / 1e12 / peak)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark train_step", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--localisers", default="small_cnn,vgg16")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed steps (default: 20 for small_cnn, 3 for vgg16 on CPU)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    results = []
    print(
        f"# {platform.node()} {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"jax {jax.__version__}, {os.cpu_count()} CPU cores"
    )
    for name in args.localisers.split(","):
        steps = args.steps or (3 if (name == "vgg16" and on_cpu) else 20)
        r = bench(name, args.batch, steps, args.dtype, args.peak_tflops)
        results.append(r)
        line = (
            f"{name:>10}: {r['images_per_s']:8.1f} images/s  ({r['step_s'] * 1e3:8.1f} ms "
            f"per step of {r['batch']}, {r['gflop_per_step']:.1f} GFLOP/step, "
            f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s"
        )
        if "fraction_of_peak" in r:
            line += f", {100 * r['fraction_of_peak']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s peak"
        print(line + ")", flush=True)
    if len(results) == 2:
        print(
            f"ratio small_cnn / vgg16 images/s: "
            f"{results[0]['images_per_s'] / results[1]['images_per_s']:.1f}x"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
