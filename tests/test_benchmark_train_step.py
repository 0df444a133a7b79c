"""The training-step benchmark runs the synthetic config's own step (its landmark set included)."""

import numpy as np
import pytest

from jax3dmmstn.benchmarks import torch_reference, train_step


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


def test_torch_small_cnn_is_the_configs_network():
    """The torch side of ``--torch`` builds the config's small CNN (input size, folding, width):
    the same number of parameters as the JAX model, the same theta width."""
    torch = pytest.importorskip("torch")
    run, compiled, info = train_step._jax_step("small_cnn", batch=2, dtype="float32")
    torch_run = train_step._torch_step(
        torch, "small_cnn", info["face_model"], info["landmark_index"], info["data"], info["config"]
    )
    assert np.isfinite(float(torch_run()))
    n_theta = 6 + info["face_model"].basis.shape[-1]
    kwargs = info["config"].model.localiser_kwargs
    network = torch_reference.make_network(
        torch,
        "small_cnn",
        n_theta,
        localiser_input_size=info["config"].model.localiser_input_size[0],
        space_to_depth=kwargs.space_to_depth,
        hidden=kwargs.hidden,
    )
    assert sum(p.numel() for p in network.parameters()) == info["n_params"]
    assert network(torch.zeros(2, 3, 224, 224)).shape == (2, n_theta)
