"""jax3dmmstn: 3D Morphable Models as Spatial Transformer Networks in JAX.

Modules: ``geometry`` (3DMM shape, Rodrigues, projection, grid), ``sampler``
(MatConvNet-exact bilinear sampler), ``visibility`` (self-occlusion mask),
``losses``, ``matconvnet`` (the original's layers in MATLAB layouts).
"""

from jax3dmmstn import geometry, losses, matconvnet, sampler, visibility
from jax3dmmstn.geometry import axis_angle_to_matrix, project_theta
from jax3dmmstn.sampler import bilinear_sample

__version__ = "0.1.0"
