"""Synthetic faces with exact ground truth: an endless training stream and a
fixed held-out set, deterministic for a seed.

Example i of a stream is rendered from its own numpy Generator seeded with
``(seed, stream, i)``; identity ``i // images_per_identity`` fixes the identity
part of alpha from ``(seed, 2, identity)``. So an example depends only on the
seed, the stream and its index (not on the batch it is drawn in, the number of
processes or the step at which a run resumed); the held-out stream (1) never
shares randomness with the training stream (0).

Batches are dicts of numpy arrays in the format of ``jax3dmmstn.data``:
``image`` uint8 ``[B, S, S, 3]``, ``landmarks`` ``[B, L, 2]`` (image frame) and
``landmark_visible`` ``[B, L]`` of ``RenderConfig.landmark_set``, the same for
every landmark set of the model as ``landmarks_<set>`` / ``landmark_visible_<set>``,
``theta`` ``[B, 6 + D]`` (r axis-angle, t pixels, logs with s = 0.99 ** logs,
alpha), ``pose`` ``[B, 3]`` (yaw, pitch, roll degrees) and ``identity`` ``[B]``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from jax3dmmstn.data.render import FaceRenderer, RenderConfig
from jax3dmmstn.facemodel.morphable_model import MorphableModel

STREAMS = {"train": 0, "heldout": 1}
_IDENTITY_STREAM = 2
# Render in chunks of this many images (one compiled batch shape per size).
_CHUNK = 32


class SyntheticFaces:
    """A ``BatchSource`` of rendered faces.

    Args:
      model: grid MorphableModel with albedo (e.g. ``synthetic_face_model()``).
      config: RenderConfig.
      seed: the data seed.
      stream: "train" or "heldout".
      num_examples: None for an endless stream, else a finite set of that many.
      images_per_identity: consecutive examples sharing the identity part of
        alpha (1: every example its own identity).
      keep_render_maps: keep the renderer's ``coverage`` and ``depth`` maps.
      renderer: an existing FaceRenderer to share (its model/config win).
    """

    def __init__(
        self,
        model: MorphableModel,
        config: RenderConfig = RenderConfig(),
        seed: int = 0,
        stream: str = "train",
        num_examples: Optional[int] = None,
        images_per_identity: int = 1,
        keep_render_maps: bool = False,
        renderer: Optional[FaceRenderer] = None,
    ):
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {list(STREAMS)}, got {stream!r}")
        if images_per_identity < 1:
            raise ValueError(f"images_per_identity must be >= 1, got {images_per_identity}")
        if num_examples is not None and num_examples <= 0:
            raise ValueError(f"num_examples must be positive or None, got {num_examples}")
        self.renderer = renderer if renderer is not None else FaceRenderer(model, config)
        self.model = self.renderer.model
        self.seed = int(seed)
        self.stream = stream
        self.num_examples = num_examples
        self.images_per_identity = images_per_identity
        self.keep_render_maps = keep_render_maps

    def identity_alpha(self, identity: int) -> np.ndarray:
        """The identity part ``[n_identity]`` of alpha for an identity id."""
        rng = np.random.default_rng([self.seed, _IDENTITY_STREAM, int(identity)])
        clip = self.renderer.config.alpha_clip
        return np.clip(rng.standard_normal(self.model.n_identity), -clip, clip)

    def load_batch(
        self, indices: np.ndarray, positions: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        """Renders examples ``indices`` (``positions`` is unused: the index is the seed)."""
        del positions
        indices = np.asarray(indices, np.int64)
        if self.num_examples is not None and (
            indices.min(initial=0) < 0 or indices.max(initial=0) >= self.num_examples
        ):
            raise IndexError(f"indices must lie in [0, {self.num_examples})")
        chunks = [self._render(indices[i : i + _CHUNK]) for i in range(0, len(indices), _CHUNK)]
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def _render(self, indices: np.ndarray) -> Dict[str, np.ndarray]:
        stream = STREAMS[self.stream]
        rngs = [np.random.default_rng([self.seed, stream, int(i)]) for i in indices]
        identities = indices // self.images_per_identity
        scenes = self.renderer.sample_scenes(
            rngs, [self.identity_alpha(int(k)) for k in identities]
        )
        # Pad to the chunk size so that one compiled shape serves every call.
        count = len(indices)
        if count < _CHUNK:
            scenes = {
                k: np.concatenate([v, np.repeat(v[:1], _CHUNK - count, 0)])
                for k, v in scenes.items()
            }
        out = self.renderer.render(scenes)
        out = {k: v[:count] for k, v in out.items()}
        if not self.keep_render_maps:
            out.pop("coverage")
            out.pop("depth")
        out["identity"] = identities.astype(np.int32)
        return out

    def __len__(self) -> int:
        if self.num_examples is None:
            raise TypeError("an endless synthetic stream has no length")
        return self.num_examples

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        """One example (a dict without the batch axis)."""
        batch = self.load_batch(np.array([index]))
        return {k: v[0] for k, v in batch.items()}


def heldout_set(
    model: MorphableModel,
    num_examples: int,
    config: RenderConfig = RenderConfig(),
    seed: int = 0,
    renderer: Optional[FaceRenderer] = None,
) -> Dict[str, np.ndarray]:
    """The fixed held-out set: examples 0..n-1 of the "heldout" stream, as one batch."""
    source = SyntheticFaces(model, config, seed, "heldout", num_examples, renderer=renderer)
    return source.load_batch(np.arange(num_examples))
