"""The ``aflw`` config end to end on fixture folders: 3DDFA's AFLW crops for training and
AFLW2000-3D (.mat labels + 3DDFA's crops) scored during training and after it
(jax3dmmstn.evaluation.aflw2000_stn). Fixture writers come from the readers' tests."""

import json
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_data_aflw_crops import NAMES, _write
from test_data_raw import _label

from jax3dmmstn import training
from jax3dmmstn.configs import load_config
from jax3dmmstn.data import aflw_crops
from jax3dmmstn.evaluation import aflw2000, aflw2000_stn

TEST_STEMS = [n[:-4] for n in NAMES if n[:-4] in aflw_crops.aflw2000_test_names()]


def _aflw2000_folder(root, seed=0):
    """The AFLW2000-3D images of the crop fixture (450 x 450 JPEG + .mat)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for stem in TEST_STEMS:
        image = rng.integers(0, 256, (450, 450, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, stem + ".jpg"), quality=90)
        scipy.io.savemat(os.path.join(root, stem + ".mat"), _label(rng))
    return str(root)


def _tiny_config(tmp_path):
    config = load_config("aflw")
    config.data.root = _write(str(tmp_path / "aflw"))
    config.eval.aflw2000_root = _aflw2000_folder(tmp_path / "AFLW2000")
    config.data.eval_batch_size = 2
    config.data.prefetch = 0
    config.morphable_model.resolution = 16
    config.model.localiser_input_size = (16, 16)
    config.model.localiser_kwargs = {"widths": (4, 8), "convs_per_stage": 1, "hidden": 16}
    config.model.init_head_from_data = False  # random fixture points fit no face
    config.batch_size = 2
    config.total_steps = 2
    config.optim.warmup_steps = 1
    config.checkpoint_every = 2
    config.eval_every = 2
    config.snapshots = False
    config.progress_bar = False
    config.tensorboard = "off"
    config.parallel = "jit"
    return config


def test_aflw_config_trains_on_crops_and_scores_aflw2000_as_evaluate_does(tmp_path):
    assert len(TEST_STEMS) == 2  # the fixture holds two test images and four training ones
    config = _tiny_config(tmp_path)
    workdir = str(tmp_path / "work")
    summary = training.train_and_evaluate(config, workdir)
    saved = json.loads(open(os.path.join(workdir, "final_metrics.json")).read())
    for key in ("pose_mae_deg", "nme68_all", "nme21_all", "pose_mae_yaw_deg", "nme68_yaw_0_30"):
        assert np.isfinite(saved["aflw2000_" + key]), key
    assert np.isnan(saved["aflw2000_nme68"])  # both test images are in one yaw bin
    assert saved["aflw2000_pose_mae_deg"] == pytest.approx(summary["aflw2000_pose_mae_deg"])
    # The held-out set is training-split crops (2 of the 4), never the test images.
    assert np.isfinite(summary["nme"])
    # The same checkpoint scored after training, on the same crops, gives the same numbers.
    rows, after = aflw2000_stn.evaluate_checkpoint(workdir, config.eval.aflw2000_root)
    flat = aflw2000_stn.flat_metrics(after)
    for key, value in flat.items():
        assert value == pytest.approx(saved[key], rel=1e-5, nan_ok=True), key
    assert sorted(r["name"] for r in rows) == TEST_STEMS


def test_flip_tested_run_is_scored_as_it_was_trained(tmp_path):
    config = _tiny_config(tmp_path)
    config.eval.flip_test = True
    workdir = str(tmp_path / "work")
    training.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "final_metrics.json")) as handle:
        saved = json.load(handle)
    _, after = aflw2000_stn.evaluate_checkpoint(workdir, config.eval.aflw2000_root)
    assert after["flip_test"] is True
    flat = aflw2000_stn.flat_metrics(after)
    for key, value in flat.items():
        assert value == pytest.approx(saved[key], rel=1e-5, nan_ok=True), key
    _, plain = aflw2000_stn.evaluate_checkpoint(workdir, config.eval.aflw2000_root, flip=False)
    assert plain["flip_test"] is False
    plain = aflw2000_stn.flat_metrics(plain)
    assert plain["aflw2000_nme68_all"] != pytest.approx(flat["aflw2000_nme68_all"], rel=1e-6)


def test_aflw_config_needs_the_crops_folder():
    config = load_config("aflw")
    with pytest.raises(ValueError, match="data.root"):
        training.build_heldout(config, None)


def test_flat_metrics_names_and_values():
    names = ["a", "b", "c"]
    gt68 = np.random.default_rng(0).uniform(0, 100, (3, 68, 2))
    pred68 = gt68 + np.array([1.0, 0.0])  # every point 1 px off
    label = np.array([[10.0, 0.0, 0.0], [45.0, 5.0, 0.0], [80.0, 0.0, 120.0]])  # c outside +-99
    pred = label + np.array([2.0, -4.0, 0.0])
    gt21 = aflw2000.ibug68_to_aflw21(gt68)
    test_set = aflw2000_stn.TestSet(
        np.zeros((3, 4, 4, 3)),
        np.zeros((3, 2)),
        np.ones(3),
        np.full((3, 2), 100),
        aflw2000.Labels(names, gt68, gt21, np.ones((3, 21)), label),
    )
    flat = aflw2000_stn.flat_metrics(aflw2000_stn.score(test_set, pred68, pred)[1])
    box = aflw2000.gt68_box_size(gt68)
    nme = 100.0 / box  # percent, one image per bin
    assert flat["aflw2000_nme68"] == pytest.approx(nme.mean())
    assert flat["aflw2000_nme68_yaw_30_60"] == pytest.approx(nme[1])
    assert flat["aflw2000_nme68_all"] == pytest.approx(nme.mean())
    assert flat["aflw2000_nme21"] == pytest.approx(nme.mean())
    assert flat["aflw2000_pose_mae_yaw_deg"] == pytest.approx(2.0)  # image c is left out
    assert flat["aflw2000_pose_mae_pitch_deg"] == pytest.approx(4.0)
    assert flat["aflw2000_pose_mae_deg"] == pytest.approx(2.0)
    assert flat["aflw2000_pose_mae_deg_yaw_0_30"] == pytest.approx(2.0)
    assert np.isnan(flat["aflw2000_pose_mae_deg_yaw_60_90"])


def test_aflw_vgg16_variant_builds_on_the_crops():
    import jax
    import jax.numpy as jnp

    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    config = load_config("aflw_vgg16")  # the accelerator variant
    assert config.data.kind == "aflw" and config.model.landmarks == "aflw21"
    model = training.build_model(config, synthetic_face_model(16))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 120, 120, 3)))
    assert shapes["params"]["localiser"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    out = jax.eval_shape(
        lambda p, x: model.apply(p, x), shapes, jnp.zeros((2, 120, 120, 3), jnp.float32)
    )
    assert out["landmarks"].shape == (2, 21, 2) and out["texture"].shape[0] == 2
