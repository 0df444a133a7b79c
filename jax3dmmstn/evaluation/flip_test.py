"""Flip testing: a prediction averaged with the mirrored image's prediction, mirrored back.

Face alignment's usual test-time augmentation. The network also reads each image flipped
left-right; its landmarks are mapped back (x -> W - x in the image frame, the set's left and
right points swapped by its flip permutation) and its rotation is mirrored back (F R F with F =
diag(-1, 1, 1): a face seen in a mirror has its rotation conjugated by the model frame's x
mirror, as ``pose.flip_pose`` negates yaw and roll). The points are averaged, the rotations by
their chordal mean (the rotation nearest to the mean matrix). Everything else (theta, shape,
texture) stays the plain pass's. The training's siamese pairs are exactly such mirrors, so the
two passes disagree only where the network is unsure.
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray

_MIRROR_X = jnp.array([-1.0, 1.0, 1.0])


def unmirror_points(points: Array, width: float, permutation) -> Array:
    """Points predicted on a mirrored image, in the original image's frame and numbering.

    points [B, L, 2] (image frame, x from the left); permutation [L]. Returns [B, L, 2]."""
    points = points[:, jnp.asarray(permutation)]
    return jnp.stack([width - points[..., 0], points[..., 1]], axis=-1)


def unmirror_rotation(rotation: Array) -> Array:
    """F R F, F = diag(-1, 1, 1): a mirrored face's rotation mirrored back. [B, 3, 3]."""
    return rotation * _MIRROR_X[:, None] * _MIRROR_X[None, :]


def chordal_mean(a: Array, b: Array) -> Array:
    """The rotation nearest (Frobenius) to (a + b) / 2: U V^T of its SVD, det +1. [B, 3, 3]."""
    u, _, vt = jnp.linalg.svd(0.5 * (a + b))
    sign = jnp.sign(jnp.linalg.det(u @ vt))
    u = u.at[:, :, 2].multiply(sign[:, None])
    return u @ vt


def flip_averaged(points, rotation, mirrored_points, mirrored_rotation, width, permutation):
    """(points [B, L, 2], rotation [B, 3, 3]) averaged with the mirrored image's (the same
    shapes, predicted on images[:, :, ::-1]) mapped back; width: the images' W."""
    back = unmirror_points(mirrored_points, width, permutation)
    return 0.5 * (points + back), chordal_mean(rotation, unmirror_rotation(mirrored_rotation))
