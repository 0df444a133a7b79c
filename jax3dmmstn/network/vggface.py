"""Import MatConvNet's ``vgg-face.mat`` (a simplenn network) into :class:`~jax3dmmstn.network.localisers.VGG16`.

The file (http://www.vlfeat.org/matconvnet/models/vgg-face.mat) holds ``layers``: a cell array of
structs with ``name``, ``type`` ('conv', 'relu', 'pool', 'softmax', ...), for convolutions
``weights = {W [h, w, in, out], b [out, 1]}`` (older files: ``filters`` / ``biases``), ``pad``
([top bottom left right] or a scalar) and ``stride``; and ``meta.normalization.averageImage``
(older files: a top-level ``normalization``). It may also be a single variable ``net``.

MatConvNet's convolution is a cross-correlation on [H, W, C] images with [h, w, in, out]
filters, the same as ``flax.linen.Conv`` on [B, H, W, C] with an HWIO kernel, so the arrays
are copied without any transpose. The original 3DMM-STN drops the last two layers (fc8 and the
softmax); we import conv1_1 ... fc7 and ignore anything after fc7.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import scipy.io

from jax3dmmstn.network.localisers import VGG16_BLOCKS

# The released vgg-face.mat's meta.normalization.averageImage (RGB, 0..255): what its
# networks subtract from their input. Configs that train VGG-16 without importing the file
# (or before it is imported) state it with this.
VGG_FACE_INPUT_MEAN = (129.1863, 104.7624, 93.5940)

CONV_LAYERS = tuple(name for names, _ in VGG16_BLOCKS for name in names) + ("fc6", "fc7")


@dataclasses.dataclass(frozen=True)
class VGGFaceWeights:
    """Imported localiser: ``params`` for :class:`VGG16` (``{'conv1_1': {'kernel', 'bias'}, ...}``).

    ``input_mean`` [3]: the per-channel average image of the file (0 if absent);
    ``image_size``: (H, W) from meta when present; ``width_divisor`` / ``fc_width``: the
    :class:`VGG16` attributes that reproduce the file's layer widths.
    """

    params: dict
    input_mean: tuple[float, float, float]
    image_size: tuple[int, int] | None
    width_divisor: int
    fc_width: int

    def module_kwargs(self) -> dict:
        """Keyword arguments for ``VGG16(...)`` matching this file."""
        return dict(
            width_divisor=self.width_divisor, fc_width=self.fc_width, input_mean=self.input_mean
        )


def _field(struct: Any, name: str, default: Any = None) -> Any:
    """A field of a scipy mat_struct (struct_as_record=False), or ``default``."""
    return getattr(struct, name, default) if hasattr(struct, name) else default


def _string(value: Any) -> str:
    array = np.asarray(value)
    if array.dtype.kind in "US":
        return "".join(str(v) for v in array.ravel())
    if array.dtype == object and array.size == 1:
        return _string(array.ravel()[0])
    raise ValueError(f"expected a string, got {value!r}")


def _cell_items(value: Any) -> list:
    array = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if array.dtype != object:
        return [array]
    return [item for item in array.ravel(order="F")]


def _four_pad(pad: Any) -> tuple[int, ...]:
    pad = np.asarray(pad, np.float64).ravel()
    if pad.size == 1:
        pad = np.repeat(pad, 4)
    if pad.size != 4:
        raise ValueError(f"pad must have 1 or 4 entries, got {pad}")
    return tuple(int(p) for p in pad)


def _two(value: Any) -> tuple[int, int]:
    value = np.asarray(value, np.float64).ravel()
    if value.size == 1:
        value = np.repeat(value, 2)
    return int(value[0]), int(value[1])


def _load_top_level(path: str) -> tuple[Any, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VGG-Face file not found: {path}")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    except Exception as error:  # scipy raises several types for corrupt files
        raise ValueError(f"{path} is not a readable MATLAB .mat file: {error}") from error
    if "layers" in mat:
        layers, meta = mat["layers"], mat.get("meta")
        if meta is None and "normalization" in mat:
            meta = mat  # pre-2016 files keep normalization at the top level
    elif "net" in mat:
        net = np.asarray(mat["net"]).ravel()[0]
        layers, meta = _field(net, "layers"), _field(net, "meta") or net
    else:
        raise ValueError(
            f"{path} has no 'layers' (nor 'net') variable: not a simplenn network; "
            f"variables are {sorted(k for k in mat if not k.startswith('__'))}"
        )
    if isinstance(meta, np.ndarray):
        meta = meta.ravel()[0] if meta.size else None
    return layers, meta


def _average_image(meta: Any) -> tuple[tuple[float, float, float], tuple[int, int] | None]:
    if meta is None:
        return (0.0, 0.0, 0.0), None
    if isinstance(meta, dict):
        normalization = meta.get("normalization")
    else:
        normalization = _field(meta, "normalization")
    mean = (0.0, 0.0, 0.0)
    size = None
    if normalization is not None:
        normalization = (
            np.asarray(normalization).ravel()[0]
            if isinstance(normalization, np.ndarray)
            else normalization
        )
        average = _field(normalization, "averageImage")
        if average is not None and np.asarray(average).size:
            average = np.asarray(average, np.float64)
            if average.size % 3:
                raise ValueError(f"averageImage has {average.size} values, not a multiple of 3")
            mean = tuple(float(v) for v in average.reshape(-1, 3).mean(axis=0))
        image_size = _field(normalization, "imageSize")
        if image_size is not None and np.asarray(image_size).size >= 2:
            size = tuple(int(v) for v in np.asarray(image_size).ravel()[:2])
    if not isinstance(meta, dict):
        image_size = _field(meta, "inputSize")
        if size is None and image_size is not None and np.asarray(image_size).size >= 2:
            size = tuple(int(v) for v in np.asarray(image_size).ravel()[:2])
    return mean, size


def _conv_arrays(layer: Any, name: str) -> tuple[np.ndarray, np.ndarray, tuple, tuple]:
    weights = _field(layer, "weights")
    if weights is not None and np.asarray(weights).size:
        items = _cell_items(weights)
        if len(items) != 2:
            raise ValueError(f"layer {name}: expected weights = {{W, b}}, got {len(items)} arrays")
        kernel, bias = items
    else:
        kernel, bias = _field(layer, "filters"), _field(layer, "biases")
        if kernel is None or bias is None:
            raise ValueError(f"layer {name}: a conv layer without 'weights' or 'filters'/'biases'")
    pad = _field(layer, "pad", 0)
    stride = _field(layer, "stride", 1)
    return (
        np.asarray(kernel, np.float32),
        np.asarray(bias, np.float32).ravel(),
        _four_pad(pad),
        _two(stride),
    )


def _layers_by_name(layers: Any) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """name -> (type, layer struct), and the names in file order."""
    by_name: dict[str, tuple[str, Any]] = {}
    order: list[str] = []
    for layer in _cell_items(layers):
        if isinstance(layer, np.ndarray):
            layer = layer.ravel()[0]
        name, kind = _string(_field(layer, "name", "")), _string(_field(layer, "type", ""))
        order.append(name)
        by_name[name] = (kind, layer)
    return by_name, order


def _check_pools(path: str, by_name: dict, order: list[str]) -> None:
    """The first five pooling layers must be VGG-16's 2 x 2 max pools with stride 2."""
    pools = [by_name[n] for n in order if by_name[n][0] == "pool"]
    if len(pools) < 5:
        raise ValueError(f"{path}: expected 5 pooling layers, found {len(pools)}")
    for _, layer in pools[:5]:
        method = _string(_field(layer, "method", "max"))
        size, stride = _two(_field(layer, "pool", 2)), _two(_field(layer, "stride", 1))
        if (
            method != "max"
            or size != (2, 2)
            or stride != (2, 2)
            or any(_four_pad(_field(layer, "pad", 0)))
        ):
            raise ValueError(
                f"{path}: pooling must be 2x2 max with stride 2 and no pad, got "
                f"{method} {size} stride {stride}"
            )


def _conv_layer(name: str, kind: str, layer: Any, previous_out: int | None) -> dict:
    """One VGG-16 convolution (or fc as a convolution) as ``{'kernel', 'bias'}``, checked
    against VGG-16's filter size, padding and stride and the previous layer's width."""
    if kind != "conv":
        raise ValueError(f"layer {name} has type {kind!r}, expected 'conv'")
    kernel, bias, pad, stride = _conv_arrays(layer, name)
    if kernel.ndim == 3:  # MATLAB drops a trailing singleton output dimension
        kernel = kernel[..., None]
    if kernel.ndim != 4:
        raise ValueError(f"layer {name}: filters must be [h, w, in, out], got {kernel.shape}")
    if bias.shape != (kernel.shape[3],):
        raise ValueError(f"layer {name}: {bias.size} biases for {kernel.shape[3]} filters")
    if previous_out is not None and kernel.shape[2] != previous_out:
        raise ValueError(
            f"layer {name}: {kernel.shape[2]} input channels but the previous "
            f"layer has {previous_out} outputs"
        )
    expected_pad = (0, 0, 0, 0) if name.startswith("fc") else (1, 1, 1, 1)
    if name.startswith("conv") and kernel.shape[:2] != (3, 3):
        raise ValueError(f"layer {name}: expected 3x3 filters, got {kernel.shape[:2]}")
    if name == "fc7" and kernel.shape[:2] != (1, 1):
        raise ValueError(f"layer fc7: expected 1x1 filters, got {kernel.shape[:2]}")
    if pad != expected_pad or stride != (1, 1):
        raise ValueError(
            f"layer {name}: pad {pad} stride {stride}, expected pad {expected_pad} stride (1, 1)"
        )
    return {"kernel": kernel, "bias": bias}


def _width_divisor(params: dict) -> int:
    """k such that every layer has VGG-16's width / k filters (k = 1: the real VGG-Face)."""
    first_width = params["conv1_1"]["kernel"].shape[3]
    if 64 % first_width:
        raise ValueError(f"conv1_1 has {first_width} filters; VGG-16 widths must be 64 / k")
    width_divisor = 64 // first_width
    for names, width in VGG16_BLOCKS:
        for name in names:
            if params[name]["kernel"].shape[3] != max(1, width // width_divisor):
                raise ValueError(
                    f"layer {name} has {params[name]['kernel'].shape[3]} filters, "
                    f"expected {width // width_divisor}"
                )
    if params["fc7"]["kernel"].shape[3] != params["fc6"]["kernel"].shape[3]:
        raise ValueError("fc6 and fc7 widths differ")
    return width_divisor


def read_vggface(path: str) -> VGGFaceWeights:
    """Read a simplenn VGG-Face ``.mat`` into :class:`VGGFaceWeights` for :class:`VGG16`.

    Raises ValueError naming the layer when the file's structure differs from VGG-16
    (missing layers, wrong padding/stride, inconsistent widths, non-max pooling).
    """
    layers, meta = _load_top_level(path)
    by_name, order = _layers_by_name(layers)
    missing = [name for name in CONV_LAYERS if name not in by_name]
    if missing:
        raise ValueError(f"{path}: missing VGG-16 layers {missing}; found {order}")
    _check_pools(path, by_name, order)
    params: dict[str, dict[str, np.ndarray]] = {}
    previous_out = None
    for name in CONV_LAYERS:
        params[name] = _conv_layer(name, *by_name[name], previous_out)
        previous_out = params[name]["kernel"].shape[3]
    width_divisor = _width_divisor(params)
    input_mean, image_size = _average_image(meta)
    return VGGFaceWeights(
        params=params,
        input_mean=input_mean,
        image_size=image_size,
        width_divisor=width_divisor,
        fc_width=int(params["fc6"]["kernel"].shape[3]),
    )


def load_into_params(
    params: dict, weights: VGGFaceWeights, localiser_key: str = "localiser"
) -> dict:
    """Return a copy of STN ``params`` (the 'params' collection) with the localiser replaced.

    Checks every imported array's shape against the initialised one (for example, fc6's kernel
    size depends on the input resolution: 7 x 7 at 224).
    """
    if localiser_key not in params:
        raise ValueError(f"params have no {localiser_key!r} entry; keys: {sorted(params)}")
    current = params[localiser_key]
    missing = sorted(set(current) - set(weights.params))
    if missing:
        raise ValueError(f"the imported file lacks localiser layers {missing}")
    new_localiser = {}
    for name, leaves in current.items():
        new_localiser[name] = {}
        for leaf, value in leaves.items():
            imported = weights.params[name][leaf]
            shape = tuple(getattr(value, "shape", np.shape(value)))
            if tuple(imported.shape) != shape:
                raise ValueError(
                    f"{name}/{leaf}: file has shape {imported.shape}, the model "
                    f"expects {shape} (input size mismatch?)"
                )
            dtype = getattr(value, "dtype", np.float32)
            new_localiser[name][leaf] = np.asarray(imported, dtype)
    out = dict(params)
    out[localiser_key] = new_localiser
    return out
