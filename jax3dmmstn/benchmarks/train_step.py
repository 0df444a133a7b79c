"""Training-step speed of the 3DMM-STN for both localisers: images/s (and % of peak on a GPU).

    jax3dmmstn benchmark train_step                 # both localisers, batch 32, float32
    jax3dmmstn benchmark train_step --localisers small_cnn --steps 20
    jax3dmmstn benchmark train_step --dtype bfloat16 --json out.json   # on an accelerator

What is timed: one jitted training step of ``jax3dmmstn.training.make_train_step`` (forward,
losses, backward, optimiser update; the configs' loss and optimiser) on a batch of
``--batch`` 224 x 224 images, the 112 x 112 synthetic face model's geometry, sampler and
visibility included, the config's landmark set. ``small_cnn`` is the synthetic config's
localiser (128 x 128 input folded to 64 x 64 x 12);
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
from jax3dmmstn.benchmarks import timing
from jax3dmmstn import configs as config_files
from jax3dmmstn.facemodel.synthetic import synthetic_face_model
from jax3dmmstn.training.xla_options import compiler_options

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


def _jax_step(localiser: str, batch: int, dtype: str):
    """The compiled JAX training step, its inputs and a runner: (run, compiled, info)."""
    config = config_for(localiser, dtype)
    face_model = synthetic_face_model(resolution=int(config.morphable_model.resolution))
    model = training.build_model(config, face_model)
    params = training.init_params(model, config, jax.random.PRNGKey(0))
    tx = training.make_optimizer(config.optim, 1000)
    state = jax.device_put(training.create_train_state(params, tx, seed=0))
    rng = np.random.default_rng(0)
    landmark_index = np.asarray(face_model.landmarks[config.model.landmarks])  # the config's set
    landmarks = face_model.mean[landmark_index, :2] * 0.7 + 112.0
    n_landmarks = len(landmark_index)
    data = dict(
        image=jnp.asarray(rng.integers(0, 255, (batch, 224, 224, 3), dtype=np.uint8)),
        landmarks=jnp.asarray(np.broadcast_to(landmarks, (batch, n_landmarks, 2)), jnp.float32),
        landmark_visible=jnp.ones((batch, n_landmarks), jnp.float32),
    )
    step = jax.jit(
        training.make_train_step(model.apply, tx, config.loss),
        donate_argnums=0,
        compiler_options=compiler_options(),  # what training uses (training/parallel.py)
    )
    compiled = step.lower(state, data).compile()
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        return jax.block_until_ready(metrics)

    info = dict(
        config=config,
        face_model=face_model,
        landmark_index=landmark_index,
        data=data,
        n_params=int(sum(np.size(x) for x in jax.tree.leaves(params))),
    )
    return run, compiled, info


def _torch_step(torch, localiser: str, face_model, landmark_index, data, config):
    """The port's network + chain + SGD step on the same data: a runner. The small CNN takes
    the config's input size, folding and width, like the JAX side."""
    from jax3dmmstn.benchmarks import torch_reference

    n_theta = 6 + face_model.basis.shape[-1]
    torch.manual_seed(0)
    options = {}
    if localiser == "small_cnn":
        kwargs = config.model.get("localiser_kwargs", {}) or {}
        options = dict(
            localiser_input_size=int((config.model.get("localiser_input_size") or (224,))[0]),
            space_to_depth=int(kwargs.get("space_to_depth", 1)),
            hidden=int(kwargs.get("hidden", 256)),
        )
    network = torch_reference.make_network(torch, localiser, n_theta, **options)
    head = [m for m in network.modules() if getattr(m, "bias", None) is not None][-1]
    with torch.no_grad():  # the configs' head: tiny weights, theta near (0, 112, 112, 0, ...)
        head.weight.mul_(1e-3)
        head.bias.zero_()
        head.bias[3:5] = 112.0
    chain = torch_reference.make_chain(
        torch,
        face_model.mean,
        face_model.basis,
        face_model.faces,
        landmark_index,
        (224, 224),
    )
    step = torch_reference.make_train_step(torch, network, chain)
    image = torch.from_numpy(np.asarray(data["image"], np.float32)).permute(0, 3, 1, 2)
    image = image.contiguous()
    target = torch.tensor(np.asarray(data["landmarks"]))
    visible = torch.tensor(np.asarray(data["landmark_visible"]))
    return lambda: step(image, target, visible)


def bench(
    localiser: str,
    batch: int,
    steps: int,
    dtype: str,
    peak_override=None,
    torch=None,
    torch_threads: str = "both",
) -> dict:
    """Median step time of JAX (and of the torch port's network when ``torch`` is given)."""
    run, compiled, info = _jax_step(localiser, batch, dtype)
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", float("nan")))
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    fns = {"jax": run}
    if torch is not None:
        torch_run = _torch_step(
            torch, localiser, info["face_model"], info["landmark_index"], info["data"], info["config"]
        )
        variants = timing.torch_thread_variants(torch, torch_run)
        if torch_threads != "both":
            variants = {k: v for k, v in variants.items() if k.endswith(f"_{torch_threads}")}
        fns.update(variants)
    times = timing.interleaved(fns, steps, warmup=1)
    median = times["jax"]["median_s"]
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
        n_params=info["n_params"],
        memory=timing.compiled_memory(compiled),
    )
    if torch is not None:
        result.update(timing.torch_summary(times, median))
    if peak:
        result.update(peak_tflops=peak, fraction_of_peak=flops / median / 1e12 / peak)
    return result


def table(rows: list[dict]) -> str:
    lines = [
        "| localiser | B | JAX ms | " + timing.TORCH_HEADER + " | images/s | GFLOP | peak MiB |",
        "|---|---:|---:|" + timing.TORCH_RULE + "|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['localiser']} | {r['batch']} | {1e3 * r['step_s']:.0f} | "
            f"{timing.torch_cells(r)} | {r['images_per_s']:.1f} | {r['gflop_per_step']:.0f} | "
            f"{timing.mib((r.get('memory') or {}).get('peak_bytes'))} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark train_step", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--localisers", default="small_cnn,vgg16")
    parser.add_argument("--batch", default="32", help="batch size(s), comma-separated")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed steps (default: 20 for small_cnn, 3 for vgg16 on CPU)",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--torch", action="store_true", help="also time the torch port's network")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    on_cpu = jax.devices()[0].platform == "cpu"
    torch = timing.import_torch() if args.torch else None
    if args.torch and torch is None:
        print("# torch is not installed: JAX only (pip install 'jax3dmmstn[torch]')")
    results = []
    print(
        f"# {platform.node()} {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"jax {jax.__version__}, {os.cpu_count()} CPU cores, load {timing.load_average()}"
    )
    for batch in (int(b) for b in args.batch.split(",")):
        for name in args.localisers.split(","):
            steps = args.steps or (3 if (name == "vgg16" and on_cpu) else 20)
            r = bench(name, batch, steps, args.dtype, args.peak_tflops, torch)
            results.append(r)
            line = (
                f"{name:>10}: {r['images_per_s']:8.1f} images/s  ({r['step_s'] * 1e3:8.1f} ms "
                f"per step of {r['batch']}, {r['gflop_per_step']:.1f} GFLOP/step, "
                f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s"
            )
            if "fraction_of_peak" in r:
                line += f", {100 * r['fraction_of_peak']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s peak"
            if "torch_s" in r:
                line += f"; torch {1e3 * r['torch_s']:.1f} ms, JAX / torch {r['ratio']:.2f}"
            print(line + ")", flush=True)
    print(table(results))
    print(f"# load at end {timing.load_average()}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
