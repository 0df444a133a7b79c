"""Running an STN on held-out batches: per-image metrics, their means, and the first batch's
predictions (for snapshots)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.evaluation import flip_test, metrics

PyTree = Any

# The STN outputs the metrics and the snapshots read.
_OUTPUT_KEYS = ("landmarks", "R", "vertices3d", "theta", "texture", "mask", "masked_texture")


def make_eval_fn(model, flip_permutation=None) -> Callable:
    """Jitted (params, images [B, H, W, 3]) -> the STN's outputs that evaluation reads.

    With the landmark set's ``flip_permutation`` [L], 'landmarks' and 'R' are flip-tested
    (:mod:`evaluation.flip_test`); the other outputs stay the plain pass's."""

    @jax.jit
    def predict(params, images):
        out = model.apply({"params": params}, images)
        out = {k: out[k] for k in _OUTPUT_KEYS if k in out}
        if flip_permutation is not None:
            mirrored = model.apply({"params": params}, images[:, :, ::-1])
            out["landmarks"], out["R"] = flip_test.flip_averaged(
                out["landmarks"],
                out["R"],
                mirrored["landmarks"],
                mirrored["R"],
                images.shape[2],
                flip_permutation,
            )
        return out

    return predict


def _pose_and_shape_errors(out: Mapping, theta: np.ndarray, morphable_model) -> dict:
    """Per-image pose errors (degrees) and 3D shape errors (model units) against the true
    theta [B, 6 + D]; also the shape error of the mean shape (what "no shape estimate"
    scores)."""
    r, _, _, alpha = theta_lib.split(np.asarray(theta, np.float32))
    true_rotation = np.asarray(geometry.axis_angle_to_matrix(r))
    pose = metrics.pose_errors(out["R"], true_rotation)
    true_shape = np.asarray(
        geometry.morphable_shape(morphable_model.mean, morphable_model.basis, alpha)
    )
    mean_shape = np.broadcast_to(morphable_model.mean, true_shape.shape)
    return {
        "pose_mae_deg": pose["mae"],
        "pose_geodesic_deg": pose["geodesic"],
        "shape_error": metrics.shape_error(out["vertices3d"], true_shape),
        "shape_error_mean_shape": metrics.shape_error(mean_shape, true_shape),
    }


def per_image_metrics(
    predict: Callable, params: PyTree, batches: Iterable[Mapping], morphable_model
) -> tuple[dict[str, np.ndarray], dict]:
    """Per-image metrics ({name: [N]}) over all batches, and the first batch's predictions.

    NME always; pose error (degrees) and 3D shape error (model units) when batches carry the
    ground-truth 'theta' [b, 6 + D] (synthetic data). The first batch's dict holds the
    predictions plus 'image', 'target' and 'visible' (the batch's landmarks and visibility).
    """
    per_image: dict[str, list] = {"nme": []}
    first = None
    for batch in batches:
        out = jax.device_get(predict(params, jnp.asarray(batch["image"], jnp.float32)))
        if first is None:
            first = dict(
                out,
                image=np.asarray(batch["image"]),
                target=batch["landmarks"],
                visible=batch["landmark_visible"],
            )
        per_image["nme"].append(
            metrics.landmark_nme(out["landmarks"], batch["landmarks"], batch["landmark_visible"])
        )
        if "theta" in batch:
            errors = _pose_and_shape_errors(out, batch["theta"], morphable_model)
            for name, values in errors.items():
                per_image.setdefault(name, []).append(values)
    if first is None:
        raise ValueError("the held-out set is empty")
    return {k: np.concatenate(v) for k, v in per_image.items()}, first


def evaluate(
    predict: Callable, params: PyTree, batches: Iterable[Mapping], morphable_model
) -> tuple[dict, dict]:
    """Held-out metrics (means of :func:`per_image_metrics`) and the first batch's
    predictions (for snapshots)."""
    per_image, first = per_image_metrics(predict, params, batches, morphable_model)
    return metrics.summarise(per_image), first
