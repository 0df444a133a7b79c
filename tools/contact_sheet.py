"""Contact sheet of synthetic faces with their ground-truth landmarks.

Usage:
  .venv/bin/python tools/contact_sheet.py [--out docs/images/synthetic_contact_sheet.png]
                                          [--seed 0] [--count 16] [--landmarks aflw21]

Renders ``count`` examples of the training stream of ``SyntheticFaces`` (built-in
synthetic model) and draws each landmark where the STN's sampler reads it
(``geometry.image_frame_to_pixels``): filled green when visible, hollow red when
hidden by the face itself or an occluder. Under each tile: yaw/pitch/roll.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from jax3dmmstn.core import geometry
from jax3dmmstn.data import render, synthetic
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


def draw_tile(
    image: np.ndarray, landmarks: np.ndarray, visible: np.ndarray, caption: str, zoom: int = 2
) -> Image.Image:
    """One tile: the image enlarged ``zoom`` times, landmarks, a caption strip."""
    size = image.shape[0]
    tile = Image.new("RGB", (size * zoom, size * zoom + 14), (255, 255, 255))
    tile.paste(Image.fromarray(image).resize((size * zoom, size * zoom), Image.NEAREST))
    draw = ImageDraw.Draw(tile)
    pixels = np.asarray(geometry.image_frame_to_pixels(landmarks, image.shape[:2]))
    for (col, row), vis in zip(pixels, visible):
        # Pixel centre c of the original covers [c - 1/2, c + 1/2]: centre (c + 1/2) zoom.
        x, y = (col + 0.5) * zoom, (row + 0.5) * zoom
        if vis > 0.5:
            draw.ellipse(
                [x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=(40, 255, 40), outline=(0, 0, 0)
            )
        else:
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], outline=(255, 40, 40), width=1)
    draw.text((3, size * zoom + 1), caption, fill=(0, 0, 0))
    return tile


def contact_sheet(
    count: int = 16, seed: int = 0, landmark_set: str = "aflw21", zoom: int = 2
) -> Image.Image:
    model = synthetic_face_model()
    source = synthetic.SyntheticFaces(
        model, render.RenderConfig(landmark_set=landmark_set), seed=seed
    )
    batch = source.load_batch(np.arange(count))
    tiles = [
        draw_tile(
            batch["image"][i],
            batch["landmarks"][i],
            batch["landmark_visible"][i],
            "yaw {:+.0f} pitch {:+.0f} roll {:+.0f}".format(*batch["pose"][i]),
            zoom,
        )
        for i in range(count)
    ]
    columns = int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    return sheet


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/synthetic_contact_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--landmarks", default="aflw21", choices=["aflw21", "ibug68"])
    parser.add_argument("--zoom", type=int, default=1)
    args = parser.parse_args(argv)
    sheet = contact_sheet(args.count, args.seed, args.landmarks, args.zoom)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({sheet.size[0]}x{sheet.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
