"""A procedural face model on the UV grid, so that everything runs without the licensed BFM.

The surface is a face mask: an ellipsoidal shell spanning +-90 degrees of azimuth (so the border
is the side of the head and yaw works physically) from the upper forehead to under the chin,
plus smooth anatomical displacements along its normal (brow ridge, eye sockets and eyeballs,
nose, cheekbones, lips and mouth slit, chin, ears at the border). Coordinates: x to the right of
the image, y up, z towards the viewer, mm; row 0 of the grid is the top of the face.

Anatomy is placed in *frontal coordinates*: the (x, y) of the undisplaced shell as seen by an
orthographic camera looking down -z, so that the numbers below read like positions on a
frontal photograph (y = 0 is about the base of the nose). The "aflw21" landmarks are the grid
vertices nearest to anatomical targets in these coordinates, so they follow the anatomy at any
resolution.

The hand-placed anatomy is then calibrated on a real face: a smooth displacement field (affine
plus Gaussian RBF, see `_calibration_rbf`) moves the mean so that its 68 iBUG points sit where
the BFM's 68-landmark mean (landmarks68, from 3DDFA's public u_base) puts them, in the BFM's
frame (no rotation allowed: the uncalibrated anatomy was pitched 5.5 deg against it). "ibug68"
is grounded on that mean (`landmarks68.ground_ibug68`). Only training-side data is used.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from jax3dmmstn.facemodel import landmarks68
from jax3dmmstn.facemodel.morphable_model import (
    AFLW21_FLIP,
    IBUG68_FLIP,
    MorphableModel,
    grid_faces,
    grid_mirror,
    grid_uv,
)

# Shell geometry (mm).
_HALF_WIDTH = 67.0  # a: x semi-axis of the shell
_HALF_HEIGHT = 115.0  # b: y semi-axis
_DEPTH = 90.0  # c: z semi-axis (front of the shell to the head's vertical axis)
_ARC_PER_UV = 250.0  # mm of arc down the face per unit of v
_V_CENTRE = 0.42  # row fraction t = 1 - v at elevation 0 (the level of the nose tip)
_CHIN_ELEVATION = -0.62  # elevation (rad) of the chin's lower edge, where the surface turns under
_UNDERCHIN_SOFTNESS = 0.15
_FRONT_FLATNESS = 0.6  # q in z = c cos(azimuth) ** q (1: an ellipse)

# Anatomy in frontal coordinates (mm): y = 0 at the nose tip; left = image left = negative x.
_EYE_X, _EYE_Y = 32.0, 40.0  # eye centres
_BROW_Y = 55.0  # eyebrows (middle of the arch)
_NOSE_TIP_Y, _SUBNASALE_Y = 0.0, -8.0
_MOUTH_Y = -28.0  # the mouth slit (stomion)
_MOUTH_HALF_WIDTH = 24.0
_MENTON_Y = -72.0  # bottom of the chin


def synthetic_face_model(
    resolution: int = 112, n_identity: int = 5, n_expression: int = 5, seed: int = 0
) -> MorphableModel:
    """Builds the procedural face model on a res x res UV grid.

    Args:
      resolution: grid resolution res (N = res ** 2 vertices); at least 16 so the features resolve.
      n_identity, n_expression: component counts. The first five of each are hand-designed
        (identity: face width, cheek fullness, nose size, face depth, chin and jaw;
        expression: mouth opening, smile, brow raise, pucker, frown); further components are
        smooth random symmetric deformations drawn from `seed`.
      seed: seeds the random components beyond the hand-designed ones (the rest is fixed).

    Returns a MorphableModel in mm with a bilaterally symmetric mean, components orthogonal in
    the flat 3N space and scaled so that alpha ~ N(0, 1) gives plausible faces, "aflw21" and
    "ibug68" landmarks and an albedo.
    """
    _check_arguments(resolution, n_identity, n_expression)
    res = int(resolution)
    uv = grid_uv(res).astype(np.float64)
    mirror = grid_mirror(res)
    frame = _shell_frame(uv)
    fx, fy = frame["fx"], frame["fy"]

    mean = _mean_shape(frame, mirror)

    rng = np.random.default_rng(seed)
    identity = _identity_fields(frame, mean, n_identity, rng)
    expression = _expression_fields(frame, n_expression, rng)
    raw = [(_symmetrize(f, mirror), m) for f, m in identity + expression]
    basis = _orthogonal_scaled(raw)

    landmarks = {"aflw21": _aflw21(frame, mirror), "ibug68": _ibug68(frame, mirror)}
    model = MorphableModel(
        mean=mean.astype(np.float32),
        basis=basis.astype(np.float32),
        faces=grid_faces(res),
        resolution=res,
        uv=uv.astype(np.float32),
        landmarks=landmarks,
        landmark_flip={"aflw21": AFLW21_FLIP, "ibug68": IBUG68_FLIP},
        mirror=mirror,
        albedo=_albedo(frame, fx, fy).astype(np.float32),
        n_identity=n_identity,
        n_expression=n_expression,
        units="mm",
        provenance=(
            f"jax3dmmstn.synthetic_face_model(resolution={res}, n_identity={n_identity}, "
            f"n_expression={n_expression}, seed={seed}); mean reshaped to and 'ibug68' "
            "grounded on the BFM's 68-landmark mean (3DDFA's u_base, landmarks68)"
        ),
    )
    # The 68 points where the BFM's landmark vertices fall on this face (the labels' points),
    # rather than the hand-placed ones (the jaw line differs by up to 50 mm).
    grounded = landmarks68.ground_ibug68(model, anchor_set="aflw21", symmetric=True)
    return model.with_landmarks("ibug68", grounded)


def _check_arguments(resolution, n_identity: int, n_expression: int) -> None:
    if int(resolution) != resolution or resolution < 16:
        raise ValueError(f"resolution must be an integer >= 16, got {resolution}")
    if n_identity < 0 or n_expression < 0 or n_identity + n_expression == 0:
        raise ValueError(
            f"need n_identity >= 0, n_expression >= 0 and at least one component, got "
            f"{n_identity}, {n_expression}"
        )


def _mean_shape(frame: dict, mirror: np.ndarray) -> np.ndarray:
    """The shell with the anatomy on it, reshaped towards the BFM's 68-point mean, made exactly
    symmetric, centred. [N, 3] float64."""
    mean = _place(frame, _anatomy_displacement(frame))
    mean = _symmetrize(mean + _calibration_field(frame["shell"]), mirror)
    # Origin near the face centre: x is 0 by symmetry; centre y and z on the mean.
    mean[:, 1:] -= mean[:, 1:].mean(axis=0)
    return mean


# ------------------------------------------------------------------------------- calibration
# The hand-placed anatomy differs from a real face's (the BFM mean at its 68 iBUG vertices,
# landmarks68.ibug68_mean) by up to ~10 mm inside the face and more on the jaw line. A smooth
# displacement field removes the difference: Gaussian radial basis functions centred on the 68
# corresponding vertices, interpolating the residuals of the similarity-aligned 68 mean. It is
# computed once on the 112 grid (the field lives on the undisplaced shell, so it is the same at
# every resolution) and applied to the mean only; components, albedo and landmarks are vertex
# fields and follow the vertices.
_CALIBRATION_RESOLUTION = 112
_CALIBRATION_SIGMA = 20.0  # mm on the shell: smooth over neighbouring landmarks
_CALIBRATION_RIDGE = 0.05  # smoothing, not exact interpolation: no bumps


def _calibration_correspondence(frame: dict, raw_mean: np.ndarray, mirror: np.ndarray):
    """Model vertices [68] matching the 68 mean and the aligned 68 mean [68, 3] on the raw mean.

    Inner face (brows, eyes, nose, mouth): the hand-placed anatomical vertices, so the painted
    features move onto the real positions. Jaw line: the vertices nearest the aligned contour
    (the hand-placed jaw line is not where the BFM's contour vertices are).
    """
    anatomical = _ibug68(frame, mirror)
    mean68 = landmarks68.ibug68_mean()
    inner = landmarks68.INNER_FACE
    # Scale and translation only: the model frame must be the BFM's, rotation included.
    transform = landmarks68.umeyama(mean68[inner], raw_mean[anatomical[inner]], with_rotation=False)
    placed = landmarks68.symmetrize_points68(
        landmarks68.apply_similarity(mean68, *transform), np.array([1.0, 0.0, 0.0]), 0.0
    )
    nearest = landmarks68.symmetric_nearest(raw_mean, mirror, placed)
    return np.concatenate([nearest[:17], anatomical[17:]]), placed


@lru_cache(maxsize=1)
def _calibration_rbf() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres [68, 3] on the undisplaced shell, RBF weights [68, 3], affine part [4, 3])."""
    res = _CALIBRATION_RESOLUTION
    frame = _shell_frame(grid_uv(res).astype(np.float64))
    mirror = grid_mirror(res)
    raw_mean = _symmetrize(_place(frame, _anatomy_displacement(frame)), mirror)
    idx, placed = _calibration_correspondence(frame, raw_mean, mirror)
    centres = frame["shell"][idx]
    weights, affine = _fit_rbf(centres, placed - raw_mean[idx])
    for array in (centres, weights, affine):
        array.setflags(write=False)
    return centres, weights, affine


def _fit_rbf(centres: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smoothing Gaussian RBF with an affine part: values ~ K w + [p, 1] a, w orthogonal to the
    affine space. The affine part carries the global difference (the anatomy's 5.5 deg pitch
    against the BFM, its proportions) without bumps. centres, values: [C, 3].
    Returns (w [C, 3], a [4, 3])."""
    c = len(centres)
    poly = np.concatenate([centres, np.ones((c, 1))], axis=1)
    system = np.zeros((c + 4, c + 4))
    system[:c, :c] = _rbf_kernel(centres, centres) + _CALIBRATION_RIDGE * np.eye(c)
    system[:c, c:], system[c:, :c] = poly, poly.T
    rhs = np.concatenate([values, np.zeros((4, 3))])
    solution = np.linalg.solve(system, rhs)
    return solution[:c], solution[c:]


def _rbf_kernel(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Gaussian kernel exp(-|p - c|^2 / (2 sigma^2)). [P, 3], [C, 3] -> [P, C]."""
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    return np.exp(-0.5 * d2 / _CALIBRATION_SIGMA**2)


def _calibration_field(shell: np.ndarray) -> np.ndarray:
    """The calibration displacement (mm) at undisplaced shell points [N, 3]. Returns [N, 3]."""
    centres, weights, affine = _calibration_rbf()
    poly = np.concatenate([shell, np.ones((len(shell), 1))], axis=1)
    return _rbf_kernel(shell, centres) @ weights + poly @ affine


# ------------------------------------------------------------------------------- the shell
def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _shell_frame(uv: np.ndarray) -> dict:
    """Angles, undisplaced shell points, their outward normals and frontal coordinates.

    uv: [N, 2]. Returns arrays of [N] (angles, frontal coordinates) and [N, 3] (points, normals).
    """
    u, t = uv[:, 0], 1.0 - uv[:, 1]
    a, b, c = _HALF_WIDTH, _HALF_HEIGHT, _DEPTH
    azimuth = (u - 0.5) * np.pi
    arc = _ARC_PER_UV * (_V_CENTRE - t)
    elevation = arc / b
    cos_el, sin_el = np.cos(elevation), np.sin(elevation)
    # Height: an ellipse down to the chin; below it the height saturates, so that the surface
    # under the chin runs backwards (towards the neck) rather than further down.
    el_c, k = _CHIN_ELEVATION, _UNDERCHIN_SOFTNESS
    below = elevation < el_c
    height = np.where(
        below, np.sin(el_c) + np.cos(el_c) * k * np.tanh((elevation - el_c) / k), sin_el
    )
    d_height = np.where(below, np.cos(el_c) / np.cosh((elevation - el_c) / k) ** 2, cos_el)
    # Horizontal cross-section: z = c cos(azimuth) ** q with q < 1 is flatter across the front
    # of the face than an ellipse and turns faster at the sides, like a real face.
    q = _FRONT_FLATNESS
    sin_az = np.sin(azimuth)
    cos_az = np.maximum(np.cos(azimuth), 1e-12)
    depth, d_depth = cos_az**q, -q * cos_az ** (q - 1.0) * sin_az
    shell = np.stack([a * cos_el * sin_az, b * height, c * cos_el * depth], axis=1)
    # Outward normal of the parametric shell (analytic: d/d(azimuth) x d/d(elevation)), used
    # to displace it before there is a mesh; not a mesh normal (those are the core's
    # visibility.vertex_normals / face_normals).
    d_az = np.stack([a * cos_el * cos_az, np.zeros_like(u), c * cos_el * d_depth], axis=1)
    d_el = np.stack([-a * sin_el * sin_az, b * d_height, -c * sin_el * depth], axis=1)
    normal = np.cross(d_az, d_el)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return {
        "azimuth": azimuth,
        "elevation": elevation,
        "shell": shell,
        "normal": normal,
        "fx": shell[:, 0],
        "fy": shell[:, 1],
        "t": t,
    }


def _jaw_taper(fy: np.ndarray) -> np.ndarray:
    """Width factor of the face: narrower below the mouth (jaw and chin); above the eyes it undoes
    part of the ellipse's narrowing so that the cranium stays about as wide as the cheeks."""
    jaw = 1.0 - 0.5 * _smoothstep((-fy - 15.0) / 65.0)
    cranium = 1.0 + 0.12 * _smoothstep((fy - 20.0) / 60.0)
    return jaw * cranium


def _place(frame: dict, displacement: np.ndarray) -> np.ndarray:
    """Shell + displacement along the shell normal, then the jaw/temple taper in x. Returns [N, 3]."""
    points = frame["shell"] + displacement[:, None] * frame["normal"]
    points[:, 0] *= _jaw_taper(frame["fy"])
    return points


def _gauss(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _super_gauss(x, sx, power=4):
    return np.exp(-0.5 * np.abs(x / sx) ** power)


def _front(frame: dict) -> np.ndarray:
    """1 on the face, fading to 0 towards the sides, so frontal features do not leak round the back."""
    return _smoothstep((np.cos(frame["azimuth"]) - 0.15) / 0.35)


def _nose(x, y):
    bridge = 11.0 * _gauss(x, y, 0.0, 21.0, 6.0, 12.0)
    tip = 16.0 * _gauss(x, y, 0.0, _NOSE_TIP_Y, 8.5, 6.5)
    alae = 7.0 * _gauss(np.abs(x), y, 13.5, _NOSE_TIP_Y - 5.0, 5.5, 4.5)
    nostrils = -2.5 * _gauss(np.abs(x), y, 7.0, _SUBNASALE_Y, 2.5, 1.6)
    return bridge + tip + alae + nostrils


def _chin(x, y):
    return 9.0 * _gauss(x, y, 0.0, _MENTON_Y + 14.0, 15.0, 9.0)


def _lips(x, y):
    upper = 3.5 * _gauss(0.0, y, 0.0, _MOUTH_Y + 5.5, 1.0, 3.5)
    lower = 4.0 * _gauss(0.0, y, 0.0, _MOUTH_Y - 6.0, 1.0, 4.0)
    slit = 2.5 * _super_gauss(x, 20.0) * _gauss(0.0, y, 0.0, _MOUTH_Y, 1.0, 1.2)
    return _super_gauss(x, 17.0) * (upper + lower) - slit


def _ears(frame: dict) -> np.ndarray:
    """Ear bumps at the border of the mask, from about the brows down to the nose base."""
    return 13.0 * _gauss(np.abs(frame["azimuth"]), frame["elevation"], 1.47, 0.17, 0.07, 0.15)


def _anatomy_displacement(frame: dict) -> np.ndarray:
    """Displacement along the shell normal (mm) that turns the shell into a face. Returns [N]."""
    x, y = frame["fx"], frame["fy"]
    ax = np.abs(x)
    d = np.zeros_like(x)
    d += 5.5 * _gauss(ax, y, 30.0, _BROW_Y - 3.0, 17.0, 6.0)  # brow ridge
    d += 2.0 * _gauss(x, y, 0.0, _BROW_Y - 7.0, 12.0, 8.0)  # glabella
    d -= 11.0 * _gauss(ax, y, _EYE_X, _EYE_Y + 1.0, 12.5, 8.5)  # eye sockets
    d += 5.0 * _gauss(ax, y, _EYE_X, _EYE_Y, 8.5, 4.5)  # eyeballs under the lids
    d += _nose(x, y)
    d += 6.0 * _gauss(ax, y, 45.0, 15.0, 14.0, 13.0)  # cheekbones
    d += 6.0 * _gauss(x, y, 0.0, _MOUTH_Y + 3.0, 26.0, 16.0)  # the muzzle (teeth, jaws)
    d += _lips(x, y)
    d -= 2.0 * _gauss(x, y, 0.0, _MOUTH_Y - 16.0, 13.0, 3.5)  # labiomental groove
    d += _chin(x, y)
    d -= 3.0 * _gauss(ax, y, 58.0, _BROW_Y - 5.0, 9.0, 14.0)  # temples
    return d * _front(frame) + _ears(frame)


def _symmetrize(field: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Exactly bilaterally symmetric version of a vertex field [N, 3]: f(v) = R f(mirror(v)), R = diag(-1, 1, 1)."""
    reflected = field[mirror] * np.array([-1.0, 1.0, 1.0])
    return 0.5 * (field + reflected)


# ------------------------------------------------------------------------------- components
def _along_normal(frame: dict, scalar: np.ndarray) -> np.ndarray:
    n = frame["normal"].copy()
    n[:, 0] *= _jaw_taper(frame["fy"])
    return scalar[:, None] * n


def _identity_fields(frame: dict, mean: np.ndarray, count: int, rng) -> list:
    """(field [N, 3], largest vertex displacement per std in mm) of the identity components."""
    x, y = frame["fx"], frame["fy"]
    front = _front(frame)
    zeros = np.zeros_like(x)
    designed = [
        # face width
        (np.stack([mean[:, 0], zeros, zeros], axis=1), 6.0),
        # fuller or hollower cheeks (not the face's length: that would be nearly the same
        # field as the jaw drop of the mouth-opening expression)
        (_along_normal(frame, _gauss(np.abs(x), y, 44.0, -12.0, 16.0, 20.0) * front), 5.0),
        # nose size
        (_along_normal(frame, _nose(x, y) * front), 4.0),
        # face depth: a deeper or flatter profile
        (np.stack([zeros, zeros, mean[:, 2] - mean[:, 2].min()], axis=1), 6.0),
        # chin prominence and jaw width
        (
            _along_normal(frame, _chin(x, y) * front)
            + np.stack(
                [0.1 * mean[:, 0] * _smoothstep((_MOUTH_Y - y) / 30.0), zeros, zeros], axis=1
            ),
            4.0,
        ),
    ]
    fields = designed[:count]
    fields += [(_random_field(frame, rng, region=None), 3.0) for _ in range(count - len(fields))]
    return fields


def _expression_fields(frame: dict, count: int, rng) -> list:
    """(field [N, 3], largest vertex displacement per std in mm) of the expression components."""
    x, y = frame["fx"], frame["fy"]
    ax, sx = np.abs(x), np.tanh(x / 4.0)  # a smooth sign: no tear along the midline
    front = _front(frame)
    zeros = np.zeros_like(x)
    # Mouth opening: below the mouth slit everything drops with the jaw; across the slit the
    # transition is sharp between the mouth corners and smooth on the cheeks beyond them.
    transition = 1.0 + 14.0 * _smoothstep((ax - _MOUTH_HALF_WIDTH + 6.0) / 14.0)
    jaw = 1.0 / (1.0 + np.exp(-(_MOUTH_Y - y) / transition))
    jaw *= _smoothstep((75.0 - ax) / 35.0)
    upper_lip = (1.0 - jaw) * _gauss(x, y, 0.0, _MOUTH_Y + 5.0, 18.0, 5.0)
    mouth_open = np.stack([zeros, -jaw + 0.15 * upper_lip, -0.35 * jaw], axis=1)
    corners = _gauss(ax, y, _MOUTH_HALF_WIDTH, _MOUTH_Y, 8.0, 7.0)
    cheeks = _gauss(ax, y, 38.0, 8.0, 12.0, 12.0)
    smile = np.stack(
        [0.7 * sx * corners, corners + 0.5 * cheeks, -0.5 * corners + 0.5 * cheeks], axis=1
    )
    brows = _gauss(ax, y, 32.0, _BROW_Y + 8.0, 26.0, 16.0)
    brow_raise = np.stack([zeros, brows, 0.1 * brows], axis=1)
    lips = _gauss(x, y, 0.0, _MOUTH_Y, 15.0, 8.0)
    pucker = np.stack([-0.8 * sx * corners, zeros, lips - 0.3 * corners], axis=1)
    inner_brows = _gauss(ax, y, 20.0, _BROW_Y - 2.0, 11.0, 8.0)
    frown = np.stack([-0.8 * sx * inner_brows, -inner_brows, 0.2 * inner_brows], axis=1)
    designed = [(mouth_open, 4.5), (smile, 3.0), (brow_raise, 4.0), (pucker, 3.0), (frown, 2.5)]
    fields = [(f * front[:, None], m) for f, m in designed[:count]]
    fields += [
        (_random_field(frame, rng, region="mouth_eyes"), 2.0) for _ in range(count - len(fields))
    ]
    return fields


def _random_field(frame: dict, rng, region) -> np.ndarray:
    """A smooth random vector field [N, 3] from a few low-frequency modes in frontal coordinates."""
    x, y = frame["fx"] / 80.0, frame["fy"] / 80.0
    field = np.zeros((x.size, 3))
    for _ in range(4):
        kx, ky = rng.uniform(0.5, 2.5, size=2)
        px, py = rng.uniform(0, 2 * np.pi, size=2)
        field += (
            rng.normal(size=3)
            * (np.cos(kx * np.pi * x + px) * np.cos(ky * np.pi * y + py))[:, None]
        )
    window = _front(frame)
    if region == "mouth_eyes":
        ax = np.abs(frame["fx"])
        window = window * (
            _gauss(frame["fx"], frame["fy"], 0.0, _MOUTH_Y, 30.0, 15.0)
            + _gauss(ax, frame["fy"], _EYE_X, _EYE_Y + 8.0, 18.0, 14.0)
        )
    return field * window[:, None]


def _orthogonal_scaled(raw: list) -> np.ndarray:
    """Orthogonalizes the fields in order in the flat 3N space and scales each so its largest
    vertex displacement is its magnitude per std. raw: [(field [N, 3], mm)]. Returns [N, 3, D]."""
    n = raw[0][0].shape[0]
    columns = []
    for field, magnitude in raw:
        q = field.reshape(-1).copy()
        for _ in range(2):  # Gram-Schmidt twice: orthogonal to rounding error
            for p in columns:
                q -= (p @ q) / (p @ p) * p
        if not np.any(q):
            raise ValueError("a component is linearly dependent on the previous ones")
        q *= magnitude / np.linalg.norm(q.reshape(n, 3), axis=1).max()
        columns.append(q)
    return np.stack(columns, axis=1).reshape(n, 3, -1)


# ------------------------------------------------------------------------------- landmarks
def _nearest(frame: dict, targets: np.ndarray) -> np.ndarray:
    """Vertices of the front of the shell nearest to frontal (x, y) targets [L, 2]. Returns [L] int32."""
    on_front = np.flatnonzero(np.cos(frame["azimuth"]) > 0.1)
    points = np.stack([frame["fx"], frame["fy"]], axis=1)[on_front]
    d2 = (points**2).sum(1)[:, None] - 2.0 * points @ targets.T + (targets**2).sum(1)[None]
    return on_front[np.argmin(d2, axis=0)].astype(np.int32)


def _mirror_right(idx: np.ndarray, targets_x: np.ndarray, flip: np.ndarray, mirror) -> np.ndarray:
    """Right-hand points are the mirror images of their left partners, so the sets are exactly symmetric."""
    out = idx.copy()
    right = targets_x > 0
    out[right] = mirror[idx[flip[right]]]
    return out


def _ear_lobe(frame: dict) -> int:
    """The left ear-lobe vertex: the bottom of the left ear bump."""
    d2 = (frame["azimuth"] + 1.46) ** 2 + (frame["elevation"] + 0.12) ** 2
    return int(np.argmin(d2))


def _mirrored(points):
    return [(-px, py) for px, py in reversed(points)]


def _brow_arch(ax):
    """Height (mm) of the middle of the eyebrow at |x| = ax."""
    return _BROW_Y - 2.0 + 3.0 * (1.0 - ((ax - 34.0) / 19.0) ** 2)


def _on_brow(xs):
    return [(px, float(_brow_arch(abs(px)))) for px in xs]


def _aflw21(frame: dict, mirror: np.ndarray) -> np.ndarray:
    ex, ey = _EYE_X, _EYE_Y
    brow = _on_brow([-51.0, -34.0, -16.0])
    eye = [(-ex - 13.5, ey), (-ex, ey), (-ex + 13.5, ey)]
    nose = [(-13.5, _NOSE_TIP_Y - 6.0), (0.0, _NOSE_TIP_Y), (13.5, _NOSE_TIP_Y - 6.0)]
    mouth = [(-_MOUTH_HALF_WIDTH, _MOUTH_Y), (0.0, _MOUTH_Y), (_MOUTH_HALF_WIDTH, _MOUTH_Y)]
    chin = [(0.0, _MENTON_Y)]
    targets = np.array(
        brow
        + _mirrored(brow)
        + eye
        + _mirrored(eye)
        + [(-80.0, 0.0)]
        + nose
        + [(80.0, 0.0)]
        + mouth
        + chin
    )
    idx = _nearest(frame, targets)
    idx[12] = _ear_lobe(frame)
    return _mirror_right(idx, targets[:, 0], AFLW21_FLIP, mirror)


def _ibug68(frame: dict, mirror: np.ndarray) -> np.ndarray:
    ex, ey, my, mw = _EYE_X, _EYE_Y, _MOUTH_Y, _MOUTH_HALF_WIDTH
    theta = np.linspace(0.0, np.pi, 17)
    jaw = np.stack([-64.0 * np.cos(theta), ey - (ey - _MENTON_Y) * np.sin(theta)], axis=1)
    brows = _on_brow([-51.0, -43.0, -34.0, -25.0, -16.0])
    brows += _mirrored(brows)
    bridge = [(0.0, ey + 2.0 - k * (ey + 2.0) / 3.0) for k in range(4)]
    sn = _SUBNASALE_Y
    nostrils = [(-10.0, sn + 2.0), (-5.0, sn + 0.5), (0.0, sn), (5.0, sn + 0.5), (10.0, sn + 2.0)]
    left_eye = [
        (-ex - 13.5, ey),
        (-ex - 5, ey + 4.0),
        (-ex + 5, ey + 4.0),
        (-ex + 13.5, ey),
        (-ex + 5, ey - 3.0),
        (-ex - 5, ey - 3.0),
    ]
    right_eye = [
        (ex - 13.5, ey),
        (ex - 5, ey + 4.0),
        (ex + 5, ey + 4.0),
        (ex + 13.5, ey),
        (ex + 5, ey - 3.0),
        (ex - 5, ey - 3.0),
    ]
    outer = [
        (-mw, my),
        (-15.0, my + 5.0),
        (-6.0, my + 6.5),
        (0.0, my + 6.0),
        (6.0, my + 6.5),
        (15.0, my + 5.0),
        (mw, my),
        (15.0, my - 5.5),
        (6.0, my - 7.5),
        (0.0, my - 8.0),
        (-6.0, my - 7.5),
        (-15.0, my - 5.5),
    ]
    inner = [
        (-20.0, my),
        (-7.0, my + 1.0),
        (0.0, my + 1.0),
        (7.0, my + 1.0),
        (20.0, my),
        (7.0, my - 1.0),
        (0.0, my - 1.0),
        (-7.0, my - 1.0),
    ]
    targets = np.concatenate(
        [jaw, np.array(brows + bridge + nostrils + left_eye + right_eye + outer + inner)]
    )
    idx = _nearest(frame, targets)
    return _mirror_right(idx, targets[:, 0], IBUG68_FLIP, mirror)


# ------------------------------------------------------------------------------- albedo
def _mix(color, base, weight):
    weight = np.clip(weight, 0.0, 1.0)[:, None]
    return base * (1.0 - weight) + np.asarray(color) * weight


def _soft_inside(signed_distance, softness):
    """1 inside (signed_distance < 0), 0 outside, with a smooth edge of the given width (mm)."""
    return _smoothstep(0.5 - signed_distance / softness)


def _albedo(frame: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-vertex RGB in [0, 1]: skin, eyebrows, eyes with iris and pupil, lips, nostrils, hair. [N, 3]."""
    ax = np.abs(x)
    n = x.size
    color = np.tile([0.87, 0.69, 0.58], (n, 1))  # skin
    color = _mix([0.90, 0.60, 0.52], color, 0.35 * _gauss(ax, y, 42.0, 10.0, 12.0, 10.0))  # cheeks
    color = _mix([0.88, 0.62, 0.54], color, 0.3 * _gauss(x, y, 0.0, _NOSE_TIP_Y, 7.0, 6.0))
    color = _mix([0.80, 0.62, 0.52], color, 0.4 * _smoothstep((_MENTON_Y + 5.0 - y) / 15.0))
    # Eyebrows: a band along an arch above each eye, thinning towards the outer end.
    arch = _brow_arch(ax)
    half_thick = 3.2 - 1.0 * _smoothstep((ax - 30.0) / 24.0)
    along = _smoothstep((ax - 13.0) / 3.0) * _smoothstep((57.0 - ax) / 3.0)
    color = _mix(
        [0.28, 0.19, 0.13], color, along * _soft_inside(np.abs(y - arch) - half_thick, 1.5)
    )
    # Eyes: an almond opening between two lid arcs; iris and pupil inside it.
    dx = ax - _EYE_X
    half_width = 13.5
    shape = np.clip(1.0 - (dx / half_width) ** 2, 0.0, None)
    upper, lower = _EYE_Y + 5.0 * shape, _EYE_Y - 3.8 * shape
    inside_eye = (
        _soft_inside(y - upper, 1.0)
        * _soft_inside(lower - y, 1.0)
        * _soft_inside(np.abs(dx) - half_width, 1.0)
    )
    r = np.hypot(dx, y - _EYE_Y - 0.3)
    eye = np.tile([0.92, 0.91, 0.88], (n, 1))  # sclera
    eye = _mix([0.30, 0.38, 0.46], eye, _soft_inside(r - 5.8, 1.2))  # iris
    eye = _mix([0.04, 0.04, 0.05], eye, _soft_inside(r - 2.3, 1.0))  # pupil
    color = color * (1.0 - inside_eye[:, None]) + eye * inside_eye[:, None]
    lid_line = _soft_inside(np.abs(y - upper) - 0.6, 1.2) * _soft_inside(
        np.abs(dx) - half_width, 1.0
    )
    color = _mix([0.22, 0.15, 0.12], color, 0.85 * lid_line)
    # Lips: between a cupid's-bow upper outline and a rounded lower outline.
    lip_shape = np.sqrt(np.clip(1.0 - (x / _MOUTH_HALF_WIDTH) ** 2, 0.0, None))
    upper_outline = _MOUTH_Y + (7.0 - 1.5 * _gauss(x, 0.0, 0.0, 0.0, 3.0, 1.0)) * lip_shape
    lower_outline = _MOUTH_Y - 8.5 * lip_shape
    in_lips = (
        _soft_inside(y - upper_outline, 1.2)
        * _soft_inside(lower_outline - y, 1.2)
        * _soft_inside(ax - _MOUTH_HALF_WIDTH, 1.0)
    )
    color = _mix([0.74, 0.38, 0.38], color, in_lips)
    # The mouth slit is at least one grid row tall, so an opened mouth shows a dark inside.
    slit = _soft_inside(np.abs(y - _MOUTH_Y) - 2.0, 1.0) * _soft_inside(
        ax - _MOUTH_HALF_WIDTH + 1.0, 1.5
    )
    color = _mix([0.30, 0.08, 0.08], color, slit)  # mouth
    color = _mix(
        [0.22, 0.11, 0.09],
        color,  # nostrils
        _soft_inside(np.hypot((ax - 6.5) / 3.0, (y - _SUBNASALE_Y - 1.0) / 1.7) - 1.0, 0.5),
    )
    # Hair: above a hairline on the forehead and on the sides above the ears.
    az = np.abs(frame["azimuth"])
    hair = _soft_inside(_BROW_Y + 30.0 - 8.0 * (ax / 50.0) ** 2 - y, 4.0)
    sides = _smoothstep((az - 1.2) / 0.1) * _smoothstep((frame["elevation"] - 0.45) / 0.1)
    color = _mix([0.24, 0.16, 0.11], color, np.maximum(hair, sides))
    return np.clip(color, 0.0, 1.0)
