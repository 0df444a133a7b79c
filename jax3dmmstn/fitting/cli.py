"""``jax3dmmstn fit``: fit theta to each image's landmarks, then write the results.

It fits with ``jax3dmmstn.fitting`` and writes DIR/fit.json and, per image, an overlay,
the UV texture, the visibility mask, the masked texture and a textured OBJ
(``jax3dmmstn.outputs``). ``--average`` also writes the visibility-weighted mean texture of
all images (identity averaging: give it several images of one person).
``write_results`` is shared with ``jax3dmmstn predict`` (``jax3dmmstn.predict``).
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


def load_model(spec: str, landmarks_path: str | None = None):
    """MODEL argument -> MorphableModel: 'synthetic', a native .npz or the original's model.mat."""
    from jax3dmmstn.facemodel import morphable_model as mm

    if spec == "synthetic":
        from jax3dmmstn.facemodel.synthetic import synthetic_face_model

        model = synthetic_face_model()
    elif spec.endswith(".npz"):
        model = mm.MorphableModel.load(spec)
    elif spec.endswith(".mat"):
        return mm.load_matconvnet_model(spec, landmarks_path)
    else:
        raise ValueError(
            f"--model must be 'synthetic', a .npz model or the original's model.mat, got {spec!r}"
        )
    if landmarks_path:
        idx = np.asarray(mm.read_anl(landmarks_path), np.int32)
        flips = dict(model.landmark_flip)
        flips["custom"] = np.arange(idx.size, dtype=np.int32)
        landmarks = dict(model.landmarks)
        landmarks["custom"] = idx
        import dataclasses

        model = dataclasses.replace(model, landmarks=landmarks, landmark_flip=flips)
    return model


def load_data(path: str):
    """DATA argument -> (images [B,H,W,3] float32 0..255, landmarks [B,L,2], visible [B,L], names)."""
    from jax3dmmstn.data import loaders

    if os.path.isdir(path):
        dataset = loaders.ImageFolderDataset(path, num_landmarks=None)
    elif path.endswith(".mat"):
        import scipy.io

        names = scipy.io.whosmat(path)
        variables = {n for n, _, _ in names}
        if "Images" in variables:
            dataset = loaders.load_demo_mat(path, expected_size=None)
        elif "images" in variables:
            dataset = loaders.load_imdb_mat(path, split="all")
        else:
            raise ValueError(
                f"{path}: neither the demo layout (Images, Labels) nor an imdb.mat "
                f"(images), variables: {sorted(variables)}"
            )
    else:
        raise ValueError(
            f"--data must be a .mat file or a folder of images with .pts files, got {path!r}"
        )
    examples = [dataset[i] for i in range(len(dataset))]
    if not examples:
        raise ValueError(f"{path}: no images")
    shapes = {np.asarray(e["image"]).shape for e in examples}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images of different sizes {sorted(shapes)}; crop them first")
    images = np.stack([np.asarray(e["image"], np.float32) for e in examples])
    landmarks = np.stack([e["landmarks"] for e in examples])
    visible = np.stack([e["landmark_visible"] for e in examples])
    names = [f"image{i:04d}" for i in range(len(examples))]
    return images, landmarks, visible, names


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
) -> None:
    """Per-image PNGs + OBJ, fit.json, and optionally the averaged texture.

    Adds each image's written files to its report entry (``files``). ``parametrisation``: how
    theta's logs gives the scale (``geometry.log_scale_to_scale``).
    """
    from jax3dmmstn import outputs

    os.makedirs(out_dir, exist_ok=True)
    textures = None
    if model.resolution:
        textures = outputs.sample_uv_texture(
            results.images, results.theta, model.mean, model.basis, model.faces, parametrisation
        )
        textures = tuple(map(np.asarray, textures))  # texture, mask, points2d
    for i, entry in enumerate(results.report):
        entry["files"] = _write_image(out_dir, model, results, i, textures)
    if average and textures is not None:
        mean, coverage = outputs.average_textures(textures[0], textures[1])
        outputs.write_png(os.path.join(out_dir, "average_texture.png"), mean)
        outputs.write_png(
            os.path.join(out_dir, "average_coverage.png"),
            255.0 * coverage / max(1.0, float(coverage.max())),
        )
    with open(os.path.join(out_dir, "fit.json"), "w") as f:
        json.dump({"images": results.report}, f, indent=1)


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
    parser.add_argument("--landmarks", default=None, help="landmark vertex indices (.anl)")
    parser.add_argument(
        "--data",
        required=True,
        help="demo-layout .mat, imdb.mat, or a folder of images with .pts files",
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
    from jax3dmmstn.core import geometry, pose

    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks[landmark_set]
    )
    fitted = np.asarray(fitting.project_landmarks(theta, mean_l, basis_l))
    rmse = np.asarray(fitting.landmark_rmse(fitted, landmarks, visible))
    rotation = geometry.axis_angle_to_matrix(theta_lib.rotation(theta))
    yaw_pitch_roll = np.asarray(pose.matrix_to_pose(rotation))
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
        images, landmarks, visible, names = load_data(args.data)
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
    write_results(args.out, model, results, average=args.average)
    rmse = np.mean([entry["landmark_rmse_px"] for entry in report])
    print(
        f"fitted {len(names)} images: mean landmark RMSE {rmse:.3f} px; wrote {args.out}/fit.json"
    )
    return 0


main = fit_main
