"""Fitting theta to one photo at a time: landmarks (closed form + Levenberg-Marquardt), texture refinement.

``landmarks`` (``fit_landmarks``, ``fit_model_landmarks``, the original demo's
gradient descent), ``texture`` (``refine_with_texture``: the symmetry / siamese terms),
``cli`` (the ``fit`` and ``predict`` commands).
"""

from jax3dmmstn.fitting.landmarks import (
    FitResult,
    OriginalFitResult,
    describe_fit,
    fit_landmarks,
    fit_landmarks_original,
    fit_model_landmarks,
    initial_theta,
    landmark_rmse,
    landmark_shape_model,
    original_initial_theta,
    project_landmarks,
    rotation_angle_error,
)
from jax3dmmstn.fitting.texture import TextureLossWeights, refine_with_texture, texture_objective

__all__ = [
    "FitResult",
    "OriginalFitResult",
    "describe_fit",
    "fit_landmarks",
    "fit_landmarks_original",
    "fit_model_landmarks",
    "initial_theta",
    "landmark_rmse",
    "landmark_shape_model",
    "original_initial_theta",
    "project_landmarks",
    "rotation_angle_error",
    "TextureLossWeights",
    "refine_with_texture",
    "texture_objective",
]
