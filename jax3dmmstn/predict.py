"""``jax3dmmstn predict``: run a trained 3DMM-STN on images.

It restores the latest checkpoint of a training workdir
(``jax3dmmstn.training.checkpoint.load_trained``), reads photos as they come
(:mod:`jax3dmmstn.data.photos`: folders, globs, any size and format, EXIF orientation),
crops each around its face box (a boxes file, ``--box`` or the .pts file next to it) to the
network's input size, and writes what the network gives (theta, pose, landmarks) to
DIR/fit.json, with the same per-image files as ``jax3dmmstn fit``, named after each photo.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Crop(NamedTuple):
    """Where each photo's face is: a boxes file, one box for all, or the .pts files."""

    boxes: dict  # name -> (COL0, ROW0, COL1, ROW1), from --boxes
    box: tuple[float, float, float, float] | None  # --box
    pts: bool  # --pts: every photo must have a .pts file (else it is used when present)
    margin: float


class InputError(ValueError):
    """A photo that cannot be read or cropped (the message says which)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn predict",
        description="Run a trained 3DMM-STN on photos: folders, globs or files, any size and "
        "format; each photo is cropped around its face box (--boxes, --box, or the .pts file "
        "next to it) and its outputs are named after it.",
    )
    parser.add_argument("--checkpoint", required=True, help="training workdir (has checkpoints/)")
    parser.add_argument(
        "--images", required=True, nargs="+", help="photos: files, folders or globs"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--boxes", default=None, help="file of face boxes: lines 'NAME COL0 ROW0 COL1 ROW1'"
    )
    parser.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("COL0", "ROW0", "COL1", "ROW1"),
        help="face box of every photo (0-based pixels, y down): crop a square around it",
    )
    parser.add_argument(
        "--pts",
        action="store_true",
        help="require the iBUG .pts file next to each photo (IMAGE.pts) and crop around its "
        "landmarks (without --pts a .pts file is used when there is one)",
    )
    parser.add_argument(
        "--margin", type=float, default=0.25, help="crop margin, fraction of the box side"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="photos per network call")
    return parser


def read_image(path: str, crop: Crop, size: tuple[int, int]) -> np.ndarray:
    """The photo at ``path``, cropped around its face and resized to ``size``: float32 0..255."""
    from PIL import Image

    from jax3dmmstn.data import photos

    height, width = size
    try:
        pixels = photos.read_photo(path)
    except ValueError as error:  # DataError: its message starts with the path
        raise InputError(f"cannot read image {error}") from None
    try:
        if crop.pts and not os.path.isfile(photos.pts_path(path)):
            raise ValueError(f"--pts: {photos.pts_path(path)} does not exist")
        box = photos.face_box(path, pixels.shape[:2], crop.boxes, crop.box, use_pts=True)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot crop {path}: {error}") from None
    if box is not None:
        return photos.square_crop(pixels, box, width, crop.margin)["image"].astype(np.float32)
    if pixels.shape[:2] != (height, width):
        # The localiser was trained on face crops of this size; without a face box the
        # whole photo is resized (stretched).
        print(
            f"predict: note: no face box for {path}: resized it from {pixels.shape[1]}x"
            f"{pixels.shape[0]} to the model's {width}x{height}",
            file=sys.stderr,
        )
        pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR))
    return pixels.astype(np.float32)


def predict(trained, images: np.ndarray, names: Sequence[str], batch_size: int = 16):
    """The network's outputs for ``images`` as ``fitting.cli.FitResults``."""
    import jax

    from jax3dmmstn.core import pose
    from jax3dmmstn.fitting.cli import FitResults

    out = _apply_in_batches(jax.jit(trained.model.apply), trained.params, images, batch_size)
    theta, predicted = out["theta"], out["landmarks"]
    ypr = np.asarray(pose.matrix_to_pose(out["R"]))
    report = [
        {
            "name": name,
            "theta": theta[i].tolist(),
            "yaw_pitch_roll_degrees": ypr[i].tolist(),
            "landmarks": predicted[i].tolist(),
        }
        for i, name in enumerate(names)
    ]
    # The STN's own landmarks: no given landmarks to compare with.
    return FitResults(images, theta, predicted, np.zeros(predicted.shape[:2]), predicted, report)


def _apply_in_batches(apply, params, images: np.ndarray, batch_size: int) -> dict:
    """theta, landmarks and R of ``images [B, H, W, 3]``, ``batch_size`` at a time.

    The last batch is padded to ``batch_size`` so that every call has the same shape and
    the network compiles once.
    """
    batch_size = max(1, min(int(batch_size), len(images)))
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk
        out = apply({"params": params}, padded)
        parts.append({k: np.asarray(out[k])[: len(chunk)] for k in ("theta", "landmarks", "R")})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jax3dmmstn.data import photos
    from jax3dmmstn.fitting.cli import write_results
    from jax3dmmstn.training.checkpoint import load_trained

    try:
        paths = photos.list_photos(args.images)
        boxes = photos.read_boxes(args.boxes) if args.boxes else {}
        box = None if args.box is None else photos.check_box(args.box)
    except (ValueError, OSError) as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    crop = Crop(boxes, box, args.pts, args.margin)
    try:
        trained = load_trained(args.checkpoint)
    except FileNotFoundError as error:
        print(f"predict: error: {error}; --checkpoint must be a training workdir", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"predict: error: cannot restore {args.checkpoint}: {error}", file=sys.stderr)
        return 2
    size = tuple(trained.config.data.image_size)
    try:
        images = np.stack([read_image(path, crop, size) for path in paths])
    except InputError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    names = [photos.photo_name(p) for p in paths]
    results = predict(trained, images, names, args.batch_size)
    parametrisation = trained.config.model.get("scale_parametrisation", "matconvnet")
    write_results(args.out, trained.morphable_model, results, parametrisation=parametrisation)
    print(f"predicted {len(names)} images (checkpoint step {trained.step}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
