"""How much 3D shape the landmarks determine: the reachable reference of issue 14.

    .venv/bin/python tools/shape_reach.py [--config synthetic] [--images 256]

Fits the true landmarks of the config's held-out synthetic faces (the 'aflw21' and 'ibug68'
sets, optionally with Gaussian pixel noise) with the landmark fitter, identity and expression
included (``fitting.fit_model_landmarks``), and prints the fitted shape's error against the
truth next to the mean face's: what a network that placed its landmarks that well could
reach. ``prior_weight`` is the fitter's (on summed squared pixel errors).
"""

from __future__ import annotations

import argparse

import numpy as np

from jax3dmmstn import fitting, training
from jax3dmmstn.configs import load_config
from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.data import SyntheticFaces
from jax3dmmstn.evaluation import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="synthetic")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--noise", default="0,1,2,3", help="pixel noise sigmas (per axis)")
    parser.add_argument("--prior-weights", default="0.1,1")
    args = parser.parse_args()
    config = load_config(args.config)
    model = training.build_morphable_model(config)
    render_config = training.synthetic_render_config(config)
    faces = SyntheticFaces(
        model, render_config, seed=int(config.data.seed), stream="heldout", num_examples=args.images
    )
    batch = faces.load_batch(np.arange(args.images))
    true_shape = np.asarray(
        geometry.morphable_shape(model.mean, model.basis, theta_lib.shape_weights(batch["theta"]))
    )
    mean_error = metrics.shape_error(np.broadcast_to(model.mean, true_shape.shape), true_shape)
    print(f"{args.images} held-out faces; mean face: {mean_error.mean():.3f}")
    rng = np.random.default_rng(0)
    for landmark_set in ("aflw21", "ibug68"):
        target = np.asarray(batch[f"landmarks_{landmark_set}"], np.float64)
        for sigma in (float(s) for s in args.noise.split(",")):
            noisy = target + rng.normal(0.0, sigma, target.shape)
            for prior in (float(p) for p in args.prior_weights.split(",")):
                fit = fitting.fit_model_landmarks(
                    model, noisy, None, landmark_set, prior_weight=prior
                )
                shape = np.asarray(
                    geometry.morphable_shape(
                        model.mean, model.basis, theta_lib.shape_weights(fit.theta)
                    )
                )
                error = metrics.shape_error(shape, true_shape).mean()
                print(
                    f"{landmark_set}: noise {sigma:.0f} px, prior {prior:g}: shape error "
                    f"{error:.3f} (ratio {error / mean_error.mean():.2f})"
                )


if __name__ == "__main__":
    main()
