"""Pictures of a run: landmark and texture snapshots (PNG) and training curves."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence

import matplotlib
import numpy as np

from jax3dmmstn.core import geometry


def _pyplot():
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
