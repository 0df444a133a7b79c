"""Landmark fitting: ours (closed-form pose + Levenberg-Marquardt) vs the original demo's descent.

Same inputs for both: landmarks projected from random known theta (yaw within +-60 deg) of the
synthetic model. Reports final landmark RMSE, wall time (after compilation, both jitted) and the
speed ratio. Usage: jax3dmmstn benchmark fit [--batch 8] [--resolution 112] [--max-iterations N]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn import fitting
from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


def make_inputs(model, batch, seed=0):
    rng = np.random.default_rng(seed)
    ypr = np.stack(
        [rng.uniform(-60, 60, batch), rng.uniform(-25, 25, batch), rng.uniform(-25, 25, batch)], 1
    )
    r = np.asarray(geometry.matrix_to_axis_angle(pose.pose_to_matrix(ypr)))
    t = 112 + rng.uniform(-15, 15, (batch, 2))
    logs = np.asarray(geometry.scale_to_log_scale(jnp.asarray(rng.uniform(0.6, 1.0, batch))))
    alpha = rng.standard_normal((batch, model.n_components))
    theta = theta_lib.merge(r, t, logs, alpha).astype(np.float32)
    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks["aflw21"]
    )
    return (
        np.asarray(fitting.project_landmarks(jnp.asarray(theta), mean_l, basis_l)),
        mean_l,
        basis_l,
    )


def timed(fn, repeats):
    jax.block_until_ready(fn())  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        out = jax.block_until_ready(fn())
    return out, (time.perf_counter() - start) / repeats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn benchmark fit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=112)
    parser.add_argument("--max-iterations", type=int, default=200_000)
    args = parser.parse_args(argv)
    model = synthetic_face_model(resolution=args.resolution)
    landmarks, mean_l, basis_l = make_inputs(model, args.batch)
    ours, ours_s = timed(lambda: fitting.fit_landmarks(landmarks, None, mean_l, basis_l), 20)
    orig, orig_s = timed(
        lambda: fitting.fit_landmarks_original(
            landmarks,
            None,
            model.mean,
            model.basis,
            model.landmarks["aflw21"],
            max_iterations=args.max_iterations,
        ),
        1,
    )
    print(f"device: {jax.devices()[0].platform}, batch {args.batch}, model res {args.resolution}")
    print(
        f"ours (LM):      RMSE mean {float(ours.landmark_rmse.mean()):.4f} px, max "
        f"{float(ours.landmark_rmse.max()):.4f} px, iterations max {int(ours.iterations.max())}, "
        f"{ours_s * 1e3:.2f} ms"
    )
    print(
        f"original (GD):  RMSE mean {float(orig.landmark_rmse.mean()):.4f} px, max "
        f"{float(orig.landmark_rmse.max()):.4f} px, iterations {int(orig.iterations)}, "
        f"{orig_s * 1e3:.1f} ms"
    )
    print(f"speed-up: {orig_s / ours_s:.0f}x")


if __name__ == "__main__":
    main()
