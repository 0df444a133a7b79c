"""Pictures of a run: landmark and texture snapshots (PNG) and training curves."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence

import matplotlib
import numpy as np

from jax3dmmstn.core import geometry


def pyplot():
    """matplotlib.pyplot, headless by default.

    Imported here, not at the top: the backend must be chosen before pyplot is first
    imported, and never switched in a session that already uses pyplot (a notebook would
    stop showing its figures).
    """
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
    plt = pyplot()
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
    return save_figure(fig, path)


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
    plt = pyplot()
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
    return save_figure(fig, path)


# Third panel of the curves: (metric, label, colour) groups, the first group a run has.
_EXTRA_PANELS = (
    (
        "AFLW2000-3D",
        (
            ("aflw2000_pose_mae_deg", "pose MAE (deg)", "tab:purple"),
            ("aflw2000_nme68", "NME-68 (%)", "tab:green"),
            ("aflw2000_nme21", "NME-21 (%)", "tab:olive"),
        ),
    ),
    (
        "held-out 3D shape error",
        (
            ("shape_error", "predicted shape", "tab:purple"),
            ("shape_error_mean_shape", "mean face", "gray"),
        ),
    ),
)


def _series(rows: list, split: str, key: str, factor: float = 1.0) -> list:
    return [(r["step"], factor * r[key]) for r in rows if r.get("split") == split and key in r]


def _extra_panel(rows: list):
    """(title, [(label, colour, points)]) of the first ``_EXTRA_PANELS`` group the eval rows
    have, or None."""
    for title, metrics in _EXTRA_PANELS:
        lines = [(label, colour, _series(rows, "eval", key)) for key, label, colour in metrics]
        lines = [line for line in lines if line[2]]
        if lines:
            return title, lines
    return None


def save_curves(path: str, rows: Iterable[Mapping], title: str = "") -> str:
    """Loss (train, log scale) and held-out NME (%) against step, from metrics rows; a third
    panel with the AFLW2000-3D benchmark (pose MAE, NME-68, NME-21) or, on synthetic data,
    the 3D shape error against the mean face's, when the rows have them.

    Rows have 'split' ('train' or 'eval'), 'step', and 'loss/total' or 'nme'.
    """
    plt = pyplot()
    rows = list(rows)
    train = _series(rows, "train", "loss/total")
    evals = _series(rows, "eval", "nme", 100.0)
    extra = _extra_panel(rows)
    fig, axes = plt.subplots(1, 3 if extra else 2, figsize=(15 if extra else 10, 3.6))
    ax_loss, ax_nme = axes[0], axes[1]
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
        _annotate_last(ax_nme, steps, values, "%")
        ax_nme.set_yscale("log")
    ax_nme.set_xlabel("step")
    ax_nme.set_ylabel("held-out landmark NME (%)")
    ax_nme.grid(alpha=0.3, which="both")
    if extra:
        panel_title, lines = extra
        for label, colour, points in lines:
            steps, values = zip(*points)
            axes[2].plot(steps, values, "o-", ms=3, color=colour, label=label)
            _annotate_last(axes[2], steps, values, "")
        axes[2].set_title(panel_title, fontsize=9)
        axes[2].set_xlabel("step")
        axes[2].legend(fontsize=8)
        axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _annotate_last(ax, steps, values, unit: str) -> None:
    ax.annotate(
        f"{values[-1]:.2f}{unit}",
        (steps[-1], values[-1]),
        fontsize=8,
        textcoords="offset points",
        xytext=(-30, 8),
    )


def save_figure(fig, path: str) -> str:
    """Writes ``fig`` as a PNG at ``path`` (atomically) and closes it; returns ``path``."""
    plt = pyplot()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)  # never leave a half-written PNG behind
    return path


def save_snapshots(workdir: str, step: int, first: Mapping, tag: str | None = None) -> list[str]:
    """``workdir/snapshots/<tag>_landmarks.png`` (and ``_textures.png`` when the STN samples
    textures) of the first held-out batch's predictions ``first`` (see
    :func:`jax3dmmstn.evaluation.heldout.evaluate`); tag defaults to step_<step>."""
    tag = tag or f"step_{step:07d}"
    directory = os.path.join(workdir, "snapshots")
    paths = [
        save_landmark_snapshot(
            os.path.join(directory, f"{tag}_landmarks.png"),
            first["image"],
            first["landmarks"],
            first["target"],
            first["visible"],
        )
    ]
    if "texture" in first:
        paths.append(
            save_texture_snapshot(
                os.path.join(directory, f"{tag}_textures.png"),
                first["texture"],
                first["mask"],
                first["masked_texture"],
            )
        )
    return paths
