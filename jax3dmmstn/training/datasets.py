"""The data of a run, from ``config.data``: a training source for
:class:`~jax3dmmstn.data.batching.BatchIterator` and the list of held-out batches.

kind 'synthetic': rendered faces of the morphable model (held-out set from its own stream);
'imdb': the original's imdb.mat (set 1 train, set 2 held out);
'tfds': tensorflow-datasets the300w_lp (train) and aflw2k3d (held out), cropped to
image_size around the landmarks;
'300w_lp': the raw 300W_LP folder (``data.root``, train) and AFLW2000-3D folder
(``data.eval_root``, held out), 68 iBUG landmarks, cropped like 'tfds';
'aflw': 3DDFA's AFLW crops (``data.root``, :mod:`jax3dmmstn.data.aflw_crops`) without the
AFLW2000-3D test images: the last ``data.eval_size`` of them held out for validation, the
rest trained on with shift/zoom jitter (the AFLW2000-3D benchmark is
:mod:`jax3dmmstn.evaluation.aflw2000_stn`, run beside the held-out set).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from jax3dmmstn.data import (
    aflw_crops,
    batching,
    loaders,
    preprocess,
    raw_folders,
    render,
    synthetic,
)

# What training and evaluation read from a synthetic example.
_SYNTHETIC_KEYS = ("image", "landmarks", "landmark_visible", "theta")
_KINDS = ("synthetic", "imdb", "tfds", "300w_lp", "aflw")
# What training and evaluation read from a raw-folder example (strings and the other
# landmark sets, which crops do not map, stay behind).
_RAW_KEYS = ("image", "landmarks", "landmark_visible", "pose")
_AFLW_KEYS = ("image", "landmarks", "landmark_visible")


class InMemorySource:
    """A finite BatchSource over arrays held in memory (``arrays[key][i]`` is example i)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            lengths = {k: len(v) for k, v in arrays.items()}
            raise ValueError(f"arrays of different lengths: {lengths}")
        self.arrays = dict(arrays)
        self.num_examples = sizes.pop()

    def load_batch(self, indices: np.ndarray, positions: np.ndarray | None = None) -> dict:
        del positions
        return {k: v[np.asarray(indices)] for k, v in self.arrays.items()}


def as_batch_source(train) -> Any:
    """A BatchSource (``load_batch``) of a training source or of an indexable dataset."""
    return train if hasattr(train, "load_batch") else batching.DatasetSource(train)


def synthetic_render_config(config) -> render.RenderConfig:
    """The data's :class:`~jax3dmmstn.data.render.RenderConfig` from ``config.data.render``."""
    size = tuple(int(v) for v in config.data.image_size)
    if size[0] != size[1]:
        raise ValueError(f"synthetic images are square; got data.image_size={size}")
    options = dict(config.data.get("render", {}) or {})
    if "face_height" in options:  # a (min, max) range; JSON configs bring it back as a list
        options["face_height"] = tuple(options["face_height"])
    return render.RenderConfig(
        image_size=size[0], landmark_set=config.model.get("landmarks", "aflw21"), **options
    )


def _synthetic_train(config, morphable_model, renderer: render.FaceRenderer):
    """Rendered training faces.

    ``data.train_size`` > 0: a finite training set of that many faces, rendered once up front
    and kept in memory when ``data.cache_train`` (cheap epochs; the renderer does not compete
    with training for the CPU); 0: an endless stream rendered on the fly.
    """
    d = config.data
    train_size = int(d.get("train_size", 0) or 0) or None
    train = synthetic.SyntheticFaces(
        morphable_model,
        renderer.config,
        seed=int(d.get("seed", config.seed)),
        stream="train",
        num_examples=train_size,
        renderer=renderer,
    )
    if not (train_size and d.get("cache_train", True)):
        return train
    chunk = 256
    parts = [
        train.load_batch(np.arange(i, min(train_size, i + chunk)))
        for i in range(0, train_size, chunk)
    ]
    return InMemorySource({k: np.concatenate([p[k] for p in parts]) for k in _SYNTHETIC_KEYS})


def _synthetic_heldout(config, morphable_model, renderer: render.FaceRenderer) -> list:
    """The held-out faces (examples 0..eval_size-1 of the 'heldout' stream) as batches."""
    d = config.data
    held_out = synthetic.heldout_set(
        morphable_model,
        int(d.eval_size),
        renderer.config,
        seed=int(d.get("seed", config.seed)),
        renderer=renderer,
    )
    eval_batch = int(d.get("eval_batch_size", 64))
    return [
        {k: held_out[k][i : i + eval_batch] for k in _SYNTHETIC_KEYS}
        for i in range(0, int(d.eval_size), eval_batch)
    ]


def _batches_from_dataset(dataset, count: int, batch_size: int, transform=None) -> list:
    """The first ``count`` examples (all when 0) of an indexable dataset, collated in batches."""
    count = min(int(count), len(dataset)) if count else len(dataset)
    if count <= 0:
        raise ValueError("the held-out dataset is empty")
    batches = []
    for start in range(0, count, batch_size):
        examples = [dataset[i] for i in range(start, min(count, start + batch_size))]
        if transform is not None:
            examples = [transform(example) for example in examples]
        batches.append(batching.collate(examples))
    return batches


def _check_kind(d) -> None:
    if d.kind not in _KINDS:
        raise ValueError(f"unknown data.kind {d.kind!r}; expected one of {', '.join(_KINDS)}")
    if d.kind == "imdb" and not d.path:
        raise ValueError("config.data.path must point at imdb.mat for data.kind='imdb'")
    if d.kind == "aflw" and not d.get("root"):
        raise ValueError(
            "data.kind='aflw' needs config.data.root (the folder of AFLW_GT_crop/, "
            "AFLW_GT_crop.list and the AFLW_GT_*.npy files)"
        )
    if d.kind == "300w_lp" and not (d.get("root") and d.get("eval_root")):
        raise ValueError(
            "data.kind='300w_lp' needs config.data.root (the 300W_LP folder) and "
            "config.data.eval_root (the AFLW2000-3D folder)"
        )


def _image_size(d) -> tuple[int, ...]:
    return tuple(int(v) for v in d.image_size)


def _tfds(d, name: str, split: str):
    return loaders.load_tfds(name, split=split, data_dir=d.data_dir or None, on_error=d.on_error)


class _Subset:
    """Examples ``indices`` of an indexable dataset, as an indexable dataset."""

    def __init__(self, dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]


def _aflw_split(d) -> tuple[_Subset, _Subset]:
    """(training, validation) subsets of the AFLW crops without the AFLW2000-3D images."""
    crops = aflw_crops.load_aflw_crops(d.root, "train", on_error=d.get("on_error", "fail"))
    held = min(int(d.eval_size), len(crops) // 2)
    cut = len(crops) - held
    return _Subset(crops, np.arange(cut)), _Subset(crops, np.arange(cut, len(crops)))


def _aflw_train(config, train: _Subset) -> batching.DatasetSource:
    """The AFLW training crops, re-cropped with random shift and zoom."""
    d = config.data
    jitter = functools.partial(
        preprocess.random_jitter,
        max_shift=float(d.get("max_shift", 0.05)),
        zoom_range=tuple(d.get("zoom_range", (0.9, 1.1))),
    )
    return batching.DatasetSource(
        train, lambda ex, rng: jitter(_raw_keys(ex, _AFLW_KEYS), rng), int(config.seed)
    )


def _aflw_heldout(d, held_out: _Subset) -> list:
    batch = int(d.get("eval_batch_size", 64))
    return _batches_from_dataset(held_out, 0, batch, lambda ex: _raw_keys(ex, _AFLW_KEYS))


def build_train_source(config, morphable_model, renderer: render.FaceRenderer | None = None):
    """The training source of ``config.data`` (a BatchSource or an indexable dataset)."""
    d = config.data
    _check_kind(d)
    if d.kind == "synthetic":
        renderer = renderer or render.FaceRenderer(morphable_model, synthetic_render_config(config))
        return _synthetic_train(config, morphable_model, renderer)
    if d.kind == "imdb":
        size = _image_size(d)
        return loaders.load_imdb_mat(d.path, "train", on_error=d.on_error, expected_size=size)
    if d.kind == "aflw":
        return _aflw_train(config, _aflw_split(d)[0])
    augment = functools.partial(
        preprocess.random_augment,
        out_size=_image_size(d)[0],
        margin=float(d.get("crop_margin", 0.25)),
        max_shift=float(d.get("max_shift", 0.05)),
        zoom_range=tuple(d.get("zoom_range", (0.9, 1.1))),
    )
    if d.kind == "300w_lp":
        train = raw_folders.load_300w_lp(
            d.root,
            subsets=tuple(d.get("subsets", raw_folders.W300LP_SUBSETS)),
            flipped=bool(d.get("flipped", True)),
            on_error=d.on_error,
        )
        return batching.DatasetSource(
            train, lambda ex, rng: augment(_raw_keys(ex), rng), seed=int(config.seed)
        )
    train = _tfds(d, d.tfds_name or "the300w_lp", d.split)
    return batching.DatasetSource(train, augment, seed=int(config.seed))


def _raw_keys(example: Mapping, keys=_RAW_KEYS) -> dict:
    """The part of a raw-folder example that crops map and batches carry."""
    return {k: example[k] for k in keys}


def build_heldout(config, morphable_model, renderer: render.FaceRenderer | None = None) -> list:
    """The held-out batches of ``config.data`` (what training evaluates on), each a dict of
    'image' [b, H, W, 3], 'landmarks' [b, L, 2], 'landmark_visible' [b, L] (+ 'theta'
    [b, 6 + D] for synthetic faces)."""
    d = config.data
    _check_kind(d)
    if d.kind == "synthetic":
        renderer = renderer or render.FaceRenderer(morphable_model, synthetic_render_config(config))
        return _synthetic_heldout(config, morphable_model, renderer)
    eval_batch = int(d.get("eval_batch_size", 64))
    if d.kind == "aflw":
        return _aflw_heldout(d, _aflw_split(d)[1])
    if d.kind == "imdb":
        size = _image_size(d)
        held_out = loaders.load_imdb_mat(d.path, "val", on_error=d.on_error, expected_size=size)
        return _batches_from_dataset(held_out, d.eval_size, eval_batch)
    crop = functools.partial(
        preprocess.crop_around_landmarks,
        out_size=_image_size(d)[0],
        margin=float(d.get("crop_margin", 0.25)),
    )
    if d.kind == "300w_lp":
        held_out = raw_folders.load_aflw2000_3d(d.eval_root, "ibug68", on_error=d.on_error)
        return _batches_from_dataset(
            held_out, d.eval_size, eval_batch, lambda ex: crop(_raw_keys(ex))
        )
    held_out = _tfds(d, d.get("eval_tfds_name", "") or "aflw2k3d", d.eval_split)
    return _batches_from_dataset(held_out, d.eval_size, eval_batch, crop)


def build_data(config, morphable_model) -> tuple[Any, list]:
    """(training source for BatchIterator, list of held-out batches) from ``config.data``."""
    if config.data.kind == "aflw":  # one reading (and one report of skipped crops) for both
        _check_kind(config.data)
        train, held_out = _aflw_split(config.data)
        return _aflw_train(config, train), _aflw_heldout(config.data, held_out)
    renderer = None
    if config.data.kind == "synthetic":  # one renderer (its set-up is not free) for both
        renderer = render.FaceRenderer(morphable_model, synthetic_render_config(config))
    train = build_train_source(config, morphable_model, renderer)
    return train, build_heldout(config, morphable_model, renderer)
