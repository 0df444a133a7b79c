"""The training-step benchmark runs the synthetic config's own step (its landmark set included)."""

import numpy as np

from jax3dmmstn.benchmarks import train_step


def test_small_cnn_step_uses_the_configs_landmark_set_and_reports_its_figures():
    run, compiled, info = train_step._jax_step("small_cnn", batch=2, dtype="float32")
    config = train_step.config_for("small_cnn", "float32")
    expected = info["face_model"].landmarks[config.model.landmarks]
    np.testing.assert_array_equal(info["landmark_index"], expected)
    assert info["data"]["landmarks"].shape == (2, len(expected), 2)
    metrics = run()
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["total"]))
    result = train_step.bench("small_cnn", batch=2, steps=1, dtype="float32")
    assert result["batch"] == 2 and result["step_s"] > 0 and result["gflop_per_step"] > 0
