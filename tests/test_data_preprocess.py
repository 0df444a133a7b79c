"""Crop/resize, flips, mirror and identity pairing (jax3dmmstn.data.preprocess)."""

import numpy as np
import pytest

from jax3dmmstn.core import geometry
from jax3dmmstn.data import preprocess


def _blob_example(height, width, centres_pix, sigma=3.0):
    """A float image with Gaussian blobs at the given (col, row) pixel positions."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3), np.float32)
    for k, (c, r) in enumerate(centres_pix):
        blob = np.exp(-((cols - c) ** 2 + (rows - r) ** 2) / (2 * sigma**2))
        image[..., k % 3] += (200 * blob).astype(np.float32)
    landmarks = np.asarray(
        geometry.pixels_to_image_frame(np.asarray(centres_pix, np.float32), (height, width))
    )
    return {
        "image": image,
        "landmarks": landmarks,
        "landmark_visible": np.ones(len(centres_pix), np.float32),
        "pose": np.array([30.0, 10.0, -5.0], np.float32),
    }


def _centroid(channel):
    rows, cols = np.mgrid[0 : channel.shape[0], 0 : channel.shape[1]]
    w = np.clip(channel - 0.02 * channel.max(), 0, None)
    return np.array([(w * cols).sum() / w.sum(), (w * rows).sum() / w.sum()])


@pytest.mark.parametrize("zoom", [1.0, 0.6, 1.15])
def test_crop_maps_landmarks_onto_the_same_image_content(zoom):
    # Three blobs; after crop + resize each blob's centroid must sit where the
    # mapped landmark says (both use one affine map).
    example = _blob_example(300, 260, [(80.3, 90.7), (170.6, 120.2), (120.0, 210.4)], sigma=4.0)
    out = preprocess.crop_around_landmarks(
        example, out_size=128, margin=0.4, shift=(0.02, -0.03), zoom=zoom
    )
    assert out["image"].shape == (128, 128, 3)
    pix = np.asarray(geometry.image_frame_to_pixels(out["landmarks"], (128, 128)))
    for k in range(3):
        np.testing.assert_allclose(_centroid(out["image"][..., k]), pix[k], atol=0.08)
    # The box is centred on the landmarks' box: its centre maps near the centre.
    box_centre = 0.5 * (pix.min(0) + pix.max(0))
    expected = 63.5 - np.array([0.02, -0.03]) * 128
    np.testing.assert_allclose(box_centre, expected, atol=1e-3)


def test_crop_uint8_and_outside_the_image_is_filled():
    example = _blob_example(100, 100, [(5.0, 5.0), (30.0, 20.0)], sigma=2.0)
    example["image"] = np.clip(example["image"] + 50, 0, 255).astype(np.uint8)
    out = preprocess.crop_around_landmarks(example, out_size=64, margin=1.0, fill=0)
    assert out["image"].dtype == np.uint8 and out["image"].shape == (64, 64, 3)
    # The box reaches left of column 0 and above row 0: those pixels are the fill.
    assert out["image"][0, 0].max() == 0
    assert out["image"][-1, -1].min() == 50


def test_crop_drops_theta_and_requires_a_visible_landmark():
    example = _blob_example(64, 64, [(20.0, 20.0), (40.0, 30.0)])
    example["theta"] = np.zeros(16, np.float32)
    assert "theta" not in preprocess.crop_around_landmarks(example, 32)
    example["landmark_visible"][:] = 0
    with pytest.raises(ValueError, match="none is visible"):
        preprocess.crop_around_landmarks(example, 32)


def test_flip_moves_each_pixel_and_landmark_consistently():
    example = _blob_example(50, 70, [(10.0, 12.0), (55.5, 30.25)])
    perm = np.array([1, 0])
    out = preprocess.flip_horizontal(example, perm)
    np.testing.assert_array_equal(out["image"], example["image"][:, ::-1])
    # x -> W - x then swapped: pixel column c -> W - 1 - c.
    pix = np.asarray(geometry.image_frame_to_pixels(out["landmarks"], (50, 70)))
    np.testing.assert_allclose(pix, [[70 - 1 - 55.5, 30.25], [70 - 1 - 10.0, 12.0]], atol=1e-4)
    np.testing.assert_allclose(out["pose"], [-30.0, 10.0, 5.0])
    back = preprocess.flip_horizontal(out, perm)
    np.testing.assert_allclose(back["landmarks"], example["landmarks"], atol=1e-4)


@pytest.mark.parametrize("scheme,count", [("aflw21", 21), ("ibug68", 68)])
def test_flip_permutations_are_involutions(scheme, count):
    perm = preprocess.flip_permutation(scheme)
    assert perm.shape == (count,)
    np.testing.assert_array_equal(np.sort(perm), np.arange(count))
    np.testing.assert_array_equal(perm[perm], np.arange(count))
    np.testing.assert_array_equal(preprocess.flip_permutation(count), perm)
    with pytest.raises(ValueError, match="no flip permutation"):
        preprocess.flip_permutation(5)


def test_flip_permutation_maps_symmetric_points_onto_each_other():
    # 21 points placed mirror-symmetrically in the AFLW order (left eyebrow 0..2
    # vs right 3..5, etc.): flipping the image and permuting gives the same set.
    perm = preprocess.flip_permutation("aflw21")
    rng = np.random.default_rng(0)
    width = 100
    pts = np.zeros((21, 2), np.float32)
    for i in range(21):
        j = perm[i]
        if j > i:
            pts[i] = rng.uniform(5, 45, 2)
            pts[j] = [width - pts[i, 0], pts[i, 1]]
        elif j == i:
            pts[i] = [width / 2, rng.uniform(5, 95)]
    flipped, _ = preprocess.flip_landmarks(pts, np.ones(21), width, perm)
    np.testing.assert_allclose(flipped, pts, atol=1e-5)


def test_with_mirrors_interleaves_examples_and_flips():
    ex = [_blob_example(20, 30, [(3.0, 4.0), (20.0, 10.0)]) for _ in range(3)]
    for k, e in enumerate(ex):
        e["image"] = e["image"] + k
        e["identity"] = np.int32(k)
    batch = {key: np.stack([e[key] for e in ex]) for key in ex[0]}
    batch["theta"] = np.zeros((3, 16), np.float32)
    out = preprocess.with_mirrors(batch, np.array([1, 0]))
    assert out["image"].shape == (6, 20, 30, 3) and "theta" not in out
    np.testing.assert_array_equal(out["identity"], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(out["image"][2], batch["image"][1])
    np.testing.assert_array_equal(out["image"][3], batch["image"][1][:, ::-1])
    single = preprocess.flip_horizontal(ex[1], np.array([1, 0]))
    np.testing.assert_allclose(out["landmarks"][3], single["landmarks"])


def test_identity_pairs_share_identity_and_differ():
    identities = np.array([0, 0, 1, 2, 2, 2, -1, 3])
    pairs = preprocess.identity_pairs(identities, 200, np.random.default_rng(1))
    assert pairs.shape == (200, 2)
    assert np.all(pairs[:, 0] != pairs[:, 1])
    np.testing.assert_array_equal(identities[pairs[:, 0]], identities[pairs[:, 1]])
    # identity 2 has 6 ordered pairs, identity 0 has 2: about 3/4 of the draws.
    frac = np.mean(identities[pairs[:, 0]] == 2)
    assert 0.62 < frac < 0.88
    again = preprocess.identity_pairs(identities, 200, np.random.default_rng(1))
    np.testing.assert_array_equal(pairs, again)
    with pytest.raises(ValueError, match="two or more"):
        preprocess.identity_pairs(np.array([0, 1, 2]), 1, np.random.default_rng(0))


def test_random_augment_is_deterministic_for_a_seed():
    example = _blob_example(120, 120, [(40.0, 50.0), (80.0, 60.0), (60.0, 90.0)])
    perm = np.array([1, 0, 2])
    a = preprocess.random_augment(
        example, np.random.default_rng(5), 64, flip_probability=0.5, permutation=perm
    )
    b = preprocess.random_augment(
        example, np.random.default_rng(5), 64, flip_probability=0.5, permutation=perm
    )
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])


def test_random_jitter_keeps_the_size_and_moves_landmarks_with_the_pixels():
    example = _blob_example(120, 120, [(40.0, 50.0), (80.0, 60.0), (60.0, 90.0)], sigma=4.0)
    out = preprocess.random_jitter(example, np.random.default_rng(3), 0.1, (0.8, 1.25))
    assert out["image"].shape == (120, 120, 3)
    pix = np.asarray(geometry.image_frame_to_pixels(out["landmarks"], (120, 120)))
    assert np.abs(pix - preprocess.landmarks_to_pixels(example["landmarks"], (120, 120))).max() > 1
    for k in range(3):
        np.testing.assert_allclose(_centroid(out["image"][..., k]), pix[k], atol=0.1)
    # No jitter at all: the identity map.
    same = preprocess.random_jitter(example, np.random.default_rng(0), 0.0, (1.0, 1.0))
    np.testing.assert_allclose(same["landmarks"], example["landmarks"], atol=1e-4)
    with pytest.raises(ValueError, match="square"):
        preprocess.random_jitter(_blob_example(60, 80, [(10.0, 10.0)]), np.random.default_rng(0))


@pytest.mark.parametrize("box", [(-20.5, 31.25, 150.0), (3.0, 7.0, 41.0)])
def test_uncrop_pixels_inverts_crop_to_box(box):
    example = _blob_example(200, 180, [(12.0, 40.5), (99.25, 130.0), (160.0, 7.0)])
    cropped = preprocess.crop_to_box(example, box, 64)
    in_crop = preprocess.landmarks_to_pixels(cropped["landmarks"], (64, 64))
    back = preprocess.uncrop_pixels(in_crop, np.array(box[:2]), np.array(box[2]), 64)
    original = preprocess.landmarks_to_pixels(example["landmarks"], (200, 180))
    np.testing.assert_allclose(back, original, atol=1e-3)
