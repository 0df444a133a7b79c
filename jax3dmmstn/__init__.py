"""jax3dmmstn: 3D Morphable Models as Spatial Transformer Networks in JAX.

Modules: ``geometry`` (3DMM shape, Rodrigues, projection, grid), ``sampler``
(MatConvNet-exact bilinear sampler), ``visibility`` (self-occlusion mask),
``losses``, ``matconvnet`` (the original's layers in MATLAB layouts),
``morphable_model`` / ``synthetic_model`` / ``bfm`` (face models), ``data``,
``model`` (Flax STN), ``training``, ``evaluation``, ``fitting``, ``outputs``.
Heavier modules (``data``, ``model``, ``training``) are imported on use.
"""

from jax3dmmstn import matconvnet
from jax3dmmstn.core import geometry
from jax3dmmstn.core import losses
from jax3dmmstn.core import sampler
from jax3dmmstn.core import visibility
from jax3dmmstn.facemodel.bfm import build_bfm_model
from jax3dmmstn.core.geometry import axis_angle_to_matrix, project_theta
from jax3dmmstn.facemodel.morphable_model import MorphableModel, load_matconvnet_model, read_anl
from jax3dmmstn.core.sampler import bilinear_sample
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


__all__ = [
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
