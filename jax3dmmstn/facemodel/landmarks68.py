"""68 iBUG landmarks grounded in real anatomy: the BFM's 68-point mean and its alignment to a model.

The shipped mean (``ibug68_mean_3ddfa.npz``, array ``mean`` [68, 3] float32) is the Basel Face
Model's mean shape at the 68 iBUG landmark vertices, taken from 3DDFA's public landmark basis:
file ``c++/weights/u_base.txt`` (204 values, x, y, z interleaved per point) of the repository
cleardusk/3DDFA (MIT licence, Copyright (c) 2018 Jianzhu Guo). It was divided by 1000 (BFM units
are micrometres; our models are in mm) and centred on its centroid; the BFM's axes are already
ours (x to the image right for a frontal face, y up, z towards the viewer). Nothing else from
3DDFA is shipped. AFLW2000-3D's and 300W-LP's `pt3d_68` labels are projections of these BFM
vertices of fitted faces, so a model whose "ibug68" vertices sit where this mean puts them
reads the labels' pose on their terms.

``ground_ibug68(model)`` aligns the mean to a model with a similarity transform (Umeyama), first
on the model's existing semantic landmarks ("aflw21": the points 3DDFA's benchmark_aflw.py
shares between the 68 and the 21 AFLW points; or an existing "ibug68"), then iterated with
nearest-vertex correspondences on the inner face, and picks per point the nearest model vertex.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from jax3dmmstn.facemodel.morphable_model import AFLW21_FLIP, IBUG68_FLIP

_MEAN_FILE = Path(__file__).with_name("ibug68_mean_3ddfa.npz")

# 0-based 68-point indices averaged for each of the 21 AFLW points (3DDFA's benchmark_aflw.py
# ind_68to21, made 0-based), in the AFLW order of the "aflw21" sets.
IBUG68_TO_AFLW21 = (
    (17,), (19,), (21,), (22,), (24,), (26,),  # eyebrows, left to right
    (36,), (36, 37, 38, 39, 40, 41), (39,), (42,), (42, 43, 44, 45, 46, 47), (45,),  # eyes
    (2,), (31,), (30,), (35,), (14,),  # left ear, nose, right ear
    (48,), (60, 61, 62, 63, 64, 65, 66, 67), (54,), (8,),  # mouth, chin
)  # fmt: skip
# The AFLW ear lobes are not jaw-contour points 2 and 14 on every model (3DDFA's mapping is an
# approximation), so the initial alignment leaves them out.
_AFLW21_ANCHORS = tuple(i for i in range(21) if i not in (12, 16))
INNER_FACE = np.arange(17, 68)  # brows, nose, eyes, mouth: the contour (0-16) is left out


@lru_cache(maxsize=1)
def _cached_mean() -> np.ndarray:
    with np.load(_MEAN_FILE) as data:
        mean = np.asarray(data["mean"], np.float64)
    mean.setflags(write=False)
    return mean


def ibug68_mean() -> np.ndarray:
    """The BFM mean at the 68 iBUG landmark vertices, mm, centred. Returns [68, 3] float64 (a copy)."""
    return _cached_mean().copy()


def aflw21_from_ibug68(points68: np.ndarray) -> np.ndarray:
    """The 21 AFLW points of 68 iBUG points (3DDFA's mapping: group means). [68, C] -> [21, C]."""
    points68 = np.asarray(points68, np.float64)
    return np.stack([points68[list(group)].mean(axis=0) for group in IBUG68_TO_AFLW21])


def umeyama(
    source: np.ndarray,
    target: np.ndarray,
    weights: np.ndarray | None = None,
    with_rotation: bool = True,
):
    """Least-squares similarity target ~ scale * source @ R.T + t (Umeyama 1991).

    source, target: [L, 3]; weights: [L] >= 0 or None; with_rotation=False fits scale and
    translation only (R = I). Returns (scale, R [3, 3] proper, t [3]).
    """
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s0, d0 = src - mu_s, dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    if not with_rotation:
        scale = float(np.trace(cov) / (w @ (s0**2).sum(axis=1)))
        return scale, np.eye(3), mu_d - scale * mu_s
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    sign[2] = np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0  # no reflections
    rotation = (u * sign) @ vt
    scale = float((sig * sign).sum() / (w @ (s0**2).sum(axis=1)))
    return scale, rotation, mu_d - scale * rotation @ mu_s


def apply_similarity(points: np.ndarray, scale: float, rotation: np.ndarray, t: np.ndarray):
    """scale * points @ R.T + t. [L, 3] -> [L, 3]."""
    return scale * np.asarray(points, np.float64) @ np.asarray(rotation).T + t


def _initial_correspondence(model, anchor_set: str):
    """(indices into the 68 mean's derived points, model points) for the first alignment."""
    mean68 = _cached_mean()
    vertices = np.asarray(model.mean, np.float64)
    if anchor_set == "aflw21":
        keep = list(_AFLW21_ANCHORS)
        return aflw21_from_ibug68(mean68)[keep], vertices[model.landmarks["aflw21"][keep]]
    if anchor_set == "ibug68":
        return mean68[INNER_FACE], vertices[model.landmarks["ibug68"][INNER_FACE]]
    raise ValueError(f"anchor_set must be 'aflw21' or 'ibug68', got {anchor_set!r}")


def align_ibug68_mean(
    model, anchor_set: str = "aflw21", iterations: int = 10, with_rotation: bool = False
) -> np.ndarray:
    """The 68 mean placed on the model by a similarity transform. Returns [68, 3] float64 (mm).

    The first transform maps the mean's points on the model's `anchor_set` landmarks; then
    `iterations` rounds re-fit it to the nearest model vertices of the inner-face points,
    down-weighting points farther than twice the median distance (surfaces that disagree).
    with_rotation: by default only scale and translation are fitted, because the model frame
    is the labels' frame (x right, y up, z to the viewer): a rotation here would become a
    constant pose bias of every fit (the uncalibrated synthetic face's anatomy is pitched 5.5
    deg against the BFM's).
    """
    if anchor_set not in model.landmarks:
        raise ValueError(f"the model has no {anchor_set!r} landmarks to anchor the alignment")
    source, target = _initial_correspondence(model, anchor_set)
    transform = umeyama(source, target, with_rotation=with_rotation)
    tree = cKDTree(np.asarray(model.mean, np.float64))
    mean68 = _cached_mean()
    for _ in range(iterations):
        placed = apply_similarity(mean68[INNER_FACE], *transform)
        dist, nearest = tree.query(placed)
        weights = 1.0 / (1.0 + (dist / (2.0 * np.median(dist) + 1e-9)) ** 2)  # Cauchy-like
        transform = umeyama(mean68[INNER_FACE], model.mean[nearest], weights, with_rotation)
    return apply_similarity(mean68, *transform)


def symmetry_plane(vertices: np.ndarray, mirror: np.ndarray):
    """The plane n . x = d that the mirror map reflects across (least squares). Returns (n [3], d)."""
    v = np.asarray(vertices, np.float64)
    diff = v - v[mirror]
    normal = np.linalg.svd(diff, full_matrices=False)[2][0]  # the dominant direction of p - p'
    if normal[0] < 0:
        normal = -normal
    return normal, float(((v + v[mirror]) / 2.0 @ normal).mean())


def symmetrize_points68(points: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """Average each of 68 points with the reflection of its flip partner across n . x = d. [68, 3]."""
    points = np.asarray(points, np.float64)
    partner = points[IBUG68_FLIP]
    reflected = partner - 2.0 * ((partner @ normal) - offset)[:, None] * normal
    return 0.5 * (points + reflected)


def is_symmetric(model, tolerance_mm: float = 1e-3) -> bool:
    """Whether the model's mean is its own mirror image (the synthetic face is; BFM grids are not)."""
    normal, offset = symmetry_plane(model.mean, model.mirror)
    v = np.asarray(model.mean, np.float64)
    partner = v[model.mirror]
    reflected = partner - 2.0 * ((partner @ normal) - offset)[:, None] * normal
    return bool(np.abs(reflected - v).max() <= tolerance_mm)


def nearest_vertices(vertices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The nearest vertex of each point. vertices [N, 3], points [L, 3] -> [L] int32."""
    return cKDTree(np.asarray(vertices, np.float64)).query(np.asarray(points))[1].astype(np.int32)


def symmetric_nearest(vertices: np.ndarray, mirror: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Nearest vertices of 68 symmetric points, with right-hand points the mirror images of their
    left partners (so the set is exactly symmetric). Returns [68] int32."""
    idx = nearest_vertices(vertices, points)
    partner = IBUG68_FLIP
    # iBUG's "left" half (jaw 0-7, brows 17-21, eye 36-41, ...) is the image left: lower x side
    # for a frontal face; the mirror decides the other half.
    normal, offset = symmetry_plane(vertices, mirror)
    image_right = (np.asarray(points) @ normal - offset) > 0
    paired = partner != np.arange(68)
    take = paired & image_right
    idx[take] = mirror[idx[partner[take]]]
    return idx


def ground_ibug68(model, anchor_set: str = "aflw21", symmetric: bool | None = None) -> np.ndarray:
    """68 iBUG landmark vertices of a model, grounded on the BFM's 68-point mean.

    Aligns the mean to the model (`align_ibug68_mean`) and takes the nearest model vertex of each
    point (contour points included: the labels are 3D points on the fitted surface).
    symmetric: make the set exactly left/right symmetric under model.mirror (default: when the
    model's mean is itself symmetric). Returns [68] int32 0-based vertex indices.
    """
    placed = align_ibug68_mean(model, anchor_set)
    if symmetric is None:
        symmetric = is_symmetric(model)
    if not symmetric:
        return nearest_vertices(model.mean, placed)
    normal, offset = symmetry_plane(model.mean, model.mirror)
    placed = symmetrize_points68(placed, normal, offset)
    return symmetric_nearest(model.mean, model.mirror, placed)


def aflw21_vertices_from_ibug68(model) -> np.ndarray:
    """The 21 AFLW vertices that 3DDFA's 68 -> 21 mapping (``IBUG68_TO_AFLW21``, the AFLW
    protocol's) gives on a model's "ibug68" set: per AFLW point the vertex nearest to the mean
    shape's point (group means for the eye and mouth centres). The image-right member of each
    mirror pair is the model's mirror of the image-left one, so the set stays symmetric.
    Returns [21] int32 vertex indices."""
    vertices = np.asarray(model.mean, np.float64)
    indices = nearest_vertices(vertices, aflw21_from_ibug68(vertices[model.landmarks["ibug68"]]))
    mirror = np.asarray(model.mirror)
    for k, partner in enumerate(AFLW21_FLIP):
        if partner > k:  # AFLW numbers each pair image-left first
            indices[partner] = mirror[indices[k]]
    return indices


def with_grounded_ibug68(model):
    """The model with an "ibug68" set grounded by `ground_ibug68`, when it has none yet and has
    the "aflw21" set to anchor the alignment; otherwise the model unchanged."""
    import dataclasses

    if "ibug68" in model.landmarks or "aflw21" not in model.landmarks:
        return model
    grounded = ground_ibug68(model, anchor_set="aflw21")
    return dataclasses.replace(
        model,
        landmarks={**model.landmarks, "ibug68": grounded},
        landmark_flip={**model.landmark_flip, "ibug68": IBUG68_FLIP},
    )
