"""What the STN produces, as files: UV textures, masks, overlays, OBJ meshes, identity averages.

Orientation conventions:

* UV textures are the sampler's output layout: vertex k at row ``k // res``,
  column ``k % res``, row 0 = v = 1 = the top of the face. Written as PNG row
  by row, so the PNG is right side up (forehead at the top).
* OBJ texture coordinates are the model's ``uv`` (v = 1 is the top of the
  texture image, the OBJ/OpenGL convention), so the texture PNG maps back onto
  the mesh unchanged.
* Overlays draw image-frame points (x from the left, y from the bottom) at
  ``geometry.image_frame_to_pixels`` (column, row with row = H - y scaled), i.e.
  where the sampler reads them.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jax3dmmstn.core import geometry
from jax3dmmstn.core.stn import compose_from_theta


def _to_uint8(image) -> np.ndarray:
    """``[H, W, C]`` or ``[H, W]`` float in [0, 255] (or uint8) -> uint8, clipped."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.all(np.isfinite(image)):
        raise ValueError("image has non-finite values")
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_png(path: str, image) -> str:
    """Writes ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` values in 0..255 as a PNG (row 0 on top)."""
    image = _to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(
            f"PNG image must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}"
        )
    Image.fromarray(image).save(path)
    return path


def sample_uv_texture(images, theta, mean, basis, faces, parametrisation: str = "matconvnet"):
    """The STN's forward pass from theta: UV texture, visibility mask and projected points.

    Args:
      images: ``[B, H, W, C]`` (row 0 = top), any value range.
      theta: ``[B, 6 + D]``.
      mean ``[N, 3]``, basis ``[N, 3, D]``, faces ``[F, 3]`` of a grid model (N = res^2).
    Returns:
      ``(texture [B, res, res, C], mask [B, res, res, 1], points2d [B, N, 2])``.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got {images.shape}")
    return _sample_uv_texture(
        images, jnp.asarray(theta, jnp.float32), mean, basis, faces, parametrisation
    )


@functools.partial(jax.jit, static_argnames=("parametrisation",))
def _sample_uv_texture(images, theta, mean, basis, faces, parametrisation):
    # One compiled call: op by op, the chain would compile each of its ~100 operations.
    out = compose_from_theta(
        theta,
        images,
        mean=mean,
        basis=basis,
        faces=faces,
        resolution=geometry.grid_resolution(np.shape(mean)[0]),
        image_size=images.shape[1:3],
        scale_parametrisation=parametrisation,
    )
    return out["texture"], out["mask"], out["points2d"]


def average_textures(textures, masks, eps: float = 1e-6):
    """Visibility-weighted mean UV texture of several images of one person.

    Args:
      textures: ``[K, res, res, C]``.
      masks: ``[K, res, res, 1]`` (or C) weights in [0, 1].
    Returns:
      ``(mean [res, res, C], coverage [res, res, 1])``: mean is 0 where no image
      sees the texel; coverage is the number of images that see it.
    """
    textures = np.asarray(textures, np.float64)
    masks = np.asarray(masks, np.float64)
    if textures.ndim != 4 or masks.ndim != 4 or textures.shape[:3] != masks.shape[:3]:
        raise ValueError(
            f"textures [K, H, W, C] and masks [K, H, W, 1] must match, got "
            f"{textures.shape} and {masks.shape}"
        )
    if textures.shape[0] == 0:
        raise ValueError("average_textures needs at least one texture")
    weights = np.broadcast_to(masks, textures.shape)
    total = np.sum(weights, axis=0)
    mean = np.sum(weights * textures, axis=0) / np.maximum(total, eps)
    coverage = np.sum(masks[..., :1], axis=0)
    return mean.astype(np.float32), coverage.astype(np.float32)


def write_obj(path: str, vertices, faces, uv=None, texture_png: Optional[str] = None) -> str:
    """Writes a Wavefront OBJ (with a .mtl next to it when a texture is given).

    Args:
      path: the .obj path.
      vertices: ``[N, 3]``.
      faces: ``[F, 3]`` 0-based.
      uv: ``[N, 2]`` per-vertex texture coordinates (v = 1 = top of the texture).
      texture_png: file name of the texture, relative to the OBJ's folder (used
        as the material's ``map_Kd``); needs ``uv``.
    Returns:
      ``path``.
    """
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be [N, 3], got {vertices.shape}")
    if not np.all(np.isfinite(vertices)):
        raise ValueError("vertices have non-finite values")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces must be 0-based indices in [0, {len(vertices)})")
    if uv is not None:
        uv = np.asarray(uv, np.float64)
        if uv.shape != (len(vertices), 2):
            raise ValueError(f"uv must be [N={len(vertices)}, 2], got {uv.shape}")
    if texture_png is not None and uv is None:
        raise ValueError("a texture needs uv coordinates")
    base = os.path.splitext(os.path.basename(path))[0]
    lines = ["# jax3dmmstn mesh"]
    if texture_png is not None:
        mtl_name = base + ".mtl"
        with open(os.path.join(os.path.dirname(path) or ".", mtl_name), "w") as f:
            f.write(
                f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {texture_png}\n"
            )
        lines += [f"mtllib {mtl_name}", "usemtl face"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    one = faces.astype(np.int64) + 1
    if uv is not None:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in one]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in one]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def overlay_image(
    image,
    fitted_landmarks=None,
    given_landmarks=None,
    mesh_points=None,
    given_visibility=None,
    max_mesh_points: int = 2000,
) -> np.ndarray:
    """Image with the projected mesh (small blue dots), given landmarks (green
    circles) and fitted landmarks (red crosses) drawn on it.

    Args:
      image: ``[H, W, 3]`` in 0..255, row 0 on top.
      fitted_landmarks, given_landmarks: ``[L, 2]`` image frame (y from the bottom).
      mesh_points: ``[N, 2]`` image frame; subsampled to ``max_mesh_points``.
      given_visibility: ``[L]``: missing given landmarks are not drawn.
    Returns:
      ``[H, W, 3]`` uint8.
    """
    image = _to_uint8(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    size = image.shape[:2]
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)

    def pixels(points):
        return np.asarray(geometry.image_frame_to_pixels(jnp.asarray(points, jnp.float32), size))

    if mesh_points is not None:
        points = np.asarray(mesh_points)
        step = max(1, len(points) // max_mesh_points)
        for col, row in pixels(points[::step]):
            draw.point((float(col), float(row)), fill=(60, 120, 255))
    if given_landmarks is not None:
        given = pixels(given_landmarks)
        vis = np.ones(len(given)) if given_visibility is None else np.asarray(given_visibility)
        for (col, row), v in zip(given, vis):
            if v > 0:
                draw.ellipse((col - 3, row - 3, col + 3, row + 3), outline=(0, 255, 0))
    if fitted_landmarks is not None:
        for col, row in pixels(fitted_landmarks):
            draw.line((col - 3, row - 3, col + 3, row + 3), fill=(255, 0, 0))
            draw.line((col - 3, row + 3, col + 3, row - 3), fill=(255, 0, 0))
    return np.asarray(canvas)


def write_fit_outputs(
    out_dir: str,
    name: str,
    image,
    texture,
    mask,
    vertices,
    faces,
    uv,
    points2d,
    fitted_landmarks,
    given_landmarks,
    given_visibility=None,
) -> dict:
    """Writes one image's files; returns {kind: path}.

    Files: ``<name>_overlay.png``, ``<name>_texture.png``, ``<name>_mask.png``,
    ``<name>_masked_texture.png``, ``<name>.obj`` + ``<name>.mtl`` (textured).
    ``texture`` ``[res, res, 3]`` in 0..255; ``mask`` ``[res, res, 1]`` in {0, 1};
    ``vertices`` ``[N, 3]`` (model frame, alpha applied).
    """
    os.makedirs(out_dir, exist_ok=True)
    texture = np.asarray(texture)
    mask = np.asarray(mask)
    paths = {
        "overlay": write_png(
            os.path.join(out_dir, f"{name}_overlay.png"),
            overlay_image(image, fitted_landmarks, given_landmarks, points2d, given_visibility),
        ),
        "texture": write_png(os.path.join(out_dir, f"{name}_texture.png"), texture),
        "mask": write_png(os.path.join(out_dir, f"{name}_mask.png"), 255.0 * mask),
        "masked_texture": write_png(
            os.path.join(out_dir, f"{name}_masked_texture.png"), texture * mask
        ),
    }
    paths["obj"] = write_obj(
        os.path.join(out_dir, f"{name}.obj"), vertices, faces, uv, texture_png=f"{name}_texture.png"
    )
    return paths
