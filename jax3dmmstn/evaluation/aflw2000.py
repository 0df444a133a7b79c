"""AFLW2000-3D benchmarks: 3DDFA's landmark NME and the head-pose benchmarks' MAE.

Pure numpy; every function takes host arrays of all images at once.

* NME-68 (3DDFA ``benchmark_aflw2000.py``, ``calc_nme``): per image, the mean over the 68
  points of the 2D Euclidean error, divided by ``sqrt((max x - min x)(max y - min y))`` of
  the ground-truth 68 points (``llength``). Scored on every image (3DDFA: all 2,000).
* Yaw bins (3DDFA ``ana``): ``|yaw| <= 30``, ``30 < |yaw| <= 60``, ``|yaw| > 60`` (printed as
  [0, 30], [30, 60], [60, 90]); the headline is the mean of the three bin means, not the
  mean over images. 3DDFA bins by the fitted label's yaw (``AFLW2000-3D.pose.npy``); here
  the label's yaw from ``Pose_Para`` as stored (a few labels are far outside +-90 and fall
  into the last bin, as |yaw| > 60).
* NME-21 (3DDFA ``benchmark_aflw.py``): the 21 AFLW points, each predicted point the mean of
  its iBUG points (``IBUG68_TO_AFLW21``), over the visible ground-truth points only, divided
  by the same sqrt box of the ground-truth *68* points; binned the same way.
* Pose MAE (Hopenet, FSA-Net, 6DRepNet): yaw, pitch, roll = degrees(Pose_Para[1], [0], [2]);
  only images whose three label angles are all within +-99 degrees (1,969 of AFLW2000-3D's
  2,000); per angle the mean of ``|pred - label|`` and the mean of the three. Hopenet and
  FSA-Net take the plain difference; some 6DRepNet versions take the smallest of
  ``|d|, |d +- 360|`` (and ``|d +- 180|``). ``wrap=False`` (default) is the plain difference;
  ``wrap=True`` the +-360 one (never +-180, which rewards a face predicted upside down).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jax3dmmstn.evaluation import metrics

# 3DDFA benchmark_aflw.py's ind_68to21, made 0-based: AFLW point i is the mean of these
# iBUG points (eye centres: the 6 eye points; mouth centre: the 8 inner-lip points).
IBUG68_TO_AFLW21 = tuple(
    tuple(k - 1 for k in group)
    for group in (
        (18,),
        (20,),
        (22,),
        (23,),
        (25,),
        (27,),
        (37,),
        (37, 38, 39, 40, 41, 42),
        (40,),
        (43,),
        (43, 44, 45, 46, 47, 48),
        (46,),
        (3,),
        (32,),
        (31,),
        (36,),
        (15,),
        (49,),
        (61, 62, 63, 64, 65, 66, 67, 68),
        (55,),
        (9,),
    )
)

YAW_BIN_NAMES = ("yaw_0_30", "yaw_30_60", "yaw_60_90")
POSE_LIMIT_DEGREES = 99.0


def _points(name: str, x, count: int | None = None) -> np.ndarray:
    """``x`` as float64 ``[B, L, 2]`` (``L == count`` when given) or a one-line error."""
    x = np.asarray(x, np.float64)
    if x.ndim != 3 or x.shape[-1] != 2 or (count is not None and x.shape[1] != count):
        want = f"[B, {count if count is not None else 'L'}, 2]"
        raise ValueError(f"{name} must be {want}, got {x.shape}")
    return x


def ibug68_to_aflw21(points68) -> np.ndarray:
    """3DDFA's 21 AFLW points from 68 iBUG points: ``[..., 68, 2] -> [..., 21, 2]``."""
    points68 = np.asarray(points68, np.float64)
    if points68.shape[-2:] != (68, 2):
        raise ValueError(f"points68 must be [..., 68, 2], got {points68.shape}")
    return np.stack([points68[..., list(g), :].mean(axis=-2) for g in IBUG68_TO_AFLW21], -2)


def gt68_box_size(gt68) -> np.ndarray:
    """``sqrt(w h)`` of the box of all 68 ground-truth points: ``[B, 68, 2] -> [B]``."""
    gt68 = _points("gt68", gt68, 68)
    return metrics.landmark_box_size(gt68, np.ones(gt68.shape[:2], bool))


def nme68(pred, gt) -> np.ndarray:
    """3DDFA's AFLW2000-3D NME per image (a fraction; x100 for %): ``[B, 68, 2] x2 -> [B]``.

    Both in one frame (pixels of the original image; y up or down, it does not matter): the
    project's NME (``metrics.landmark_nme``) with all 68 points counted.
    """
    pred, gt = _points("pred", pred, 68), _points("gt", gt, 68)
    if pred.shape != gt.shape:
        raise ValueError(f"pred {pred.shape} and gt {gt.shape} differ")
    return metrics.landmark_nme(pred, gt, np.ones(gt.shape[:2], bool))


def nme21(pred21, gt21, visible21, gt68) -> np.ndarray:
    """3DDFA's AFLW NME per image: ``[B, 21, 2], [B, 21, 2], [B, 21], [B, 68, 2] -> [B]``.

    Mean error over the visible ground-truth points (3DDFA: pt != -1), over sqrt(w h) of the
    ground-truth 68 box. ``pred21`` from a 68-point prediction: ``ibug68_to_aflw21``.
    """
    pred21, gt21 = _points("pred21", pred21, 21), _points("gt21", gt21, 21)
    visible = np.asarray(visible21) > 0
    if visible.shape != gt21.shape[:2] or pred21.shape != gt21.shape:
        raise ValueError(
            f"pred21 {pred21.shape}, gt21 {gt21.shape}, visible21 {visible.shape} disagree"
        )
    if not np.all(visible.any(axis=1)):
        bad = np.flatnonzero(~visible.any(axis=1)).tolist()
        raise ValueError(f"images {bad} have no visible AFLW point: NME-21 undefined")
    return metrics.mean_visible_error(pred21, gt21, visible) / gt68_box_size(gt68)


def yaw_bins(yaw) -> np.ndarray:
    """3DDFA's bin of each image, ``[B] -> [B]`` int: 0 ``|yaw| <= 30``, 1 ``<= 60``, 2 above."""
    absolute = np.abs(np.asarray(yaw, np.float64))
    return np.where(absolute <= 30.0, 0, np.where(absolute <= 60.0, 1, 2))


def _mean_or_nan(values: np.ndarray) -> float:
    return float(np.mean(values)) if values.size else math.nan


def binned_mean(values, yaw) -> dict:
    """Means of ``values`` [B] per yaw bin of ``yaw`` [B] (label degrees), as 3DDFA reports.

    Returns {yaw_0_30, yaw_30_60, yaw_60_90: bin means (NaN for an empty bin), mean: the
    mean of the three (NaN unless all three have images, as 3DDFA's np.mean would give),
    all: the plain mean over images, counts: [3] images per bin}.
    """
    values = np.asarray(values, np.float64)
    bins = yaw_bins(yaw)
    if bins.shape != values.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and yaw {bins.shape} must both be [B]")
    means = [_mean_or_nan(values[bins == b]) for b in range(3)]
    summary = dict(zip(YAW_BIN_NAMES, means))
    summary["mean"] = float(np.mean(means))
    summary["all"] = _mean_or_nan(values)
    summary["counts"] = [int(np.sum(bins == b)) for b in range(3)]
    return summary


def pose_protocol_mask(label_ypr) -> np.ndarray:
    """``[B, 3] -> [B]`` bool: the three label angles all within +-99 degrees (1,969 images)."""
    label_ypr = np.asarray(label_ypr, np.float64)
    if label_ypr.ndim != 2 or label_ypr.shape[1] != 3:
        raise ValueError(f"label_ypr must be [B, 3], got {label_ypr.shape}")
    return np.all(np.abs(label_ypr) <= POSE_LIMIT_DEGREES, axis=1)


def pose_abs_errors(pred_ypr, label_ypr, wrap: bool = False) -> np.ndarray:
    """``|pred - label|`` per angle, ``[B, 3] x2 -> [B, 3]`` degrees (``wrap``: min with +-360)."""
    pred = np.asarray(pred_ypr, np.float64)
    label = np.asarray(label_ypr, np.float64)
    if pred.shape != label.shape or pred.ndim != 2 or pred.shape[1] != 3:
        raise ValueError(f"pred_ypr {pred.shape} and label_ypr {label.shape} must be [B, 3]")
    diff = np.abs(pred - label)
    if wrap:
        diff = np.minimum(diff, np.minimum(np.abs(diff - 360.0), diff + 360.0))
    return diff


def pose_mae(pred_ypr, label_ypr, wrap: bool = False) -> dict:
    """Head-pose MAE on the +-99 degree protocol: ``[B, 3] x2 ->`` {yaw, pitch, roll, mean, count}.

    ``mean`` is the mean of the three MAEs; NaN everywhere when no image qualifies.
    """
    errors = pose_abs_errors(pred_ypr, label_ypr, wrap)[pose_protocol_mask(label_ypr)]
    maes = [_mean_or_nan(errors[:, k]) for k in range(3)]
    summary = dict(zip(("yaw", "pitch", "roll"), maes))
    summary.update(mean=float(np.mean(maes)), count=len(errors))
    return summary


def evaluate_records(
    names: Sequence[str],
    pred68,
    gt68,
    pred_ypr,
    label_ypr,
    gt21=None,
    visible21=None,
    wrap: bool = False,
) -> tuple[list[dict], dict]:
    """Per-image rows and the summary of one AFLW2000-3D evaluation.

    Args:
      names: [B] image names.
      pred68, gt68: [B, 68, 2] predicted and ground-truth landmarks (one frame, pixels).
      pred_ypr, label_ypr: [B, 3] (yaw, pitch, roll) degrees; label not wrapped.
      gt21, visible21: [B, 21, 2] and [B, 21] AFLW points; with them NME-21 is scored too.
    Returns:
      (rows: one dict per image for ``write_csv``; summary: {num_images, nme68 (binned, in
      %), pose_mae_degrees (``pose_mae``), nme21 (when given)}).
    """
    label_ypr = np.asarray(label_ypr, np.float64)
    columns = {"nme68": nme68(pred68, gt68)}
    if gt21 is not None:
        columns["nme21"] = nme21(ibug68_to_aflw21(pred68), gt21, visible21, gt68)
    errors = pose_abs_errors(pred_ypr, label_ypr, wrap)
    in_protocol = pose_protocol_mask(label_ypr)
    if len(names) != len(label_ypr):
        raise ValueError(f"{len(names)} names for {len(label_ypr)} images")
    pred_ypr = np.asarray(pred_ypr, np.float64)
    rows = _rows(names, columns, pred_ypr, label_ypr, errors, in_protocol)
    summary = {"num_images": len(names)}
    for key, values in columns.items():
        summary[f"{key}_percent"] = _percent(binned_mean(values, label_ypr[:, 0]))
    summary["pose_mae_degrees"] = pose_mae(pred_ypr, label_ypr, wrap)
    summary["pose_difference"] = "wrapped (+-360)" if wrap else "plain |pred - label|"
    return rows, summary


def _percent(binned: dict) -> dict:
    return {k: (v if k == "counts" else 100.0 * v) for k, v in binned.items()}


def _rows(names, columns, pred_ypr, label_ypr, errors, in_protocol) -> list[dict]:
    """One dict per image: name, yaw bin, metrics, predicted/label angles and their errors."""
    bins = yaw_bins(label_ypr[:, 0])
    rows = []
    for i, name in enumerate(names):
        row = {"name": name, "yaw_bin": YAW_BIN_NAMES[bins[i]]}
        row.update({key: float(values[i]) for key, values in columns.items()})
        for k, angle in enumerate(("yaw", "pitch", "roll")):
            row[f"pred_{angle}"] = float(pred_ypr[i, k])
            row[f"label_{angle}"] = float(label_ypr[i, k])
            row[f"{angle}_error"] = float(errors[i, k])
        row["in_pose_protocol"] = bool(in_protocol[i])
        rows.append(row)
    return rows


def write_csv(path: str, rows: Sequence[Mapping]) -> str:
    """``rows`` (dicts with the same keys) as a CSV with a header line; returns ``path``."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return path


def _json_safe(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, summary: Mapping) -> str:
    """``summary`` as indented JSON (NaN written as null); returns ``path``."""
    with open(path, "w") as handle:
        json.dump(_json_safe(summary), handle, indent=2)
    return path


def format_summary(summary: Mapping) -> str:
    """The summary as a few aligned lines (NME in %, pose MAE in degrees)."""
    lines = [f"AFLW2000-3D: {summary['num_images']} images"]
    for key, title in (("nme68_percent", "NME-68"), ("nme21_percent", "NME-21")):
        if key in summary:
            b = summary[key]
            lines.append(
                f"{title} (%): [0,30] {b['yaw_0_30']:.3f}  [30,60] {b['yaw_30_60']:.3f}  "
                f"[60,90] {b['yaw_60_90']:.3f}  mean of bins {b['mean']:.3f}  "
                f"all images {b['all']:.3f}  (images per bin {b['counts']})"
            )
    p = summary["pose_mae_degrees"]
    lines.append(
        f"pose MAE (deg, {p['count']} images within +-99): yaw {p['yaw']:.3f}  "
        f"pitch {p['pitch']:.3f}  roll {p['roll']:.3f}  mean {p['mean']:.3f}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Labels of an AFLW2000-3D folder and predictions stored in a fit.json


class Labels(NamedTuple):
    """The ground truth an evaluation needs (leading axis B, sorted file order)."""

    names: list[str]
    gt68: np.ndarray  # [B, 68, 2] pt3d_68 in the image frame
    gt21: np.ndarray  # [B, 21, 2] pt2d
    visible21: np.ndarray  # [B, 21]
    pose: np.ndarray  # [B, 3] (yaw, pitch, roll) degrees, not wrapped


def label_arrays(examples: Iterable[Mapping]) -> Labels:
    """Stacks the label fields of ``load_aflw2000_3d`` examples (images are not read)."""
    examples = list(examples)
    if not examples:
        raise ValueError("no AFLW2000-3D examples to evaluate")

    def stack(key, dtype=np.float64):
        return np.stack([np.asarray(e[key], dtype) for e in examples])

    return Labels(
        [str(e["name"]) for e in examples],
        stack("landmarks_ibug68"),
        stack("landmarks_aflw21"),
        stack("landmark_visible_aflw21"),
        stack("pose"),
    )


def read_examples(
    root: str, on_error: str = "fail", keep: Callable[[Mapping], Mapping] | None = None
) -> list[dict]:
    """The folder's examples, each passed through ``keep`` (e.g. to crop, then drop the
    450 x 450 image: 2,000 of them are 1.2 GB); bad pairs follow ``on_error``."""
    from jax3dmmstn.data import errors
    from jax3dmmstn.data.raw_folders import load_aflw2000_3d

    log = errors.DataErrorLog()
    dataset = load_aflw2000_3d(root, "ibug68", on_error=on_error, error_log=log)
    examples = []
    for i in range(len(dataset)):
        example = dict(dataset[i])
        examples.append(dict(keep(example)) if keep else example)
    if log.count:
        print(f"skipped {log.count} bad pairs in {root}: {log.summary()}", file=sys.stderr)
    return examples


def read_fit(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """fit.json -> {name: (fitted 68 points [68, 2] image frame, (yaw, pitch, roll) [3])}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such fit.json")
    with open(path) as handle:
        try:
            entries = json.load(handle)["images"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a fit.json with an 'images' list ({error})") from None
    fits = {}
    for entry in entries:
        for key in ("name", "landmarks_ibug68", "yaw_pitch_roll_degrees"):
            if key not in entry:
                raise ValueError(
                    f"{path}: image {entry.get('name', '?')!r} has no {key!r} (fit an "
                    f"AFLW2000-3D folder with a model that has the 'ibug68' landmarks)"
                )
        points = np.asarray(entry["landmarks_ibug68"], np.float64)
        if points.shape != (68, 2):
            raise ValueError(f"{path}: {entry['name']}: landmarks_ibug68 is {points.shape}")
        fits[entry["name"]] = (points, np.asarray(entry["yaw_pitch_roll_degrees"], np.float64))
    return fits


def score_fit(fits: Mapping[str, tuple], labels: Labels) -> tuple[list[dict], dict]:
    """``evaluate_records`` of the labelled images a fit has (matched by name).

    A labelled image missing from the fit is left out and counted in the summary
    (``missing_from_fit``): a protocol number needs every image, so it is also printed.
    """
    index = [i for i, name in enumerate(labels.names) if name in fits]
    if not index:
        raise ValueError("the fit has none of the folder's images (names differ)")
    missing = len(labels.names) - len(index)
    if missing:
        print(f"note: {missing} labelled images are not in the fit", file=sys.stderr)
    names = [labels.names[i] for i in index]
    pred68 = np.stack([fits[n][0] for n in names])
    pred_ypr = np.stack([fits[n][1] for n in names])
    rows, summary = evaluate_records(
        names,
        pred68,
        labels.gt68[index],
        pred_ypr,
        labels.pose[index],
        labels.gt21[index],
        labels.visible21[index],
    )
    summary["missing_from_fit"] = missing
    return rows, summary


def write_outputs(out_dir: str, rows: Sequence[Mapping], summary: Mapping) -> tuple[str, str]:
    """``out_dir``/per_image.csv and summary.json; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    return (
        write_csv(os.path.join(out_dir, "per_image.csv"), rows),
        write_json(os.path.join(out_dir, "summary.json"), summary),
    )
