"""MATLAB .mat files: v5 (scipy) and v7.3 (HDF5, column-major), plain HDF5 written by h5py."""
from __future__ import annotations

import time

import numpy as np

from ._common import AXES_VAR, SPACING_VAR, check_array, log, pick_variable, spacing_from_meta


_MAT73_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5_kind(path) -> str | None:
    """``"matlab"`` (HDF5 behind MATLAB's 512-byte header), ``"plain"`` (an HDF5 file written with
    h5py or similar) or None (not HDF5)."""
    with open(path, "rb") as fh:
        head = fh.read(520)
    if head[512:520] == _MAT73_SIGNATURE:
        return "matlab"
    return "plain" if head[:8] == _MAT73_SIGNATURE else None


def _read_mat(path, variable):
    try:
        hdf5 = _hdf5_kind(path)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read file: {exc}") from exc
    if hdf5:
        import h5py
        try:
            with h5py.File(path, "r") as fh:
                arrays = {k: fh[k] for k in fh.keys() if isinstance(fh[k], h5py.Dataset)
                          and not k.startswith("#")}
                name = pick_variable(arrays, path, variable, "MATLAB v7.3")
                data = np.asarray(arrays[name][()])
                if hdf5 == "matlab" or "MATLAB_class" in arrays[name].attrs:
                    data = data.T  # MATLAB stores column-major: h5py sees the axes reversed
                spacing = np.asarray(fh[SPACING_VAR][()]).ravel() if SPACING_VAR in fh else None
                axes_saved = None
                if AXES_VAR in fh:
                    codes = np.asarray(fh[AXES_VAR][()]).ravel()
                    axes_saved = "".join(chr(int(c)) for c in codes)
        except (OSError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a readable MATLAB v7.3 / HDF5 file ({exc})") from exc
        return data, name, spacing, axes_saved
    from scipy import io as sio
    try:
        contents = sio.loadmat(path, squeeze_me=False)
    except Exception as exc:  # scipy raises several types on corrupt files
        raise ValueError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    arrays = {k: v for k, v in contents.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    name = pick_variable(arrays, path, variable, "MATLAB")
    data = arrays[name]
    spacing = arrays.get(SPACING_VAR)
    axes_saved = None
    if AXES_VAR in arrays:
        raw = arrays[AXES_VAR]
        axes_saved = str(raw.ravel()[0]) if raw.dtype.kind in "US" else None
    return data, name, spacing, axes_saved


def _write_mat73_header(path):
    header = (f"MATLAB 7.3 MAT-file, Platform: restore3d, Created on: "
              f"{time.strftime('%a %b %d %H:%M:%S %Y')} HDF5 schema 1.00 .").encode("ascii")
    block = header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(block.ljust(512, b"\x00"))


def _save_mat(path, arr, name, spacing, axes, version):
    extra = {}
    if spacing is not None:
        extra[SPACING_VAR] = np.asarray([spacing["zyx".index(a)] for a in axes], dtype=np.float64)
        extra[AXES_VAR] = axes
    if version == "5":
        from scipy import io as sio
        sio.savemat(path, {name: arr, **extra}, do_compression=False, oned_as="row")
        return
    import h5py
    classes = {np.dtype("float32"): "single", np.dtype("float64"): "double",
               np.dtype("uint16"): "uint16", np.dtype("uint8"): "uint8",
               np.dtype("int16"): "int16", np.dtype("int32"): "int32", np.dtype("uint32"): "uint32"}
    with h5py.File(path, "w", userblock_size=512) as fh:
        ds = fh.create_dataset(name, data=np.ascontiguousarray(arr.T))
        ds.attrs["MATLAB_class"] = np.bytes_(classes.get(arr.dtype, "double"))
        if spacing is not None:
            sp = fh.create_dataset(SPACING_VAR, data=extra[SPACING_VAR][None, :].T)
            sp.attrs["MATLAB_class"] = np.bytes_("double")
            ax = fh.create_dataset(AXES_VAR, data=np.array([[ord(c)] for c in axes], np.uint16))
            ax.attrs["MATLAB_class"] = np.bytes_("char")
            ax.attrs["MATLAB_int_decode"] = np.int32(2)
    _write_mat73_header(path)


def read(path, variable):
    """``(data, spacing, stored_axes, variable)`` of a .mat file; data in the file's axis order."""
    data, name, spacing_raw, stored_axes = _read_mat(path, variable)
    data = check_array(data, path, f"variable {name!r}")
    return data, spacing_from_meta(spacing_raw, stored_axes, path), stored_axes, name


def write(path, arr, *, spacing, axes, variable, mat_version="5"):
    """Write ``arr`` (already in the file's axis ``axes`` order) as MATLAB v5 or v7.3 (above 2 GB: v7.3)."""
    if mat_version == "5" and arr.nbytes > 2 ** 31 - 1024:
        log.info("%s: volume above 2 GB, writing MATLAB v7.3", path)
        mat_version = "7.3"
    _save_mat(path, arr, variable, spacing, axes, mat_version)
