"""How much 3D shape a trained STN recovers, on held-out faces whose true theta is known
(the synthetic data): per-component agreement of alpha, the shape error by yaw, pictures.

The shape error is ``metrics.shape_error`` (mean per-vertex distance in the model frame,
model units); "the mean face" predicts alpha = 0, which is what a network that learned no
identity scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.evaluation import metrics

PyTree = Any
# |yaw| bins (degrees) for the synthetic data's +-35 degree range.
YAW_EDGES = (15.0, 30.0)


class ShapePredictions(NamedTuple):
    """Held-out faces (leading axis N): predicted and true alpha ``[N, D]``, true yaw ``[N]``
    (degrees, the datasets' convention)."""

    predicted_alpha: np.ndarray
    true_alpha: np.ndarray
    yaw: np.ndarray


def collect(predict: Callable, params: PyTree, batches: Iterable[Mapping]) -> ShapePredictions:
    """Runs ``predict`` (``heldout.make_eval_fn``) on batches that carry the true 'theta'."""
    predicted, true = [], []
    for batch in batches:
        if "theta" not in batch:
            raise ValueError("the held-out batches carry no true theta (not synthetic data)")
        out = jax.device_get(predict(params, jnp.asarray(batch["image"], jnp.float32)))
        predicted.append(np.asarray(theta_lib.shape_weights(out["theta"])))
        true.append(np.asarray(batch["theta"], np.float32))
    true_theta = np.concatenate(true)
    rotation = geometry.axis_angle_to_matrix(jnp.asarray(theta_lib.split(true_theta).r))
    return ShapePredictions(
        np.concatenate(predicted),
        np.asarray(theta_lib.shape_weights(true_theta)),
        np.asarray(pose.matrix_to_pose(rotation))[:, 0],
    )


def alpha_correlation(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson correlation per component: ``[N, D], [N, D] -> [D]`` (NaN where either side is
    constant)."""
    predicted = np.asarray(predicted, np.float64)
    true = np.asarray(true, np.float64)
    if predicted.shape != true.shape or predicted.ndim != 2:
        raise ValueError(f"alpha shapes differ or are not [N, D]: {predicted.shape}, {true.shape}")
    p = predicted - predicted.mean(axis=0)
    t = true - true.mean(axis=0)
    denominator = np.sqrt((p**2).sum(axis=0) * (t**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (p * t).sum(axis=0) / denominator, np.nan)


def component_cost(morphable_model, true_alpha: np.ndarray) -> np.ndarray:
    """``[D]``: the shape error of the truth with component k set to 0 (how much each
    component matters to the shape error; what missing it entirely costs)."""
    true_alpha = np.asarray(true_alpha, np.float32)
    true_shape = _shapes(morphable_model, true_alpha)
    costs = []
    for k in range(true_alpha.shape[1]):
        without = true_alpha.copy()
        without[:, k] = 0.0
        costs.append(metrics.shape_error(_shapes(morphable_model, without), true_shape).mean())
    return np.array(costs)


def _shapes(morphable_model, alpha: np.ndarray) -> np.ndarray:
    """``[N, D] -> [N, V, 3]`` model-frame shapes."""
    return np.asarray(
        geometry.morphable_shape(morphable_model.mean, morphable_model.basis, jnp.asarray(alpha))
    )


def yaw_bin_names(edges: Sequence[float] = YAW_EDGES) -> list[str]:
    bounds = [0.0, *edges]
    names = [f"yaw_{lo:g}_{hi:g}" for lo, hi in zip(bounds[:-1], bounds[1:])]
    return names + [f"yaw_above_{bounds[-1]:g}"]


def by_yaw(values: np.ndarray, yaw: np.ndarray, edges: Sequence[float] = YAW_EDGES) -> dict:
    """Mean of ``values`` [N] per |yaw| bin (``yaw_bin_names``; NaN when empty) and counts."""
    bins = np.digitize(np.abs(np.asarray(yaw)), edges, right=True)
    values = np.asarray(values, np.float64)
    out = {
        name: float(values[bins == k].mean()) if np.any(bins == k) else float("nan")
        for k, name in enumerate(yaw_bin_names(edges))
    }
    out["counts"] = [int(np.sum(bins == k)) for k in range(len(edges) + 1)]
    return out


def report(morphable_model, predictions: ShapePredictions) -> dict:
    """The shape report: overall and per-yaw-bin shape error of the prediction and of the
    mean face, their ratio, and per component the correlation, the predicted and true
    standard deviations and the component's cost (:func:`component_cost`)."""
    true_shape = _shapes(morphable_model, predictions.true_alpha)
    predicted = metrics.shape_error(
        _shapes(morphable_model, predictions.predicted_alpha), true_shape
    )
    mean_face = metrics.shape_error(
        np.broadcast_to(morphable_model.mean, true_shape.shape), true_shape
    )
    return {
        "num_images": int(len(predicted)),
        "shape_error": float(predicted.mean()),
        "shape_error_mean_shape": float(mean_face.mean()),
        "ratio_to_mean_shape": float(predicted.mean() / mean_face.mean()),
        "shape_error_by_yaw": by_yaw(predicted, predictions.yaw),
        "shape_error_mean_shape_by_yaw": by_yaw(mean_face, predictions.yaw),
        "alpha_correlation": alpha_correlation(
            predictions.predicted_alpha, predictions.true_alpha
        ).tolist(),
        "alpha_predicted_std": predictions.predicted_alpha.std(axis=0).tolist(),
        "alpha_true_std": predictions.true_alpha.std(axis=0).tolist(),
        "component_cost": component_cost(morphable_model, predictions.true_alpha).tolist(),
        "n_identity": int(getattr(morphable_model, "n_identity", 0)),
    }


def save_shape_figure(path: str, morphable_model, predictions: ShapePredictions, count: int = 4):
    """PNG: for ``count`` held-out faces, over the UV grid, how the true and the predicted
    shape depart from the mean face (per-vertex displacement, signed by its depth component,
    one colour scale per face), and the per-vertex error of the prediction and of the mean
    face (one scale per face)."""
    from jax3dmmstn.evaluation import plots

    plt = plots.pyplot()
    res = int(morphable_model.resolution)
    count = min(count, len(predictions.true_alpha))
    true = _shapes(morphable_model, predictions.true_alpha[:count]) - morphable_model.mean
    pred = _shapes(morphable_model, predictions.predicted_alpha[:count]) - morphable_model.mean
    fig, axes = plt.subplots(count, 4, figsize=(8.4, 2.2 * count), squeeze=False)
    for i in range(count):
        signed = [np.linalg.norm(d[i], axis=-1) * np.sign(d[i][:, 2]) for d in (true, pred)]
        limit = max(np.abs(v).max() for v in signed) + 1e-6
        error = np.linalg.norm(pred[i] - true[i], axis=-1)
        mean_error = np.linalg.norm(true[i], axis=-1)
        panels = (
            (signed[0], "RdBu_r", -limit, limit, f"true - mean (yaw {predictions.yaw[i]:.0f})"),
            (signed[1], "RdBu_r", -limit, limit, "predicted - mean"),
            (error, "magma", 0.0, mean_error.max(), f"error of prediction ({error.mean():.2f})"),
            (
                mean_error,
                "magma",
                0.0,
                mean_error.max(),
                f"error of mean ({mean_error.mean():.2f})",
            ),
        )
        for ax, (values, cmap, low, high, title) in zip(axes[i], panels):
            ax.imshow(values.reshape(res, res), cmap=cmap, vmin=low, vmax=high)
            ax.set_title(title, fontsize=7)
            ax.set_axis_off()
    fig.suptitle(
        "held-out faces over the UV grid: displacement from the mean face and per-vertex error",
        fontsize=8,
    )
    fig.tight_layout()
    return plots.save_figure(fig, path)


def write(out_dir: str, morphable_model, predictions: ShapePredictions) -> dict:
    """``shape_report.json`` and ``shapes.png`` in ``out_dir``; returns the report."""
    os.makedirs(out_dir, exist_ok=True)
    summary = report(morphable_model, predictions)
    with open(os.path.join(out_dir, "shape_report.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    save_shape_figure(os.path.join(out_dir, "shapes.png"), morphable_model, predictions)
    return summary
