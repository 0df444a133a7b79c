"""The Flax 3DMM-STN (jax3dmmstn.network.model) and the VGG-Face importer (jax3dmmstn.network.vggface)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from jax3dmmstn.core import geometry
from jax3dmmstn.core.stn import compose_from_theta
from jax3dmmstn.network import localisers
from jax3dmmstn.network import model as model_lib
from jax3dmmstn.core import sampler
from jax3dmmstn.network import vggface as vggface_import
from jax3dmmstn.core import visibility
from jax3dmmstn.facemodel.synthetic import synthetic_face_model


@pytest.fixture(scope="module")
def face_model():
    return synthetic_face_model(resolution=16)


def _with_theta(params, theta):
    """Params whose theta head outputs ``theta`` [6 + D] for every image."""
    head = params["theta_head"]["dense"]
    new = dict(params)
    new["theta_head"] = {
        "dense": {"kernel": jnp.zeros_like(head["kernel"]), "bias": jnp.asarray(theta, jnp.float32)}
    }
    return new


def _images(batch, size=(224, 224), seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(0, 255, (batch,) + tuple(size) + (3,)).astype(np.float32))


# ------------------------------------------------------------------------ theta head init
def test_theta_head_init_matches_original():
    head = model_lib.ThetaHead(16, (224, 224))
    params = jax.jit(head.init)(jax.random.key(0), jnp.zeros((1, 4096)))["params"]["dense"]
    bias = np.asarray(params["bias"])
    np.testing.assert_array_equal(bias, [0, 0, 0, 112, 112] + [0] * 11)
    kernel = np.asarray(params["kernel"])
    assert kernel.shape == (4096, 16)
    # MatConvNet xavier(1, 1, 4096, 16) = randn * sqrt(2 / 4096), times 0.001.
    expected_std = 1e-3 * np.sqrt(2.0 / 4096)
    assert abs(kernel.std() / expected_std - 1.0) < 0.03
    assert abs(kernel.mean()) < 5 * expected_std / np.sqrt(kernel.size)


def test_theta_head_bias_is_centre_of_non_square_image():
    head = model_lib.ThetaHead(8, (100, 160))
    bias = jax.jit(head.init)(jax.random.key(0), jnp.zeros((1, 5)))["params"]["dense"]["bias"]
    np.testing.assert_array_equal(np.asarray(bias)[3:5], [80.0, 50.0])  # (W/2, H/2)


@pytest.fixture(scope="module")
def small_stn(face_model):
    """One STN (localiser on a 32 x 32 copy of 224 x 224 images), initialised and jitted once."""
    stn = model_lib.build_stn(face_model, image_size=(224, 224), localiser_input_size=(32, 32))
    images = _images(2)
    params = jax.jit(stn.init)(jax.random.key(1), images)["params"]
    return stn, params, jax.jit(stn.apply), images


def test_initial_prediction_is_the_mean_face_at_the_image_centre(small_stn):
    stn, params, apply, images = small_stn
    out = apply({"params": params}, images)
    # Tiny head weights: theta is its bias up to ~1e-2 (t = 112, r = logs = alpha = 0).
    np.testing.assert_allclose(out["t"], 112.0, atol=0.1)
    np.testing.assert_allclose(out["r"], 0.0, atol=0.02)
    np.testing.assert_allclose(out["alpha"], 0.0, atol=0.02)


# ------------------------------------------------------------------------ composition
def test_stn_outputs_equal_the_pure_geometry_chain(small_stn, face_model):
    stn, params, apply, images = small_stn
    theta = np.zeros(16, np.float32)
    theta[:6] = [0.1, -0.3, 0.05, 100.0, 120.0, -5.0]
    theta[6:] = np.linspace(-1, 1, 10)
    out = apply({"params": _with_theta(params, theta)}, images)
    thetas = jnp.asarray(np.tile(theta, (2, 1)))
    chain = geometry.project_theta(thetas, face_model.mean, face_model.basis)
    np.testing.assert_allclose(out["theta"], thetas, atol=1e-6)
    np.testing.assert_allclose(out["points2d"], chain.points2d, atol=1e-4)
    np.testing.assert_allclose(out["rotated"], chain.rotated, atol=1e-4)
    np.testing.assert_allclose(out["vertices3d"], chain.vertices, atol=1e-4)
    np.testing.assert_allclose(out["R"], geometry.axis_angle_to_matrix(thetas[:, :3]), atol=1e-6)
    np.testing.assert_allclose(out["s"], 0.99**-5.0, rtol=1e-6)
    idx = face_model.landmarks["aflw21"]
    np.testing.assert_allclose(out["landmarks"], np.asarray(chain.points2d)[:, idx], atol=1e-4)
    np.testing.assert_allclose(
        out["grid"], geometry.points_to_grid(chain.points2d, (224, 224)), atol=1e-6
    )
    # The sampler reads the full 224 x 224 image, not the localiser's 32 x 32 copy.
    np.testing.assert_allclose(
        out["texture"], sampler.bilinear_sample(images, out["grid"]), rtol=1e-4, atol=1e-2
    )
    mask = visibility.visibility_mask(chain.rotated, face_model.faces)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_allclose(out["masked_texture"], out["texture"] * mask, atol=1e-6)
    assert out["texture"].shape == (2, 16, 16, 3) and out["mask"].shape == (2, 16, 16, 1)
    # A near-frontal face: most of the mesh is visible, but not all of it.
    assert 0.5 < float(jnp.mean(out["mask"])) < 1.0


def test_gradients_reach_every_parameter_and_are_finite(small_stn):
    stn, params, apply, images = small_stn
    target = jnp.full((2, 21, 2), 100.0)

    def loss(p):
        out = stn.apply({"params": p}, images)
        return jnp.sum((out["landmarks"] - target) ** 2) + jnp.sum(out["masked_texture"]) * 1e-3

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert float(jnp.max(jnp.abs(g))) > 0, path
    # d loss / d t_bias = sum of 2 (landmark - target) over landmarks and images, plus the
    # small texture term.
    out = apply({"params": params}, images)
    expected = 2 * np.sum(np.asarray(out["landmarks"]) - 100.0, axis=(0, 1))
    np.testing.assert_allclose(
        grads["theta_head"]["dense"]["bias"][3:5], expected, rtol=2e-2, atol=1.0
    )


def test_bfloat16_localiser_keeps_theta_in_float32(small_stn, face_model):
    _, params, apply, images = small_stn
    stn16 = model_lib.build_stn(face_model, localiser_input_size=(32, 32), dtype=jnp.bfloat16)
    # Same parameter tree (parameters stay float32; only the localiser computes in bfloat16).
    out16 = jax.jit(stn16.apply)({"params": params}, images)
    out32 = apply({"params": params}, images)
    assert out16["theta"].dtype == jnp.float32 and out16["texture"].dtype == jnp.float32
    np.testing.assert_allclose(out16["t"], out32["t"], atol=0.05)
    np.testing.assert_allclose(out16["r"], out32["r"], atol=0.01)


def test_bad_inputs_raise_clear_errors(face_model):
    stn = model_lib.build_stn(face_model)
    with pytest.raises(ValueError, match="image_size"):
        jax.jit(stn.init)(jax.random.key(0), jnp.zeros((1, 100, 100, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        jax.jit(stn.init)(jax.random.key(0), jnp.zeros((224, 224, 3)))
    with pytest.raises(ValueError, match="landmark set"):
        model_lib.build_stn(face_model, landmarks="nope")
    with pytest.raises(ValueError, match="unknown localiser"):
        model_lib.build_stn(face_model, localiser="resnet")
    with pytest.raises(ValueError, match="theta must be"):
        compose_from_theta(
            jnp.zeros((1, 7)),
            None,
            mean=face_model.mean,
            basis=face_model.basis,
            faces=face_model.faces,
            landmark_index=[0],
            resolution=16,
            image_size=(224, 224),
        )


def test_space_to_depth_puts_each_block_into_channels():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    y = localisers.space_to_depth(x, 2)
    assert y.shape == (2, 2, 3, 12)
    # Output pixel (i, j) holds input pixels (2i + di, 2j + dj) in the order (di, dj, channel).
    for i, j, di, dj, c in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 2), (0, 1, 1, 1, 1), (1, 0, 0, 1, 0)]:
        assert y[1, i, j, (di * 2 + dj) * 3 + c] == x[1, 2 * i + di, 2 * j + dj, c]
    with pytest.raises(ValueError, match="not divisible by 2"):
        localisers.space_to_depth(jnp.zeros((1, 5, 4, 3)), 2)


def test_small_cnn_with_space_to_depth_reads_the_larger_image_at_the_same_map_size():
    plain = localisers.SmallCNN(widths=(4, 8), convs_per_stage=1, hidden=16)
    folded = localisers.SmallCNN(widths=(4, 8), convs_per_stage=1, hidden=16, space_to_depth=2)
    p_plain = jax.eval_shape(plain.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    p_folded = jax.eval_shape(folded.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    assert p_folded["conv1_1"]["kernel"].shape == (3, 3, 12, 4)
    assert p_folded["fc"]["kernel"].shape == p_plain["fc"]["kernel"].shape == (8 * 8 * 8, 16)
    with pytest.raises(ValueError, match=r"map \(input \(4, 4\) after space_to_depth=2\) is too small"):
        jax.eval_shape(folded.init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_vgg16_has_the_vgg_face_layout():
    vgg = localisers.VGG16()
    shapes = jax.eval_shape(vgg.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
    assert list(shapes) == list(vggface_import.CONV_LAYERS)
    assert shapes["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert shapes["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
    assert shapes["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert shapes["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
    n_params = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert n_params == 134_260_544  # VGG-16 without fc8 (138,357,544 - 4096*1000 - 1000)


# ------------------------------------------------------------------------ VGG-Face import
def _cell(items):
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def _write_tiny_vggface(path, divisor=16, fc=8, image=64, seed=0, drop=None, bad_pad=None):
    """A simplenn file with VGG-Face's structure and tiny widths; returns its conv arrays."""
    rng = np.random.default_rng(seed)
    layers, arrays = [], {}
    channels = 3
    spatial = image
    for block, (names, width) in enumerate(localisers.VGG16_BLOCKS):
        for name in names:
            out = width // divisor
            w = rng.normal(0, np.sqrt(2.0 / (9 * channels)), (3, 3, channels, out))
            b = rng.normal(0, 0.1, (out, 1))
            arrays[name] = (w.astype(np.float32), b.astype(np.float32))
            pad = bad_pad if (bad_pad is not None and name == "conv2_1") else [1, 1, 1, 1]
            if name != drop:
                layers.append(
                    dict(
                        name=name,
                        type="conv",
                        weights=_cell(list(arrays[name])),
                        size=np.array(w.shape, float),
                        pad=np.array(pad, float),
                        stride=np.array([1, 1], float),
                        precious=False,
                        dilate=np.array([1.0, 1.0]),
                        opts=_cell([]),
                    )
                )
            layers.append(dict(name="relu" + name[4:], type="relu", leak=0.0))
            channels = out
        layers.append(
            dict(
                name=f"pool{block + 1}",
                type="pool",
                method="max",
                pool=np.array([2.0, 2.0]),
                stride=np.array([2.0, 2.0]),
                pad=np.zeros(4),
            )
        )
        spatial //= 2
    for name, k in (("fc6", spatial), ("fc7", 1)):
        w = rng.normal(0, np.sqrt(2.0 / (k * k * channels)), (k, k, channels, fc))
        b = rng.normal(0, 0.1, (fc, 1))
        arrays[name] = (w.astype(np.float32), b.astype(np.float32))
        layers.append(
            dict(
                name=name,
                type="conv",
                weights=_cell(list(arrays[name])),
                pad=np.zeros(4),
                stride=np.array([1.0, 1.0]),
            )
        )
        layers.append(dict(name="relu" + name[2:], type="relu"))
        channels = fc
    layers.append(
        dict(
            name="fc8",
            type="conv",
            weights=_cell([np.ones((1, 1, fc, 5), np.float32), np.zeros((5, 1), np.float32)]),
            pad=np.zeros(4),
            stride=np.array([1.0, 1.0]),
        )
    )
    layers.append(dict(name="prob", type="softmax"))
    average = np.array([129.1863, 104.7624, 93.5940]).reshape(1, 1, 3)
    meta = dict(
        normalization=dict(averageImage=average, imageSize=np.array([image, image, 3.0])),
        classes=dict(description=_cell(["a", "b"])),
    )
    scipy.io.savemat(path, dict(layers=_cell(layers), meta=meta))
    return arrays, average.ravel()


def _reference_simplenn(image, arrays):
    """MatConvNet's forward in plain numpy: correlation, pad 1, 2x2 max pools, fc as conv."""
    from numpy.lib.stride_tricks import sliding_window_view

    def conv(x, w, b, pad):
        x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
        windows = sliding_window_view(x, w.shape[:2], axis=(0, 1))  # [H', W', C, kh, kw]
        return np.einsum("ijcab,abco->ijo", windows, w) + b.ravel()

    x = image.astype(np.float64)
    for names, _ in localisers.VGG16_BLOCKS:
        for name in names:
            x = np.maximum(conv(x, *arrays[name], pad=1), 0)
        h, w_, c = x.shape
        x = x[: h // 2 * 2, : w_ // 2 * 2].reshape(h // 2, 2, w_ // 2, 2, c).max(axis=(1, 3))
    x = np.maximum(conv(x, *arrays["fc6"], pad=0), 0)
    x = np.maximum(conv(x, *arrays["fc7"], pad=0), 0)
    return x.reshape(-1)


@pytest.fixture(scope="module")
def tiny_vggface(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vgg") / "vgg-face.mat")
    arrays, average = _write_tiny_vggface(path, image=64)
    return path, arrays, average


def test_vggface_import_reproduces_the_simplenn_forward(tiny_vggface):
    path, arrays, average = tiny_vggface
    weights = vggface_import.read_vggface(path)
    assert weights.width_divisor == 16 and weights.fc_width == 8
    assert weights.image_size == (64, 64)
    np.testing.assert_allclose(weights.input_mean, average, rtol=1e-6)
    np.testing.assert_array_equal(weights.params["conv3_2"]["kernel"], arrays["conv3_2"][0])
    np.testing.assert_array_equal(weights.params["fc6"]["bias"], arrays["fc6"][1].ravel())

    vgg = localisers.VGG16(**weights.module_kwargs())
    image = np.random.default_rng(1).uniform(0, 255, (64, 64, 3)).astype(np.float32)
    template = jax.eval_shape(vgg.init, jax.random.key(0), jnp.asarray(image[None]))["params"]
    params = vggface_import.load_into_params({"localiser": template}, weights)["localiser"]
    got = np.asarray(jax.jit(vgg.apply)({"params": params}, jnp.asarray(image[None])))[0]
    expected = _reference_simplenn(image - average, arrays)
    assert np.abs(expected).max() > 0.1  # not a trivially dead network
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_vggface_import_loads_into_the_stn(tiny_vggface, face_model):
    path, _, _ = tiny_vggface
    weights = vggface_import.read_vggface(path)
    stn = model_lib.build_stn(
        face_model, localiser="vgg16", image_size=(64, 64), localiser_kwargs=weights.module_kwargs()
    )
    images = jnp.asarray(_images(1, size=(64, 64)))
    params = dict(jax.eval_shape(stn.init, jax.random.key(0), images)["params"])
    head = model_lib.ThetaHead(16, (64, 64))
    params["theta_head"] = head.init(jax.random.key(0), jnp.zeros((1, 8)))["params"]
    loaded = vggface_import.load_into_params(params, weights)
    np.testing.assert_array_equal(
        loaded["localiser"]["fc7"]["kernel"], weights.params["fc7"]["kernel"]
    )
    assert loaded["theta_head"] is params["theta_head"]  # the head keeps the original's init
    np.testing.assert_array_equal(loaded["theta_head"]["dense"]["bias"][3:5], [32.0, 32.0])
    out = jax.jit(stn.apply)({"params": loaded}, images)
    assert out["theta"].shape == (1, 16) and np.all(np.isfinite(out["landmarks"]))
    # The file's fc6 is 2 x 2 (64 input); a 96 x 96 model's fc6 is 3 x 3: a clear error.
    big = model_lib.build_stn(
        face_model, localiser="vgg16", image_size=(96, 96), localiser_kwargs=weights.module_kwargs()
    )
    big_params = jax.eval_shape(big.init, jax.random.key(0), jnp.zeros((1, 96, 96, 3)))["params"]
    with pytest.raises(ValueError, match="fc6/kernel"):
        vggface_import.load_into_params(big_params, weights)


def test_vggface_import_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        vggface_import.read_vggface(str(tmp_path / "missing.mat"))
    corrupt = tmp_path / "corrupt.mat"
    corrupt.write_bytes(b"this is not a mat file at all" * 10)
    with pytest.raises(ValueError, match="not a readable"):
        vggface_import.read_vggface(str(corrupt))
    other = str(tmp_path / "other.mat")
    scipy.io.savemat(other, dict(x=np.ones(3)))
    with pytest.raises(ValueError, match="no 'layers'"):
        vggface_import.read_vggface(other)
    dropped = str(tmp_path / "dropped.mat")
    _write_tiny_vggface(dropped, drop="conv4_2")
    with pytest.raises(ValueError, match="conv4_2"):
        vggface_import.read_vggface(dropped)
    padded = str(tmp_path / "padded.mat")
    _write_tiny_vggface(padded, bad_pad=[2, 2, 2, 2])
    with pytest.raises(ValueError, match="conv2_1: pad"):
        vggface_import.read_vggface(padded)
