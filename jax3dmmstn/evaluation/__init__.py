"""Metrics and pictures: landmark NME, pose and shape errors, PNG snapshots, training curves.

All metrics are numpy functions of host arrays (they run once per evaluation, outside jit).

* Landmark NME (the 3DDFA / AFLW2000-3D protocol): per image, the mean over visible landmarks
  of the L2 error, divided by sqrt(w * h) of the bounding box of the visible ground-truth
  landmarks.
* Pose error: mean absolute difference of yaw, pitch and roll (degrees; the AFLW2000-3D
  protocol) and the geodesic angle of R_pred R_true^T (degrees).
* 3D shape error: mean per-vertex Euclidean distance between predicted and true shapes in the
  model frame (before pose; model units, mm).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------
def landmark_box_size(landmarks: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """sqrt(w * h) of the box around each image's visible landmarks.

    landmarks [B, L, 2], visible [B, L] -> [B]. Raises if an image has no visible landmark or a
    degenerate (zero-area) box, since its NME would be undefined.
    """
    landmarks = np.asarray(landmarks, np.float64)
    visible = np.asarray(visible) > 0
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be [B, L, 2], got {landmarks.shape}")
    if visible.shape != landmarks.shape[:2]:
        raise ValueError(f"visible must be {landmarks.shape[:2]}, got {visible.shape}")
    if not np.all(visible.any(axis=1)):
        raise ValueError(
            f"images {np.flatnonzero(~visible.any(axis=1)).tolist()} have no "
            f"visible landmark: NME undefined"
        )
    big = np.where(visible[..., None], landmarks, np.inf)
    small = np.where(visible[..., None], landmarks, -np.inf)
    extent = small.max(axis=1) - big.min(axis=1)  # [B, 2]
    size = np.sqrt(extent[:, 0] * extent[:, 1])
    if np.any(size <= 0):
        raise ValueError(
            f"images {np.flatnonzero(size <= 0).tolist()} have a zero-area "
            f"landmark box: NME undefined"
        )
    return size


def landmark_nme(predicted: np.ndarray, target: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Per-image NME: mean L2 error over visible landmarks / sqrt(w h) of the GT box.

    predicted, target [B, L, 2] (same frame, pixels), visible [B, L] -> [B] (a fraction; x100
    for percent).
    """
    predicted = np.asarray(predicted, np.float64)
    target = np.asarray(target, np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted {predicted.shape} and target {target.shape} differ")
    visible = np.asarray(visible) > 0
    size = landmark_box_size(target, visible)
    error = np.linalg.norm(predicted - target, axis=-1)
    mean_error = (error * visible).sum(axis=1) / visible.sum(axis=1)
    return mean_error / size


def rotation_to_yaw_pitch_roll(rotation: np.ndarray) -> np.ndarray:
    """[B, 3, 3] -> [B, 3] degrees, with the lead's convention (geometry module)."""
    from jax3dmmstn.core import geometry

    return np.asarray(geometry.matrix_to_yaw_pitch_roll(np.asarray(rotation, np.float32)))


def pose_errors(predicted_rotation: np.ndarray, true_rotation: np.ndarray) -> dict:
    """Per-image pose errors in degrees.

    predicted_rotation, true_rotation [B, 3, 3] -> dict(yaw, pitch, roll: [B] absolute errors,
    mae: [B] their mean, geodesic: [B] angle of R_pred R_true^T).
    """
    predicted_rotation = np.asarray(predicted_rotation, np.float64)
    true_rotation = np.asarray(true_rotation, np.float64)
    if predicted_rotation.shape != true_rotation.shape or predicted_rotation.shape[-2:] != (3, 3):
        raise ValueError(
            f"rotations must both be [B, 3, 3], got {predicted_rotation.shape} and "
            f"{true_rotation.shape}"
        )
    diff = np.abs(
        rotation_to_yaw_pitch_roll(predicted_rotation) - rotation_to_yaw_pitch_roll(true_rotation)
    )
    diff = np.minimum(diff, 360.0 - diff)  # angles wrap around
    relative = np.einsum("bij,bkj->bik", predicted_rotation, true_rotation)
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return dict(
        yaw=diff[:, 0],
        pitch=diff[:, 1],
        roll=diff[:, 2],
        mae=diff.mean(axis=1),
        geodesic=np.degrees(np.arccos(cos)),
    )


def shape_error(predicted_vertices: np.ndarray, true_vertices: np.ndarray) -> np.ndarray:
    """Mean per-vertex L2 distance [B] between [B, N, 3] shapes (model frame, model units)."""
    predicted_vertices = np.asarray(predicted_vertices, np.float64)
    true_vertices = np.asarray(true_vertices, np.float64)
    if predicted_vertices.shape != true_vertices.shape:
        raise ValueError(f"shapes differ: {predicted_vertices.shape} vs {true_vertices.shape}")
    return np.linalg.norm(predicted_vertices - true_vertices, axis=-1).mean(axis=1)


def summarise(per_image: Mapping[str, np.ndarray]) -> dict:
    """Mean of each per-image metric as a plain float."""
    return {name: float(np.mean(values)) for name, values in per_image.items()}


# --------------------------------------------------------------------------------------------
# Pictures.
# --------------------------------------------------------------------------------------------
def _pyplot():
    import sys

    import matplotlib

    # Headless by default, but never switch the backend of a session that already
    # uses pyplot (a notebook would stop showing its figures).
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _display_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    if image.max() > 1.5:
        image = image / 255.0
    return np.clip(image, 0.0, 1.0)


def save_landmark_snapshot(
    path: str,
    images: np.ndarray,
    predicted: np.ndarray,
    target: np.ndarray | None = None,
    visible: np.ndarray | None = None,
    max_images: int = 8,
    titles: Sequence[str] | None = None,
) -> str:
    """PNG of up to ``max_images`` inputs with predicted (red x) and true (green o) landmarks.

    images [B, H, W, C] (0..255 or 0..1), landmarks [B, L, 2] in the image frame.
    """
    from jax3dmmstn.core import geometry

    plt = _pyplot()
    images = np.asarray(images)
    n = min(max_images, images.shape[0])
    size = images.shape[1:3]
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(_display_image(images[i]))
        pred = np.asarray(geometry.image_frame_to_pixels(np.asarray(predicted[i]), size))
        if target is not None:
            true = np.asarray(geometry.image_frame_to_pixels(np.asarray(target[i]), size))
            vis = np.ones(true.shape[0], bool) if visible is None else np.asarray(visible[i]) > 0
            ax.scatter(
                true[vis, 0],
                true[vis, 1],
                s=10,
                facecolors="none",
                edgecolors="lime",
                linewidths=0.8,
                label="true",
            )
        ax.scatter(
            pred[:, 0], pred[:, 1], s=10, c="red", marker="x", linewidths=0.8, label="predicted"
        )
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
        ax.set_axis_off()
    axes[0, 0].legend(loc="lower left", fontsize=6, framealpha=0.6)
    fig.tight_layout()
    return _save(fig, path)


def save_texture_snapshot(
    path: str,
    texture: np.ndarray,
    mask: np.ndarray,
    masked_texture: np.ndarray,
    max_images: int = 8,
) -> str:
    """PNG with three rows: sampled UV textures, visibility masks, masked textures.

    texture, masked_texture [B, res, res, C]; mask [B, res, res, 1 or C].
    """
    plt = _pyplot()
    n = min(max_images, np.shape(texture)[0])
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_display_image(texture[i]))
        axes[1, i].imshow(np.asarray(mask[i])[..., 0], cmap="gray", vmin=0, vmax=1)
        axes[2, i].imshow(_display_image(masked_texture[i]))
        for row in range(3):
            axes[row, i].set_axis_off()
    for row, name in enumerate(("UV texture", "visibility mask", "masked texture")):
        axes[row, 0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(path: str) -> list[dict]:
    """Rows of a JSONL metrics file (skipping a torn last line of a killed run)."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def save_curves(path: str, rows: Iterable[Mapping], title: str = "") -> str:
    """Loss (train, log scale) and held-out NME (%) against step, from metrics rows.

    Rows have 'split' ('train' or 'eval'), 'step', and 'loss/total' or 'nme'.
    """
    plt = _pyplot()
    rows = list(rows)
    train = [
        (r["step"], r["loss/total"])
        for r in rows
        if r.get("split") == "train" and "loss/total" in r
    ]
    evals = [(r["step"], 100.0 * r["nme"]) for r in rows if r.get("split") == "eval" and "nme" in r]
    fig, (ax_loss, ax_nme) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        steps, values = zip(*train)
        ax_loss.plot(steps, values, lw=0.8, color="tab:blue")
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (weighted total)")
    ax_loss.grid(alpha=0.3)
    if evals:
        steps, values = zip(*evals)
        ax_nme.plot(steps, values, "o-", ms=3, color="tab:red")
        ax_nme.axhline(3.0, ls="--", color="gray", lw=0.8)
        ax_nme.annotate(
            f"{values[-1]:.2f}%",
            (steps[-1], values[-1]),
            fontsize=8,
            textcoords="offset points",
            xytext=(-30, 8),
        )
        ax_nme.set_yscale("log")
    ax_nme.set_xlabel("step")
    ax_nme.set_ylabel("held-out landmark NME (%)")
    ax_nme.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    plt = _pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)  # never leave a half-written PNG behind
    return path
