"""The differentiable core, in the data's order: theta -> geometry -> sampler -> visibility -> losses.

``theta`` (the parameter vector's layout), ``geometry`` (3DMM shape, Rodrigues,
projection, grid), ``sampler`` (MatConvNet-exact bilinear sampler), ``visibility``
(self-occlusion mask), ``losses`` and ``stn`` (the one theta -> texture chain).
Pure JAX functions; no Flax.
"""

from jax3dmmstn.core import geometry, losses, pose, sampler, stn, theta, visibility

__all__ = ["theta", "pose", "geometry", "sampler", "visibility", "losses", "stn"]
