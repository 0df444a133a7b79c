"""Output files: OBJ meshes re-read with trimesh, right-side-up UV textures, identity averaging."""

import numpy as np
import pytest
from PIL import Image

from jax3dmmstn import outputs
from jax3dmmstn.core import theta as theta_lib
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def model():
    return synthetic_face_model(resolution=64)


def test_obj_round_trip_with_trimesh(model, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    vertices = model.shape(np.linspace(-1, 1, model.n_components))
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "face_texture.png")
    path = outputs.write_obj(
        str(tmp_path / "face.obj"), vertices, model.faces, model.uv, texture_png="face_texture.png"
    )
    assert "map_Kd face_texture.png" in (tmp_path / "face.mtl").read_text()
    mesh = trimesh.load(path, process=False, maintain_order=True)
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-5)
    np.testing.assert_array_equal(mesh.faces, model.faces)
    np.testing.assert_allclose(mesh.visual.uv, model.uv, atol=1e-6)


def test_obj_rejects_bad_faces(tmp_path):
    with pytest.raises(ValueError, match="0-based"):
        outputs.write_obj(str(tmp_path / "x.obj"), np.zeros((3, 3)), np.array([[1, 2, 3]]))


def _frontal_image(model, size=160):
    """A frontal picture of the model's albedo: each pixel takes the colour of the nearest
    visible projected vertex (independent of the renderer). Returns (image [1,S,S,3], theta)."""
    from scipy.spatial import cKDTree
    from jax3dmmstn.core import geometry
    from jax3dmmstn.core import visibility

    logs = float(geometry.scale_to_log_scale(np.float32(0.6)))
    frontal, centred = np.zeros((1, 3), np.float32), np.full((1, 2), size / 2, np.float32)
    theta = theta_lib.merge(frontal, centred, logs, np.zeros((1, model.n_components), np.float32))
    projection = geometry.project_theta(theta, model.mean, model.basis)
    visible = np.asarray(visibility.vertex_visibility(projection.rotated, model.faces))[0] > 0
    pixels = np.asarray(geometry.image_frame_to_pixels(projection.points2d, (size, size)))[0]
    tree = cKDTree(pixels[visible])
    cols, rows = np.meshgrid(np.arange(size), np.arange(size))
    _, nearest = tree.query(np.stack([cols.ravel(), rows.ravel()], 1))
    image = 255.0 * model.albedo[np.flatnonzero(visible)[nearest]].reshape(size, size, 3)
    return image[None].astype(np.float32), theta


def test_uv_texture_png_is_right_side_up(model, tmp_path):
    image, theta = _frontal_image(model)
    texture, mask, points2d = outputs.sample_uv_texture(
        image, theta, model.mean, model.basis, model.faces
    )
    texture, mask = np.asarray(texture[0]), np.asarray(mask[0])
    paths = outputs.write_fit_outputs(
        str(tmp_path),
        "img0",
        image[0],
        texture,
        mask,
        model.shape(theta_lib.shape_weights(theta[0])),
        model.faces,
        model.uv,
        np.asarray(points2d[0]),
        np.asarray(points2d[0, model.landmarks["aflw21"]]),
        np.asarray(points2d[0, model.landmarks["aflw21"]]),
    )
    png = np.asarray(Image.open(paths["texture"]), np.float64)
    np.testing.assert_allclose(png, np.clip(np.round(texture), 0, 255), atol=0.5)
    res = model.resolution
    lm = model.landmarks["aflw21"]
    rows, cols = lm // res, lm % res
    eyes, mouth = [7, 10], [18, 19, 20]  # eye centres (pupils), mouth corners + centre
    assert rows[eyes].max() < rows[mouth].min()  # eyes above the mouth in the UV grid
    luminance = png.mean(-1)
    skin = np.median(luminance[mask[..., 0] > 0])
    for k in eyes:  # pupils are dark at the eye texels
        window = luminance[rows[k] - 1 : rows[k] + 2, cols[k] - 1 : cols[k] + 2]
        assert window.min() < 0.6 * skin, (k, window.min(), skin)
    lips = png[rows[19] - 1 : rows[19] + 2, cols[19] - 1 : cols[19] + 2].reshape(-1, 3).mean(0)
    assert lips[0] > 1.3 * lips[2]  # red lips / mouth at the mouth texel
    for kind in ("overlay", "mask", "masked_texture"):
        assert Image.open(paths[kind]).size[0] > 0


def test_average_textures_weights_by_visibility():
    textures = np.stack([np.full((2, 2, 3), 10.0), np.full((2, 2, 3), 30.0)])
    masks = np.zeros((2, 2, 2, 1))
    masks[0, 0, 0] = 1
    masks[1, 0, 0] = 1
    masks[1, 1, 1] = 1
    mean, coverage = outputs.average_textures(textures, masks)
    np.testing.assert_allclose(mean[0, 0], 20.0)
    np.testing.assert_allclose(mean[1, 1], 30.0)
    np.testing.assert_allclose(mean[0, 1], 0.0)
    np.testing.assert_allclose(coverage[..., 0], [[2, 0], [0, 1]])
    with pytest.raises(ValueError, match="must match"):
        outputs.average_textures(textures, masks[:, :1])
