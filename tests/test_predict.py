"""``jax3dmmstn predict`` end to end: a tiny training run, two rendered PNGs, predict.

The run uses ``scale_parametrisation="exp"`` (s = exp(logs)) rather than the original's
s = 0.99 ** logs: the two agree nowhere that matters, so output that ignores the checkpoint's
parametrisation puts the landmarks, texture and mesh in the wrong place and fails here.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jax3dmmstn import training
from jax3dmmstn import predict as predict_cli
from jax3dmmstn.core import pose
from jax3dmmstn.configs import load_config
from jax3dmmstn.data import SyntheticFaces, loaders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 64
RESOLUTION = 16


def _tiny_config():
    config = load_config("synthetic")
    config.morphable_model.resolution = RESOLUTION
    config.data.image_size = (IMAGE_SIZE, IMAGE_SIZE)
    config.data.train_size = 8
    config.data.eval_size = 4
    config.data.eval_batch_size = 4
    config.data.prefetch = 0
    config.model.localiser_input_size = (32, 32)
    config.model.localiser_kwargs = dict(widths=(4, 8), convs_per_stage=1, hidden=16)
    config.model.scale_parametrisation = "exp"
    config.batch_size = 4
    config.total_steps = 3
    config.parallel = "jit"
    config.eval_every = 0
    config.checkpoint_every = 0
    config.final_eval = False
    config.snapshots = False
    config.progress_bar = False
    return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, final params, morphable model, two rendered images [2, S, S, 3] uint8)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _tiny_config()
    _, state = training.train_and_evaluate(config, workdir, return_state=True)
    morphable = training.build_morphable_model(config)
    faces = SyntheticFaces(
        morphable,
        training.synthetic_render_config(config),
        seed=3,
        stream="heldout",
        num_examples=2,
    )
    images = faces.load_batch(np.arange(2))["image"]
    return workdir, config, state.params, morphable, images


def _save_pngs(directory, images, names):
    paths = []
    for image, name in zip(images, names):
        path = os.path.join(directory, f"{name}.png")
        Image.fromarray(np.asarray(image)).save(path)
        paths.append(path)
    return paths


def _read_obj(path):
    vertices, faces = [], []
    with open(path) as handle:
        for line in handle:
            if line.startswith("v "):
                vertices.append([float(v) for v in line.split()[1:]])
            elif line.startswith("f "):
                faces.append([int(corner.split("/")[0]) - 1 for corner in line.split()[1:]])
    return np.array(vertices), np.array(faces)


def test_predict_writes_the_networks_theta_landmarks_textures_and_meshes(run, tmp_path):
    workdir, config, params, morphable, images = run
    paths = _save_pngs(tmp_path, images, ["alice", "bob"])
    out_dir = tmp_path / "predictions"
    argv = ["--checkpoint", workdir, "--images", *paths, "--out", str(out_dir)]
    assert predict_cli.main(argv) == 0

    # What the trained network itself gives for these images.
    model = training.build_model(config, morphable)
    expected = jax.device_get(model.apply({"params": params}, images.astype(np.float32)))
    n_theta = 6 + morphable.n_components
    report = json.loads((out_dir / "fit.json").read_text())["images"]
    assert [entry["name"] for entry in report] == ["alice", "bob"]
    for i, entry in enumerate(report):
        theta = np.array(entry["theta"])
        assert theta.shape == (n_theta,) and np.all(np.isfinite(theta))
        np.testing.assert_allclose(theta, expected["theta"][i], rtol=1e-5, atol=1e-5)
        ypr = np.array(entry["yaw_pitch_roll_degrees"])
        true_ypr = np.asarray(pose.matrix_to_pose(expected["R"][i]))
        np.testing.assert_allclose(ypr, true_ypr, atol=1e-3)
        landmarks = np.array(entry["landmarks"])
        assert landmarks.shape == (68, 2)  # the synthetic config's 'ibug68' set
        np.testing.assert_allclose(landmarks, expected["landmarks"][i], rtol=1e-5, atol=1e-3)
        # s = exp(logs) puts the face inside the image (0.99 ** logs would make it ~5x larger).
        assert np.all((landmarks > 0) & (landmarks < IMAGE_SIZE))

        files = entry["files"]
        assert set(files) == {"overlay", "texture", "mask", "masked_texture", "obj"}
        assert all(os.path.isfile(path) for path in files.values())
        overlay = np.asarray(Image.open(files["overlay"]))
        assert overlay.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert np.any(overlay != images[i])  # the landmarks and mesh are drawn on it
        texture = np.asarray(Image.open(files["texture"]), np.float32)
        assert texture.shape == (RESOLUTION, RESOLUTION, 3)
        np.testing.assert_allclose(texture, np.round(expected["texture"][i]), atol=1.0)
        mask = np.asarray(Image.open(files["mask"]), np.float32)
        np.testing.assert_array_equal(mask, 255.0 * expected["mask"][i, ..., 0])
        vertices, faces = _read_obj(files["obj"])
        np.testing.assert_allclose(
            vertices, morphable.shape(expected["theta"][i, 6:]), rtol=1e-5, atol=1e-4
        )
        np.testing.assert_array_equal(faces, morphable.faces)
        assert os.path.isfile(os.path.splitext(files["obj"])[0] + ".mtl")


def test_predict_resizes_other_sizes_and_rejects_bad_input(run, tmp_path, capsys):
    workdir, _, _, _, images = run
    big = np.repeat(np.repeat(images[:1], 2, axis=1), 2, axis=2)  # 2x nearest upsampling
    (path,) = _save_pngs(tmp_path, big, ["large"])
    out_dir = tmp_path / "out"
    assert predict_cli.main(["--checkpoint", workdir, "--images", path, "--out", str(out_dir)]) == 0
    assert "resized" in capsys.readouterr().err
    (entry,) = json.loads((out_dir / "fit.json").read_text())["images"]
    assert np.all(np.isfinite(entry["theta"]))

    missing = str(tmp_path / "missing.png")
    assert (
        predict_cli.main(["--checkpoint", workdir, "--images", missing, "--out", str(out_dir)]) == 2
    )
    assert "missing.png: no such file or folder" in capsys.readouterr().err
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a PNG")
    assert (
        predict_cli.main(
            ["--checkpoint", workdir, "--images", str(not_an_image), "--out", str(out_dir)]
        )
        == 2
    )
    assert "cannot read image" in capsys.readouterr().err

    # Through the command line: a folder that is not a training workdir.
    result = subprocess.run(
        [sys.executable, "-m", "jax3dmmstn", "predict", "--checkpoint", str(tmp_path)]
        + ["--images", path, "--out", str(out_dir)],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "predict: error" in result.stderr and str(tmp_path) in result.stderr


def test_predict_crops_a_face_box_or_pts_landmarks(run, tmp_path, capsys):
    workdir, _, _, _, images = run
    # The face image pasted into a larger canvas at (row 30, column 50).
    canvas = np.full((1, 150, 170, 3), 90, np.uint8)
    canvas[0, 30 : 30 + IMAGE_SIZE, 50 : 50 + IMAGE_SIZE] = images[0]
    (path,) = _save_pngs(tmp_path, canvas, ["canvas"])
    (direct,) = _save_pngs(tmp_path, images[:1], ["direct"])
    # A box whose square crop (margin 0) is exactly the pasted image: pixel centres
    # 50 .. 50 + 63, so its edges lie half a pixel outside them.
    box = ["49.5", "29.5", str(50 + IMAGE_SIZE - 0.5), str(30 + IMAGE_SIZE - 0.5)]
    common = ["--checkpoint", workdir, "--out"]
    assert (
        predict_cli.main(
            common + [str(tmp_path / "box"), "--images", path, "--box", *box, "--margin", "0"]
        )
        == 0
    )
    assert predict_cli.main(common + [str(tmp_path / "direct"), "--images", direct]) == 0
    cropped = json.loads((tmp_path / "box" / "fit.json").read_text())["images"][0]
    whole = json.loads((tmp_path / "direct" / "fit.json").read_text())["images"][0]
    np.testing.assert_allclose(cropped["theta"], whole["theta"], rtol=1e-4, atol=1e-3)

    # --pts: crop around the landmarks of canvas.pts (1-based, y down).
    corners = np.array([[60.0, 40.0], [100.0, 40.0], [80.0, 85.0]])
    with open(tmp_path / "canvas.pts", "w") as handle:
        handle.write("version: 1\nn_points: 3\n{\n")
        handle.writelines(f"{x} {y}\n" for x, y in corners)
        handle.write("}\n")
    assert predict_cli.main(common + [str(tmp_path / "pts"), "--images", path, "--pts"]) == 0
    entry = json.loads((tmp_path / "pts" / "fit.json").read_text())["images"][0]
    assert np.all(np.isfinite(entry["theta"]))

    # A missing .pts file and an empty box are clear errors.
    os.remove(tmp_path / "canvas.pts")
    capsys.readouterr()
    assert predict_cli.main(common + [str(tmp_path / "x"), "--images", path, "--pts"]) == 2
    assert "cannot crop" in capsys.readouterr().err
    bad_box = ["--box", "10", "10", "5", "20"]
    assert predict_cli.main(common + [str(tmp_path / "y"), "--images", path, *bad_box]) == 2
    assert "COL1 > COL0" in capsys.readouterr().err


def test_predict_takes_a_folder_of_photos_as_they_come(run, tmp_path):
    """Different sizes and formats, grey and colour, face boxes from .pts files and a boxes
    file, several batches: every output is named after its photo."""
    workdir, _, _, _, images = run
    folder = tmp_path / "photos"
    folder.mkdir()
    face = images[0]
    for name, size, suffix, mode in [
        ("einstein", 150, ".jpg", "RGB"),
        ("curie", 90, ".png", "L"),
        ("bohr", 80, ".ppm", "RGB"),
    ]:
        canvas = np.full((size, size + 20, 3), 120, np.uint8)
        canvas[10 : 10 + IMAGE_SIZE, 15 : 15 + IMAGE_SIZE] = face
        Image.fromarray(canvas).convert(mode).save(folder / f"{name}{suffix}")
        if name != "bohr":  # bohr's box comes from the boxes file
            loaders.write_pts(str(folder / f"{name}.pts"), np.array([[20.0, 15.0], [75.0, 70.0]]))
    boxes = tmp_path / "boxes.txt"
    boxes.write_text("bohr.ppm 15 10 78 73\n")
    out = tmp_path / "out"
    argv = ["--checkpoint", workdir, "--images", str(folder), "--out", str(out)]
    assert predict_cli.main(argv + ["--boxes", str(boxes), "--batch-size", "2"]) == 0
    report = json.loads((out / "fit.json").read_text())["images"]
    assert [entry["name"] for entry in report] == ["bohr", "curie", "einstein"]
    for name in ("bohr", "curie", "einstein"):
        assert (out / f"{name}_overlay.png").is_file() and (out / f"{name}.obj").is_file()
    assert all(np.all(np.isfinite(entry["theta"])) for entry in report)
