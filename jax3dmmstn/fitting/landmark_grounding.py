"""Landmark vertices grounded on annotations: where annotators put a point, on a given model.

A model's landmark set (say the 21 AFLW points) names one vertex per point. When that vertex is
not where a dataset's annotators click, a network trained on the dataset cannot fit every point
at once and bends pose, scale and shape to compromise. This picks, per point, the vertex that
the *other* points predict best on annotated faces (leave-one-out):

1. for point k, fit theta to every face's visible points except k (``fit_model_landmarks``,
   identity and expression included, prior as given);
2. project every candidate vertex (those within ``radius_mm`` of the current one on the mean
   shape) with those thetas and score it by the mean distance to the annotation of k, divided
   by the face's landmark box (the NME's normaliser, so large faces do not dominate);
3. choose mirror pairs together (vertex v for k, the model's mirror of v for k's flip partner,
   minimising the sum of both scores), so the set stays left/right symmetric and a mirrored
   image's labels still name the mirrored vertices;

and repeats from the new set ``iterations`` times. Only annotations enter: no pose or 3D label.

Measured on AFLW with the original's model.mat (``tools/ground_aflw21.py``, README): the
grounded set fits the annotations better (leave-one-out NME 5.48 -> 4.64 % on other training
crops), yet a network trained on it predicts the 68 BFM points worse, since those follow the
BFM's landmark convention rather than AFLW's annotators'.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.evaluation import metrics
from jax3dmmstn.fitting.landmarks import fit_model_landmarks

# Faces with fewer visible points than this (after holding one out) are not fitted: too few
# points to pin pose, scale and shape.
MIN_FIT_POINTS = 8


class Grounding(NamedTuple):
    """Result of :func:`ground_landmarks`."""

    indices: np.ndarray  # [L] int32, the grounded vertices
    moved_mm: np.ndarray  # [L] distance from the starting vertex on the mean shape
    cost: np.ndarray  # [L] the chosen vertices' leave-one-out NME (fraction of the box)


def leave_one_out_thetas(model, landmark_set, landmarks, visible, point: int, prior_weight):
    """Theta fitted without ``point``, for the faces where it is visible and enough others are.

    landmarks [B, L, 2], visible [B, L]. Returns (faces [B] bool, theta [b, 6 + D])."""
    held = np.zeros_like(visible)
    held[:, point] = visible[:, point]
    faces = (held[:, point] > 0) & ((visible - held).sum(axis=1) >= MIN_FIT_POINTS)
    if not faces.any():
        raise ValueError(f"no face shows landmark {point} with {MIN_FIT_POINTS} others visible")
    fit = fit_model_landmarks(
        model, landmarks[faces], (visible - held)[faces], landmark_set, prior_weight=prior_weight
    )
    return faces, np.asarray(fit.theta)


def candidate_costs(model, theta, target, box, candidates, chunk: int = 500) -> np.ndarray:
    """Mean over faces of |projected candidate - target| / box.

    theta [b, 6 + D], target [b, 2], box [b], candidates [C] vertex indices. Returns [C]."""
    total = np.zeros(len(candidates))
    mean, basis = np.asarray(model.mean)[candidates], np.asarray(model.basis)[candidates]
    for start in range(0, len(theta), chunk):
        points = np.asarray(
            geometry.project_theta(theta[start : start + chunk], mean, basis).points2d
        )
        error = np.linalg.norm(points - target[start : start + chunk, None], axis=-1)
        total += (error / box[start : start + chunk, None]).sum(axis=0)
    return total / len(theta)


def ground_landmarks(
    model,
    landmark_set: str,
    landmarks: np.ndarray,
    visible: np.ndarray,
    prior_weight: float = 10.0,
    radius_mm: float = 25.0,
    iterations: int = 2,
) -> Grounding:
    """Re-chooses the vertices of ``model.landmarks[landmark_set]`` on annotated faces.

    landmarks [B, L, 2] image-frame points of the set, visible [B, L] in {0, 1}. The model's
    ``mirror`` and ``landmark_flip[landmark_set]`` keep the result symmetric (a self-paired
    point gets the vertex v minimising its score at v plus at mirror(v)).
    """
    landmarks = np.asarray(landmarks, np.float64)
    visible = (np.asarray(visible) > 0).astype(np.float64)
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2 or visible.shape != landmarks.shape[:2]:
        raise ValueError(
            f"landmarks must be [B, L, 2] with visible [B, L], got {landmarks.shape} and "
            f"{visible.shape}"
        )
    start = np.asarray(model.landmarks[landmark_set], np.int64)
    if landmarks.shape[1] != len(start):
        raise ValueError(
            f"{landmark_set!r} has {len(start)} points, the annotations {landmarks.shape[1]}"
        )
    flip = np.asarray(model.landmark_flip[landmark_set])
    mirror = np.asarray(model.mirror)
    vertices = np.asarray(model.mean, np.float64)
    box = metrics.landmark_box_size(landmarks, visible)
    indices, cost = start.copy(), np.zeros(len(start))
    for _ in range(iterations):
        current = model.with_landmarks(landmark_set, indices)
        scores = []  # per point: {vertex: leave-one-out cost}
        for k in range(len(indices)):
            faces, theta = leave_one_out_thetas(
                current, landmark_set, landmarks, visible, k, prior_weight
            )
            near = np.flatnonzero(
                np.linalg.norm(vertices - vertices[indices[k]], axis=1) < radius_mm
            )
            costs = candidate_costs(model, theta, landmarks[faces, k], box[faces], near)
            scores.append(dict(zip(near.tolist(), costs.tolist())))
        new = indices.copy()
        for k, partner in enumerate(flip):
            if partner < k:
                continue  # chosen with its partner
            pairs = [
                (c + scores[partner][int(mirror[v])], v)
                for v, c in scores[k].items()
                if int(mirror[v]) in scores[partner]
            ]
            if not pairs:
                raise ValueError(
                    f"landmark {k}: no candidate whose mirror is near landmark {partner}"
                )
            _, best = min(pairs)
            new[k], new[partner] = best, mirror[best]
            cost[k], cost[partner] = scores[k][best], scores[partner][int(mirror[best])]
        indices = new
    moved = np.linalg.norm(vertices[indices] - vertices[start], axis=1)
    return Grounding(indices=indices.astype(np.int32), moved_mm=moved, cost=cost)
