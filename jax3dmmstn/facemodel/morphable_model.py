"""The morphable-model container, its .npz format, and the original's model.mat / .anl readers.

A morphable model is a mean shape plus a linear basis:  X(alpha) = mean + basis @ alpha.
Models used by the STN are *grid models*: their N = res * res vertices sit on a regular grid in
UV space, vertex k at (u, v) = ((k % res) / (res - 1), 1 - (k // res) / (res - 1)), so that the
sampler output for vertex k is row k // res, column k % res (REFERENCE.md, "UV resampling").
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

from jax3dmmstn import matfile

PathLike = Union[str, "os.PathLike[str]"]

# 1-based vertex indices of the original's 21 AFLW landmarks on the 112 x 112 BFM grid model
# (util/landmarks/Landmarks21_112.anl of the original). Order: 6 eyebrow points left to right,
# 6 eye points left to right, left ear, 3 nose points, right ear, 3 mouth points, chin.
AFLW21_INDICES_112_ONE_BASED = (
    2489,
    2279,
    2178,
    2191,
    2314,
    2552,
    3283,
    3177,
    3182,
    3203,
    3208,
    3326,
    7177,
    4979,
    4536,
    4990,
    7272,
    6880,
    6664,
    6897,
    9128,
)

# Left/right permutation of the 21 AFLW points under a horizontal image flip (1-based in the
# original's syncFlippedLandmarks; stored 0-based here).
AFLW21_FLIP = (
    np.array(
        [6, 5, 4, 3, 2, 1, 12, 11, 10, 9, 8, 7, 17, 16, 15, 14, 13, 20, 19, 18, 21], dtype=np.int32
    )
    - 1
)


def _ibug68_flip() -> np.ndarray:
    """0-based left/right permutation of the 68 iBUG (300-W) points under a horizontal flip."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw line
    pairs += [(17 + i, 26 - i) for i in range(5)]  # eyebrows
    pairs += [(31, 35), (32, 34)]  # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips
    flip = np.arange(68, dtype=np.int32)
    for a, b in pairs:
        flip[a], flip[b] = b, a
    return flip


IBUG68_FLIP = _ibug68_flip()

#: Known flip permutations by landmark-set name.
LANDMARK_FLIPS = {"aflw21": AFLW21_FLIP, "ibug68": IBUG68_FLIP}

_FORMAT_VERSION = 1


def grid_uv(resolution: int) -> np.ndarray:
    """UV coordinates of the vertices of a res x res grid model.

    Returns [res * res, 2] float32: vertex k at ((k % res) / (res - 1), 1 - (k // res) / (res - 1)).
    """
    if resolution < 2:
        raise ValueError(f"grid resolution must be >= 2, got {resolution}")
    k = np.arange(resolution * resolution)
    u = (k % resolution) / (resolution - 1)
    v = 1.0 - (k // resolution) / (resolution - 1)
    return np.stack([u, v], axis=1).astype(np.float32)


def grid_faces(resolution: int) -> np.ndarray:
    """Triangles of a res x res grid model, in the original's order and orientation.

    Two triangles per grid cell. For the cell whose top-left vertex is at column c, row r
    (k = r * res + c), the original's resampleModel.m emits (c, r), (c+1, r), (c, r+1) and then
    (c+1, r+1), (c, r+1), (c+1, r), cells ordered column-major (c outer, r inner).
    With this orientation the original's visibility normal cross(v2 - v1, v2 - v3) points
    towards +z (the viewer) on a surface whose x grows with u and y with v.

    Returns [2 * (res - 1) ** 2, 3] int32.
    """
    if resolution < 2:
        raise ValueError(f"grid resolution must be >= 2, got {resolution}")
    res = resolution
    # MATLAB loops i (u column, outer) then j (v row, inner); sub2ind([res res], i, j) is the
    # 1-based index (i - 1) + (j - 1) * res, i.e. 0-based k = row * res + col with col = i - 1.
    col, row = np.meshgrid(np.arange(res - 1), np.arange(res - 1), indexing="ij")
    col, row = col.ravel(), row.ravel()
    k00 = row * res + col
    k10 = row * res + col + 1  # next column
    k01 = (row + 1) * res + col  # next row
    k11 = (row + 1) * res + col + 1
    first = np.stack([k00, k10, k01], axis=1)
    second = np.stack([k11, k01, k10], axis=1)
    faces = np.stack([first, second], axis=1).reshape(-1, 3)
    return faces.astype(np.int32)


def grid_mirror(resolution: int) -> np.ndarray:
    """Vertex mirror map of a grid model (u -> 1 - u): column c -> res - 1 - c. Returns [res**2] int32."""
    k = np.arange(resolution * resolution)
    return (k // resolution * resolution + (resolution - 1 - k % resolution)).astype(np.int32)


def grid_landmarks_from_112(indices_112: Sequence[int], resolution: int) -> np.ndarray:
    """Maps 0-based vertex indices of a 112 x 112 grid model to the nearest vertices of a res grid.

    The grid positions are resolution independent in UV, so a landmark at row r, column c of the
    112 grid goes to row round(r * (res - 1) / 111), column round(c * (res - 1) / 111).
    Returns [L] int32.
    """
    idx = np.asarray(indices_112, dtype=np.int64)
    if resolution == 112:
        return idx.astype(np.int32)
    scale = (resolution - 1) / 111.0
    rows = np.rint(idx // 112 * scale).astype(np.int64)
    cols = np.rint(idx % 112 * scale).astype(np.int64)
    return (rows * resolution + cols).astype(np.int32)


def default_aflw21_landmarks(resolution: int) -> np.ndarray:
    """The original's 21 AFLW landmark vertices (0-based) for a BFM-derived grid model of this resolution."""
    return grid_landmarks_from_112(np.array(AFLW21_INDICES_112_ONE_BASED) - 1, resolution)


# 0-based vertices of the 21 AFLW points on the released model.mat (112 x 112 grid, 5 identity
# + 5 expression components) where AFLW's annotators put them, by tools/ground_aflw21.py:
# leave-one-out fits on 3,000 AFLW training crops (never AFLW2000-3D), mirror pairs kept
# symmetric. On 2,000 other training crops the leave-one-out NME drops from 5.48 to 4.64 %
# (outer eyebrow corners 7.0 / 8.7 -> 4.7 / 5.2 %; the original's are 10 mm too far out).
# Yet a network trained on them predicts the 68 BFM points worse (README, AFLW section), so
# the original's set stays every config's default.
AFLW21_INDICES_112_AFLW_GROUNDED = (
    2380, 2053, 2175, 2192, 2090, 2435, 3281, 3176, 3180, 3203, 3207,
    3326, 7067, 5089, 4760, 5102, 7156, 6767, 6664, 6784, 9016,
)  # fmt: skip
AFLW21_SETS = ("original", "aflw_grounded", "ibug68_mapped")


@dataclasses.dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear 3D morphable model: vertices(alpha) = mean + basis @ alpha.

    Attributes:
      mean: [N, 3] float32 mean shape (units given by `units`, "mm" for every model here).
      basis: [N, 3, D] float32 components. `flat_basis` = basis.reshape(3N, D) is the original's
        shapePC layout (x, y, z interleaved per vertex). The first n_identity columns are identity
        components, the next n_expression expression components; each is scaled so that
        alpha ~ N(0, 1) is a plausible face.
      faces: [F, 3] int32 0-based triangles.
      resolution: res for a res x res grid model (N == res ** 2), 0 for a model not on a grid.
      uv: [N, 2] float32 per-vertex UV.
      landmarks: name -> [L] int32 0-based vertex indices ("aflw21": the original's 21 AFLW
        points; "ibug68": 68 iBUG/300-W points where the model defines them).
      landmark_flip: name -> [L] int32 0-based permutation of the set under a horizontal image flip.
      mirror: [N] int32, the vertex that is the mirror image (u -> 1 - u) of each vertex.
      albedo: [N, 3] float32 RGB in [0, 1], or None.
      n_identity, n_expression: how the D components split.
      units: length unit of mean and basis.
      provenance: free text saying where the model came from and how it was built.
    """

    mean: np.ndarray
    basis: np.ndarray
    faces: np.ndarray
    resolution: int
    uv: np.ndarray
    landmarks: Mapping[str, np.ndarray]
    landmark_flip: Mapping[str, np.ndarray]
    mirror: np.ndarray
    albedo: np.ndarray | None
    n_identity: int
    n_expression: int
    units: str = "mm"
    provenance: str = ""

    def __post_init__(self) -> None:
        _set = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        _set("mean", _as_array("mean", self.mean, np.float32))
        _set("basis", _as_array("basis", self.basis, np.float32))
        _set("faces", _as_array("faces", self.faces, np.int32))
        _set("uv", _as_array("uv", self.uv, np.float32))
        _set("mirror", _as_array("mirror", self.mirror, np.int32))
        if self.albedo is not None:
            _set("albedo", _as_array("albedo", self.albedo, np.float32))
        _set(
            "landmarks",
            {
                str(k): _as_array(f"landmarks[{k!r}]", v, np.int32)
                for k, v in dict(self.landmarks).items()
            },
        )
        _set(
            "landmark_flip",
            {
                str(k): _as_array(f"landmark_flip[{k!r}]", v, np.int32)
                for k, v in dict(self.landmark_flip).items()
            },
        )
        _set("resolution", int(self.resolution))
        _set("n_identity", int(self.n_identity))
        _set("n_expression", int(self.n_expression))
        _set("units", str(self.units))
        _set("provenance", str(self.provenance))
        self._validate()

    def _validate(self) -> None:
        mean, basis = self.mean, self.basis
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ValueError(f"mean must have shape [N, 3], got {mean.shape}")
        n = mean.shape[0]
        if basis.ndim != 3 or basis.shape[:2] != (n, 3):
            raise ValueError(f"basis must have shape [N={n}, 3, D], got {basis.shape}")
        d = basis.shape[2]
        if self.n_identity < 0 or self.n_expression < 0 or self.n_identity + self.n_expression != d:
            raise ValueError(
                f"n_identity ({self.n_identity}) + n_expression ({self.n_expression}) must equal "
                f"the number of components D = {d}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(basis))):
            raise ValueError("mean and basis must be finite (found NaN or inf)")
        faces = self.faces
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must have shape [F, 3], got {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise ValueError(
                f"faces must be 0-based vertex indices in [0, {n}), got range "
                f"[{faces.min()}, {faces.max()}]"
            )
        if self.resolution < 0:
            raise ValueError(f"resolution must be >= 0, got {self.resolution}")
        if self.resolution and self.resolution**2 != n:
            raise ValueError(
                f"a grid model of resolution {self.resolution} needs {self.resolution**2} "
                f"vertices, got N = {n}"
            )
        if self.uv.shape != (n, 2):
            raise ValueError(f"uv must have shape [N={n}, 2], got {self.uv.shape}")
        if self.mirror.shape != (n,):
            raise ValueError(f"mirror must have shape [N={n}], got {self.mirror.shape}")
        if n and (self.mirror.min() < 0 or self.mirror.max() >= n):
            raise ValueError("mirror must hold vertex indices in [0, N)")
        if self.albedo is not None:
            if self.albedo.shape != (n, 3):
                raise ValueError(f"albedo must have shape [N={n}, 3], got {self.albedo.shape}")
            if not np.all((self.albedo >= 0) & (self.albedo <= 1)):
                raise ValueError("albedo values must lie in [0, 1]")
        if set(self.landmarks) != set(self.landmark_flip):
            raise ValueError(
                f"landmarks {sorted(self.landmarks)} and landmark_flip {sorted(self.landmark_flip)} "
                "must name the same landmark sets"
            )
        for name, idx in self.landmarks.items():
            if idx.ndim != 1:
                raise ValueError(f"landmarks[{name!r}] must be 1-D, got shape {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"landmarks[{name!r}] must be vertex indices in [0, {n})")
            flip = self.landmark_flip[name]
            if flip.shape != idx.shape or not np.array_equal(np.sort(flip), np.arange(idx.size)):
                raise ValueError(
                    f"landmark_flip[{name!r}] must be a permutation of range({idx.size}), got {flip}"
                )

    def with_landmarks(self, name: str, indices) -> MorphableModel:
        """This model with its landmark set ``name`` on other vertices ([L] 0-based indices;
        the set and its flip permutation must exist already: the points keep their meaning)."""
        if name not in self.landmarks:
            raise ValueError(
                f"the model has no landmark set {name!r} (it has {sorted(self.landmarks)})"
            )
        return dataclasses.replace(self, landmarks={**self.landmarks, name: indices})

    # ----------------------------------------------------------------------------- properties
    @property
    def n_vertices(self) -> int:
        """N."""
        return self.mean.shape[0]

    @property
    def n_components(self) -> int:
        """D = n_identity + n_expression."""
        return self.basis.shape[2]

    @property
    def flat_mean(self) -> np.ndarray:
        """[3N] mean with x, y, z interleaved per vertex (the original's shapeMU)."""
        return self.mean.reshape(-1)

    @property
    def flat_basis(self) -> np.ndarray:
        """[3N, D] basis with x, y, z interleaved per vertex (the original's shapePC)."""
        return self.basis.reshape(-1, self.n_components)

    def shape(self, alpha: np.ndarray) -> np.ndarray:
        """Vertices for weights alpha [D] -> [N, 3] or [B, D] -> [B, N, 3] (numpy, float32)."""
        alpha = np.asarray(alpha, dtype=np.float32)
        if alpha.shape[-1] != self.n_components:
            raise ValueError(f"alpha must end in D = {self.n_components}, got shape {alpha.shape}")
        return self.mean + np.einsum("ncd,...d->...nc", self.basis, alpha)

    # ----------------------------------------------------------------------------- save/load
    def save(self, path: PathLike) -> None:
        """Writes the model to a single .npz file (atomically: a temporary file, then rename)."""
        path = Path(path)
        arrays = {
            "format_version": np.array(_FORMAT_VERSION),
            "mean": self.mean,
            "basis": self.basis,
            "faces": self.faces,
            "resolution": np.array(self.resolution),
            "uv": self.uv,
            "mirror": self.mirror,
            "n_identity": np.array(self.n_identity),
            "n_expression": np.array(self.n_expression),
            "units": np.array(self.units),
            "provenance": np.array(self.provenance),
            "landmark_names": np.array(sorted(self.landmarks), dtype=np.str_).reshape(-1),
        }
        if self.albedo is not None:
            arrays["albedo"] = self.albedo
        for name in sorted(self.landmarks):
            arrays[f"landmarks/{name}"] = self.landmarks[name]
            arrays[f"landmark_flip/{name}"] = self.landmark_flip[name]
        directory = path.parent if str(path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: PathLike) -> "MorphableModel":
        """Reads a model written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"morphable model file not found: {path}")
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:  # zipfile/ValueError on a corrupt file
            raise ValueError(f"{path} is not a readable .npz morphable model: {exc}") from exc
        with data:
            required = [
                "format_version",
                "mean",
                "basis",
                "faces",
                "resolution",
                "uv",
                "mirror",
                "n_identity",
                "n_expression",
                "units",
                "provenance",
                "landmark_names",
            ]
            missing = [k for k in required if k not in data.files]
            if missing:
                raise ValueError(f"{path} is not a morphable model file: missing arrays {missing}")
            version = int(data["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported model format version {version}")
            names = [str(n) for n in data["landmark_names"]]
            try:
                landmarks = {n: data[f"landmarks/{n}"] for n in names}
                flips = {n: data[f"landmark_flip/{n}"] for n in names}
            except KeyError as exc:
                raise ValueError(f"{path}: landmark arrays missing ({exc})") from exc
            return cls(
                mean=data["mean"],
                basis=data["basis"],
                faces=data["faces"],
                resolution=int(data["resolution"]),
                uv=data["uv"],
                landmarks=landmarks,
                landmark_flip=flips,
                mirror=data["mirror"],
                albedo=data["albedo"] if "albedo" in data.files else None,
                n_identity=int(data["n_identity"]),
                n_expression=int(data["n_expression"]),
                units=str(data["units"]),
                provenance=str(data["provenance"]),
            )


def _as_array(name: str, value, dtype) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.dtype(dtype).kind == "i" and arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integers")
    out = np.ascontiguousarray(arr, dtype=dtype)
    out.setflags(write=False)  # the dataclass is frozen; so are its arrays
    return out


# --------------------------------------------------------------------------------- readers
def read_anl(path: PathLike) -> np.ndarray:
    """Reads a landmark index file in the original's .anl format.

    Lines starting with '%' are comments; every other non-empty line holds one 1-based vertex index.
    Returns [L] int32 0-based indices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmark file not found: {path}")
    values = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("%", 1)[0].strip()
        if not text:
            continue
        for token in text.split():
            try:
                number = float(token)
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: expected a vertex index, got {token!r}"
                ) from None
            if number != int(number) or number < 1:
                raise ValueError(f"{path}:{lineno}: {token!r} is not a 1-based vertex index")
            values.append(int(number) - 1)
    if not values:
        raise ValueError(f"{path} holds no landmark indices")
    return np.asarray(values, dtype=np.int32)


def load_mat(path: PathLike, required: Sequence[str]) -> dict:
    """The variables of a MATLAB .mat file of any version (v7.3 through h5py), checking that
    ``required`` ones are there; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".mat file not found: {path}")
    data = matfile.load_mat(str(path))  # MatFileError (a ValueError) when unreadable
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{path} lacks the variable(s) {missing}; it holds {sorted(data)}")
    return data


def _landmark_name(count: int, path: Path) -> str:
    if count == 21:
        return "aflw21"
    if count == 68:
        return "ibug68"
    raise ValueError(
        f"{path} holds {count} landmarks; only 21 (AFLW) and 68 (iBUG) point sets are known. "
        "Pass a mapping {name: path} with a matching flip permutation instead."
    )


def _checked_model_mat(path: Path):
    """model.mat's shapeMU [3N], shapePC [3N, D] (float64) and faces [F, 3] (1-based), checked."""
    data = load_mat(path, ["shapeMU", "shapePC", "faces"])
    shape_mu = np.asarray(data["shapeMU"], dtype=np.float64)
    shape_pc = np.asarray(data["shapePC"], dtype=np.float64)
    faces = np.asarray(data["faces"])
    if shape_mu.ndim != 2 or 1 not in shape_mu.shape or shape_mu.size % 3:
        raise ValueError(f"{path}: shapeMU must be 3N x 1, got shape {shape_mu.shape}")
    shape_mu = shape_mu.reshape(-1)
    n = shape_mu.size // 3
    if shape_pc.ndim != 2 or shape_pc.shape[0] != 3 * n:
        raise ValueError(f"{path}: shapePC must be 3N x D with 3N = {3 * n}, got {shape_pc.shape}")
    if "nverts" in data and int(np.asarray(data["nverts"]).ravel()[0]) != n:
        raise ValueError(
            f"{path}: nverts = {int(np.asarray(data['nverts']).ravel()[0])} but "
            f"shapeMU holds {n} vertices"
        )
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{path}: faces must be F x 3, got shape {faces.shape}")
    faces = faces.astype(np.int64)
    if faces.min() < 1 or faces.max() > n:
        raise ValueError(
            f"{path}: faces must be 1-based indices in [1, {n}], got range "
            f"[{faces.min()}, {faces.max()}]"
        )
    return shape_mu, shape_pc, faces


def _anl_landmarks(landmarks_path, n: int) -> dict[str, np.ndarray]:
    """Landmark sets from .anl files (named by their size), checked against N vertices."""
    if landmarks_path is None:
        return {}
    paths = [landmarks_path] if isinstance(landmarks_path, (str, os.PathLike)) else landmarks_path
    landmarks = {}
    for p in paths:
        idx = read_anl(p)
        if idx.max() >= n:
            raise ValueError(f"{p}: landmark index {idx.max() + 1} exceeds N = {n}")
        landmarks[_landmark_name(idx.size, Path(p))] = idx
    return landmarks


def load_matconvnet_model(
    path: PathLike,
    landmarks_path: PathLike | Sequence[PathLike] | None = None,
    *,
    n_identity: int | None = None,
    aflw21: str = "original",
) -> MorphableModel:
    """Loads the original's model.mat (prepareExpressionBFM output) as a MorphableModel.

    model.mat holds shapeMU [3N, 1] (x, y, z interleaved, mm), shapePC [3N, D], faces [F, 3]
    1-based, nverts = N = res ** 2. Landmarks: one or more .anl files (21 points -> "aflw21",
    68 -> "ibug68"); without any and N == 112 ** 2 the original's 21 AFLW vertices are used.
    Without an "ibug68" file but with "aflw21", the 68 iBUG points are grounded on the BFM's
    68-landmark mean (`landmarks68.ground_ibug68`).
    n_identity: how many of the D components are identity; default 5 when D == 10 (the
    released model: 5 BFM identity + 5 3DDFA expression components), else D.
    aflw21: "original" (the original's vertices), "aflw_grounded" (where AFLW's annotators
    put the points on the released model, ``AFLW21_INDICES_112_AFLW_GROUNDED``; 112 grid, no
    landmark file) or "ibug68_mapped" (3DDFA's 68 -> 21 mapping of the model's 68 iBUG
    vertices, ``landmarks68.aflw21_vertices_from_ibug68``). The 68 iBUG points are grounded
    from the original's set either way.
    """
    if aflw21 not in AFLW21_SETS:
        raise ValueError(f"aflw21 must be one of {AFLW21_SETS}, got {aflw21!r}")
    path = Path(path)
    shape_mu, shape_pc, faces = _checked_model_mat(path)
    n, d = shape_mu.size // 3, shape_pc.shape[1]
    res = int(round(np.sqrt(n)))
    if res * res != n:
        raise ValueError(f"{path}: N = {n} vertices is not a square grid (res x res) model")
    if n_identity is None:
        n_identity = 5 if d == 10 else d
    if not 0 <= n_identity <= d:
        raise ValueError(f"n_identity must be in [0, {d}], got {n_identity}")
    landmarks = _anl_landmarks(landmarks_path, n)
    if landmarks_path is None and res == 112:
        landmarks["aflw21"] = default_aflw21_landmarks(112)
    model = MorphableModel(
        mean=shape_mu.reshape(n, 3),
        basis=shape_pc.reshape(n, 3, d),
        faces=faces - 1,
        resolution=res,
        uv=grid_uv(res),
        landmarks=landmarks,
        landmark_flip={k: LANDMARK_FLIPS[k] for k in landmarks},
        mirror=grid_mirror(res),
        albedo=None,
        n_identity=n_identity,
        n_expression=d - n_identity,
        units="mm",
        provenance=f"MatConvNet model.mat {path.name} (res {res}, D = {d})",
    )
    from jax3dmmstn.facemodel.landmarks68 import (  # (imports this module)
        aflw21_vertices_from_ibug68,
        with_grounded_ibug68,
    )

    model = with_grounded_ibug68(model)
    if aflw21 == "ibug68_mapped":
        model = model.with_landmarks("aflw21", aflw21_vertices_from_ibug68(model))
    elif aflw21 == "aflw_grounded":
        if landmarks_path is not None or res != 112:
            raise ValueError(
                f"{path}: aflw21='aflw_grounded' is defined for the released 112 x 112 model "
                f"without landmark files (got res {res}, landmarks_path {landmarks_path!r})"
            )
        model = model.with_landmarks("aflw21", AFLW21_INDICES_112_AFLW_GROUNDED)
    return model
