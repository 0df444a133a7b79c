"""Photos as they come: folders, globs or lists of files, any size, colour or grey, JPEG, PNG
or PPM, EXIF orientation applied, a face box per photo, a square crop around it.

``fit`` and ``predict`` read users' own pictures through these functions; a photo's outputs
are named after it (``einstein.jpg`` -> ``einstein_overlay.png``, ``"name": "einstein"``).

Face boxes are ``(col0, row0, col1, row1)`` in 0-based pixels with y down, the usual photo
convention. They come, in this order of precedence, from a boxes file (one line per photo:
``NAME COL0 ROW0 COL1 ROW1``, NAME being the file name or its stem), from one ``--box`` for
every photo, or from the iBUG ``.pts`` file next to the photo (``photo.pts``).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageOps

from jax3dmmstn.data import loaders, preprocess
from jax3dmmstn.data.errors import DataError

PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pnm", ".bmp", ".tif", ".tiff")

Box = tuple[float, float, float, float]


def _is_photo(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in PHOTO_EXTENSIONS


def list_photos(specs: Sequence[str]) -> list[str]:
    """The photo files that ``specs`` name: folders (their photos, sorted), globs or files.

    Raises DataError naming a spec that matches no photo, or two photos that would write
    outputs of the same name.
    """
    paths = []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(os.path.join(spec, f) for f in os.listdir(spec) if _is_photo(f))
        elif any(char in spec for char in "*?["):
            found = sorted(p for p in glob.glob(spec) if _is_photo(p))
        elif os.path.exists(spec):
            found = [spec]
        else:
            raise DataError(f"{spec}: no such file or folder")
        if not found:
            raise DataError(f"{spec}: no photo ({', '.join(PHOTO_EXTENSIONS)}) found there")
        paths += found
    _check_unique_names(paths)
    return paths


def photo_name(path: str) -> str:
    """The name outputs of ``path`` carry: its file name without the extension."""
    return os.path.splitext(os.path.basename(path))[0]


def _check_unique_names(paths: Sequence[str]) -> None:
    seen = {}
    for path in paths:
        other = seen.setdefault(photo_name(path), path)
        if other != path:
            raise DataError(
                f"{other} and {path} would both write outputs named {photo_name(path)!r}"
            )


def read_photo(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB, upright (EXIF orientation applied), from any PIL format.

    Greyscale and palette images become three equal channels; an alpha channel is dropped.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"), np.uint8)
    except OSError as error:
        raise DataError(f"{path}: not a readable image ({error})") from None


def read_boxes(path: str) -> dict[str, Box]:
    """A boxes file: ``{name: (col0, row0, col1, row1)}`` from lines ``NAME C0 R0 C1 R1``.

    Blank lines and lines starting with ``#`` are skipped; commas count as spaces.
    """
    boxes = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.replace(",", " ").split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                if len(fields) != 5:
                    raise ValueError(f"{len(fields)} fields")
                box = check_box(tuple(float(v) for v in fields[1:]))
            except ValueError as error:
                raise DataError(
                    f"{path}:{number}: expected 'NAME COL0 ROW0 COL1 ROW1' ({error})"
                ) from None
            boxes[fields[0]] = box
    return boxes


def check_box(box: Sequence[float]) -> Box:
    """``box`` as a tuple, after checking COL1 > COL0 and ROW1 > ROW0 (finite)."""
    box = tuple(float(v) for v in box)
    if len(box) != 4 or not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"a face box needs COL1 > COL0 and ROW1 > ROW0, got {list(box)}")
    return box


def pts_path(photo: str) -> str:
    """The iBUG ``.pts`` file next to a photo."""
    return os.path.splitext(photo)[0] + ".pts"


def read_photo_pts(photo: str, image_size: Sequence[int]) -> np.ndarray:
    """The landmarks of ``photo``'s .pts file in the image frame: ``[L, 2]``."""
    return loaders.pts_to_image_frame(loaders.read_pts(pts_path(photo)), image_size)


def face_box(
    photo: str,
    image_size: Sequence[int],
    boxes: Mapping[str, Box] | None = None,
    box: Box | None = None,
    use_pts: bool = True,
) -> Box | None:
    """The face box of ``photo`` (see the module docstring for the precedence), or None."""
    boxes = boxes or {}
    for key in (os.path.basename(photo), photo_name(photo)):
        if key in boxes:
            return boxes[key]
    if box is not None:
        return check_box(box)
    if use_pts and os.path.isfile(pts_path(photo)):
        points = preprocess.landmarks_to_pixels(read_photo_pts(photo, image_size), image_size)
        (col0, row0), (col1, row1) = points.min(0), points.max(0)
        return check_box((col0, row0, col1, row1))
    return None


def square_crop(
    image: np.ndarray, box: Box, out_size: int, margin: float = 0.25, landmarks=None
) -> dict:
    """A square ``out_size`` crop around ``box`` plus ``margin`` (a fraction of its side).

    Args:
      image: ``[H, W, 3]``.
      box: (col0, row0, col1, row1), 0-based pixels, y down.
      landmarks: optional ``[L, 2]`` image-frame landmarks carried into the crop.
    Returns:
      ``image`` ``[S, S, 3]`` (the input's dtype) and, when given, ``landmarks`` ``[L, 2]`` in
      the crop's image frame (``preprocess.crop_to_box``'s mapping).
    """
    points = np.zeros((0, 2), np.float32) if landmarks is None else landmarks
    example = {"image": np.asarray(image), "landmarks": np.asarray(points, np.float32)}
    cropped = preprocess.crop_to_box(example, preprocess.square_box(box, margin), out_size)
    if landmarks is None:
        del cropped["landmarks"]
    return cropped
