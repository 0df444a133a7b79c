"""TensorBoard scalars and snapshot images of a run, in ``workdir/tensorboard/``.

Written with tensorboardX (the ``[tensorboard]`` extra: no TensorFlow, no torch); view with
``tensorboard --logdir WORKDIR/tensorboard``. ``config.tensorboard``: "auto" (write when
tensorboardX is installed), True (require it) or False.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def _summary_writer_class(setting):
    """tensorboardX's SummaryWriter, or None when the run does not write TensorBoard logs."""
    if setting in (False, "false", "off", "False"):
        return None
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415  (an optional extra)
    except ImportError:
        if setting == "auto":
            return None
        raise ValueError(
            "config.tensorboard is on but tensorboardX is not installed: "
            "pip install 'jax3dmmstn[tensorboard]' (or set --config.tensorboard=False)"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """Scalars of every metrics row and the snapshot PNGs of every evaluation."""

    def __init__(self, workdir: str, setting="auto", enabled: bool = True):
        writer_class = _summary_writer_class(setting) if enabled else None
        self._writer = writer_class(os.path.join(workdir, "tensorboard")) if writer_class else None

    @property
    def active(self) -> bool:
        return self._writer is not None

    def scalars(self, split: str, step: int, row: Mapping) -> None:
        """Every numeric entry of a metrics row (but its step and split) as split/name."""
        if self._writer is None:
            return
        for name, value in row.items():
            if name in ("step", "split") or not np.isscalar(value):
                continue
            self._writer.add_scalar(f"{split}/{name}", float(value), step)

    def images(self, step: int, paths: Sequence[str]) -> None:
        """The snapshot PNGs, each under its file name's last part (landmarks, textures)."""
        if self._writer is None:
            return
        for path in paths:
            name = os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[-1]
            pixels = np.asarray(Image.open(path).convert("RGB"))
            self._writer.add_image(f"snapshots/{name}", pixels, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
