"""The STN's parameter-free chain, forward + backward to theta: JAX vs the PyTorch port's layers.

    jax3dmmstn benchmark chain                      # B = 8 and 32, synthetic 112 x 112 model
    jax3dmmstn benchmark chain --model model.mat    # the original's model.mat
    jax3dmmstn benchmark chain --batches 32 --repeats 30 --json chain.json

What is timed, in ONE process, interleaved, medians: theta ``[B, 16]`` and images ``[B, 224,
224, 3]`` -> 3DMM, Rodrigues, rotation, scaled orthographic projection, translation, the
21 landmarks, the grid, the bilinear sampler, the visibility mask -> the original's landmark
+ prior + siamese + symmetry losses (its weights, losses summed) and their gradient with
respect to theta.

* JAX: ``jax.jit(jax.value_and_grad(loss))`` of the public functions of README.md's "core
  in a few lines" (``geometry.project_theta``, ``points_to_grid``,
  ``sampler.bilinear_sample``, ``visibility.visibility_mask``, ``select_landmarks``,
  ``losses``).
* torch (when installed): the port's layers (:mod:`.torch_reference`), ``grid_sample``,
  the port's assignment of visibility normals, ``loss.backward()``-equivalent
  ``torch.autograd.grad`` to theta.

Also reported: the JAX visibility mask alone and XLA's memory analysis of the compiled
chain (arguments + outputs + temporaries).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.benchmarks import timing
from jax3dmmstn.core import geometry, losses, sampler, visibility

IMAGE_SIZE = 224
WEIGHTS = (0.8998, 0.1, 1e-4, 1e-4)


def load_model(path: str | None, resolution: int = 112):
    """The original's model.mat when ``path`` is given, else the synthetic model of that size."""
    if path:
        from jax3dmmstn.facemodel.morphable_model import load_matconvnet_model

        return load_matconvnet_model(path)
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    return synthetic_face_model(resolution=resolution)


def make_inputs(model, batch: int, seed: int = 0) -> dict:
    """theta ``[B, 6 + D]`` of faces in view, images, landmark targets (numpy, float32)."""
    rng = np.random.default_rng(seed)
    d = model.basis.shape[-1]
    r = rng.normal(0, 0.25, (batch, 3))
    t = IMAGE_SIZE / 2 + rng.uniform(-10, 10, (batch, 2))
    # scale ~ 0.7 pixel per model unit: the face fills about the middle of the image
    extent = float(np.ptp(model.mean[:, 0]))
    logs = np.log(rng.uniform(0.55, 0.8, batch) * IMAGE_SIZE / extent) / np.log(0.99)
    alpha = rng.normal(0, 1, (batch, d))
    theta = np.concatenate([r, t, logs[:, None], alpha], 1).astype(np.float32)
    image = rng.uniform(0, 255, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    index = np.asarray(model.landmarks["aflw21"])
    target = rng.uniform(60, 160, (batch, len(index), 2)).astype(np.float32)
    visible = (rng.uniform(size=(batch, len(index))) > 0.1).astype(np.float32)
    return dict(theta=theta, image=image, target=target, visible=visible)


def jax_chain(model):
    """``loss(theta, image, target, visible)`` through the core's public functions."""
    mean = jnp.asarray(model.mean, jnp.float32)
    basis = jnp.asarray(model.basis, jnp.float32)
    faces = np.asarray(model.faces)
    index = np.asarray(model.landmarks["aflw21"])

    def loss(theta, image, target, visible):
        proj = geometry.project_theta(theta, mean, basis)
        grid = geometry.points_to_grid(proj.points2d, image.shape[1:3])
        texture = sampler.bilinear_sample(image, grid)
        mask = visibility.visibility_mask(proj.rotated, faces)
        landmarks = geometry.select_landmarks(proj.points2d, index)
        count = jnp.sum(jnp.broadcast_to(mask, texture.shape))
        alpha = theta[:, 6:]
        parts = (
            losses.landmark_loss(landmarks, target, visible, reduction="sum"),
            losses.prior_loss(alpha, reduction="sum"),
            losses.siamese_loss(texture, mask, reduction="sum") / count,
            losses.symmetry_loss(texture, mask, reduction="sum") / count,
        )
        return sum(w * p for w, p in zip(WEIGHTS, parts)), (jnp.stack(parts), texture, mask)

    return loss


def measure(model, batch: int, repeats: int, warmup: int, torch=None) -> dict:
    """Median seconds of JAX (and torch) forward + backward to theta at one batch size."""
    inputs = make_inputs(model, batch)
    args = tuple(jax.device_put(inputs[k]) for k in ("theta", "image", "target", "visible"))
    loss = jax_chain(model)
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    compiled = step.lower(*args).compile()
    faces = np.asarray(model.faces)
    mask_fn = jax.jit(
        lambda theta: visibility.visibility_mask(
            geometry.project_theta(theta, model.mean, model.basis).rotated, faces
        )
    )
    fns = {
        "jax": lambda: jax.block_until_ready(compiled(*args)),
        "jax_mask": lambda: jax.block_until_ready(mask_fn(args[0])),
    }
    if torch is not None:
        from jax3dmmstn.benchmarks import torch_reference

        chain = torch_reference.make_chain(
            torch,
            model.mean,
            model.basis,
            model.faces,
            model.landmarks["aflw21"],
            (IMAGE_SIZE, IMAGE_SIZE),
        )
        theta_t = torch.from_numpy(inputs["theta"]).requires_grad_(True)
        image_t = torch.from_numpy(inputs["image"]).permute(0, 3, 1, 2).contiguous()
        target_t = torch.from_numpy(inputs["target"])
        visible_t = torch.from_numpy(inputs["visible"])

        def run_torch():
            total, _ = chain(theta_t, image_t, target_t, visible_t)
            return torch.autograd.grad(total, theta_t)

        fns.update(timing.torch_thread_variants(torch, run_torch))
    times = timing.interleaved(fns, repeats, warmup)
    result = dict(
        batch=batch,
        jax_s=times["jax"]["median_s"],
        jax_mask_s=times["jax_mask"]["median_s"],
        memory=timing.compiled_memory(compiled),
        repeats=repeats,
    )
    if torch is not None:
        result.update(timing.torch_summary(times, result["jax_s"]))
    return result


def table(rows: list[dict]) -> str:
    lines = [
        "| B | JAX ms | " + timing.TORCH_HEADER + " | JAX mask ms | JAX peak MiB |",
        "|---:|---:|" + timing.TORCH_RULE + "|---:|---:|",
    ]
    for r in rows:
        peak = timing.mib((r.get("memory") or {}).get("peak_bytes"))
        lines.append(
            f"| {r['batch']} | {1e3 * r['jax_s']:.1f} | {timing.torch_cells(r)} | "
            f"{1e3 * r['jax_mask_s']:.1f} | {peak} |"
        )
    return "\n".join(lines)


def run(batches=(8, 32), repeats=20, warmup=2, model_path=None, with_torch=True) -> dict:
    torch = timing.import_torch() if with_torch else None
    model = load_model(model_path)
    load_start = timing.load_average()
    rows = [measure(model, b, repeats, warmup, torch) for b in batches]
    return dict(
        model=model_path or "synthetic 112 x 112",
        torch=None if torch is None else torch.__version__,
        jax=jax.__version__,
        cores=os.cpu_count(),
        load_average_start=load_start,
        load_average_end=timing.load_average(),
        rows=rows,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark chain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", default="8,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", default=None, help="the original's model.mat (else synthetic)")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = run(
        tuple(int(b) for b in args.batches.split(",")),
        args.repeats,
        model_path=args.model,
        with_torch=not args.no_torch,
    )
    print(
        f"# chain forward + backward to theta, {results['model']}, 224² x 3 images; "
        f"jax {results['jax']}, torch {results['torch']}, {results['cores']} cores; "
        f"load {results['load_average_start']} -> {results['load_average_end']}"
    )
    print(table(results["rows"]))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0
