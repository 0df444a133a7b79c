"""``jax3dmmstn fit``: fit theta to each image's landmarks, then write the results.

It fits with ``jax3dmmstn.fitting`` and writes DIR/fit.json and, per image, an overlay,
the UV texture, the visibility mask, the masked texture and a textured OBJ
(``jax3dmmstn.outputs``). ``--average`` also writes the visibility-weighted mean texture of
all images (identity averaging: give it several images of one person).
``write_results`` is shared with ``jax3dmmstn predict`` (``jax3dmmstn.predict``).

``--data`` may also be an AFLW2000-3D folder (``imageNNNNN.jpg`` + ``.mat`` pairs, read with
``jax3dmmstn.data.raw_folders.load_aflw2000_3d``): then the 68 ground-truth landmarks (or
``--landmarks aflw21``: the 21 visible AFLW points) are fitted, fit.json also holds each
label's pose and the pose error, the summary gives 3DDFA's NME and the head-pose MAE
(``jax3dmmstn.evaluation.aflw2000``), and per-image pictures are written only with
``--images`` (thousands of images).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import NamedTuple

import numpy as np

from jax3dmmstn.core import theta as theta_lib

# --landmarks names one of the model's sets instead of an .anl file.
LANDMARK_SETS = ("ibug68", "aflw21")


def load_model(spec: str, landmarks_path: str | None = None):
    """MODEL argument -> MorphableModel: 'synthetic', a native .npz or the original's model.mat."""
    from jax3dmmstn.facemodel import morphable_model as mm

    if spec == "synthetic":
        from jax3dmmstn.facemodel.synthetic import synthetic_face_model

        model = synthetic_face_model()
    elif spec.endswith(".npz"):
        model = mm.MorphableModel.load(spec)
    elif spec.endswith(".mat"):  # (a set name is not an .anl file: the model has its sets)
        anl = landmarks_path if landmarks_path not in LANDMARK_SETS else None
        return mm.load_matconvnet_model(spec, anl)
    else:
        raise ValueError(
            f"--model must be 'synthetic', a .npz model or the original's model.mat, got {spec!r}"
        )
    if landmarks_path and landmarks_path not in LANDMARK_SETS:
        idx = np.asarray(mm.read_anl(landmarks_path), np.int32)
        flips = dict(model.landmark_flip)
        flips["custom"] = np.arange(idx.size, dtype=np.int32)
        landmarks = dict(model.landmarks)
        landmarks["custom"] = idx
        import dataclasses

        model = dataclasses.replace(model, landmarks=landmarks, landmark_flip=flips)
    return model


def load_data(specs, size: int = 224, margin: float = 0.25, on_error: str = "fail"):
    """DATA arguments -> (images [B,H,W,3] float32 0..255, landmarks [B,L,2], visible [B,L], names).

    ``specs``: one demo-layout .mat or imdb.mat, or photos (files, folders, globs) each with
    its iBUG .pts file; photos are cropped square around their landmarks to ``size``.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if len(specs) == 1 and specs[0].endswith(".mat"):
        return _load_mat_data(specs[0])
    return load_photos(specs, size, margin, on_error)


def _load_mat_data(path: str):
    """A demo-layout .mat or an imdb.mat (all of it), told apart by their variables."""
    from jax3dmmstn import matfile
    from jax3dmmstn.data import loaders

    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path}: no such file or folder")
    variables = set(matfile.variable_names(path))
    if "Images" in variables:
        dataset = loaders.load_demo_mat(path, expected_size=None)
    elif "images" in variables:
        dataset = loaders.load_imdb_mat(path, split="all")
    else:
        raise ValueError(
            f"{path}: neither the demo layout (Images, Labels) nor an imdb.mat "
            f"(images), variables: {sorted(variables)}"
        )
    examples = [dataset[i] for i in range(len(dataset))]
    if not examples:
        raise ValueError(f"{path}: no images")
    images = np.stack([np.asarray(e["image"], np.float32) for e in examples])
    landmarks = np.stack([e["landmarks"] for e in examples])
    visible = np.stack([e["landmark_visible"] for e in examples])
    names = [f"image{i:04d}" for i in range(len(examples))]
    return images, landmarks, visible, names


def load_photos(specs, size: int = 224, margin: float = 0.25, on_error: str = "fail"):
    """Photos as they come, each with the .pts file next to it, cropped to ``size`` squares.

    Returns (images [B, size, size, 3] float32, landmarks [B, L, 2] in the crops' image frame,
    visible [B, L], names = the photos' names). A photo without a usable .pts file stops the
    command (``on_error="fail"``) or is left out with its reason printed ("skip").
    """
    from jax3dmmstn.data import photos
    from jax3dmmstn.data.errors import DataError

    crops, names, skipped = [], [], []
    for path in photos.list_photos(specs):
        try:
            crops.append(_photo_crop(path, size, margin))
            names.append(photos.photo_name(path))
        except DataError as error:
            if on_error == "fail":
                raise
            skipped.append(str(error))
    for reason in skipped:
        print(f"fit: skipped {reason}", file=sys.stderr)
    if not crops:
        raise DataError(f"{' '.join(specs)}: no photo with a usable .pts file")
    counts = {len(c["landmarks"]) for c in crops}
    if len(counts) != 1:
        raise DataError(f"the .pts files have different numbers of points: {sorted(counts)}")
    images = np.stack([c["image"] for c in crops]).astype(np.float32)
    landmarks = np.stack([c["landmarks"] for c in crops]).astype(np.float32)
    return images, landmarks, np.ones(landmarks.shape[:2], np.float32), names


def _photo_crop(path: str, size: int, margin: float) -> dict:
    """One photo (upright: EXIF applied, as its .pts is read) cropped around its landmarks."""
    from jax3dmmstn.data import photos
    from jax3dmmstn.data.errors import DataError

    if not os.path.isfile(photos.pts_path(path)):
        raise DataError(f"{path}: no .pts file next to it ({photos.pts_path(path)})")
    image = photos.read_photo(path)
    points = photos.read_photo_pts(path, image.shape[:2])
    try:
        box = photos.face_box(path, image.shape[:2])
    except ValueError as error:
        raise DataError(f"{photos.pts_path(path)}: its points span no face ({error})") from None
    return photos.square_crop(image, box, size, margin, landmarks=points)


def is_aflw2000_folder(path: str) -> bool:
    """Whether ``path`` (or its ``AFLW2000/`` folder, as unzipped) holds ``.mat`` labels."""
    folders = [path, os.path.join(path, "AFLW2000")]
    return any(
        os.path.isdir(folder) and any(f.lower().endswith(".mat") for f in os.listdir(folder))
        for folder in folders
    )


class LabelledData(NamedTuple):
    """An AFLW2000-3D folder's fitting inputs and labels (leading axis B)."""

    images: np.ndarray | None  # [B, H, W, 3] float32 0..255, None unless asked for
    landmarks: np.ndarray  # [B, L, 2] the points to fit (image frame, y up)
    visible: np.ndarray  # [B, L]
    names: list[str]
    label_pose: np.ndarray  # [B, 3] (yaw, pitch, roll) degrees, not wrapped
    gt68: np.ndarray  # [B, 68, 2] the label's 68 points (NME-68's reference)
    gt21: np.ndarray  # [B, 21, 2] AFLW points
    visible21: np.ndarray  # [B, 21]


def load_aflw2000_folder(
    path: str, landmark_set: str, on_error: str = "fail", with_images: bool = False
) -> LabelledData:
    """Reads an AFLW2000-3D folder; ``landmark_set`` ('ibug68' | 'aflw21') picks the points."""
    from jax3dmmstn.data import errors
    from jax3dmmstn.data.raw_folders import load_aflw2000_3d

    log = errors.DataErrorLog()
    dataset = load_aflw2000_3d(path, landmarks=landmark_set, on_error=on_error, error_log=log)
    examples = [dataset[i] for i in range(len(dataset))]
    if log.count:
        print(f"fit: skipped {log.count} bad examples in {path}", file=sys.stderr)
    if not examples:
        raise ValueError(f"{path}: no readable imageNNNNN.jpg + .mat pairs")

    def stack(key, dtype=np.float32):
        return np.stack([np.asarray(e[key], dtype) for e in examples])

    images = None
    if with_images:
        shapes = {np.shape(e["image"]) for e in examples}
        if len(shapes) != 1:
            raise ValueError(f"{path}: images of different sizes {sorted(shapes)}")
        images = stack("image")
    return LabelledData(
        images,
        stack("landmarks"),
        stack("landmark_visible"),
        [str(e["name"]) for e in examples],
        stack("pose", np.float64),
        stack("landmarks_ibug68"),
        stack("landmarks_aflw21"),
        stack("landmark_visible_aflw21"),
    )


def _pick_landmark_set(model, n_landmarks: int) -> str:
    for name in ("custom", "aflw21", "ibug68"):
        if name in model.landmarks and model.landmarks[name].size == n_landmarks:
            return name
    for name, idx in model.landmarks.items():
        if idx.size == n_landmarks:
            return name
    raise ValueError(
        f"the data has {n_landmarks} landmarks per image but the model's landmark sets have "
        f"{ {k: int(v.size) for k, v in model.landmarks.items()} }; pass --landmarks FILE.anl"
    )


class FitResults(NamedTuple):
    """What ``write_results`` writes, per image (leading axis B)."""

    images: np.ndarray  # [B, H, W, 3] float, 0..255
    theta: np.ndarray  # [B, 6 + K]
    landmarks: np.ndarray  # [B, L, 2] the given (fit) or predicted (predict) landmarks
    visible: np.ndarray  # [B, L] visibility of ``landmarks``
    fitted_landmarks: np.ndarray  # [B, L, 2] the landmarks of theta
    report: list[dict]  # fit.json's entries, each with the image's "name"


def write_results(
    out_dir: str,
    model,
    results: FitResults,
    average: bool = False,
    parametrisation: str = "matconvnet",
    write_images: bool = True,
    summary: dict | None = None,
) -> None:
    """Per-image PNGs + OBJ (unless ``write_images`` is False), fit.json, and optionally the
    averaged texture.

    Adds each image's written files to its report entry (``files``). ``parametrisation``: how
    theta's logs gives the scale (``geometry.log_scale_to_scale``). ``summary`` goes into
    fit.json next to "images".
    """
    from jax3dmmstn import outputs

    os.makedirs(out_dir, exist_ok=True)
    textures = None
    if write_images and model.resolution:
        textures = outputs.sample_uv_texture(
            results.images, results.theta, model.mean, model.basis, model.faces, parametrisation
        )
        textures = tuple(map(np.asarray, textures))  # texture, mask, points2d
    for i, entry in enumerate(results.report):
        if write_images:
            entry["files"] = _write_image(out_dir, model, results, i, textures)
    if average and textures is not None:
        mean, coverage = outputs.average_textures(textures[0], textures[1])
        outputs.write_png(os.path.join(out_dir, "average_texture.png"), mean)
        outputs.write_png(
            os.path.join(out_dir, "average_coverage.png"),
            255.0 * coverage / max(1.0, float(coverage.max())),
        )
    document = {"images": results.report}
    if summary is not None:
        document["summary"] = summary
    with open(os.path.join(out_dir, "fit.json"), "w") as f:
        json.dump(document, f, indent=1)


def _write_image(out_dir: str, model, results: FitResults, i: int, textures) -> dict:
    """Image ``i``'s files (overlay, textures and OBJ; the OBJ only for a model without UV grid)."""
    from jax3dmmstn import outputs

    name = results.report[i]["name"]
    vertices = model.shape(np.asarray(theta_lib.shape_weights(results.theta[i])))
    if textures is None:
        path = outputs.write_obj(
            os.path.join(out_dir, f"{name}.obj"), vertices, model.faces, model.uv
        )
        return {"obj": path}
    texture, mask, points2d = textures
    return outputs.write_fit_outputs(
        out_dir,
        name,
        results.images[i],
        texture[i],
        mask[i],
        vertices,
        model.faces,
        model.uv,
        points2d[i],
        results.fitted_landmarks[i],
        results.landmarks[i],
        results.visible[i],
    )


def _fit_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax3dmmstn fit", description="Fit theta to 2D landmarks and write outputs."
    )
    parser.add_argument(
        "--model",
        required=True,
        help="'synthetic', a native .npz model or the original's model.mat",
    )
    parser.add_argument(
        "--landmarks",
        default=None,
        help="landmark vertex indices (.anl), or which of the model's sets to fit: 'ibug68' "
        "(default for an AFLW2000-3D folder: its 68 ground-truth points) or 'aflw21' (its 21 "
        "visible AFLW points)",
    )
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="demo-layout .mat, imdb.mat, photos with an iBUG .pts file next to each (files, "
        "folders or globs; any size and format), or an AFLW2000-3D folder "
        "(imageNNNNN.jpg + .mat pairs)",
    )
    parser.add_argument(
        "--size", type=int, default=224, help="photos: side of the square crop around the face"
    )
    parser.add_argument(
        "--margin", type=float, default=0.25, help="photos: crop margin, fraction of the box"
    )
    parser.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="a bad photo, .pts file or AFLW2000-3D pair stops the command (fail) or is left "
        "out, with its reason printed (skip)",
    )
    parser.add_argument(
        "--images",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the per-image PNGs and OBJ (default: yes, except for an AFLW2000-3D folder)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prior-weight", type=float, default=0.1)
    parser.add_argument("--max-iterations", type=int, default=50)
    parser.add_argument(
        "--average",
        action="store_true",
        help="also write the visibility-weighted mean texture of all images",
    )
    parser.add_argument(
        "--texture-steps",
        type=int,
        default=0,
        help="after the landmark fit, this many Adam steps on landmark + prior + texture terms",
    )
    parser.add_argument("--symmetry-weight", type=float, default=1e-4)
    parser.add_argument(
        "--siamese-weight",
        type=float,
        default=0.0,
        help="images (2i, 2i+1) show one face; with --mirror-pairs the second is its mirror",
    )
    parser.add_argument("--mirror-pairs", action="store_true")
    return parser


def _fit_theta(args, model, images, landmarks, visible, landmark_set):
    """(theta [B, 6 + K], landmark-fit iterations [B]) as the options say."""
    from jax3dmmstn import fitting

    result = fitting.fit_model_landmarks(
        model,
        landmarks,
        visible,
        landmark_set,
        prior_weight=args.prior_weight,
        max_iterations=args.max_iterations,
    )
    theta = np.asarray(result.theta)
    if args.texture_steps > 0:
        weights = fitting.TextureLossWeights(
            prior=args.prior_weight, symmetry=args.symmetry_weight, siamese=args.siamese_weight
        )
        theta, _ = fitting.refine_with_texture(
            theta,
            images.astype(np.float32),
            model,
            landmarks,
            visible,
            landmark_set,
            weights=weights,
            steps=args.texture_steps,
            mirror_pairs=args.mirror_pairs,
        )
    return np.asarray(theta), np.asarray(result.iterations)


def _fit_report(model, theta, landmarks, visible, landmark_set, names):
    """(fitted landmarks [B, L, 2], fit.json entries without timings)."""
    from jax3dmmstn import fitting

    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks[landmark_set]
    )
    fitted, rmse, yaw_pitch_roll = map(
        np.asarray, fitting.describe_fit(theta, landmarks, visible, mean_l, basis_l)
    )
    report = [
        {
            "name": name,
            "theta": theta[i].tolist(),
            "yaw_pitch_roll_degrees": yaw_pitch_roll[i].tolist(),
            "landmark_rmse_px": float(rmse[i]),
        }
        for i, name in enumerate(names)
    ]
    return fitted, report


def fit_main(argv: list[str] | None = None) -> int:
    args = _fit_parser().parse_args(argv)
    try:
        model = load_model(args.model, args.landmarks)
        if len(args.data) == 1 and is_aflw2000_folder(args.data[0]):
            args.data = args.data[0]
            return _fit_aflw2000(args, model)
        if args.landmarks in LANDMARK_SETS:
            raise ValueError(f"--landmarks {args.landmarks} is for an AFLW2000-3D folder")
        images, landmarks, visible, names = load_data(
            args.data, args.size, args.margin, args.on_error
        )
        landmark_set = _pick_landmark_set(model, landmarks.shape[1])
        start = time.perf_counter()
        theta, iterations = _fit_theta(args, model, images, landmarks, visible, landmark_set)
        seconds = (time.perf_counter() - start) / len(names)  # includes compilation
    except (ValueError, FileNotFoundError) as error:
        print(f"fit: error: {error}", file=sys.stderr)
        return 2
    fitted, report = _fit_report(model, theta, landmarks, visible, landmark_set, names)
    for entry, count in zip(report, iterations):
        entry.update(iterations=int(count), texture_steps=args.texture_steps, seconds=seconds)
    results = FitResults(images, theta, landmarks, visible, fitted, report)
    write_images = args.images is not False
    write_results(args.out, model, results, average=args.average, write_images=write_images)
    rmse = np.mean([entry["landmark_rmse_px"] for entry in report])
    print(
        f"fitted {len(names)} images: mean landmark RMSE {rmse:.3f} px; wrote {args.out}/fit.json"
    )
    return 0


def _fit_aflw2000(args, model) -> int:
    """``fit`` on an AFLW2000-3D folder: fit, score against the labels, write fit.json."""
    landmark_set = args.landmarks or "ibug68"
    if landmark_set not in LANDMARK_SETS:
        raise ValueError("--landmarks must be ibug68 or aflw21 for an AFLW2000-3D folder")
    for needed in {"ibug68", landmark_set}:  # NME-68 always needs the 68 points
        if needed not in model.landmarks:
            raise ValueError(
                f"the model has no {needed!r} landmark set (it has {sorted(model.landmarks)}); "
                f"AFLW2000-3D needs it"
            )
    data = load_aflw2000_folder(
        args.data, landmark_set, args.on_error, bool(args.images) or args.texture_steps > 0
    )
    start = time.perf_counter()
    theta, iterations = _fit_theta(
        args, model, data.images, data.landmarks, data.visible, landmark_set
    )
    seconds = (time.perf_counter() - start) / len(data.names)  # includes compilation
    fitted, report = _fit_report(
        model, theta, data.landmarks, data.visible, landmark_set, data.names
    )
    summary = _label_report(model, theta, data, report)
    for entry, count in zip(report, iterations):
        entry.update(iterations=int(count), texture_steps=args.texture_steps, seconds=seconds)
    results = FitResults(data.images, theta, data.landmarks, data.visible, fitted, report)
    write_results(
        args.out,
        model,
        results,
        average=args.average and bool(args.images),
        write_images=bool(args.images),
        summary=summary,
    )
    from jax3dmmstn.evaluation import aflw2000

    rmse = np.mean([entry["landmark_rmse_px"] for entry in report])
    print(f"fitted {len(report)} images ({landmark_set}): mean landmark RMSE {rmse:.3f} px")
    print(aflw2000.format_summary(summary))
    print(f"wrote {args.out}/fit.json")
    return 0


def _label_report(model, theta, data: LabelledData, report: list[dict]) -> dict:
    """Adds each image's fitted 68 points, label pose, pose error and NME to ``report``;
    returns the AFLW2000-3D summary (``evaluation.aflw2000.evaluate_records``)."""
    from jax3dmmstn import fitting
    from jax3dmmstn.evaluation import aflw2000

    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks["ibug68"]
    )
    pred68 = np.asarray(fitting.project_landmarks(theta, mean_l, basis_l))
    pred_ypr = np.array([entry["yaw_pitch_roll_degrees"] for entry in report])
    rows, summary = aflw2000.evaluate_records(
        data.names, pred68, data.gt68, pred_ypr, data.label_pose, data.gt21, data.visible21
    )
    for entry, row, points, label in zip(report, rows, pred68, data.label_pose):
        entry.update(
            landmarks_ibug68=points.tolist(),
            label_yaw_pitch_roll_degrees=label.tolist(),
            pose_error_degrees=[row["yaw_error"], row["pitch_error"], row["roll_error"]],
            nme68=row["nme68"],
            nme21=row["nme21"],
        )
    return summary


main = fit_main
