"""The README's "core in a few lines" snippet runs as written (the public API users copy)."""

import os
import re

import jax.numpy as jnp
import numpy as np

from jax3dmmstn.facemodel.synthetic import synthetic_face_model

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _core_snippet() -> str:
    text = open(README, encoding="utf-8").read()
    section = text.split("## The core in a few lines", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README lost its 'core in a few lines' python block"
    return match.group(1)


def test_core_snippet_runs_and_computes_the_stn_chain():
    model = synthetic_face_model(resolution=24)
    batch, height = 2, 64
    rng = np.random.default_rng(0)
    theta = np.zeros((batch, 6 + model.n_components), np.float32)
    theta[:, 3:5] = height / 2  # t: the image centre (image frame)
    theta[:, 5] = np.log(0.3) / np.log(0.99)  # s = 0.3 pixel per mm
    names = dict(
        theta=jnp.asarray(theta),
        mean=model.mean,
        basis=model.basis,
        faces=model.faces,
        image=jnp.asarray(rng.uniform(0, 255, (batch, height, height, 3)), jnp.float32),
        landmark_idx=np.asarray(model.landmarks["aflw21"]),
        target=jnp.full((batch, 21, 2), height / 2, jnp.float32),
        target_visible=jnp.ones((batch, 21), jnp.float32),
    )
    exec(_core_snippet(), names)
    res = model.resolution
    assert names["texture"].shape == (batch, res, res, 3)
    assert names["mask"].shape == (batch, res, res, 1)
    # A frontal face sees most of itself; the masked texture is zero where the mask is.
    assert 0.5 < float(jnp.mean(names["mask"])) < 1.0
    np.testing.assert_array_equal(
        np.asarray(names["masked"])[np.asarray(names["mask"])[..., 0] == 0], 0
    )
    # The landmark loss is the summed squared distance to the image centre.
    expected = np.sum((np.asarray(names["landmarks"]) - height / 2) ** 2)
    np.testing.assert_allclose(float(names["loss"]), expected, rtol=1e-5)
