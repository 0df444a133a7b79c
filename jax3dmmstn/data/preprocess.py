"""Cropping, resizing, flipping and pairing of examples (numpy, per example).

All functions take and return examples in the format of ``jax3dmmstn.data``
(see the package docstring): ``image`` [H, W, 3] (row 0 at the top, values in
0..255 as uint8 or float32), ``landmarks`` [L, 2] in the image frame (x from the
left, y from the bottom, pixels; ``jax3dmmstn.core.geometry.image_frame_to_pixels``
gives the pixel the sampler reads), ``landmark_visible`` [L] float32 in {0, 1},
and optional ``identity``, ``pose`` (yaw, pitch, roll degrees), ``theta``.

Geometry of the crop: pixel-centre coordinates (column, row, 0-based, y down) with
pixel c covering [c - 1/2, c + 1/2]. A crop box is a square in these continuous
coordinates; output pixel j covers [j, j + 1] / out * side of the box, so a
source point ``p`` goes to ``(p + 1/2 - box_start) * out / side - 1/2``. The image
is resampled with exactly this map (PIL's box resize, antialiased bilinear) and
the landmarks are mapped with it, so they stay on the same image content.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from jax3dmmstn.core import geometry, pose
from jax3dmmstn.facemodel.morphable_model import LANDMARK_FLIPS

Example = Dict[str, object]

# 0-based flip permutations (flipped landmark i = original landmark perm[i]), from
# the morphable-model module so that models and data agree.
FLIP_PERMUTATIONS = LANDMARK_FLIPS


def flip_permutation(scheme_or_count) -> np.ndarray:
    """The flip permutation for a scheme name ("aflw21", "ibug68") or a count (21, 68)."""
    by_count = {21: "aflw21", 68: "ibug68"}
    name = by_count.get(scheme_or_count, scheme_or_count)
    if name not in FLIP_PERMUTATIONS:
        raise ValueError(
            f"no flip permutation known for {scheme_or_count!r}; known schemes: "
            f"{sorted(FLIP_PERMUTATIONS)} (or pass the permutation explicitly)"
        )
    return FLIP_PERMUTATIONS[name]


def image_size(example: Example) -> Tuple[int, int]:
    """(H, W) of the example's image."""
    shape = np.shape(example["image"])
    return int(shape[0]), int(shape[1])


def landmarks_to_pixels(landmarks: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Image frame ``[L, 2]`` -> 0-based (column, row) pixel coordinates ``[L, 2]``."""
    return np.asarray(
        geometry.image_frame_to_pixels(np.asarray(landmarks, np.float32), tuple(size)), np.float32
    )


def pixels_to_landmarks(pixels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """0-based (column, row) pixel coordinates ``[L, 2]`` -> image frame ``[L, 2]``."""
    return np.asarray(
        geometry.pixels_to_image_frame(np.asarray(pixels, np.float32), tuple(size)), np.float32
    )


def landmark_box(example: Example) -> Tuple[float, float, float, float]:
    """Bounding box (col0, row0, col1, row1) of the visible landmarks, pixel coordinates.

    Raises:
      ValueError: if no landmark is visible (there is nothing to crop around).
    """
    visible = np.asarray(example["landmark_visible"]) > 0
    if not visible.any():
        raise ValueError("cannot crop around the landmarks: none is visible")
    pix = landmarks_to_pixels(example["landmarks"], image_size(example))[visible]
    return (
        float(pix[:, 0].min()),
        float(pix[:, 1].min()),
        float(pix[:, 0].max()),
        float(pix[:, 1].max()),
    )


def square_box(
    box: Sequence[float], margin: float, shift: Sequence[float] = (0.0, 0.0), zoom: float = 1.0
) -> Tuple[float, float, float]:
    """A square around ``box``: (col_start, row_start, side) in pixel-edge units.

    The side is ``max(box width, box height) * (1 + 2 margin) / zoom``; ``shift``
    moves the centre by that fraction of the side (augmentation jitter).
    """
    if margin < -0.49:
        raise ValueError(f"margin must be > -0.49, got {margin}")
    col0, row0, col1, row1 = box
    side = max(col1 - col0, row1 - row0, 1.0) * (1.0 + 2.0 * margin) / zoom
    centre_col = 0.5 * (col0 + col1) + shift[0] * side
    centre_row = 0.5 * (row0 + row1) + shift[1] * side
    # Pixel c covers [c - 1/2, c + 1/2]: in edge units (c + 1/2) the box starts at
    # centre + 1/2 - side/2.
    return centre_col + 0.5 - side / 2, centre_row + 0.5 - side / 2, side


def _resize_channel_stack(
    image: np.ndarray, box: Tuple[float, float, float], out_size: int, fill: float
) -> np.ndarray:
    """Resamples the square ``box`` (edge units) of ``image`` [H, W, C] to out x out."""
    height, width = image.shape[:2]
    col_start, row_start, side = box
    # PIL's box must lie inside the image: pad with `fill` where it does not.
    pad_left = max(0, int(np.ceil(-col_start)))
    pad_top = max(0, int(np.ceil(-row_start)))
    pad_right = max(0, int(np.ceil(col_start + side - width)))
    pad_bottom = max(0, int(np.ceil(row_start + side - height)))
    if pad_left or pad_top or pad_right or pad_bottom:
        image = np.pad(
            image, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), constant_values=fill
        )
    pil_box = (
        col_start + pad_left,
        row_start + pad_top,
        col_start + pad_left + side,
        row_start + pad_top + side,
    )
    size = (out_size, out_size)
    if image.dtype == np.uint8 and image.shape[2] == 3:
        out = Image.fromarray(image, "RGB").resize(size, Image.BILINEAR, box=pil_box)
        return np.asarray(out)
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F").resize(
                size, Image.BILINEAR, box=pil_box
            )
        )
        for c in range(image.shape[2])
    ]
    return np.stack(channels, -1).astype(image.dtype)


def crop_to_box(
    example: Example, box: Tuple[float, float, float], out_size: int, fill: float = 0.0
) -> Example:
    """Crops the square ``box`` = (col_start, row_start, side) and resizes to out_size.

    Landmarks are mapped with the same affine map as the image; ``theta`` (valid
    only for the original framing) is dropped. Everything else is copied.

    Returns:
      A new example with image ``[out_size, out_size, 3]``.
    """
    col_start, row_start, side = box
    if not side > 0:
        raise ValueError(f"crop side must be positive, got {side}")
    size = image_size(example)
    image = _resize_channel_stack(np.asarray(example["image"]), box, out_size, fill)
    pix = landmarks_to_pixels(example["landmarks"], size)
    factor = out_size / side
    new_pix = np.stack(
        [
            (pix[:, 0] + 0.5 - col_start) * factor - 0.5,
            (pix[:, 1] + 0.5 - row_start) * factor - 0.5,
        ],
        -1,
    )
    out = {k: v for k, v in example.items() if k != "theta"}
    out["image"] = image
    out["landmarks"] = pixels_to_landmarks(new_pix, (out_size, out_size))
    return out


def uncrop_pixels(points: np.ndarray, start: np.ndarray, side: np.ndarray, size: int) -> np.ndarray:
    """Pixels of a crop -> pixels of the image it was cut from (``crop_to_box``'s map inverted).

    Args:
      points: ``[..., L, 2]`` 0-based (col, row) pixels of the ``size`` x ``size`` crop.
      start: ``[..., 2]`` where the cropped square starts in the image (pixel-edge units:
        ``crop_to_box``'s (col_start, row_start)); side: ``[...]`` its side (image pixels).
    Returns:
      ``[..., L, 2]`` float64 0-based pixels of the image.
    """
    scale = np.asarray(side, np.float64)[..., None, None] / size
    start = np.asarray(start, np.float64)[..., None, :]
    return (np.asarray(points, np.float64) + 0.5) * scale + start - 0.5


def crop_around_landmarks(
    example: Example,
    out_size: int = 224,
    margin: float = 0.25,
    shift: Sequence[float] = (0.0, 0.0),
    zoom: float = 1.0,
    fill: float = 0.0,
) -> Example:
    """Crops a square around the visible landmarks' box (plus margin), resizes to out_size.

    Args:
      example: an example (any image size).
      out_size: side of the output image.
      margin: fraction of the box side added on each side.
      shift: (dx, dy) shift of the crop centre, fraction of the crop side (jitter).
      zoom: > 1 crops tighter (the face gets bigger).
      fill: value of pixels outside the source image.
    Returns:
      The cropped example, image ``[out_size, out_size, 3]``.
    """
    box = square_box(landmark_box(example), margin, shift, zoom)
    return crop_to_box(example, box, out_size, fill)


def flip_landmarks(
    landmarks: np.ndarray, visible: np.ndarray, width: int, permutation: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Landmarks of the horizontally flipped image (x -> W - x, then permuted).

    Column c of the flipped image is column W - 1 - c of the original; in the
    image frame (column = x (W - 1)/W) that is exactly x -> W - x.

    Args:
      landmarks: ``[..., L, 2]`` image frame.
      visible: ``[..., L]``.
      width: W.
      permutation: ``[L]`` 0-based, flipped landmark i = original landmark perm[i].
    Returns:
      (landmarks ``[..., L, 2]``, visible ``[..., L]``).
    """
    landmarks = np.asarray(landmarks, np.float32)
    permutation = np.asarray(permutation)
    if permutation.shape != landmarks.shape[-2:-1]:
        raise ValueError(
            f"flip permutation has {permutation.shape} entries for {landmarks.shape[-2]} landmarks"
        )
    flipped = np.stack([width - landmarks[..., 0], landmarks[..., 1]], -1)
    return (flipped[..., permutation, :], np.asarray(visible)[..., permutation])


def flip_horizontal(example: Example, permutation: Optional[np.ndarray] = None) -> Example:
    """Mirrors an example left-right.

    ``theta`` is dropped (the mirrored face has other shape weights unless the model
    is symmetric); ``pose`` becomes (-yaw, pitch, -roll).

    Args:
      example: an example.
      permutation: ``[L]`` flip permutation; default from the landmark count
        (21: AFLW, 68: iBUG).
    """
    landmarks = np.asarray(example["landmarks"])
    if permutation is None:
        permutation = flip_permutation(landmarks.shape[0])
    out = {k: v for k, v in example.items() if k != "theta"}
    out["image"] = np.ascontiguousarray(np.asarray(example["image"])[:, ::-1])
    out["landmarks"], out["landmark_visible"] = flip_landmarks(
        landmarks, example["landmark_visible"], image_size(example)[1], permutation
    )
    if "pose" in example:
        out["pose"] = pose.flip_pose(example["pose"])
    return out


def flip_batch(
    batch: Dict[str, np.ndarray], permutation: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """``flip_horizontal`` for a collated batch (leading axis B)."""
    landmarks = np.asarray(batch["landmarks"])
    if permutation is None:
        permutation = flip_permutation(landmarks.shape[1])
    out = {k: v for k, v in batch.items() if k != "theta"}
    out["image"] = np.ascontiguousarray(np.asarray(batch["image"])[:, :, ::-1])
    out["landmarks"], out["landmark_visible"] = flip_landmarks(
        landmarks, batch["landmark_visible"], np.shape(batch["image"])[2], permutation
    )
    if "pose" in batch:
        out["pose"] = pose.flip_pose(batch["pose"])
    return out


def with_mirrors(
    batch: Dict[str, np.ndarray], permutation: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """The original's siamese pairing: each image followed by its mirror.

    Rows (2i, 2i + 1) of the result are example i and its horizontal flip, so the
    siamese loss compares consecutive rows. Keys the flip cannot keep (``theta``)
    are dropped from both members so that the batch stays rectangular.

    Args:
      batch: collated batch with leading axis B.
    Returns:
      batch with leading axis 2B.
    """
    flipped = flip_batch(batch, permutation)
    out = {}
    for key, value in flipped.items():
        value = np.asarray(value)
        pair = np.stack([np.asarray(batch[key]), value], 1)
        out[key] = pair.reshape((2 * value.shape[0],) + value.shape[1:])
    return out


def identity_pairs(identities: np.ndarray, num_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Random pairs of different examples that share an identity.

    Args:
      identities: ``[N]`` int identity of each example (negative: unknown).
      num_pairs: how many pairs to draw.
      rng: numpy Generator (pass a seeded one for a deterministic order).
    Returns:
      ``[num_pairs, 2]`` example indices (i, j), i != j, same identity.
    Raises:
      ValueError: if no identity has two or more examples.
    """
    identities = np.asarray(identities)
    groups = [
        np.flatnonzero(identities == ident) for ident in np.unique(identities[identities >= 0])
    ]
    groups = [g for g in groups if g.size >= 2]
    if not groups:
        raise ValueError("no identity has two or more examples: cannot form same-identity pairs")
    # Weight identities by their number of pairs so each pair is equally likely.
    sizes = np.array([g.size for g in groups], np.float64)
    weights = sizes * (sizes - 1)
    chosen = rng.choice(len(groups), size=num_pairs, p=weights / weights.sum())
    pairs = np.empty((num_pairs, 2), np.int64)
    for k, g in enumerate(chosen):
        pairs[k] = rng.choice(groups[g], size=2, replace=False)
    return pairs


def random_jitter(
    example: Example,
    rng: np.random.Generator,
    max_shift: float = 0.05,
    zoom_range=(0.9, 1.1),
) -> Example:
    """Re-crop an already framed face (e.g. 3DDFA's crops) with random shift and zoom about
    the image centre, keeping its size: ``[S, S, 3] -> [S, S, 3]``.

    The shift is a fraction of the new side (uniform in +-max_shift per axis), the zoom
    log-uniform in ``zoom_range`` (> 1: the face gets bigger); outside pixels are 0.
    """
    height, width = image_size(example)
    if height != width:
        raise ValueError(f"random_jitter needs a square image, got {height} x {width}")
    shift = rng.uniform(-max_shift, max_shift, size=2)
    zoom = float(np.exp(rng.uniform(np.log(zoom_range[0]), np.log(zoom_range[1]))))
    side = width / zoom
    # In pixel-edge units the image spans [0, width]; its centre is width / 2.
    col_start = width / 2 + shift[0] * side - side / 2
    row_start = height / 2 + shift[1] * side - side / 2
    return crop_to_box(example, (col_start, row_start, side), width)


def random_augment(
    example: Example,
    rng: np.random.Generator,
    out_size: int = 224,
    margin: float = 0.25,
    max_shift: float = 0.05,
    zoom_range=(0.9, 1.1),
    flip_probability: float = 0.0,
    permutation: Optional[np.ndarray] = None,
) -> Example:
    """Crop with random shift and zoom, then an optional random flip."""
    shift = rng.uniform(-max_shift, max_shift, size=2)
    zoom = float(np.exp(rng.uniform(np.log(zoom_range[0]), np.log(zoom_range[1]))))
    out = crop_around_landmarks(example, out_size, margin, shift, zoom)
    if flip_probability > 0 and rng.uniform() < flip_probability:
        out = flip_horizontal(out, permutation)
    return out
