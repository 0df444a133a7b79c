"""Where a trained synthetic run loses the 3D shape: linear probes of its localiser's features.

    .venv/bin/python tools/feature_probe.py WORKDIR [--train-images 3072] [--ridge 10,100]

Runs the trained SmallCNN localiser of WORKDIR (a `synthetic` run) on rendered training faces
and on the config's held-out faces, and fits ridge regressions from two feature sets to the
*true* shape weights alpha (labels the network never saw):

* ``map``: the flattened last convolution map (the input of the hidden layer ``fc``);
* ``hidden``: the hidden layer's output (what the theta head reads).

It prints the held-out shape error of each probe next to the network's own and the mean
face's, and the per-component correlation with the truth. A probe far better than the
network means the features hold the shape and the training signal does not pull it through.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn import training
from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.data import SyntheticFaces
from jax3dmmstn.evaluation import metrics, shape_report
from jax3dmmstn.training.checkpoint import load_trained


def make_features(trained):
    """-> jitted images [B, H, W, 3] -> (theta [B, P], map [B, M], hidden [B, F]), compiled once."""

    def run(params, x):
        captured = {}

        def capture_fc_input(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.name == "fc" and context.method_name == "__call__":
                captured["map"], captured["hidden"] = args[0], nn.relu(out)
            return out

        with nn.intercept_methods(capture_fc_input):
            out = trained.model.apply({"params": params}, x)
        return out["theta"], captured["map"], captured["hidden"]

    jitted = jax.jit(run)
    return lambda images: jitted(trained.params, jnp.asarray(images, jnp.float32))


def collect(features, faces: SyntheticFaces, count: int, batch: int = 128):
    """-> (theta, map, hidden, true alpha) over the first ``count`` faces."""
    parts = []
    for start in range(0, count, batch):
        data = faces.load_batch(np.arange(start, min(count, start + batch)))
        parts.append((*features(data["image"]), theta_lib.shape_weights(data["theta"])))
    return [np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(4)]


def ridge(x_train, y_train, x_test, strength: float) -> np.ndarray:
    """Ridge regression with a free bias, fitted on (x_train, y_train), applied to x_test."""
    a = np.c_[x_train, np.ones(len(x_train))].astype(np.float64)
    weights = np.linalg.solve(a.T @ a + strength * np.eye(a.shape[1]), a.T @ y_train)
    return np.c_[x_test, np.ones(len(x_test))] @ weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--train-images", type=int, default=3072)
    parser.add_argument("--ridge", default="10,100", help="ridge strengths to try")
    args = parser.parse_args()
    trained = load_trained(args.workdir)
    config, model = trained.config, trained.morphable_model
    render_config = training.synthetic_render_config(config)
    seed = int(config.data.seed)
    train_faces = SyntheticFaces(
        model, render_config, seed=seed, stream="train", num_examples=args.train_images
    )
    heldout = SyntheticFaces(
        model, render_config, seed=seed, stream="heldout", num_examples=int(config.data.eval_size)
    )
    features = make_features(trained)
    _, map_train, hidden_train, alpha_train = collect(features, train_faces, args.train_images)
    theta, map_test, hidden_test, alpha_test = collect(features, heldout, len(heldout))

    def shape(alpha):
        return np.asarray(geometry.morphable_shape(model.mean, model.basis, alpha))

    truth = shape(alpha_test)

    def report(name, alpha):
        error = metrics.shape_error(shape(alpha), truth).mean()
        corr = shape_report.alpha_correlation(alpha, alpha_test)
        print(f"{name:<22} shape error {error:.3f}  correlation {np.round(corr, 2).tolist()}")

    mean_error = metrics.shape_error(shape(np.zeros_like(alpha_test)), truth).mean()
    print(f"{len(heldout)} held-out faces, probes fitted on {args.train_images} training faces")
    print(f"{'mean face':<22} shape error {mean_error:.3f}")
    report("network", np.asarray(theta_lib.shape_weights(theta)))
    for strength in (float(s) for s in args.ridge.split(",")):
        report(f"map probe ({strength:g})", ridge(map_train, alpha_train, map_test, strength))
        report(f"hidden probe ({strength:g})", ridge(hidden_train, alpha_train, hidden_test, strength))


if __name__ == "__main__":
    main()
