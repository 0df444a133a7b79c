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

import jax
import jax.numpy as jnp
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


def _check_length(theta) -> None:
    # Shapes are static, so this costs nothing under jit and catches a too-short
    # theta before its slices silently come out short.
    if np.ndim(theta) < 1 or np.shape(theta)[-1] < N_POSE:
        raise ValueError(f"theta must be [..., 6 + D], got shape {np.shape(theta)}")


def n_components(theta) -> int:
    """D, the number of shape weights in theta ``[..., 6 + D]``."""
    _check_length(theta)
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
        raise ValueError(f"theta must be {want} for a {n_shape}-component model, got shape {shape}")


def split(theta) -> Theta:
    """theta ``[..., 6 + D]`` -> ``Theta(r [..., 3], t [..., 2], logs [...], alpha [..., D])``."""
    _check_length(theta)
    return Theta(
        theta[..., ROTATION], theta[..., TRANSLATION], theta[..., LOG_SCALE], theta[..., SHAPE]
    )


def merge(r, t, logs, alpha):
    """Inverse of ``split``: ``[..., 3]``, ``[..., 2]``, ``[...]``, ``[..., D]`` -> ``[..., 6 + D]``.

    The parts' leading shapes broadcast (e.g. one pose for a batch of alphas).
    Returns a JAX array when any part is one (tracers included), else a numpy array
    of the parts' common dtype (Python scalars do not widen it).
    """
    parts = (r, t, logs, alpha)
    if any(isinstance(p, jax.Array) for p in parts):
        xp = jnp
        r, t, logs, alpha = (jnp.asarray(p) for p in parts)
    else:
        xp = np
        dtype = np.result_type(
            *(p if isinstance(p, (int, float)) else np.asarray(p) for p in parts)
        )
        r, t, logs, alpha = (np.asarray(p, dtype) for p in parts)
    for name, part, width in (("r", r, 3), ("t", t, 2), ("alpha", alpha, None)):
        if part.ndim < 1 or (width is not None and part.shape[-1] != width):
            raise ValueError(f"{name} must be [..., {width or 'D'}], got shape {part.shape}")
    try:
        lead = np.broadcast_shapes(r.shape[:-1], t.shape[:-1], logs.shape, alpha.shape[:-1])
    except ValueError:
        raise ValueError(
            f"the leading shapes of r {r.shape}, t {t.shape}, logs {logs.shape} and "
            f"alpha {alpha.shape} do not broadcast"
        ) from None
    return xp.concatenate(
        [
            xp.broadcast_to(r, lead + (3,)),
            xp.broadcast_to(t, lead + (2,)),
            xp.broadcast_to(logs, lead)[..., None],
            xp.broadcast_to(alpha, lead + alpha.shape[-1:]),
        ],
        axis=-1,
    )


def rotation(theta):
    """r ``[..., 3]``: the axis-angle part."""
    _check_length(theta)
    return theta[..., ROTATION]


def translation(theta):
    """t ``[..., 2]``: the image-frame translation."""
    _check_length(theta)
    return theta[..., TRANSLATION]


def log_scale(theta):
    """logs ``[...]``."""
    _check_length(theta)
    return theta[..., LOG_SCALE]


def shape_weights(theta):
    """alpha ``[..., D]``: the morphable model's shape weights."""
    _check_length(theta)
    return theta[..., SHAPE]


def part_names(n_shape: int) -> tuple[str, ...]:
    """The part each of theta's ``6 + D`` columns belongs to: 'r', 't', 'logs' or 'alpha'."""
    return _POSE_PARTS + ("alpha",) * int(n_shape)
