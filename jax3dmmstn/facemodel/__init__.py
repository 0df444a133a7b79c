"""Morphable models: the container, the built-in synthetic face, the BFM builder, the original's files.

``morphable_model`` (``MorphableModel``, the original's model.mat and .anl readers, UV-grid
helpers), ``synthetic`` (the built-in face model), ``bfm`` (building a grid model from the
Basel Face Model), ``prepare`` (the ``prepare-model`` command).
"""

from jax3dmmstn.facemodel.bfm import build_bfm_model
from jax3dmmstn.facemodel.morphable_model import MorphableModel, load_matconvnet_model, read_anl
from jax3dmmstn.facemodel.synthetic import synthetic_face_model

__all__ = [
    "MorphableModel",
    "load_matconvnet_model",
    "read_anl",
    "synthetic_face_model",
    "build_bfm_model",
]
