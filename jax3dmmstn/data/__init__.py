"""Face data for the 3DMM-STN: synthetic faces, the original's .mat files, image
folders, TFDS datasets, preprocessing and sharded batching.

Example format
--------------
Every loader yields examples as dicts (batches stack them along a leading axis):

* ``image``: ``[H, W, 3]`` uint8 or float32, values in 0..255, row 0 at the top.
* ``landmarks``: ``[L, 2]`` float32 in the original's *image frame*: x from the
  LEFT edge, y from the BOTTOM edge, in pixels. The STN's grid maps x = 0 and
  x = W onto the first and last pixel centre, so a landmark (x, y) is read by the
  sampler at 0-based column ``x (W - 1) / W`` and row ``(H - y)(H - 1) / H``
  (``jax3dmmstn.core.geometry.image_frame_to_pixels``; the original's demo plots it at
  MATLAB pixel (x, H + 1 - y)). ``jax3dmmstn.core.geometry.project_theta(theta).points2d``
  is in this frame, and so is everything the landmark loss compares.
* ``landmark_visible``: ``[L]`` float32 in {0, 1}. 0 for a missing landmark (a
  (0, 0) entry of the original's .mat files) or one hidden by the face itself or
  an occluder (synthetic data); its coordinates are then not to be used.
* ``identity`` (optional): int32 identity id, for same-identity pairs.
* ``pose`` (optional): float32 ``[3]`` (yaw, pitch, roll) in degrees.
* ``theta`` (synthetic data only): float32 ``[6 + D]`` ground truth in the STN's
  parametrisation: r (axis-angle), t (pixels, image frame), logs (s = 0.99 ** logs),
  alpha. ``project_theta(theta)`` reproduces ``landmarks`` to float precision.
* ``landmarks_<set>`` / ``landmark_visible_<set>`` (synthetic data): every
  landmark set of the model ("aflw21", "ibug68").
* ``source`` (loaders, not batched): the file or record the example came from.
* Raw AFLW2000-3D / 300W-LP folders (``load_aflw2000_3d``, ``load_300w_lp``) add
  ``landmarks_<set>`` / ``landmark_visible_<set>``, ``pose``, ``label_scale`` (f),
  ``label_translation`` (tx, ty, tz) and ``name`` (the file stem, a string: drop it
  before batching for the device).

Landmark order is the scheme's (21 AFLW points as the original, or 68 iBUG
points); a horizontal flip permutes it with ``preprocess.flip_permutation``.
"""

from jax3dmmstn.data.batching import (
    BatchIterator,
    DatasetSource,
    Prefetcher,
    collate,
    global_batch_indices,
    merge_devices,
    process_slice,
    split_for_devices,
    to_global_arrays,
)
from jax3dmmstn.data.errors import DataError, DataErrorLog
from jax3dmmstn.data.loaders import (
    ImageFolderDataset,
    load_demo_mat,
    load_imdb_mat,
    load_tfds,
    read_pts,
)
from jax3dmmstn.data.preprocess import (
    crop_around_landmarks,
    flip_horizontal,
    flip_permutation,
    identity_pairs,
    random_augment,
    with_mirrors,
)
from jax3dmmstn.data.raw_folders import load_300w_lp, load_aflw2000_3d
from jax3dmmstn.data.render import FaceRenderer, RenderConfig
from jax3dmmstn.data.synthetic import SyntheticFaces, heldout_set

__all__ = [
    "BatchIterator",
    "DatasetSource",
    "Prefetcher",
    "collate",
    "global_batch_indices",
    "merge_devices",
    "process_slice",
    "split_for_devices",
    "to_global_arrays",
    "DataError",
    "DataErrorLog",
    "ImageFolderDataset",
    "load_demo_mat",
    "load_imdb_mat",
    "load_tfds",
    "read_pts",
    "crop_around_landmarks",
    "flip_horizontal",
    "flip_permutation",
    "identity_pairs",
    "random_augment",
    "with_mirrors",
    "load_300w_lp",
    "load_aflw2000_3d",
    "FaceRenderer",
    "RenderConfig",
    "SyntheticFaces",
    "heldout_set",
]
