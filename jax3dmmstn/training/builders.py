"""What a run is made of, built from its config: the morphable model, the STN and its
initial parameters (VGG-Face import, data-dependent head init)."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import geometry
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.facemodel import morphable_model as mm_lib
from jax3dmmstn.facemodel.synthetic import synthetic_face_model
from jax3dmmstn.network import model as model_lib
from jax3dmmstn.network import vggface

PyTree = Any

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_morphable_model(config):
    """config.morphable_model: kind 'synthetic' | 'npz' | 'matconvnet' (+ path, ...), or
    'auto': 'synthetic' without a path, else by the path's extension (.npz, .mat)."""
    mm_config = config.morphable_model
    kind = mm_config.kind
    if kind == "auto":
        path = str(mm_config.get("path", "") or "")
        kind = {"": "synthetic", ".npz": "npz", ".mat": "matconvnet"}.get(
            os.path.splitext(path)[1].lower() if path else "", "unknown extension"
        )
        if kind == "unknown extension":
            raise ValueError(f"morphable_model.path {path!r}: expected a .mat or .npz file")
    if kind == "synthetic":
        return synthetic_face_model(
            resolution=int(mm_config.resolution),
            n_identity=int(mm_config.n_identity),
            n_expression=int(mm_config.n_expression),
            seed=int(mm_config.get("seed", 0)),
        )
    if kind == "npz":
        return mm_lib.MorphableModel.load(mm_config.path)
    if kind == "matconvnet":
        return mm_lib.load_matconvnet_model(
            mm_config.path,
            mm_config.get("landmarks_path") or None,
            aflw21=mm_config.get("aflw21", "original"),
        )
    raise ValueError(
        f"unknown morphable_model.kind {kind!r}; expected 'synthetic', 'npz' or 'matconvnet'"
    )


def build_model(config, morphable_model):
    """The Flax STN of ``config.model`` for ``config.data.image_size`` images."""
    m = config.model
    dtype = _DTYPES.get(m.get("dtype", "float32"))
    if dtype is None:
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {m.dtype!r}")
    input_size = m.get("localiser_input_size", None)
    return model_lib.build_stn(
        morphable_model,
        localiser=m.localiser,
        image_size=tuple(config.data.image_size),
        localiser_input_size=None if not input_size else tuple(input_size),
        landmarks=m.get("landmarks", "aflw21"),
        scale_parametrisation=m.get("scale_parametrisation", "matconvnet"),
        dtype=dtype,
        with_texture=bool(m.get("with_texture", True)),
        localiser_kwargs=dict(m.get("localiser_kwargs", {}) or {}),
    )


def init_params(model, config, rng) -> PyTree:
    """Initialise the STN parameters (and import VGG-Face weights when configured)."""
    height, width = config.data.image_size
    dummy = jnp.zeros((1, height, width, 3), jnp.float32)
    params = jax.jit(model.init)(rng, dummy)["params"]
    params = jax.device_get(params)
    path = config.model.get("vggface_path", "")
    if path:
        params = vggface.load_into_params(params, vggface.read_vggface(path))
    return params


def fit_scale_translation(model_points: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares s, t with s * model_points + t ~ target; [L, 2] each -> (s, t [2])."""
    model_points = np.asarray(model_points, np.float64)
    target = np.asarray(target, np.float64)
    centred_model = model_points - model_points.mean(axis=0)
    centred_target = target - target.mean(axis=0)
    scale = float(np.sum(centred_model * centred_target) / np.sum(centred_model**2))
    if not scale > 0:
        raise ValueError(
            "the mean training landmarks do not fit the model's landmarks with a "
            "positive scale (mirrored or wrong landmark set?)"
        )
    return scale, target.mean(axis=0) - scale * model_points.mean(axis=0)


def init_head_from_landmarks(
    params: PyTree,
    morphable_model,
    landmark_index: np.ndarray,
    landmarks: np.ndarray,
    visible: np.ndarray,
    parametrisation: str = "matconvnet",
) -> PyTree:
    """Data-dependent init of the theta head's t and logs biases.

    The original starts at t = image centre, s = 1 (logs = 0), right for 224 x 224 crops of
    BFM-sized faces in mm. For other data, this sets t and s to the similarity that maps the
    frontal mean face's landmarks onto the mean training landmarks [B, L, 2] (visible ones,
    image frame), so that training starts with faces of the right size in the right place.
    """
    visible = np.asarray(visible, np.float64)
    counts = visible.sum(axis=0)
    usable = counts > 0.5 * visible.shape[0]
    if usable.sum() < 2:
        raise ValueError("fewer than 2 landmarks are visible in most training images")
    weighted = (np.asarray(landmarks, np.float64) * visible[..., None]).sum(axis=0)
    mean_target = weighted / np.maximum(counts, 1)[:, None]
    model_xy = np.asarray(morphable_model.mean, np.float64)[np.asarray(landmark_index), :2]
    scale, translation = fit_scale_translation(model_xy[usable], mean_target[usable])
    logs = float(geometry.scale_to_log_scale(np.float32(scale), parametrisation))
    head = params["theta_head"]["dense"]
    bias = np.array(head["bias"], np.float32)
    bias[theta_lib.TRANSLATION] = translation
    bias[theta_lib.LOG_SCALE] = logs
    new = dict(params)
    new["theta_head"] = {"dense": dict(head, bias=bias)}
    return new


def init_head_from_data(params: PyTree, config, morphable_model, source) -> PyTree:
    """:func:`init_head_from_landmarks` on the first (up to) 512 examples of ``source``.

    source: a BatchSource (``load_batch(indices, positions)``) of the training data.
    """
    indices = np.arange(min(int(source.num_examples or 256), 512))
    sample = source.load_batch(indices, indices)
    landmark_set = config.model.get("landmarks", "aflw21")
    return init_head_from_landmarks(
        params,
        morphable_model,
        morphable_model.landmarks[landmark_set],
        sample["landmarks"],
        sample["landmark_visible"],
        config.model.get("scale_parametrisation", "matconvnet"),
    )
