"""theta: the STN's parameter vector, defined once.

theta ``[..., 6 + D]`` = (r[3], t[2], logs[1], alpha[D]), the original's layout:

* r: axis-angle rotation (radians), turned into R by Rodrigues' formula;
* t: 2D translation in the image frame (pixels, x from the left, y from the bottom);
* logs: log-scale (``s = 0.99 ** logs`` in the original's parametrisation);
* alpha: the D shape weights of the morphable model, in standard deviations.

Every other module reads and writes theta through these helpers; nothing else
slices it by hand. The helpers take numpy or JAX arrays with any leading shape
(``[6 + D]`` for one face, ``[B, 6 + D]`` for a batch) and return the same kind.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Column layout of theta's pose part.
ROTATION = slice(0, 3)
TRANSLATION = slice(3, 5)
LOG_SCALE = 5
N_POSE = 6
SHAPE = slice(N_POSE, None)

# The name of the part each pose column belongs to (alpha follows).
_POSE_PARTS = ("r", "r", "r", "t", "t", "logs")


class Theta(NamedTuple):
    """theta split into its parts: r ``[..., 3]``, t ``[..., 2]``, logs ``[...]``, alpha ``[..., D]``."""

    r: object
    t: object
    logs: object
    alpha: object


def size(n_components: int) -> int:
    """Length of theta for a morphable model with ``n_components`` shape components."""
    return N_POSE + int(n_components)


def n_components(theta) -> int:
    """D, the number of shape weights in theta ``[..., 6 + D]``."""
    return int(np.shape(theta)[-1]) - N_POSE


def check(theta, n_shape: int | None = None, batched: bool = True) -> None:
    """Raises ValueError unless theta is ``[B, 6 + D]`` (``[6 + D]`` when not batched).

    ``n_shape``, when given, is the D theta must carry (the morphable model's).
    """
    shape = tuple(np.shape(theta))
    rank = 2 if batched else 1
    want = f"[{'B, ' if batched else ''}{'6 + D' if n_shape is None else size(n_shape)}]"
    if len(shape) != rank or shape[-1] < N_POSE:
        raise ValueError(f"theta must be {want}, got shape {shape}")
    if n_shape is not None and shape[-1] != size(n_shape):
        raise ValueError(
            f"theta must be {want} for a {n_shape}-component model, got shape {shape}"
        )


def split(theta) -> Theta:
    """theta ``[..., 6 + D]`` -> ``Theta(r [..., 3], t [..., 2], logs [...], alpha [..., D])``."""
    if np.shape(theta)[-1] < N_POSE:
        raise ValueError(f"theta must be [..., 6 + D], got shape {np.shape(theta)}")
    return Theta(
        theta[..., ROTATION], theta[..., TRANSLATION], theta[..., LOG_SCALE], theta[..., SHAPE]
    )


def merge(r, t, logs, alpha):
    """Inverse of ``split``: ``[..., 3]``, ``[..., 2]``, ``[...]``, ``[..., D]`` -> ``[..., 6 + D]``.

    Returns a JAX array when any part is one, else a numpy array.
    """
    parts = (r, t, logs, alpha)
    xp = np if all(isinstance(p, (np.ndarray, np.generic, float, int)) for p in parts) else None
    if xp is None:
        import jax.numpy as xp  # noqa: PLC0415  (only when given JAX arrays)
    logs = xp.asarray(logs)
    return xp.concatenate(
        [xp.asarray(r), xp.asarray(t), logs[..., None], xp.asarray(alpha)], axis=-1
    )


def rotation(theta):
    """r ``[..., 3]``: the axis-angle part."""
    return theta[..., ROTATION]


def translation(theta):
    """t ``[..., 2]``: the image-frame translation."""
    return theta[..., TRANSLATION]


def log_scale(theta):
    """logs ``[...]``."""
    return theta[..., LOG_SCALE]


def shape_weights(theta):
    """alpha ``[..., D]``: the morphable model's shape weights."""
    return theta[..., SHAPE]


def part_names(n_shape: int) -> tuple[str, ...]:
    """The part each of theta's ``6 + D`` columns belongs to: 'r', 't', 'logs' or 'alpha'."""
    return _POSE_PARTS + ("alpha",) * int(n_shape)

