"""jax3dmmstn: 3D Morphable Models as Spatial Transformer Networks in JAX.

Folders follow the data's path: ``core`` (theta's layout, geometry, sampler,
visibility, losses, the STN chain), ``facemodel`` (morphable models), ``data``
(readers, renderer, batching), ``network`` (localisers, the Flax STN), ``training``,
``evaluation``, ``fitting``, ``outputs``, ``matconvnet`` (the original's layers in
MATLAB layouts), ``configs`` and ``cli`` (the ``jax3dmmstn`` command).
The core modules are importable from the top (``from jax3dmmstn import geometry``);
the heavier folders (``data``, ``network``, ``training``) are imported on use.
"""

from jax3dmmstn import matconvnet
from jax3dmmstn.core import geometry, losses, pose, sampler, theta, visibility
from jax3dmmstn.core.geometry import axis_angle_to_matrix, project_theta
from jax3dmmstn.core.sampler import bilinear_sample
from jax3dmmstn.facemodel import (
    MorphableModel,
    build_bfm_model,
    load_matconvnet_model,
    read_anl,
    synthetic_face_model,
)

__all__ = [
    "theta",
    "pose",
    "geometry",
    "losses",
    "matconvnet",
    "sampler",
    "visibility",
    "axis_angle_to_matrix",
    "project_theta",
    "bilinear_sample",
    "MorphableModel",
    "load_matconvnet_model",
    "read_anl",
    "synthetic_face_model",
    "build_bfm_model",
]

__version__ = "0.1.0"
