"""Loading a trained checkpoint (training.load_trained) and evaluating it (evaluation.run)."""

import csv
import json
import os

import jax
import numpy as np
import pytest

from jax3dmmstn import training
from jax3dmmstn.configs import load_config
from jax3dmmstn.evaluation import run as evaluation_run


def _tiny_config():
    config = load_config("synthetic")
    config.morphable_model.resolution = 16
    config.data.image_size = (64, 64)
    config.data.train_size = 8
    config.data.eval_size = 6
    config.data.eval_batch_size = 4  # two batches, the second one short
    config.data.prefetch = 0
    config.model.localiser_input_size = (16, 16)
    config.model.localiser_kwargs = dict(widths=(4, 8), convs_per_stage=1, hidden=16)
    config.batch_size = 4
    config.total_steps = 3
    config.parallel = "jit"
    config.eval_every = 0
    config.checkpoint_every = 0
    config.final_eval = True
    config.snapshots = False
    config.progress_bar = False
    return config


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(workdir, config, final host TrainState, final_metrics.json) of a 3-step run."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _tiny_config()
    summary, state = training.train_and_evaluate(config, workdir, return_state=True)
    with open(os.path.join(workdir, "final_metrics.json")) as handle:
        assert json.load(handle) == summary
    return workdir, config, state, summary


def test_load_trained_restores_the_runs_params_and_model(trained_run):
    workdir, config, state, _ = trained_run
    trained = training.load_trained(workdir)
    assert trained.step == 3
    assert trained.config.model.localiser == config.model.localiser
    assert tuple(trained.config.data.image_size) == (64, 64)
    got = jax.tree_util.tree_leaves_with_path(trained.params)
    want = jax.tree_util.tree_leaves_with_path(state.params)
    assert [k for k, _ in got] == [k for k, _ in want]
    for (key, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(key))
    images = np.zeros((2, 64, 64, 3), np.float32)
    out = trained.model.apply({"params": trained.params}, images)
    expected = training.build_model(config, trained.morphable_model).apply(
        {"params": state.params}, images
    )
    assert out["landmarks"].shape == (2, 68, 2)  # the config's 'ibug68' set
    np.testing.assert_allclose(out["landmarks"], expected["landmarks"], rtol=1e-6, atol=1e-4)


def test_load_trained_names_the_missing_folder_or_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "checkpoints")):
        training.load_trained(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
        training.load_trained(str(tmp_path / "empty"))


def test_load_trained_reports_a_model_that_cannot_be_rebuilt(trained_run, tmp_path):
    workdir, config, state, _ = trained_run
    broken = config.copy_and_resolve_references()
    broken.morphable_model.kind = "npz"
    broken.morphable_model.path = str(tmp_path / "moved.npz")
    checkpointer = training.Checkpointer(str(tmp_path / "run"))
    checkpointer.save(state, training.config_to_dict(broken), force=True)
    checkpointer.close()
    with pytest.raises(ValueError, match="cannot rebuild the model .*checkpoints"):
        training.load_trained(str(tmp_path / "run"))


def test_evaluate_checkpoint_reproduces_the_final_metrics(trained_run, tmp_path):
    workdir, config, _, final = trained_run
    summary = evaluation_run.evaluate_checkpoint(workdir)
    assert summary["step"] == 3 and summary["num_images"] == 6
    for name in ("nme", "pose_mae_deg", "pose_geodesic_deg", "shape_error"):
        assert summary[name] == pytest.approx(final[name], rel=1e-6), name
    out_dir = os.path.join(workdir, "evaluation")
    with open(os.path.join(out_dir, "summary.json")) as handle:
        assert json.load(handle) == summary
    with open(os.path.join(out_dir, "per_image.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["index"]) for r in rows] == list(range(6))
    nme = np.array([float(r["nme"]) for r in rows])
    assert np.mean(nme) == pytest.approx(summary["nme"], rel=1e-12)
    # Another output folder.
    other = evaluation_run.evaluate_checkpoint(workdir, out_dir=str(tmp_path / "elsewhere"))
    assert other == summary
    written = sorted(os.listdir(tmp_path / "elsewhere"))
    assert written == ["per_image.csv", "shape_report.json", "shapes.png", "summary.json"]
    with open(tmp_path / "elsewhere" / "shape_report.json") as handle:
        report = json.load(handle)
    assert report["shape_error"] == pytest.approx(summary["shape_error"], rel=1e-6)
    assert report["ratio_to_mean_shape"] == pytest.approx(
        summary["shape_error"] / summary["shape_error_mean_shape"], rel=1e-6
    )
