"""68 iBUG landmarks grounded on the BFM's 68-point mean (facemodel.landmarks68)."""

import numpy as np
import pytest
import scipy.io

from jax3dmmstn.core import pose
from jax3dmmstn.facemodel import landmarks68 as L
from jax3dmmstn.facemodel import load_matconvnet_model, synthetic_face_model
from jax3dmmstn.facemodel.morphable_model import IBUG68_FLIP, MorphableModel

PAIRED = IBUG68_FLIP != np.arange(68)


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model()


def _rotation(yaw, pitch, roll):
    """An exactly orthogonal float64 rotation (the core's matrices are float32)."""
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("yxz", [yaw, pitch, roll], degrees=True).as_matrix()


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(30, 3)) * 40.0
    rotation, scale, t = _rotation(25.0, -10.0, 5.0), 1.7, np.array([3.0, -20.0, 7.5])
    target = L.apply_similarity(source, scale, rotation, t)
    s, r, tt = L.umeyama(source, target)
    assert s == pytest.approx(scale, rel=1e-12)
    np.testing.assert_allclose(r, rotation, atol=1e-12)
    np.testing.assert_allclose(tt, t, atol=1e-10)
    # Without rotation: scale and translation exactly, the rotation stays the identity.
    target = L.apply_similarity(source, scale, np.eye(3), t)
    s, r, tt = L.umeyama(source, target, weights=rng.uniform(0.5, 1.0, 30), with_rotation=False)
    assert s == pytest.approx(scale, rel=1e-12) and np.array_equal(r, np.eye(3))
    np.testing.assert_allclose(tt, t, atol=1e-10)
    # A mirror image is not a rotation: the best proper rotation, det +1.
    s, r, _ = L.umeyama(source, source * np.array([-1.0, 1.0, 1.0]))
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_shipped_mean_is_the_bfm_68_in_our_frame_and_units():
    m = L.ibug68_mean()
    assert m.shape == (68, 3)
    np.testing.assert_allclose(m.mean(0), 0.0, atol=1e-4)
    x, y, z = m.T
    assert 85.0 < np.linalg.norm(m[45] - m[36]) < 90.0  # outer eye corners, mm
    assert np.argmax(z) == 30  # nose tip towards the viewer
    assert y[19] > y[37] > y[30] > y[62] > y[8]  # brow, eye, nose, mouth, chin: y up
    assert x[0] < 0 < x[16] and x[36] < x[39] < x[42] < x[45]  # point 0 on the image left
    reflected = m[IBUG68_FLIP] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(reflected - m).max() < 2.5  # nearly symmetric (the BFM mean is not exactly)
    # 3DDFA's 68 -> 21 mapping: eye centre between its corners, chin = point 8.
    aflw = L.aflw21_from_ibug68(m)
    assert aflw.shape == (21, 3) and np.array_equal(aflw[20], m[8])
    assert m[36, 0] < aflw[7, 0] < m[39, 0]


def _noisy_mean_model(seed=0, noise=0.3):
    """68 mean vertices (scaled, moved, noisy, numbered at random) among far-away distractors.

    Its "aflw21" anchors are the 68 vertices 3DDFA maps to the 21 AFLW points, the first of
    each group where it averages several (eye and mouth centres): a rough start to refine.
    Returns (model, [68] the true vertex of each point).
    """
    rng = np.random.default_rng(seed)
    scale, t = 1.15, np.array([5.0, -12.0, 30.0])
    points = L.apply_similarity(L.ibug68_mean(), scale, np.eye(3), t)
    points = points + rng.normal(scale=noise, size=points.shape)
    distractors = rng.normal(size=(300, 3))
    distractors = t + 150.0 * distractors / np.linalg.norm(distractors, axis=1, keepdims=True)
    vertices = np.concatenate([distractors, points])
    order = rng.permutation(len(vertices))  # vertex numbering scrambled
    truth = np.argsort(order)[300:]
    n = len(vertices)
    m = MorphableModel(
        mean=vertices[order],
        basis=np.zeros((n, 3, 1)),
        faces=np.zeros((0, 3), np.int32),
        resolution=0,
        uv=np.zeros((n, 2)),
        landmarks={"aflw21": truth[[group[0] for group in L.IBUG68_TO_AFLW21]]},
        landmark_flip={"aflw21": np.arange(21)},
        mirror=np.arange(n),
        albedo=None,
        n_identity=1,
        n_expression=0,
    )
    return m, truth


@pytest.mark.parametrize("seed", [0, 1])
def test_a_model_made_of_the_noisy_mean_gets_its_68_vertices(seed):
    m, truth = _noisy_mean_model(seed)
    assert np.array_equal(L.ground_ibug68(m, symmetric=False), truth)
    placed = L.align_ibug68_mean(m)
    assert np.abs(placed - m.mean[truth]).max() < 2.0
    # Anchored on an existing (here: right) 68 set instead of the AFLW points.
    m2 = MorphableModel(
        **{
            **{f: getattr(m, f) for f in ("mean", "basis", "faces", "uv", "mirror")},
            "resolution": 0,
            "albedo": None,
            "n_identity": 1,
            "n_expression": 0,
            "landmarks": {"ibug68": truth},
            "landmark_flip": {"ibug68": IBUG68_FLIP},
        }
    )
    assert np.array_equal(L.ground_ibug68(m2, anchor_set="ibug68", symmetric=False), truth)
    with pytest.raises(ValueError, match="anchor"):
        L.ground_ibug68(m2, anchor_set="aflw21")


@pytest.mark.parametrize("res", [112, 33])
def test_synthetic_grounded_set_is_symmetric_under_the_mirror(res):
    m = synthetic_face_model(res) if res != 112 else synthetic_face_model()
    lm = m.landmarks["ibug68"]
    assert np.array_equal(m.mirror[lm[PAIRED]], lm[IBUG68_FLIP[PAIRED]])
    centre = m.mean[lm[~PAIRED], 0]
    if res % 2:  # a centre column: midline points on it
        assert np.all(centre == 0.0)
    else:  # between the two middle columns: within half a cell
        assert np.abs(centre).max() < 2.0
    assert L.is_symmetric(m)


def test_synthetic_face_is_reshaped_to_the_bfm_mean(model):
    """Calibrated on the training-side 68 mean only: its points lie on the face, and the face's
    frame is the BFM's (the best rotation between them is near the identity)."""
    placed = L.align_ibug68_mean(model)
    lm = model.landmarks["ibug68"]
    d = np.linalg.norm(model.mean[lm] - placed, axis=1)
    assert d.max() < 5.0 and np.median(d) < 2.0
    _, rotation, _ = L.umeyama(L.ibug68_mean(), model.mean[lm])
    assert np.abs(np.asarray(pose.matrix_to_pose(rotation))).max() < 1.0
    # Grounding again is stable, and the hand-placed AFLW points agree where the sets overlap.
    assert np.array_equal(L.ground_ibug68(model), lm)
    aflw = model.landmarks["aflw21"]
    for i, j in [(17, 48), (19, 54), (14, 30), (20, 8), (6, 36), (11, 45), (0, 17), (5, 26)]:
        assert np.linalg.norm(model.mean[aflw[i]] - model.mean[lm[j]]) < 4.0


def test_model_mat_without_a_68_file_gets_a_grounded_set(tmp_path, model):
    """A model.mat stand-in (the synthetic face) with its AFLW points as an .anl file."""
    path = tmp_path / "model.mat"
    scipy.io.savemat(
        path,
        {
            "shapeMU": model.flat_mean.astype(np.float64)[:, None],
            "shapePC": model.flat_basis.astype(np.float64),
            "faces": model.faces.astype(np.float64) + 1,
        },
    )
    anl = tmp_path / "lm21.anl"
    anl.write_text("\n".join(str(i + 1) for i in model.landmarks["aflw21"]) + "\n")
    loaded = load_matconvnet_model(path, landmarks_path=anl)
    assert set(loaded.landmarks) == {"aflw21", "ibug68"}
    assert np.array_equal(loaded.landmark_flip["ibug68"], IBUG68_FLIP)
    assert np.array_equal(loaded.landmarks["ibug68"], model.landmarks["ibug68"])
    # A given 68 set is kept as it is.
    anl68 = tmp_path / "lm68.anl"
    anl68.write_text("\n".join(str(i + 1) for i in range(100, 168)) + "\n")
    kept = load_matconvnet_model(path, landmarks_path=[anl, anl68])
    assert np.array_equal(kept.landmarks["ibug68"], np.arange(100, 168))
