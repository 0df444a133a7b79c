"""Shape recovery report (jax3dmmstn.evaluation.shape_report): hand-computed cases."""

import json
import types

import numpy as np
import pytest

from jax3dmmstn.evaluation import shape_report


def _toy_model(res=4, d=3):
    """A res x res grid model whose component k moves every vertex by k + 1 along z."""
    n = res * res
    mean = np.zeros((n, 3), np.float32)
    basis = np.zeros((n, 3, d), np.float32)
    for k in range(d):
        basis[:, 2, k] = k + 1.0
    return types.SimpleNamespace(mean=mean, basis=basis, resolution=res, n_identity=2)


def test_alpha_correlation_closed_forms():
    true = np.array([[1.0, 2.0, 5.0], [2.0, 4.0, 5.0], [3.0, 6.0, 5.0]])
    predicted = np.array([[2.0, 6.0, 1.0], [4.0, 4.0, 2.0], [6.0, 2.0, 3.0]])
    corr = shape_report.alpha_correlation(predicted, true)
    assert corr[0] == pytest.approx(1.0) and corr[1] == pytest.approx(-1.0)
    assert np.isnan(corr[2])  # the true component is constant
    with pytest.raises(ValueError, match="not \\[N, D\\]"):
        shape_report.alpha_correlation(predicted[:, :2], true)


def test_by_yaw_bins_and_counts():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    yaw = np.array([-10.0, 15.0, 20.0, -31.0, 0.0])  # |15| falls in the first bin
    out = shape_report.by_yaw(values, yaw)
    assert out["yaw_0_15"] == pytest.approx((1 + 2 + 5) / 3)
    assert out["yaw_15_30"] == pytest.approx(3.0)
    assert out["yaw_above_30"] == pytest.approx(4.0)
    assert out["counts"] == [3, 1, 1]
    assert np.isnan(shape_report.by_yaw(values[:1], yaw[:1])["yaw_above_30"])


def test_report_component_cost_and_ratio(tmp_path):
    model = _toy_model()
    true = np.array([[1.0, 0.0, 2.0], [-1.0, 0.0, -2.0]], np.float32)
    predicted = true * np.array([1.0, 1.0, 0.5], np.float32)  # half of component 2 missed
    predictions = shape_report.ShapePredictions(predicted, true, np.array([5.0, 40.0]))
    report = shape_report.write(str(tmp_path), model, predictions)
    # Every vertex moves by sum_k (k + 1) alpha_k along z: the mean face is off by
    # |1 + 6| = 7 per vertex, the prediction by |3 * 1| = 3.
    assert report["shape_error_mean_shape"] == pytest.approx(7.0)
    assert report["shape_error"] == pytest.approx(3.0)
    assert report["ratio_to_mean_shape"] == pytest.approx(3.0 / 7.0)
    assert report["component_cost"] == pytest.approx([1.0, 0.0, 6.0])
    assert report["shape_error_by_yaw"]["yaw_above_30"] == pytest.approx(3.0)
    saved = json.loads((tmp_path / "shape_report.json").read_text())
    assert saved["alpha_correlation"][0] == pytest.approx(1.0)
    assert (tmp_path / "shapes.png").stat().st_size > 1000
