"""``jax3dmmstn predict``: run a trained 3DMM-STN on images.

It restores the latest checkpoint of a training workdir
(``jax3dmmstn.training.checkpoint.load_trained``), crops each image around a face box or its
.pts landmarks if asked, resizes it to the network's input size, and writes what the network
gives (theta, pose, landmarks) to DIR/fit.json, with the same per-image files as
``jax3dmmstn fit``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Crop(NamedTuple):
    """How to crop each image before it is resized: around ``box`` or its .pts landmarks."""

    box: tuple[float, float, float, float] | None  # COL0, ROW0, COL1, ROW1
    pts: bool
    margin: float


class InputError(ValueError):
    """An image that cannot be read or cropped (the message says which)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn predict", description="Run a trained 3DMM-STN on images."
    )
    parser.add_argument("--checkpoint", required=True, help="training workdir (has checkpoints/)")
    parser.add_argument("--images", required=True, nargs="+", help="image files")
    parser.add_argument("--out", required=True, help="output folder")
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("COL0", "ROW0", "COL1", "ROW1"),
        help="face box of every image (0-based pixels, y down): crop a square around it",
    )
    crop.add_argument(
        "--pts",
        action="store_true",
        help="crop around the landmarks of the iBUG .pts file next to each image (IMAGE.pts)",
    )
    parser.add_argument(
        "--margin", type=float, default=0.25, help="crop margin, fraction of the box side"
    )
    return parser


def face_crop(image, path: str, crop: Crop, out_size: int):
    """Crops a square around ``crop.box`` or the image's .pts landmarks (a PIL image in and out).

    With neither the image is returned unchanged.
    """
    from PIL import Image

    from jax3dmmstn.data import loaders, preprocess

    if crop.box is None and not crop.pts:
        return image
    pixels = np.asarray(image, np.float32)
    size = pixels.shape[:2]
    if crop.pts:
        points = loaders.pts_to_image_frame(
            loaders.read_pts(os.path.splitext(path)[0] + ".pts"), size
        )
    else:
        col0, row0, col1, row1 = crop.box
        if not (col1 > col0 and row1 > row0):
            raise ValueError(f"--box needs COL1 > COL0 and ROW1 > ROW0, got {list(crop.box)}")
        points = preprocess.pixels_to_landmarks(np.array([[col0, row0], [col1, row1]]), size)
    example = {
        "image": pixels,
        "landmarks": points,
        "landmark_visible": np.ones(len(points), np.float32),
    }
    cropped = preprocess.crop_around_landmarks(example, out_size=out_size, margin=crop.margin)
    return Image.fromarray(np.clip(np.rint(cropped["image"]), 0, 255).astype(np.uint8))


def read_image(path: str, crop: Crop, size: tuple[int, int]) -> np.ndarray:
    """The image at ``path``, cropped and resized to ``size`` (height, width): float32 0..255."""
    from PIL import Image

    height, width = size
    try:
        image = Image.open(path).convert("RGB")
    except OSError as error:  # missing file or not an image
        raise InputError(f"cannot read image {path}: {error}") from None
    try:
        image = face_crop(image, path, crop, width)
    except (ValueError, OSError) as error:
        raise InputError(f"cannot crop {path}: {error}") from None
    if image.size != (width, height):
        # The localiser was trained on crops of this size: a photo must be cropped around
        # the face first (resizing keeps the whole picture, stretched).
        print(
            f"predict: note: resized {path} from {image.size[0]}x{image.size[1]} to the "
            f"model's {width}x{height}",
            file=sys.stderr,
        )
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, np.float32)


def predict(trained, images: np.ndarray, names: Sequence[str]):
    """The network's outputs for ``images`` as ``fitting.cli.FitResults``."""
    import jax

    from jax3dmmstn.core import pose
    from jax3dmmstn.fitting.cli import FitResults

    out = jax.jit(trained.model.apply)({"params": trained.params}, images)
    theta = np.asarray(out["theta"])
    predicted = np.asarray(out["landmarks"])
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    crop = Crop(None if args.box is None else tuple(args.box), args.pts, args.margin)
    from jax3dmmstn.fitting.cli import write_results
    from jax3dmmstn.training.checkpoint import load_trained

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
        images = np.stack([read_image(path, crop, size) for path in args.images])
    except InputError as error:
        print(f"predict: error: {error}", file=sys.stderr)
        return 2
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
    results = predict(trained, images, names)
    parametrisation = trained.config.model.get("scale_parametrisation", "matconvnet")
    write_results(args.out, trained.morphable_model, results, parametrisation=parametrisation)
    print(f"predicted {len(names)} images (checkpoint step {trained.step}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
