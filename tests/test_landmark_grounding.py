"""Landmark vertices grounded on annotations (fitting.landmark_grounding) and model.mat's AFLW set."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from jax3dmmstn.core import geometry, pose
from jax3dmmstn.facemodel import landmarks68
from jax3dmmstn.facemodel import morphable_model as mm
from jax3dmmstn.facemodel.synthetic import synthetic_face_model
from jax3dmmstn.fitting import landmark_grounding


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(resolution=32)


def _annotations(model, vertices, faces=150, seed=0):
    """Image-frame points [B, L, 2] of ``vertices`` on random faces (+-40 degrees yaw)."""
    rng = np.random.default_rng(seed)
    ypr = np.stack(
        [rng.uniform(-40, 40, faces), rng.uniform(-15, 15, faces), rng.uniform(-15, 15, faces)], 1
    )
    r = np.asarray(geometry.matrix_to_axis_angle(np.asarray(pose.pose_to_matrix(ypr))))
    t = 60.0 + rng.uniform(-5, 5, (faces, 2))
    logs = np.asarray(geometry.scale_to_log_scale(jnp.asarray(rng.uniform(0.5, 0.7, faces))))
    alpha = 0.7 * rng.standard_normal((faces, model.n_components))
    theta = np.concatenate([r, t, logs[:, None], alpha], 1).astype(np.float32)
    projected = geometry.project_theta(theta, model.mean[vertices], model.basis[vertices])
    return np.asarray(projected.points2d, np.float64)


def _displaced_symmetric_set(model, rng):
    """The model's AFLW set with each mirror pair moved to a neighbouring vertex (one grid step, 3-10 mm)
    and its mirror: a symmetric "annotators' convention" the model does not name."""
    start = np.asarray(model.landmarks["aflw21"])
    flip, mirror = mm.AFLW21_FLIP, np.asarray(model.mirror)
    vertices = np.asarray(model.mean, np.float64)
    truth = start.copy()
    for k, partner in enumerate(flip):
        if partner <= k:
            continue  # self-paired points stay; pairs are moved once
        distance = np.linalg.norm(vertices - vertices[start[k]], axis=1)
        near = np.flatnonzero((distance > 3.0) & (distance < 10.0))
        truth[k] = rng.choice(near)
        truth[partner] = mirror[truth[k]]
    return truth


def test_grounding_recovers_the_annotators_vertices(model):
    truth = _displaced_symmetric_set(model, np.random.default_rng(3))
    start = np.asarray(model.landmarks["aflw21"])
    assert (truth != start).sum() == 18  # 9 pairs moved, the 3 midline points kept
    landmarks = _annotations(model, truth)
    visible = np.ones(landmarks.shape[:2])
    visible[::3, 12] = 0.0  # missing points are left out of both the fits and the scores
    result = landmark_grounding.ground_landmarks(
        model, "aflw21", landmarks, visible, prior_weight=1.0, iterations=3
    )
    np.testing.assert_array_equal(result.indices, truth)
    moved = np.linalg.norm(model.mean[truth] - model.mean[start], axis=1)
    np.testing.assert_allclose(result.moved_mm, moved, atol=1e-4)
    # Leave-one-out error of the right vertices: what the other points and the prior leave open.
    assert result.cost.mean() < 0.01
    # The pairs stay mirror images of each other.
    paired = mm.AFLW21_FLIP != np.arange(21)
    mirror = np.asarray(model.mirror)
    np.testing.assert_array_equal(
        mirror[result.indices][paired], result.indices[mm.AFLW21_FLIP][paired]
    )


def test_grounding_keeps_vertices_the_annotations_agree_with(model):
    start = np.asarray(model.landmarks["aflw21"])
    landmarks = _annotations(model, start, faces=60, seed=1)
    result = landmark_grounding.ground_landmarks(
        model, "aflw21", landmarks, np.ones(landmarks.shape[:2]), prior_weight=1.0, iterations=1
    )
    np.testing.assert_array_equal(result.indices, start)
    np.testing.assert_allclose(result.moved_mm, 0.0)


def test_grounding_rejects_mismatched_annotations(model):
    landmarks = np.zeros((4, 20, 2))
    with pytest.raises(ValueError, match="21 points, the annotations 20"):
        landmark_grounding.ground_landmarks(model, "aflw21", landmarks, np.ones((4, 20)))
    with pytest.raises(ValueError, match=r"\[B, L, 2\]"):
        landmark_grounding.ground_landmarks(model, "aflw21", np.zeros((4, 21, 3)), np.ones((4, 21)))
    landmarks = _annotations(model, np.asarray(model.landmarks["aflw21"]), faces=5)
    visible = np.ones((5, 21))
    visible[:, 4] = 0.0
    with pytest.raises(ValueError, match="no face shows landmark 4"):
        landmark_grounding.leave_one_out_thetas(model, "aflw21", landmarks, visible, 4, 1.0)


def _write_grid_model_mat(path, res=112):
    """A model.mat in the released layout: a res x res grid face, 10 components."""
    rng = np.random.default_rng(0)
    u, v = np.meshgrid(np.linspace(-80, 80, res), np.linspace(100, -100, res))
    mean = np.stack([u, v, 60.0 - (u**2 + v**2) / 400.0], -1).reshape(-1, 3)
    faces = mm.grid_faces(res) + 1
    scipy.io.savemat(
        path,
        {
            "shapeMU": mean.reshape(-1, 1),
            "shapePC": rng.normal(size=(3 * res * res, 10)),
            "faces": faces.astype(np.uint16),
            "nverts": np.array([[res * res]], np.uint16),
        },
    )


def test_model_mat_offers_the_aflw_grounded_set(tmp_path):
    path = tmp_path / "model.mat"
    _write_grid_model_mat(path)
    original = mm.load_matconvnet_model(path)
    grounded = mm.load_matconvnet_model(path, aflw21="aflw_grounded")
    np.testing.assert_array_equal(grounded.landmarks["aflw21"], mm.AFLW21_INDICES_112_AFLW_GROUNDED)
    np.testing.assert_array_equal(original.landmarks["aflw21"], mm.default_aflw21_landmarks(112))
    # The 68 iBUG points are grounded from the original's set either way.
    np.testing.assert_array_equal(grounded.landmarks["ibug68"], original.landmarks["ibug68"])
    with pytest.raises(ValueError, match="aflw21 must be one of"):
        mm.load_matconvnet_model(path, aflw21="grounded")
    small = tmp_path / "model56.mat"
    _write_grid_model_mat(small, res=56)
    with pytest.raises(ValueError, match="released 112 x 112 model"):
        mm.load_matconvnet_model(small, aflw21="aflw_grounded")


def test_shipped_aflw_grounded_set_is_mirror_symmetric_on_the_grid():
    indices = np.asarray(mm.AFLW21_INDICES_112_AFLW_GROUNDED)
    assert indices.shape == (21,) and len(set(indices.tolist())) == 21
    assert indices.min() >= 0 and indices.max() < 112 * 112
    mirror = mm.grid_mirror(112)
    paired = mm.AFLW21_FLIP != np.arange(21)
    np.testing.assert_array_equal(mirror[indices][paired], indices[mm.AFLW21_FLIP][paired])
    # Midline points (nose tip, mouth centre, chin) sit next to the grid's centre line.
    columns = indices[~paired] % 112
    assert np.all(np.abs(columns - 55.5) <= 1.5)


def test_ibug68_mapped_set_is_3ddfas_mapping_of_the_68(model):
    indices = landmarks68.aflw21_vertices_from_ibug68(model)
    ibug68 = np.asarray(model.landmarks["ibug68"])
    mirror = np.asarray(model.mirror)
    for k, group in enumerate(landmarks68.IBUG68_TO_AFLW21):
        partner = mm.AFLW21_FLIP[k]
        if partner < k:  # the image-right member: the mirror of its partner
            assert indices[k] == mirror[indices[partner]]
        elif len(group) == 1:  # one of the 68 (brows, eye corners, ear = jaw 2, chin = 8)
            assert indices[k] == ibug68[group[0]]
        else:  # eye and mouth centres: the vertex nearest to the group's mean
            centre = model.mean[ibug68[list(group)]].mean(axis=0)
            distances = np.linalg.norm(model.mean - centre, axis=1)
            assert distances[indices[k]] == distances.min()


def test_model_mat_offers_the_ibug68_mapped_set(tmp_path):
    path = tmp_path / "model.mat"
    _write_grid_model_mat(path)
    original = mm.load_matconvnet_model(path)
    mapped = mm.load_matconvnet_model(path, aflw21="ibug68_mapped")
    np.testing.assert_array_equal(mapped.landmarks["ibug68"], original.landmarks["ibug68"])
    np.testing.assert_array_equal(
        mapped.landmarks["aflw21"], landmarks68.aflw21_vertices_from_ibug68(original)
    )
    assert mapped.landmarks["aflw21"][12] == original.landmarks["ibug68"][2]  # left ear lobe


def test_with_landmarks_moves_an_existing_set_only(model):
    moved = model.with_landmarks("aflw21", np.arange(21))
    np.testing.assert_array_equal(moved.landmarks["aflw21"], np.arange(21))
    assert moved.landmarks["aflw21"].dtype == np.int32
    np.testing.assert_array_equal(moved.landmarks["ibug68"], model.landmarks["ibug68"])
    with pytest.raises(ValueError, match="no landmark set 'lfpw29'"):
        model.with_landmarks("lfpw29", np.arange(29))
    with pytest.raises(ValueError, match=r"vertex indices in \[0, 1024\)"):
        model.with_landmarks("aflw21", np.full(21, 5000))
