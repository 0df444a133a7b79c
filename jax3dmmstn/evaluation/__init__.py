"""Evaluation: metrics (landmark NME, pose and shape errors), running a model on held-out
data, pictures (snapshots, training curves), and evaluating a trained checkpoint.

Modules: ``metrics`` (numpy functions of host arrays), ``heldout`` (an STN on held-out
batches), ``plots`` (PNG snapshots and curves) and ``run`` (:func:`evaluate_checkpoint`,
which loads a checkpoint through :mod:`jax3dmmstn.training`; import it from
``jax3dmmstn.evaluation.run``, since training itself uses this package). The names below
are re-exported for ``evaluation.NAME`` callers. ``aflw2000`` scores AFLW2000-3D as 3DDFA
(NME-68, NME-21 by yaw bin) and the head-pose benchmarks (MAE on the +-99 degree images) do.
"""

from jax3dmmstn.evaluation import aflw2000
from jax3dmmstn.evaluation.heldout import evaluate, make_eval_fn, per_image_metrics
from jax3dmmstn.evaluation.metrics import (
    landmark_box_size,
    landmark_nme,
    pose_errors,
    rotation_to_yaw_pitch_roll,
    shape_error,
    summarise,
)
from jax3dmmstn.evaluation.plots import (
    save_curves,
    save_landmark_snapshot,
    save_snapshots,
    save_texture_snapshot,
)

__all__ = [
    "aflw2000",
    "evaluate",
    "landmark_box_size",
    "landmark_nme",
    "make_eval_fn",
    "per_image_metrics",
    "pose_errors",
    "rotation_to_yaw_pitch_roll",
    "save_curves",
    "save_landmark_snapshot",
    "save_snapshots",
    "save_texture_snapshot",
    "shape_error",
    "summarise",
]
