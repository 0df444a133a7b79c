"""``python -m jax3dmmstn fit`` and ``python -m jax3dmmstn predict``.

fit: fits theta to each image's landmarks (``jax3dmmstn.fitting``), then writes
DIR/fit.json and, per image, an overlay, the UV texture, the visibility mask,
the masked texture and a textured OBJ (``jax3dmmstn.outputs``).
``--average`` also writes the visibility-weighted mean texture of all images
(identity averaging: give it several images of one person).

predict: runs a trained localiser from a training checkpoint on images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

import numpy as np

from jax3dmmstn.core import theta as theta_lib


def load_model(spec: str, landmarks_path: Optional[str] = None):
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


def write_results(
    out_dir,
    model,
    images,
    theta,
    landmarks,
    visible,
    fitted_landmarks,
    names,
    per_image,
    average: bool = False,
    parametrisation: str = "matconvnet",
) -> None:
    """Per-image PNGs + OBJ, fit.json, and optionally the averaged texture.

    ``parametrisation``: how theta's logs gives the scale (``geometry.log_scale_to_scale``).
    """
    from jax3dmmstn import outputs

    os.makedirs(out_dir, exist_ok=True)
    if model.resolution:
        texture, mask, points2d = outputs.sample_uv_texture(
            images, theta, model.mean, model.basis, model.faces, parametrisation
        )
        texture, mask, points2d = map(np.asarray, (texture, mask, points2d))
    for i, name in enumerate(names):
        vertices = model.shape(np.asarray(theta_lib.shape_weights(theta[i])))
        if model.resolution:
            per_image[i]["files"] = outputs.write_fit_outputs(
                out_dir,
                name,
                images[i],
                texture[i],
                mask[i],
                vertices,
                model.faces,
                model.uv,
                points2d[i],
                fitted_landmarks[i],
                landmarks[i],
                visible[i],
            )
        else:
            path = outputs.write_obj(
                os.path.join(out_dir, f"{name}.obj"), vertices, model.faces, model.uv
            )
            per_image[i]["files"] = {"obj": path}
    if average and model.resolution:
        mean, coverage = outputs.average_textures(texture, mask)
        outputs.write_png(os.path.join(out_dir, "average_texture.png"), mean)
        outputs.write_png(
            os.path.join(out_dir, "average_coverage.png"),
            255.0 * coverage / max(1.0, float(coverage.max())),
        )
    with open(os.path.join(out_dir, "fit.json"), "w") as f:
        json.dump({"images": per_image}, f, indent=1)


def fit_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax3dmmstn fit", description="Fit theta to 2D landmarks and write outputs."
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
    args = parser.parse_args(argv)
    from jax3dmmstn import fitting
    from jax3dmmstn.core import geometry

    try:
        model = load_model(args.model, args.landmarks)
        images, landmarks, visible, names = load_data(args.data)
        landmark_set = _pick_landmark_set(model, landmarks.shape[1])
        start = time.perf_counter()
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
                prior=args.prior_weight,
                symmetry=args.symmetry_weight,
                siamese=args.siamese_weight,
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
            theta = np.asarray(theta)
        seconds = (time.perf_counter() - start) / len(names)  # includes compilation
    except (ValueError, FileNotFoundError) as error:
        print(f"fit: error: {error}", file=sys.stderr)
        return 2
    mean_l, basis_l = fitting.landmark_shape_model(
        model.mean, model.basis, model.landmarks[landmark_set]
    )
    fitted = np.asarray(fitting.project_landmarks(theta, mean_l, basis_l))
    rmse = np.asarray(fitting.landmark_rmse(fitted, landmarks, visible))
    yaw_pitch_roll = np.asarray(
        geometry.matrix_to_yaw_pitch_roll(geometry.axis_angle_to_matrix(theta_lib.rotation(theta)))
    )
    per_image = [
        {
            "name": names[i],
            "theta": theta[i].tolist(),
            "yaw_pitch_roll_degrees": yaw_pitch_roll[i].tolist(),
            "landmark_rmse_px": float(rmse[i]),
            "iterations": int(result.iterations[i]),
            "texture_steps": args.texture_steps,
            "seconds": seconds,
        }
        for i in range(len(names))
    ]
    write_results(
        args.out, model, images, theta, landmarks, visible, fitted, names, per_image, args.average
    )
    print(
        f"fitted {len(names)} images: mean landmark RMSE "
        f"{float(np.mean(rmse)):.3f} px; wrote {args.out}/fit.json"
    )
    return 0


def _face_crop(image, path: str, args, out_size: int):
    """Crops a square around ``--box`` or the image's .pts landmarks (a PIL image in and out).

    Without either option the image is returned unchanged.
    """
    from PIL import Image

    from jax3dmmstn.data import loaders, preprocess

    if args.box is None and not args.pts:
        return image
    pixels = np.asarray(image, np.float32)
    size = pixels.shape[:2]
    if args.pts:
        points = loaders.pts_to_image_frame(
            loaders.read_pts(os.path.splitext(path)[0] + ".pts"), size
        )
    else:
        col0, row0, col1, row1 = args.box
        if not (col1 > col0 and row1 > row0):
            raise ValueError(f"--box needs COL1 > COL0 and ROW1 > ROW0, got {args.box}")
        points = preprocess.pixels_to_landmarks(np.array([[col0, row0], [col1, row1]]), size)
    example = {
        "image": pixels,
        "landmarks": points,
        "landmark_visible": np.ones(len(points), np.float32),
    }
    cropped = preprocess.crop_around_landmarks(example, out_size=out_size, margin=args.margin)
    return Image.fromarray(np.clip(np.rint(cropped["image"]), 0, 255).astype(np.uint8))


def predict_main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jax3dmmstn predict", description="Run a trained localiser on images."
    )
    parser.add_argument("--checkpoint", required=True, help="training workdir (has checkpoints/)")
    parser.add_argument("--images", required=True, nargs="+", help="image files")
    parser.add_argument("--out", required=True)
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument(
        "--box",
        nargs=4,
        type=float,
        metavar=("COL0", "ROW0", "COL1", "ROW1"),
        help="face box of every image (0-based pixels, y down): crop a square around it",
    )
    crop.add_argument(
        "--pts",
        action="store_true",
        help="crop around the landmarks of the iBUG .pts file next to each image (IMAGE.pts)",
    )
    parser.add_argument(
        "--margin", type=float, default=0.25, help="crop margin, fraction of the box side"
    )
    args = parser.parse_args(argv)
    try:
        import jax
        import ml_collections
        import orbax.checkpoint as ocp
        from PIL import Image
        from jax3dmmstn import training
        from jax3dmmstn.core import geometry
    except ImportError as error:
        print(f"predict: error: cannot import the training code ({error})", file=sys.stderr)
        return 2
    directory = os.path.join(os.path.abspath(args.checkpoint), "checkpoints")
    if not os.path.isdir(directory):
        print(
            f"predict: error: {directory} does not exist: --checkpoint must be a training workdir",
            file=sys.stderr,
        )
        return 2
    manager = ocp.CheckpointManager(directory, item_names=("state", "config"))
    step = manager.latest_step()
    if step is None:
        print(f"predict: error: no checkpoint in {directory}", file=sys.stderr)
        return 2
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), config=ocp.args.JsonRestore()),
    )
    manager.close()
    config = ml_collections.ConfigDict(dict(restored["config"]))
    params = restored["state"]["params"]
    try:
        morphable = training.build_morphable_model(config)
        model = training.build_model(config, morphable)
    except (ValueError, OSError) as error:
        print(f"predict: error: cannot rebuild the checkpoint's model: {error}", file=sys.stderr)
        return 2
    height, width = tuple(config.data.image_size)
    images = []
    for path in args.images:
        try:
            image = Image.open(path).convert("RGB")
        except OSError as error:  # missing file or not an image
            print(f"predict: error: cannot read image {path}: {error}", file=sys.stderr)
            return 2
        try:
            image = _face_crop(image, path, args, width)
        except (ValueError, OSError) as error:
            print(f"predict: error: cannot crop {path}: {error}", file=sys.stderr)
            return 2
        if image.size != (width, height):
            # The localiser was trained on crops of this size: a photo must be cropped around
            # the face first (resizing keeps the whole picture, stretched).
            print(
                f"predict: note: resized {path} from {image.size[0]}x{image.size[1]} to the "
                f"model's {width}x{height}",
                file=sys.stderr,
            )
            image = image.resize((width, height), Image.BILINEAR)
        images.append(np.asarray(image, np.float32))
    images = np.stack(images)
    # The STN's own landmarks: its landmark set and scale parametrisation (the config's).
    out = jax.jit(model.apply)({"params": params}, images)
    theta = np.asarray(out["theta"])
    predicted = np.asarray(out["landmarks"])
    ypr = np.asarray(geometry.matrix_to_yaw_pitch_roll(out["R"]))
    names = [os.path.splitext(os.path.basename(p))[0] for p in args.images]
    per_image = [
        {
            "name": names[i],
            "theta": theta[i].tolist(),
            "yaw_pitch_roll_degrees": ypr[i].tolist(),
            "landmarks": predicted[i].tolist(),
        }
        for i in range(len(names))
    ]
    write_results(
        args.out,
        morphable,
        images,
        theta,
        predicted,
        np.zeros(predicted.shape[:2]),
        predicted,
        names,
        per_image,
        parametrisation=config.model.get("scale_parametrisation", "matconvnet"),
    )
    print(f"predicted {len(names)} images (checkpoint step {step}); wrote {args.out}")
    return 0
