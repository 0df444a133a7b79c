"""AFLW2000-3D metrics against hand-computed cases and transcriptions of 3DDFA's loops."""

import csv
import json
import math

import numpy as np
import pytest

from jax3dmmstn.evaluation import aflw2000


def _box_points(width, height, count=68):
    """[count, 2] points spanning exactly a width x height box from (5, 7)."""
    t = np.linspace(0.0, 1.0, count)
    return np.stack([5.0 + width * t, 7.0 + height * t[::-1]], -1)


def _two_images():
    """Image 0: 10 x 40 box (sqrt 20), every point off by (3, 4) -> NME 5/20 = 0.25.
    Image 1: 20 x 80 box (sqrt 40), half the points off by (6, 8), half exact -> 5/40."""
    gt = np.stack([_box_points(10, 40), _box_points(20, 80)])
    pred = gt.copy()
    pred[0] += [3.0, 4.0]
    pred[1, ::2] += [6.0, 8.0]
    return pred, gt


def test_nme68_hand_computed():
    pred, gt = _two_images()
    np.testing.assert_allclose(aflw2000.gt68_box_size(gt), [20.0, 40.0])
    np.testing.assert_allclose(aflw2000.nme68(pred, gt), [0.25, 0.125])


def _nme68_3ddfa(pred_all, gt_all):
    """3DDFA benchmark_aflw2000.calc_nme's loop on [2, 68] arrays (roi mapping left out)."""
    out = []
    for pts68_fit, pts68_gt in zip(pred_all, gt_all):
        minx, maxx = np.min(pts68_gt[0, :]), np.max(pts68_gt[0, :])
        miny, maxy = np.min(pts68_gt[1, :]), np.max(pts68_gt[1, :])
        llength = math.sqrt((maxx - minx) * (maxy - miny))
        dis = np.sqrt(np.sum(np.power(pts68_fit - pts68_gt[:2, :], 2), 0))
        out.append(np.mean(dis) / llength)
    return np.array(out)


def test_nme68_matches_3ddfa_loop():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 450, (5, 68, 2))
    pred = gt + rng.normal(0, 6, gt.shape)
    reference = _nme68_3ddfa(pred.transpose(0, 2, 1), gt.transpose(0, 2, 1))
    np.testing.assert_allclose(aflw2000.nme68(pred, gt), reference, rtol=1e-12)


def test_nme68_errors_name_the_field():
    with pytest.raises(ValueError, match="pred must be"):
        aflw2000.nme68(np.zeros((1, 21, 2)), np.zeros((1, 68, 2)))
    with pytest.raises(ValueError, match="zero-area"):
        aflw2000.nme68(np.zeros((1, 68, 2)), np.zeros((1, 68, 2)))


def test_yaw_bins_edges_follow_3ddfa():
    # <= 30 | (30, 60] | > 60, on |yaw|; an unwrapped label (-972) lands in the last bin.
    yaw = np.array([0.0, -30.0, 30.001, 60.0, -60.5, 89.0, -972.0])
    np.testing.assert_array_equal(aflw2000.yaw_bins(yaw), [0, 0, 1, 1, 2, 2, 2])


def test_binned_mean_is_mean_of_bin_means():
    values = np.array([1.0, 3.0, 10.0, 100.0, 200.0, 300.0])
    yaw = np.array([5.0, -25.0, 45.0, 70.0, -80.0, 90.0])
    result = aflw2000.binned_mean(values, yaw)
    assert result["yaw_0_30"] == 2.0
    assert result["yaw_30_60"] == 10.0
    assert result["yaw_60_90"] == 200.0
    assert result["mean"] == pytest.approx((2.0 + 10.0 + 200.0) / 3)
    assert result["all"] == pytest.approx(614.0 / 6)
    assert result["counts"] == [2, 1, 3]


def test_binned_mean_empty_bin_is_nan():
    result = aflw2000.binned_mean([1.0, 2.0], [0.0, 10.0])
    assert result["yaw_0_30"] == 1.5
    assert math.isnan(result["yaw_30_60"]) and math.isnan(result["mean"])
    assert result["counts"] == [2, 0, 0]


def test_pose_protocol_mask_99_degrees_inclusive():
    label = np.array([[99.0, -99.0, 0.0], [99.01, 0.0, 0.0], [0.0, 0.0, -150.0], [1, 2, 3]])
    np.testing.assert_array_equal(aflw2000.pose_protocol_mask(label), [True, False, False, True])


def test_pose_mae_hand_computed_excludes_over_99():
    label = np.array([[10.0, 0.0, 5.0], [-40.0, 20.0, 0.0], [120.0, 0.0, 0.0]])
    pred = np.array([[12.0, -3.0, 5.0], [-44.0, 21.0, 6.0], [0.0, 0.0, 0.0]])
    result = aflw2000.pose_mae(pred, label)
    assert result["count"] == 2
    assert result["yaw"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert result["pitch"] == pytest.approx(2.0)  # (3 + 1) / 2
    assert result["roll"] == pytest.approx(3.0)  # (0 + 6) / 2
    assert result["mean"] == pytest.approx(8.0 / 3)


def test_pose_difference_plain_unless_wrapped():
    label, pred = np.array([[0.0, 90.0, -170.0]]), np.array([[0.0, 90.0, 170.0]])
    np.testing.assert_allclose(aflw2000.pose_abs_errors(pred, label), [[0, 0, 340.0]])
    np.testing.assert_allclose(aflw2000.pose_abs_errors(pred, label, wrap=True), [[0, 0, 20.0]])


def test_ibug68_to_aflw21_follows_3ddfa_groups():
    points = np.zeros((68, 2))
    points[:, 0] = np.arange(68)  # x = 0-based index
    aflw = aflw2000.ibug68_to_aflw21(points)
    assert aflw.shape == (21, 2)
    # 1-based 18 -> 17; eye centre = mean of 37..42 -> indices 36..41; mouth = 61..68.
    assert aflw[0, 0] == 17 and aflw[6, 0] == 36
    assert aflw[7, 0] == pytest.approx(np.mean(np.arange(36, 42)))
    assert aflw[18, 0] == pytest.approx(np.mean(np.arange(60, 68)))
    assert aflw[20, 0] == 8  # chin: 9 -> 8


def test_nme21_hand_computed_visible_only():
    gt68 = _box_points(10, 40)[None]  # sqrt box 20
    gt21 = np.zeros((1, 21, 2))
    pred21 = gt21.copy()
    pred21[0, :10] += [3.0, 4.0]  # error 5 on points 0..9
    pred21[0, 10:] += [30.0, 40.0]  # error 50, but ...
    visible = np.zeros((1, 21))
    visible[0, :10] = 1  # ... only points 0..9 are visible
    np.testing.assert_allclose(aflw2000.nme21(pred21, gt21, visible, gt68), [0.25])
    with pytest.raises(ValueError, match="no visible AFLW point"):
        aflw2000.nme21(pred21, gt21, np.zeros((1, 21)), gt68)


def test_evaluate_records_table_summary_and_files(tmp_path):
    pred, gt = _two_images()
    pred = np.concatenate([pred, gt[:1]])  # image 2: exact landmarks
    gt = np.concatenate([gt, gt[:1]])
    label = np.array([[10.0, 0.0, 0.0], [45.0, 5.0, 0.0], [75.0, 120.0, 0.0]])
    pred_ypr = label + [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0]]
    pred_ypr[2] = 0.0  # far off, but the label is outside +-99: not scored for pose
    rows, summary = aflw2000.evaluate_records(["a", "b", "c"], pred, gt, pred_ypr, label)
    assert [r["yaw_bin"] for r in rows] == ["yaw_0_30", "yaw_30_60", "yaw_60_90"]
    assert [r["in_pose_protocol"] for r in rows] == [True, True, False]
    assert rows[1]["nme68"] == pytest.approx(0.125) and rows[0]["yaw_error"] == 1.0
    nme = summary["nme68_percent"]
    assert nme["yaw_0_30"] == pytest.approx(25.0) and nme["yaw_60_90"] == 0.0
    assert nme["mean"] == pytest.approx(12.5) and nme["all"] == pytest.approx(12.5)
    pose = summary["pose_mae_degrees"]
    assert pose["count"] == 2 and pose["yaw"] == 2.0 and pose["mean"] == 2.0
    aflw2000.write_csv(str(tmp_path / "per_image.csv"), rows)
    aflw2000.write_json(str(tmp_path / "summary.json"), summary)
    with open(tmp_path / "per_image.csv") as handle:
        read = list(csv.DictReader(handle))
    assert read[2]["name"] == "c" and float(read[1]["nme68"]) == pytest.approx(0.125)
    assert json.loads((tmp_path / "summary.json").read_text())["num_images"] == 3
    assert "NME-68" in aflw2000.format_summary(summary)


def test_evaluate_records_nme21_and_nan_bins_in_json(tmp_path):
    gt = _box_points(10, 40)[None]
    gt21 = aflw2000.ibug68_to_aflw21(gt)
    rows, summary = aflw2000.evaluate_records(
        ["x"], gt, gt, np.zeros((1, 3)), np.zeros((1, 3)), gt21, np.ones((1, 21))
    )
    assert rows[0]["nme21"] == 0.0 and summary["nme21_percent"]["yaw_0_30"] == 0.0
    aflw2000.write_json(str(tmp_path / "s.json"), summary)
    assert json.loads((tmp_path / "s.json").read_text())["nme68_percent"]["mean"] is None
