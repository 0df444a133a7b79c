"""What a fit or a prediction leaves on disk: PNG overlays, UV textures and masks, OBJ/MTL meshes."""

from jax3dmmstn.outputs.files import (
    average_textures,
    overlay_image,
    sample_uv_texture,
    write_fit_outputs,
    write_obj,
    write_png,
)

__all__ = [
    "average_textures",
    "overlay_image",
    "sample_uv_texture",
    "write_fit_outputs",
    "write_obj",
    "write_png",
]
