"""``jax3dmmstn fit`` on photos as they come: several sizes and formats, grey and colour,
each with its .pts file; outputs named after the photos; bad files skipped with a reason."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jax3dmmstn import cli
from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.data import loaders
from jax3dmmstn.facemodel.synthetic import synthetic_face_model

# name, canvas (height, width), format, PIL mode, yaw
PHOTOS = [
    ("einstein", (300, 260), ".jpg", "RGB", 15.0),
    ("curie", (180, 200), ".png", "L", -25.0),
    ("bohr", (240, 240), ".ppm", "RGB", 5.0),
]


def _pts_of_pose(model, yaw, size):
    """1-based (x, y down) pixels [68, 2] of the mean face's ibug68 points at ``yaw``."""
    rotation = pose.pose_to_matrix(jnp.asarray([yaw, 5.0, -3.0], jnp.float32))
    r = np.asarray(geometry.matrix_to_axis_angle(rotation))
    height, width = size
    scale = float(geometry.scale_to_log_scale(jnp.float32(0.5 * min(size) / 120.0)))
    theta = theta_lib.merge(r, np.array([width / 2, height / 2]), scale, np.zeros(10))
    chain = geometry.project_theta(jnp.asarray(theta[None], jnp.float32), model.mean, model.basis)
    points = np.asarray(chain.points2d[0, model.landmarks["ibug68"]])
    return np.asarray(geometry.image_frame_to_pixels(points, size)) + 1.0


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model()


def _write_photos(folder, model):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size, suffix, mode, yaw in PHOTOS:
        pixels = rng.integers(60, 200, size + (3,), dtype=np.uint8)
        Image.fromarray(pixels).convert(mode).save(folder / f"{name}{suffix}")
        loaders.write_pts(str(folder / f"{name}.pts"), _pts_of_pose(model, yaw, size))


def test_fit_takes_a_folder_of_photos_and_names_outputs_after_them(model, tmp_path):
    folder = tmp_path / "photos"
    _write_photos(folder, model)
    out = tmp_path / "out"
    argv = ["fit", "--model", "synthetic", "--data", str(folder), "--out", str(out)]
    assert cli.main(argv + ["--size", "96"]) == 0
    report = json.loads((out / "fit.json").read_text())["images"]
    assert [entry["name"] for entry in report] == ["bohr", "curie", "einstein"]
    for entry, (name, _, _, _, yaw) in zip(report, sorted(PHOTOS)):
        assert (out / f"{name}_overlay.png").is_file() and (out / f"{name}.obj").is_file()
        assert entry["landmark_rmse_px"] < 0.5  # the mean face's own points, cropped
        assert abs(entry["yaw_pitch_roll_degrees"][0] - yaw) < 1.0
    assert Image.open(out / "curie_overlay.png").size == (96, 96)


def test_bad_photos_are_skipped_with_their_reason_or_stop_the_fit(model, tmp_path, capsys):
    folder = tmp_path / "photos"
    _write_photos(folder, model)
    Image.new("RGB", (50, 40)).save(folder / "nopts.png")
    Image.new("RGB", (50, 40)).save(folder / "onepoint.png")
    loaders.write_pts(str(folder / "onepoint.pts"), np.array([[3.0, 4.0]]))
    (folder / "broken.jpg").write_text("not a JPEG")
    loaders.write_pts(str(folder / "broken.pts"), np.ones((68, 2)))
    argv = ["fit", "--model", "synthetic", "--data", str(folder / "*"), "--out"]
    assert cli.main(argv + [str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.jpg: not a readable image" in err
    assert cli.main(argv + [str(tmp_path / "b"), "--on-error", "skip"]) == 0
    err = capsys.readouterr().err
    assert "nopts.png: no .pts file next to it" in err and "broken.jpg: not a readable" in err
    assert "onepoint.pts: its points span no face" in err
    names = [e["name"] for e in json.loads((tmp_path / "b" / "fit.json").read_text())["images"]]
    assert names == ["bohr", "curie", "einstein"]
    loaders.write_pts(str(folder / "onepoint.pts"), np.array([[3.0, 4.0], [30.0, 35.0]]))
    assert cli.main(argv + [str(tmp_path / "c"), "--on-error", "skip"]) == 2
    assert "different numbers of points: [2, 68]" in capsys.readouterr().err
