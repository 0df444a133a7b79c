"""Saves a picture of the synthetic face model: its mean and +-3 std of a few components.

    .venv/bin/python tools/model_figure.py                      # -> docs/images/synthetic_model.png
    .venv/bin/python tools/model_figure.py --model model.npz --out fig.png --resolution 224

Each face is rendered by a small numpy z-buffer rasteriser (orthographic camera looking down -z,
Lambertian shading with one directional light plus ambient), in grey to show the shape; the
first panel shows the mean with its albedo.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jax3dmmstn.core import pose, visibility


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals [N, 3]: the model's own (``core.visibility.vertex_normals``)."""
    normals = np.asarray(visibility.vertex_normals(jnp.asarray(vertices)[None], faces))[0]
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def rasterize(
    vertices: np.ndarray, faces: np.ndarray, attributes: np.ndarray, size: int, extent: float
) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic z-buffer rendering of per-vertex attributes.

    vertices [N, 3] (x right, y up, z to the viewer), faces [F, 3], attributes [N, C]; the square
    image covers x, y in [-extent, extent]. Returns (image [size, size, C], covered [size, size]).
    """
    scale = (size - 1) / (2.0 * extent)
    px = (vertices[:, 0] + extent) * scale  # column
    py = (extent - vertices[:, 1]) * scale  # row (image rows go down)
    tri_x, tri_y, tri_z = px[faces], py[faces], vertices[:, 2][faces]
    x0 = np.clip(np.ceil(tri_x.min(1)), 0, size - 1).astype(np.int64)
    x1 = np.clip(np.floor(tri_x.max(1)), 0, size - 1).astype(np.int64)
    y0 = np.clip(np.ceil(tri_y.min(1)), 0, size - 1).astype(np.int64)
    y1 = np.clip(np.floor(tri_y.max(1)), 0, size - 1).astype(np.int64)
    w = np.maximum(x1 - x0 + 1, 0)
    h = np.maximum(y1 - y0 + 1, 0)
    counts = w * h
    tri = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cx = x0[tri] + offset % np.maximum(w[tri], 1)
    cy = y0[tri] + offset // np.maximum(w[tri], 1)
    ax, ay = tri_x[tri, 0], tri_y[tri, 0]
    e1x, e1y = tri_x[tri, 1] - ax, tri_y[tri, 1] - ay
    e2x, e2y = tri_x[tri, 2] - ax, tri_y[tri, 2] - ay
    det = e1x * e2y - e1y * e2x
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    qx, qy = cx - ax, cy - ay
    b1 = (qx * e2y - qy * e2x) / det
    b2 = (e1x * qy - e1y * qx) / det
    b0 = 1.0 - b1 - b2
    inside = ok & (b0 >= -1e-9) & (b1 >= -1e-9) & (b2 >= -1e-9)
    tri, cx, cy, b = tri[inside], cx[inside], cy[inside], np.stack([b0, b1, b2], 1)[inside]
    z = (b * tri_z[tri]).sum(1)
    pixel = cy * size + cx
    order = np.lexsort((-z, pixel))  # nearest (largest z) first per pixel
    pixel, first = np.unique(pixel[order], return_index=True)
    keep = order[first]
    values = np.einsum("pk,pkc->pc", b[keep], attributes[faces[tri[keep]]])
    image = np.zeros((size * size, attributes.shape[1]))
    covered = np.zeros(size * size, dtype=bool)
    image[pixel] = values
    covered[pixel] = True
    return image.reshape(size, size, -1), covered.reshape(size, size)


def shade(
    vertices: np.ndarray,
    faces: np.ndarray,
    size: int = 256,
    extent: float = 110.0,
    albedo: np.ndarray | None = None,
    background: float = 1.0,
) -> np.ndarray:
    """Lambertian orthographic render [size, size, 3] in [0, 1]; grey when albedo is None."""
    normals = vertex_normals(vertices, faces)
    colors = np.full((len(vertices), 3), 0.85) if albedo is None else albedo
    image, covered = rasterize(vertices, faces, np.concatenate([normals, colors], 1), size, extent)
    n = image[..., :3] / np.maximum(np.linalg.norm(image[..., :3], axis=-1, keepdims=True), 1e-12)
    light = np.array([-0.35, 0.45, 1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip(n @ light, 0.0, 1.0)
    out = image[..., 3:] * (0.3 + 0.75 * lambert[..., None])
    out[~covered] = background
    return np.clip(out, 0.0, 1.0)


def model_figure(
    model, out: Path, components: tuple[int, ...] | None = None, size: int = 200
) -> None:
    """Saves a grid of renders: row 0 the mean (albedo and grey), then -3 / mean / +3 std per component."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if components is None:
        ident = list(range(min(3, model.n_identity)))
        expr = [model.n_identity + j for j in range(min(3, model.n_expression))]
        components = tuple(ident + expr)
    names = [
        f"identity {j + 1}" if j < model.n_identity else f"expression {j - model.n_identity + 1}"
        for j in components
    ]
    extent = 1.05 * float(np.abs(model.mean[:, :2]).max())
    cols = 3
    rows = 1 + int(np.ceil(len(components) / 1))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.3))
    faces = model.faces
    axes[0, 0].imshow(shade(model.mean, faces, size, extent, model.albedo))
    axes[0, 0].set_title("mean (albedo)", fontsize=8)
    axes[0, 1].imshow(shade(model.mean, faces, size, extent))
    axes[0, 1].set_title("mean (shape)", fontsize=8)
    rot = np.asarray(pose.pose_to_matrix(np.array([40.0, 0.0, 0.0])))  # the datasets' yaw
    axes[0, 2].imshow(shade(model.mean @ rot.T, faces, size, extent, model.albedo))
    axes[0, 2].set_title("mean, 40 deg yaw", fontsize=8)
    for row, (j, name) in enumerate(zip(components, names), start=1):
        for col, k in enumerate((-3.0, 0.0, 3.0)):
            alpha = np.zeros(model.n_components, dtype=np.float32)
            alpha[j] = k
            axes[row, col].imshow(shade(model.shape(alpha), faces, size, extent))
            axes[row, col].set_title(f"{name}: {k:+.0f} std" if k else name, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a MorphableModel .npz (default: the built-in synthetic model)",
    )
    parser.add_argument(
        "--resolution", type=int, default=112, help="grid resolution of the synthetic model"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/images/synthetic_model.png"))
    args = parser.parse_args(argv)
    from jax3dmmstn.facemodel.morphable_model import MorphableModel
    from jax3dmmstn.facemodel.synthetic import synthetic_face_model

    model = (
        MorphableModel.load(args.model)
        if args.model
        else synthetic_face_model(resolution=args.resolution)
    )
    model_figure(model, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
