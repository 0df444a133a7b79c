"""A trained STN on AFLW2000-3D through 3DDFA's crops: during training and after it.

The network reads 3DDFA's 120 x 120 crops of the 2,000 images (``AFLW_GT_crop/``, the
same framing as the AFLW training faces of the ``aflw`` config). Its 68 points are the
morphable model's 'ibug68' vertices projected by the predicted theta, mapped back to the
450 x 450 image through each crop's roi box; the pose is ``matrix_to_pose`` of the
predicted R (a crop scales and shifts, so R is unchanged). The labels come from the
AFLW2000-3D folder's ``.mat`` files (``pt3d_68``, ``pt2d``, ``Pose_Para``); the protocols
(NME-68, NME-21, the +-99 degree pose MAE, yaw bins) are :mod:`evaluation.aflw2000`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import pose
from jax3dmmstn.data import aflw_crops, preprocess
from jax3dmmstn.evaluation import aflw2000, flip_test
from jax3dmmstn.facemodel.morphable_model import IBUG68_FLIP

PyTree = Any
PREFIX = "aflw2000_"


class TestSet(NamedTuple):
    """AFLW2000-3D as the network sees it (leading axis B, the labels' sorted order)."""

    images: np.ndarray  # [B, S, S, 3] uint8 crops
    starts: np.ndarray  # [B, 2] where each crop's square starts in its image (pixel edges)
    sides: np.ndarray  # [B] the square's side, image pixels
    image_hw: np.ndarray  # [B, 2] the original images' (H, W)
    labels: aflw2000.Labels


def _without_image(example: Mapping) -> dict:
    out = {k: v for k, v in example.items() if k != "image"}
    out["image_hw"] = np.shape(example["image"])[:2]
    return out


def load_test_set(crops_root: str, aflw2000_root: str, on_error: str = "fail") -> TestSet:
    """The labelled AFLW2000-3D images of ``aflw2000_root`` with their crops from
    ``crops_root`` (the folder of ``AFLW_GT_crop/``); a labelled image without a crop is an
    error naming it (a protocol number needs every image)."""
    examples = aflw2000.read_examples(aflw2000_root, on_error, _without_image)
    # Labels come from the .mat files: keep the 3 crops whose stored points stray outside.
    crops = aflw_crops.load_aflw_crops(crops_root, "test", on_error=on_error, max_outside=np.inf)
    position = {str(crops[i]["name"]): i for i in range(len(crops))}
    missing = [str(e["name"]) for e in examples if str(e["name"]) not in position]
    if missing:
        raise FileNotFoundError(
            f"{crops_root}: no crop for {len(missing)} AFLW2000-3D images (first: {missing[0]})"
        )
    chosen = [crops[position[str(e["name"])]] for e in examples]
    starts, sides = aflw_crops.crop_squares(np.stack([c["roi_box"] for c in chosen]))
    return TestSet(
        images=np.stack([c["image"] for c in chosen]),
        starts=starts,
        sides=sides,
        image_hw=np.array([e["image_hw"] for e in examples], np.int64),
        labels=aflw2000.label_arrays(examples),
    )


def make_predict_fn(model, landmark_index68, flip: bool = False) -> Callable:
    """Jitted (params, images [B, h, w, 3]) -> (68 points [B, 68, 2] in the crops' image
    frame, R [B, 3, 3]); ``flip``: both flip-tested (:mod:`evaluation.flip_test`)."""
    index = jnp.asarray(np.asarray(landmark_index68, np.int32))

    @jax.jit
    def predict(params, images):
        out = model.apply({"params": params}, images)
        points, rotation = out["points2d"][:, index], out["R"]
        if flip:
            mirrored = model.apply({"params": params}, images[:, :, ::-1])
            points, rotation = flip_test.flip_averaged(
                points,
                rotation,
                mirrored["points2d"][:, index],
                mirrored["R"],
                images.shape[2],
                IBUG68_FLIP,
            )
        return points, rotation

    return predict


def crop_points_to_image(points: np.ndarray, test_set: TestSet, crop_hw) -> np.ndarray:
    """Crop image-frame points [B, L, 2] -> each original image's frame [B, L, 2]."""
    pix = np.stack([preprocess.landmarks_to_pixels(p, crop_hw) for p in points])
    original = preprocess.uncrop_pixels(pix, test_set.starts, test_set.sides, crop_hw[0])
    return np.stack(
        [preprocess.pixels_to_landmarks(p, hw) for p, hw in zip(original, test_set.image_hw)]
    )


def predict(predict_fn: Callable, params: PyTree, test_set: TestSet, batch_size: int = 100):
    """(68 points [B, 68, 2] in the original images' frame, (yaw, pitch, roll) [B, 3])."""
    points, rotations = [], []
    for start in range(0, len(test_set.images), batch_size):
        images = jnp.asarray(test_set.images[start : start + batch_size], jnp.float32)
        p, r = jax.device_get(predict_fn(params, images))
        points.append(np.asarray(p, np.float64))
        rotations.append(np.asarray(r, np.float64))
    crop_hw = test_set.images.shape[1:3]
    pred68 = crop_points_to_image(np.concatenate(points), test_set, crop_hw)
    return pred68, np.asarray(pose.matrix_to_pose(np.concatenate(rotations)), np.float64)


def score(test_set: TestSet, pred68: np.ndarray, pred_ypr: np.ndarray):
    """(per-image rows, summary) of ``aflw2000.evaluate_records`` plus the pose MAE per yaw
    bin (``pose_mae_degrees_binned``: the mean of yaw, pitch and roll errors per image, over
    the +-99 degree images, binned by the label's yaw)."""
    labels = test_set.labels
    rows, summary = aflw2000.evaluate_records(
        labels.names, pred68, labels.gt68, pred_ypr, labels.pose, labels.gt21, labels.visible21
    )
    inside = aflw2000.pose_protocol_mask(labels.pose)
    errors = aflw2000.pose_abs_errors(pred_ypr[inside], labels.pose[inside]).mean(axis=1)
    summary["pose_mae_degrees_binned"] = aflw2000.binned_mean(errors, labels.pose[inside, 0])
    return rows, summary


def flat_metrics(summary: Mapping) -> dict:
    """The summary as flat scalars for metrics.jsonl and final_metrics.json:
    ``aflw2000_pose_mae_deg`` (mean of yaw, pitch, roll MAE over the +-99 degree images) and
    ``_yaw/_pitch/_roll``; ``aflw2000_nme68`` and ``aflw2000_nme21`` in percent (3DDFA's
    headline: the mean of the three yaw-bin means, NaN when a bin is empty); each with
    ``_all`` (the mean over images) and the ``_yaw_0_30``, ``_yaw_30_60``, ``_yaw_60_90``
    bins."""
    p = summary["pose_mae_degrees"]
    out = {f"{PREFIX}pose_mae_deg": p["mean"]}
    out.update({f"{PREFIX}pose_mae_{a}_deg": p[a] for a in ("yaw", "pitch", "roll")})
    binned = {
        "pose_mae_deg": summary["pose_mae_degrees_binned"],
        "nme68": summary["nme68_percent"],
        "nme21": summary["nme21_percent"],
    }
    for name, values in binned.items():
        if name != "pose_mae_deg":  # (the pose MAE's headline is already over all images)
            out[f"{PREFIX}{name}"] = values["mean"]
            out[f"{PREFIX}{name}_all"] = values["all"]
        for bin_name in aflw2000.YAW_BIN_NAMES:
            out[f"{PREFIX}{name}_{bin_name}"] = values[bin_name]
    return {k: float(v) for k, v in out.items()}


def make_benchmark(config, model, morphable_model) -> Callable[[PyTree], dict] | None:
    """params -> :func:`flat_metrics` on AFLW2000-3D when ``config.eval.aflw2000_root`` is
    set (crops from ``config.data.root``), else None. Reads the test set once, here."""
    root = str(config.get("eval", {}).get("aflw2000_root", "") or "")
    if not root:
        return None
    if "ibug68" not in morphable_model.landmarks:
        raise ValueError("eval.aflw2000_root needs a morphable model with 'ibug68' landmarks")
    test_set = load_test_set(config.data.root, root, config.data.get("on_error", "fail"))
    predict_fn = make_predict_fn(
        model, morphable_model.landmarks["ibug68"], bool(config.eval.get("flip_test", False))
    )

    def benchmark(params) -> dict:
        pred68, pred_ypr = predict(predict_fn, params, test_set)
        return flat_metrics(score(test_set, pred68, pred_ypr)[1])

    return benchmark


def own_crops_test_set(aflw2000_root: str, size: int, margin: float, on_error: str = "fail"):
    """AFLW2000-3D cropped without 3DDFA's crops: a square around each image's ground-truth
    68 points plus ``margin`` (as the 300W-LP configs crop), resized to ``size``."""

    def crop(example):
        target = {
            "image": example["image"],
            "landmarks": example["landmarks_ibug68"],
            "landmark_visible": np.ones(68, np.float32),
        }
        box = preprocess.square_box(preprocess.landmark_box(target), margin)
        out = _without_image(example)
        out["crop"] = preprocess.crop_to_box(target, box, size)["image"]
        out["box"] = box
        return out

    examples = aflw2000.read_examples(aflw2000_root, on_error, crop)
    boxes = np.array([e["box"] for e in examples], np.float64)
    return TestSet(
        images=np.stack([e["crop"] for e in examples]),
        starts=boxes[:, :2],
        sides=boxes[:, 2],
        image_hw=np.array([e["image_hw"] for e in examples], np.int64),
        labels=aflw2000.label_arrays(examples),
    )


def evaluate_checkpoint(
    workdir: str,
    aflw2000_root: str,
    crops_root: str | None = None,
    on_error: str = "fail",
    flip: bool | None = None,
):
    """(per-image rows, summary) of the latest checkpoint of ``workdir`` on AFLW2000-3D.

    The images are 3DDFA's crops when ``crops_root`` is given or the run trained on them
    (``data.kind == 'aflw'``: its ``data.root``), else squares around the ground-truth 68
    points with the run's ``data.crop_margin`` (how the 300W-LP configs crop). Flip-tested
    when ``flip``, by default when the run's ``eval.flip_test`` is set.
    """
    from jax3dmmstn.training.checkpoint import load_trained

    trained = load_trained(workdir)
    if "ibug68" not in trained.morphable_model.landmarks:
        raise ValueError(f"{workdir}: the run's morphable model has no 'ibug68' landmarks")
    data = trained.config.data
    size = int(data.image_size[0])
    if crops_root is None and data.get("kind") == "aflw":
        crops_root = data.root
    if crops_root:
        test_set = load_test_set(crops_root, aflw2000_root, on_error)
        framing = {"crops": crops_root}
    else:
        margin = float(data.get("crop_margin", 0.25))
        test_set = own_crops_test_set(aflw2000_root, size, margin, on_error)
        framing = {"crop_margin": margin}
    if flip is None:  # as the run scored
        flip = bool(trained.config.get("eval", {}).get("flip_test", False))
    predict_fn = make_predict_fn(trained.model, trained.morphable_model.landmarks["ibug68"], flip)
    pred68, pred_ypr = predict(predict_fn, trained.params, test_set)
    rows, summary = score(test_set, pred68, pred_ypr)
    summary.update(checkpoint_step=trained.step, image_size=size, flip_test=flip, **framing)
    return rows, summary
