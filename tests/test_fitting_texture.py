"""Refining a landmark fit with the original's texture terms on a rendered face."""

import numpy as np
import pytest

from jax3dmmstn import fitting
from jax3dmmstn.data import render
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def rendered():
    model = synthetic_face_model(resolution=32)
    config = render.RenderConfig(
        max_yaw=20.0,
        max_pitch=10.0,
        max_roll=10.0,
        occluder_probability=0.0,
        noise_sigma=0.0,
        colour_jitter=0.0,
        background="plain",
    )
    renderer = render.FaceRenderer(model, config)
    out = renderer.render(renderer.sample_scenes([np.random.default_rng(s) for s in (3, 4)]))
    return model, out


def test_refinement_lowers_its_objective_and_keeps_the_landmarks(rendered):
    model, out = rendered
    images = out["image"].astype(np.float32)
    landmarks, visible = out["landmarks"], out["landmark_visible"]
    start = fitting.fit_model_landmarks(model, landmarks, visible).theta
    weights = fitting.TextureLossWeights(symmetry=1e-2)
    constants = dict(
        images=images,
        mean=model.mean,
        basis=model.basis,
        faces=model.faces,
        landmark_index=model.landmarks["aflw21"],
        landmarks=landmarks,
        visibility=visible,
    )
    before, terms_before = fitting.texture_objective(
        start, weights=weights, mirror_pairs=True, parametrisation="matconvnet", **constants
    )
    theta, terms = fitting.refine_with_texture(
        start, images, model, landmarks, visible, weights=weights, steps=30
    )
    after = sum(getattr(weights, k) * v for k, v in terms.items())
    assert np.all(np.isfinite(np.asarray(theta)))
    assert set(terms) == {"landmark", "prior", "symmetry"}
    assert float(terms_before["symmetry"]) > 0
    assert float(after) < float(before)
    projected = fitting.project_landmarks(
        theta, *fitting.landmark_shape_model(model.mean, model.basis, model.landmarks["aflw21"])
    )
    rmse = fitting.landmark_rmse(projected, landmarks, visible)
    assert np.all(np.asarray(rmse) < 1.0), rmse


def test_refinement_validates_inputs(rendered):
    model, out = rendered
    theta = np.zeros((2, 6 + model.n_components), np.float32)
    with pytest.raises(ValueError, match="images must be"):
        fitting.refine_with_texture(theta, out["image"][:1], model, out["landmarks"])
    with pytest.raises(ValueError, match="pairs"):
        fitting.refine_with_texture(
            theta[:1],
            out["image"][:1].astype(np.float32),
            model,
            out["landmarks"][:1],
            weights=fitting.TextureLossWeights(siamese=1.0),
        )


def test_fit_cli_texture_refinement(rendered, tmp_path):
    import json

    import scipy.io

    from jax3dmmstn.fitting import cli as fitting_cli

    model, out = rendered
    model_path = tmp_path / "model.npz"
    model.save(model_path)
    images = np.transpose(out["image"].astype(np.float32), (1, 2, 3, 0))  # H x W x 3 x N
    labels = np.transpose(out["landmarks"], (2, 1, 0))[None].copy()  # 1 x 2 x 21 x N
    labels[:, :, out["landmark_visible"].T == 0] = 0  # the original's "missing"
    scipy.io.savemat(tmp_path / "demo.mat", {"Images": images, "Labels": labels})
    argv = ["--model", str(model_path), "--data", str(tmp_path / "demo.mat")]
    argv += ["--out", str(tmp_path / "out"), "--texture-steps", "5"]
    argv += ["--siamese-weight", "1e-4", "--mirror-pairs"]
    assert fitting_cli.fit_main(argv) == 0
    report = json.loads((tmp_path / "out" / "fit.json").read_text())["images"]
    assert [entry["texture_steps"] for entry in report] == [5, 5]
    assert all(entry["landmark_rmse_px"] < 1.0 for entry in report)
