"""Reading MATLAB .mat files, v5/v7 (scipy) and v7.3 (HDF5, through h5py), the same way.

MATLAB saves large variables (over 2 GB) only as v7.3, an HDF5 file behind a 512-byte text
header; many users cannot re-save them. Both kinds come back as scipy returns a v5 file:
``{name: array}`` with MATLAB's shapes (2-D at least, column-major order undone), structs as
``(1, 1)`` record arrays whose fields hold arrays, char arrays as ``str``.
"""

from __future__ import annotations

import os

import numpy as np

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class MatFileError(ValueError):
    """A .mat file that cannot be read (the message names it and says why)."""


def is_v73(path: str) -> bool:
    """Whether ``path`` is a MATLAB v7.3 (HDF5) file."""
    with open(path, "rb") as handle:
        header = handle.read(520)
    return header.startswith(b"MATLAB 7.3") or _HDF5_SIGNATURE in (header[:8], header[512:520])


def load_mat(path: str) -> dict:
    """The variables of a .mat file (any version) as ``{name: array}``.

    Raises FileNotFoundError for a missing file and MatFileError for anything unreadable.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if is_v73(path):
        return _load_v73(path)
    import scipy.io  # noqa: PLC0415  (scipy.io costs 0.3 s of import time)

    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as error:  # scipy raises several types for corrupt files
        raise MatFileError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    return {name: value for name, value in mat.items() if not name.startswith("__")}


def variable_names(path: str) -> list[str]:
    """The names of the variables in a .mat file, without loading them."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if is_v73(path):
            import h5py  # noqa: PLC0415  (only v7.3 files need it)

            with h5py.File(path, "r") as handle:
                return sorted(name for name in handle if not name.startswith("#"))
        import scipy.io  # noqa: PLC0415

        return sorted(name for name, _, _ in scipy.io.whosmat(path))
    except Exception as error:  # scipy and h5py raise several types for corrupt files
        raise MatFileError(f"{path}: not a readable MATLAB .mat file ({error})") from None


def _load_v73(path: str) -> dict:
    import h5py  # noqa: PLC0415  (only v7.3 files need it)

    try:
        with h5py.File(path, "r") as handle:
            return {
                name: _h5_value(handle, item)
                for name, item in handle.items()
                if not name.startswith("#")  # MATLAB's hidden reference storage
            }
    except OSError as error:
        raise MatFileError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from None


def _h5_value(handle, item):
    """One HDF5 dataset or group as scipy would give the MATLAB variable."""
    import h5py  # noqa: PLC0415

    if isinstance(item, h5py.Group):  # a struct: a (1, 1) record array
        fields = {name: _h5_value(handle, child) for name, child in item.items()}
        record = np.empty((1, 1), dtype=[(name, object) for name in fields])
        for name, value in fields.items():
            record[name][0, 0] = value
        return record
    matlab_class = item.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode()
    if item.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    data = item[()]
    if matlab_class == "cell":  # object references, one per cell
        cells = np.empty(data.shape, object)
        for index, reference in np.ndenumerate(data):
            cells[index] = _h5_value(handle, handle[reference])
        return cells.T
    data = np.asarray(data).T  # HDF5 stores MATLAB's column-major arrays transposed
    if matlab_class == "char":
        return np.array(["".join(map(chr, data.ravel(order="F")))])
    if matlab_class == "logical":
        return data.astype(bool)
    return np.atleast_2d(data)
