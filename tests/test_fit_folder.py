"""``jax3dmmstn fit`` and ``jax3dmmstn evaluate --fit`` on an AFLW2000-3D-style folder.

The fixture labels are the synthetic model's own landmarks projected with known poses, so
the fit recovers each pose (error ~0) and its 68 points (NME ~0).
"""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from PIL import Image

from jax3dmmstn import cli
from jax3dmmstn.core import geometry, pose
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.facemodel.synthetic import synthetic_face_model

SIZE = 120  # image side (pixels)
# (yaw, pitch, roll) degrees; the last label stores pitch - 360: the same head, but outside
# the +-99 degree pose protocol (scored for NME, not for pose).
POSES = [(10.0, -5.0, 3.0), (-40.0, 10.0, -8.0), (65.0, 5.0, 0.0), (20.0, -380.0, 4.0)]


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model()


def _project(model, ypr, landmark_set):
    """The set's points [L, 2] (image frame) of the mean face at pose ``ypr``."""
    rotation = pose.pose_to_matrix(jnp.asarray(ypr, jnp.float32))
    r = np.asarray(geometry.matrix_to_axis_angle(rotation))
    logs = float(geometry.scale_to_log_scale(jnp.float32(0.4)))
    theta = theta_lib.merge(r, np.array([60.0, 58.0]), logs, np.zeros(model.n_components))
    points = geometry.project_theta(jnp.asarray(theta[None], jnp.float32), model.mean, model.basis)
    return np.asarray(points.points2d[0, model.landmarks[landmark_set]])


def _to_matlab(points):
    """Image frame [L, 2] -> 1-based (x, y down) pixels [2, L], as the .mat files hold them."""
    return (np.asarray(geometry.image_frame_to_pixels(points, (SIZE, SIZE))) + 1.0).T


def write_folder(folder, model, poses=POSES):
    folder.mkdir(parents=True, exist_ok=True)
    for i, ypr in enumerate(poses):
        name = f"image{i:05d}"
        pt3d = np.concatenate([_to_matlab(_project(model, ypr, "ibug68")), np.zeros((1, 68))])
        pt2d = _to_matlab(_project(model, ypr, "aflw21"))
        pt2d[:, 12] = (-1, SIZE + 2)  # an invisible AFLW point (the files' (-1, 452))
        yaw, pitch, roll = np.radians(ypr)
        scipy.io.savemat(
            folder / f"{name}.mat",
            {
                "pt3d_68": pt3d.astype(np.float32),
                "pt2d": pt2d,
                "Pose_Para": np.array([[pitch, yaw, roll, 60, 58, 0, 4e-4]], np.float32),
                "Shape_Para": np.zeros((199, 1), np.float32),
                "Exp_Para": np.zeros((29, 1), np.float32),
                "roi": np.array([[10, 10, 110, 110]], np.int16),
            },
        )
        Image.fromarray(np.full((SIZE, SIZE, 3), 90 + 20 * i, np.uint8)).save(
            folder / f"{name}.jpg"
        )
    return folder


def test_fit_folder_recovers_poses_and_summarises(tmp_path, model, capsys):
    data = write_folder(tmp_path / "AFLW2000", model)
    out = tmp_path / "fit"
    argv = ["fit", "--model", "synthetic", "--data", str(data), "--out", str(out)]
    assert cli.main(argv + ["--prior-weight", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "pose MAE (deg, 3 images within +-99)" in printed and "NME-68" in printed
    document = json.loads((out / "fit.json").read_text())
    entries = document["images"]
    assert [e["name"] for e in entries] == [f"image{i:05d}" for i in range(4)]
    for entry, ypr in zip(entries, POSES):
        assert entry["landmark_rmse_px"] < 0.1
        assert entry["nme68"] < 1e-3
        np.testing.assert_allclose(entry["label_yaw_pitch_roll_degrees"], ypr, atol=1e-4)
        assert len(entry["landmarks_ibug68"]) == 68 and "files" not in entry  # no pictures
    for entry in entries[:3]:
        np.testing.assert_allclose(
            entry["yaw_pitch_roll_degrees"], entry["label_yaw_pitch_roll_degrees"], atol=0.5
        )
        assert max(entry["pose_error_degrees"]) < 0.5
    assert entries[3]["pose_error_degrees"][1] == pytest.approx(360.0, abs=0.5)  # not wrapped
    summary = document["summary"]
    assert summary["pose_mae_degrees"]["count"] == 3 and summary["pose_mae_degrees"]["mean"] < 0.5
    assert summary["nme68_percent"]["counts"] == [2, 1, 1]  # |yaw| 10, 20 | 40 | 65
    assert not any((out / f"image00000{s}").exists() for s in ("_overlay.png", ".obj"))


def test_fit_folder_aflw21_and_images(tmp_path, model):
    data = write_folder(tmp_path / "AFLW2000", model, POSES[:2])
    out = tmp_path / "fit21"
    argv = ["fit", "--model", "synthetic", "--data", str(data), "--out", str(out)]
    assert cli.main(argv + ["--landmarks", "aflw21", "--prior-weight", "0.01", "--images"]) == 0
    entries = json.loads((out / "fit.json").read_text())["images"]
    for entry in entries:
        # NME-21 compares the 21 points 3DDFA derives from the fitted 68 (means of iBUG
        # points) with pt2d, here the model's own 21 vertices: close, not equal.
        assert max(entry["pose_error_degrees"]) < 1.0 and entry["nme21"] < 0.05
        assert entry["files"]
    assert (out / "image00000_overlay.png").is_file()


def test_evaluate_fit_json_scores_by_name(tmp_path, model, capsys):
    data = write_folder(tmp_path / "AFLW2000", model)
    out = tmp_path / "fit"
    assert cli.main(["fit", "--model", "synthetic", "--data", str(data), "--out", str(out)]) == 0
    fitted = json.loads((out / "fit.json").read_text())
    fitted["images"] = fitted["images"][::-1]  # order must not matter: names do
    (out / "fit.json").write_text(json.dumps(fitted))
    capsys.readouterr()
    evaluation = tmp_path / "eval"
    argv = ["evaluate", "--fit", str(out / "fit.json"), "--aflw2000", str(data)]
    assert cli.main(argv + ["--out", str(evaluation)]) == 0
    assert "pose MAE (deg, 3 images within +-99)" in capsys.readouterr().out
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["num_images"] == 4 and summary["pose_mae_degrees"]["count"] == 3
    assert summary["nme68_percent"]["all"] == pytest.approx(
        fitted["summary"]["nme68_percent"]["all"], rel=1e-6
    )
    rows = (evaluation / "per_image.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("name,")


def test_fit_folder_errors_exit_2(tmp_path, model, capsys):
    def fit(data, *extra, model_spec="synthetic"):
        argv = ["fit", "--model", model_spec, "--data", str(data), "--out", str(tmp_path / "o")]
        return cli.main(argv + list(extra))

    assert fit(tmp_path / "missing") == 2
    assert "no such" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert fit(tmp_path / "empty") == 2
    error = capsys.readouterr().err
    assert "empty" in error and len(error.strip().splitlines()) == 1
    data = write_folder(tmp_path / "AFLW2000", model, POSES[:2])
    landmarks = {"aflw21": model.landmarks["aflw21"]}
    flips = {"aflw21": model.landmark_flip["aflw21"]}
    no68 = dataclasses.replace(model, landmarks=landmarks, landmark_flip=flips)
    no68.save(tmp_path / "no68.npz")
    assert fit(data, model_spec=str(tmp_path / "no68.npz")) == 2
    error = capsys.readouterr().err
    assert "'ibug68'" in error and len(error.strip().splitlines()) == 1
    (data / "image00000.jpg").unlink()  # a label without its image
    assert fit(data) == 2
    assert "image00000.jpg" in capsys.readouterr().err
    assert fit(data, "--on-error", "skip") == 0
    entries = json.loads((tmp_path / "o" / "fit.json").read_text())["images"]
    assert [e["name"] for e in entries] == ["image00001"]


def test_evaluate_aflw2000_errors_exit_2(tmp_path, model, capsys):
    assert (
        cli.main(["evaluate", "--fit", str(tmp_path / "nofit.json"), "--aflw2000", str(tmp_path)])
        == 2
    )
    assert "nofit.json" in capsys.readouterr().err
    data = write_folder(tmp_path / "AFLW2000", model, POSES[:1])
    (tmp_path / "fit.json").write_text(json.dumps({"images": [{"name": "image00000"}]}))
    argv = ["evaluate", "--fit", str(tmp_path / "fit.json"), "--aflw2000", str(data)]
    assert cli.main(argv) == 2
    assert "landmarks_ibug68" in capsys.readouterr().err
    assert cli.main(["evaluate", "--aflw2000", str(data)]) == 2  # needs --fit or --checkpoint


def test_crop_for_the_network_maps_back_exactly(tmp_path, model):
    from jax3dmmstn.data import preprocess
    from jax3dmmstn.data.raw_folders import load_aflw2000_3d
    from jax3dmmstn.evaluation import aflw2000_stn

    data = write_folder(tmp_path / "AFLW2000", model, POSES[1:2])
    example = load_aflw2000_3d(str(data))[0]
    test_set = aflw2000_stn.own_crops_test_set(str(data), 64, 0.25)
    assert test_set.images.shape == (1, 64, 64, 3)
    target = {
        "image": example["image"],
        "landmarks": example["landmarks_ibug68"],
        "landmark_visible": np.ones(68),
    }
    box = preprocess.square_box(preprocess.landmark_box(target), 0.25)
    cropped = preprocess.crop_to_box(target, box, 64)
    np.testing.assert_array_equal(test_set.images[0], cropped["image"])
    back = aflw2000_stn.crop_points_to_image(cropped["landmarks"][None], test_set, (64, 64))
    np.testing.assert_allclose(back[0], example["landmarks_ibug68"], atol=1e-3)


class _FakeNetwork:
    """Puts every vertex at the crop's centre, frontal (R = identity)."""

    def apply(self, variables, images):
        batch = images.shape[0]
        return {
            "points2d": jnp.full((batch, 100, 2), 32.0),
            "R": jnp.broadcast_to(jnp.eye(3), (batch, 3, 3)),
        }


def _fake_trained(landmark_sets):
    import types

    import ml_collections

    from jax3dmmstn.training.checkpoint import TrainedModel

    config = ml_collections.ConfigDict({"data": {"image_size": (64, 64), "crop_margin": 0.25}})
    face_model = types.SimpleNamespace(landmarks={k: np.arange(68) for k in landmark_sets})
    return TrainedModel(config, face_model, _FakeNetwork(), {}, 7)


def test_evaluate_checkpoint_on_aflw2000(tmp_path, model, monkeypatch, capsys):
    from jax3dmmstn.training import checkpoint

    data = write_folder(tmp_path / "AFLW2000", model)
    monkeypatch.setattr(
        checkpoint, "load_trained", lambda workdir: _fake_trained(("aflw21", "ibug68"))
    )
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(tmp_path), "--aflw2000", str(data), "--out", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint_step"] == 7 and summary["num_images"] == 4
    # Frontal predictions: the pose MAE is the mean |label| over the 3 protocol images.
    labels = np.abs(np.array(POSES[:3]))
    assert summary["pose_mae_degrees"]["yaw"] == pytest.approx(labels[:, 0].mean(), abs=1e-3)
    assert summary["pose_mae_degrees"]["mean"] == pytest.approx(labels.mean(), abs=1e-3)
    assert summary["nme68_percent"]["all"] > 1.0  # every point at the crop's centre
    monkeypatch.setattr(checkpoint, "load_trained", lambda workdir: _fake_trained(("aflw21",)))
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "'ibug68'" in capsys.readouterr().err
