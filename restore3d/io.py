"""Reading and writing volumes: MATLAB .mat (v5 and v7.3), TIFF / OME-TIFF, NumPy.

Inside restore3d every volume is float32 with axes (z, y, x) and a spacing
``(dz, dy, dx)`` in micrometres. Files with another axis order are
transposed here, at the boundary, with ``axes="yxz"`` (depth last, as MATLAB
users usually store stacks) or any other permutation of ``"zyx"``.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

from struct import error as struct_error

import numpy as np

from ._checks import as_spacing
from ._files import atomic_write

__all__ = ["load", "save", "write_table", "read_table", "parse_axes", "format_of",
           "open_zarr", "write_zarr", "unit_to_um", "UNITS_UM"]

log = logging.getLogger(__name__)

_SPACING_VAR = "spacing"
_AXES_VAR = "axes"
_FORMATS = {".mat": "mat", ".tif": "tiff", ".tiff": "tiff", ".npy": "npy", ".npz": "npz", ".zarr": "zarr"}


def format_of(path) -> str:
    """File format from the extension: ``"mat"``, ``"tiff"``, ``"npy"`` or ``"npz"``."""
    suffix = Path(path).suffix.lower()
    try:
        return _FORMATS[suffix]
    except KeyError:
        raise ValueError(
            f"{path}: unknown file extension {suffix!r}; restore3d reads and writes "
            f"{', '.join(sorted(_FORMATS))} (and .ome.tif, .ome.zarr)") from None


def parse_axes(axes: str | None) -> str:
    """Validate an axis order: a permutation of ``"zyx"`` (any case); None means ``"zyx"``."""
    if axes is None:
        return "zyx"
    if not isinstance(axes, str) or sorted(axes.lower()) != ["x", "y", "z"]:
        raise ValueError(
            f"axes must be a permutation of 'zyx' naming the file's axis order, got {axes!r} "
            "(e.g. axes='yxz' for depth-last MATLAB stacks)")
    return axes.lower()


def _to_zyx(arr: np.ndarray, axes: str) -> np.ndarray:
    return np.transpose(arr, [axes.index(a) for a in "zyx"])


def _from_zyx(arr: np.ndarray, axes: str) -> np.ndarray:
    return np.transpose(arr, ["zyx".index(a) for a in axes])


def _check_array(arr, path, what="data"):
    arr = np.asarray(arr)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(
            f"{path}: {what} has dtype {arr.dtype}, not real numbers; "
            "save the volume as integers or floats")
    if arr.ndim != 3:
        hint = ("a single plane; restore3d needs a 3D stack" if arr.ndim == 2 else
                "select one channel / time point and save a 3D (z, y, x) stack")
        raise ValueError(f"{path}: {what} is {arr.ndim}D with shape {arr.shape}, expected 3D: {hint}")
    if arr.size == 0:
        raise ValueError(f"{path}: {what} is empty (shape {arr.shape})")
    return arr


def _pick_variable(candidates: dict, path, variable, kind):
    """Choose the volume among named arrays of a .mat / .npz file."""
    if variable is not None:
        if variable not in candidates:
            raise ValueError(
                f"{path}: no variable {variable!r}; the file holds {sorted(candidates) or 'nothing'}")
        return variable
    names = [k for k, v in candidates.items()
             if k not in (_SPACING_VAR, _AXES_VAR) and getattr(v, "ndim", 0) >= 1]
    three_d = [k for k in names if candidates[k].ndim == 3]
    if len(three_d) == 1:
        return three_d[0]
    if len(three_d) > 1:
        raise ValueError(
            f"{path}: several 3D arrays {sorted(three_d)}; pick one with variable=NAME "
            f"(--variable NAME on the command line)")
    if len(names) == 1:
        return names[0]  # the only array: _check_array explains its wrong ndim
    shapes = {k: getattr(candidates[k], "shape", None) for k in names}
    raise ValueError(f"{path}: no 3D array in this {kind} file (found {shapes or 'no arrays'}); "
                     "save the stack as one 3D variable")


#: Length units found in file metadata, in micrometres. Anything else ("pixel", "inch", blank) is no spacing.
UNITS_UM = {"nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0,
            "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "mm": 1e3, "millimeter": 1e3,
            "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6}


def unit_to_um(unit) -> float | None:
    """Micrometres per ``unit`` (a length unit name as files write it), or None when not a known length."""
    if unit is None:
        return None
    key = str(unit).strip().lower().replace("\\u00b5", "µ").replace("\\u03bc", "μ")
    return UNITS_UM.get(key)


def _spacing_from_meta(spacing, axes_saved, path):
    """Spacing stored next to the data, reordered to (z, y, x), or None (with a warning) when unusable."""
    if spacing is None:
        return None
    try:
        values = np.asarray(spacing, dtype=float).ravel()
    except (TypeError, ValueError):
        log.warning("%s: ignoring the stored spacing %r (not numbers); pass --spacing DZ DY DX", path, spacing)
        return None
    if values.size != 3:
        log.warning("%s: ignoring stored spacing %s (expected 3 values)", path, values)
        return None
    order = parse_axes(axes_saved) if axes_saved else "zyx"
    try:
        return as_spacing(tuple(values[order.index(a)] for a in "zyx"))
    except ValueError as exc:
        log.warning("%s: ignoring the stored spacing %s (%s); pass --spacing DZ DY DX", path, values.tolist(), exc)
        return None


# ----------------------------------------------------------------------------- MATLAB
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
                name = _pick_variable(arrays, path, variable, "MATLAB v7.3")
                data = np.asarray(arrays[name][()])
                if hdf5 == "matlab" or "MATLAB_class" in arrays[name].attrs:
                    data = data.T  # MATLAB stores column-major: h5py sees the axes reversed
                spacing = np.asarray(fh[_SPACING_VAR][()]).ravel() if _SPACING_VAR in fh else None
                axes_saved = None
                if _AXES_VAR in fh:
                    codes = np.asarray(fh[_AXES_VAR][()]).ravel()
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
    name = _pick_variable(arrays, path, variable, "MATLAB")
    data = arrays[name]
    spacing = arrays.get(_SPACING_VAR)
    axes_saved = None
    if _AXES_VAR in arrays:
        raw = arrays[_AXES_VAR]
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
        extra[_SPACING_VAR] = np.asarray([spacing["zyx".index(a)] for a in axes], dtype=np.float64)
        extra[_AXES_VAR] = axes
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
            sp = fh.create_dataset(_SPACING_VAR, data=extra[_SPACING_VAR][None, :].T)
            sp.attrs["MATLAB_class"] = np.bytes_("double")
            ax = fh.create_dataset(_AXES_VAR, data=np.array([[ord(c)] for c in axes], np.uint16))
            ax.attrs["MATLAB_class"] = np.bytes_("char")
            ax.attrs["MATLAB_int_decode"] = np.int32(2)
    _write_mat73_header(path)


# ----------------------------------------------------------------------------- TIFF
def _read_tiff(path):
    import tifffile
    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            data = series.asarray()
            file_axes = series.axes.upper()
            spacing = _tiff_spacing(tf, file_axes)
            declared = (tf.imagej_metadata or {}).get("images")
            if declared and int(declared) > 1 and len(tf.pages) < int(declared):
                raise ValueError(f"the file declares {declared} images but holds {len(tf.pages)}: "
                                 "it is truncated (an interrupted copy or save?)")
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, TypeError,
            struct_error) as exc:
        raise ValueError(f"{path}: not a readable TIFF file ({exc})") from exc
    # drop singleton time / channel axes, keep a readable error for real 4D data
    keep = [i for i, a in enumerate(file_axes) if not (data.shape[i] == 1 and a not in "ZYX")]
    data = data.reshape([data.shape[i] for i in keep])
    file_axes = "".join(file_axes[i] for i in keep)
    return data, file_axes, spacing


def _tiff_spacing(tf, file_axes):
    """(dz, dy, dx) in um from ImageJ or OME metadata, or None."""
    if tf.is_ome and tf.ome_metadata:
        import xml.etree.ElementTree as ET
        root = ET.fromstring(tf.ome_metadata)
        pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
        if pixels is not None:
            vals = [pixels.get(f"PhysicalSize{a}") for a in "ZYX"]
            if all(v is not None for v in vals):
                out = []
                for a, v in zip("ZYX", vals):
                    unit = pixels.get(f"PhysicalSize{a}Unit", "µm")  # the OME default unit
                    scale = unit_to_um(unit)
                    if scale is None:
                        log.warning("%s: voxel size unit %r is not a length restore3d knows; "
                                    "pass --spacing DZ DY DX", tf.filehandle.path, unit)
                        return None
                    out.append(float(v) * scale)
                return tuple(out)
    meta = tf.imagej_metadata
    if meta and "spacing" in meta:
        page = tf.pages[0]
        res = []
        for tag in ("YResolution", "XResolution"):
            t = page.tags.get(tag)
            if t is None:
                return None
            num, den = t.value
            if num == 0:
                return None
            res.append(den / num)
        unit = meta.get("unit", "um")
        scale = unit_to_um(unit)
        if scale is None:
            log.warning("%s: voxel size in %r, not a length unit; pass --spacing DZ DY DX (micrometres)",
                        tf.filehandle.path, unit)
            return None
        return float(meta["spacing"]) * scale, res[0] * scale, res[1] * scale
    return None


def _save_tiff(path, zyx, spacing, ome):
    import tifffile
    arr = zyx.astype(np.float32) if zyx.dtype not in (np.uint8, np.uint16, np.float32) else zyx
    if ome:
        meta = {"axes": "ZYX"}
        if spacing is not None:
            meta.update(PhysicalSizeZ=spacing[0], PhysicalSizeY=spacing[1], PhysicalSizeX=spacing[2],
                        PhysicalSizeZUnit="µm", PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm")
        tifffile.imwrite(path, arr, ome=True, metadata=meta)
        return
    kwargs = {}
    meta = {"axes": "ZYX"}
    if spacing is not None:
        kwargs["resolution"] = (1.0 / spacing[2], 1.0 / spacing[1])
        meta.update(spacing=spacing[0], unit="um")
    tifffile.imwrite(path, arr, imagej=True, metadata=meta, **kwargs)


# ----------------------------------------------------------------------------- front doors
def load(path, *, axes: str | None = None, variable: str | None = None):
    """Load a 3D volume and its voxel spacing.

    Parameters
    ----------
    path : str or Path
        ``.mat`` (v5 or v7.3), ``.tif``/``.tiff``/``.ome.tif``, ``.npy`` or ``.npz``.
    axes : str, optional
        Axis order of the array in the file, a permutation of ``"zyx"``
        (``"yxz"``: depth last, as MATLAB stacks usually are). Default: the
        order stored by restore3d in the file, the TIFF's own axes, else ``"zyx"``.
    variable : str, optional
        Which variable of a ``.mat`` or ``.npz`` file holds the volume;
        needed only when it holds several 3D arrays.

    Returns
    -------
    volume : (Z, Y, X) float32 ndarray
    spacing : (dz, dy, dx) tuple of float in micrometres, or None
        None when the file does not record it.

    Raises
    ------
    ValueError
        Missing file, unknown extension, no or several candidate 3D arrays,
        2D / 4D data, non-numeric data, corrupt file; the message names the
        file and the fix.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    spacing = None
    stored_axes = None
    if fmt == "zarr":
        arr, spacing = open_zarr(path)
        data = _check_array(np.asarray(arr), path)
        stored_axes = "zyx"
    elif fmt == "mat":
        data, name, spacing_raw, stored_axes = _read_mat(path, variable)
        data = _check_array(data, path, f"variable {name!r}")
        spacing = _spacing_from_meta(spacing_raw, stored_axes, path)
    elif fmt == "npy":
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable .npy file ({exc})") from exc
        data = _check_array(data, path)
    elif fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                contents = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
        name = _pick_variable(contents, path, variable, "NumPy .npz")
        data = _check_array(contents[name], path, f"array {name!r}")
        if _AXES_VAR in contents:
            stored_axes = str(contents[_AXES_VAR])
        spacing = _spacing_from_meta(contents.get(_SPACING_VAR), stored_axes, path)
    else:
        data, file_axes, spacing = _read_tiff(path)
        data = _check_array(data, path)
        if axes is None and sorted(file_axes.lower()) == ["x", "y", "z"]:
            stored_axes = file_axes.lower()
        elif axes is None and data.ndim == 3:
            stored_axes = "zyx"
    if spacing is not None and fmt == "tiff":
        try:
            spacing = as_spacing(spacing)
        except ValueError as exc:
            log.warning("%s: ignoring the stored voxel size %s (%s); pass --spacing DZ DY DX", path, spacing, exc)
            spacing = None
    if axes is None and fmt == "mat" and stored_axes is None and 2 * data.shape[2] <= min(data.shape[:2]):
        # MATLAB stacks are (y, x, z): a last axis far shorter than the others is depth
        stored_axes = "yxz"
        log.warning("%s: no axis order stored and the last axis (%d) is far shorter than the others %s: "
                    "reading it as depth, axes='yxz' (MATLAB's convention); pass axes='zyx' (--axes zyx) "
                    "if the first axis is depth", path, data.shape[2], data.shape[:2])
    order = parse_axes(axes if axes is not None else stored_axes)
    volume = np.ascontiguousarray(_to_zyx(data, order), dtype=np.float32)
    if not np.isfinite(volume).all():
        log.warning("%s contains NaN or Inf values", path)
    return volume, spacing


def save(path, volume, *, spacing: Sequence[float] | None = None, axes: str | None = None,
         variable: str = "volume", mat_version: str = "5", dtype=None) -> Path:
    """Save a (z, y, x) volume, with its spacing where the format can hold it.

    The file is written to a temporary name in the same folder and renamed,
    so an interrupted save never leaves a half-written ``path``.

    Parameters
    ----------
    path : str or Path
        Destination; the extension chooses the format. ``.tif`` is written
        ImageJ-compatible (Fiji and napari show micrometres), ``.ome.tif``
        as OME-TIFF, ``.mat`` as MATLAB v5 or v7.3 (``mat_version``), ``.npz``
        with ``spacing`` and ``axes`` arrays beside ``volume``.
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats, optional
        Voxel size in micrometres, always given in (z, y, x) order.
    axes : str, optional
        Axis order to write (e.g. ``"yxz"`` for depth-last MATLAB files);
        not available for TIFF, whose axes are always (z, y, x).
    variable : str
        Variable name in ``.mat`` / array name in ``.npz`` files.
    mat_version : {"5", "7.3"}
        MATLAB format; v7.3 (HDF5) is needed above 2 GB.
    dtype : numpy dtype, optional
        Convert before writing (default: keep float32).

    Returns
    -------
    Path
        The written path.
    """
    path = Path(path)
    fmt = format_of(path)
    arr = np.asarray(volume)
    if arr.ndim != 3:
        raise ValueError(f"{path}: volume must be 3D (z, y, x), got shape {arr.shape}")
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if spacing is not None:
        spacing = as_spacing(spacing)
    order = parse_axes(axes)
    if mat_version not in ("5", "7.3"):
        raise ValueError(f"mat_version must be '5' or '7.3', got {mat_version!r}")
    if fmt == "tiff" and order != "zyx":
        raise ValueError(f"{path}: TIFF stacks are written as (z, y, x); drop axes={axes!r}")
    if not path.parent.exists():
        raise ValueError(f"{path}: folder {path.parent} does not exist")
    if fmt == "zarr":
        write_zarr(path, _from_zyx(arr, order), spacing=spacing)  # atomic by itself
        return path
    with atomic_write(path) as tmp:
        if fmt == "mat":
            if mat_version == "5" and arr.nbytes > 2 ** 31 - 1024:
                log.info("%s: volume above 2 GB, writing MATLAB v7.3", path)
                mat_version = "7.3"
            _save_mat(tmp, _from_zyx(arr, order), variable, spacing, order, mat_version)
        elif fmt == "tiff":
            _save_tiff(tmp, arr, spacing, ome=path.name.lower().endswith((".ome.tif", ".ome.tiff")))
        elif fmt == "npy":
            if spacing is not None:
                log.info("%s: .npy cannot hold the spacing; use .npz or .tif to keep it", path)
            with open(tmp, "wb") as fh:
                np.save(fh, _from_zyx(arr, order))
        else:
            extra = {}
            if spacing is not None:
                extra = {_SPACING_VAR: np.asarray(spacing), _AXES_VAR: np.asarray(order)}
            elif order != "zyx":
                extra = {_AXES_VAR: np.asarray(order)}
            with open(tmp, "wb") as fh:
                np.savez(fh, **{variable: _from_zyx(arr, order)}, **extra)
    return path


def write_table(path, table: np.ndarray) -> Path:
    """Write a structured array (a bead table) as CSV with a header row, atomically."""
    path = Path(path)
    names = table.dtype.names
    if not names:
        raise ValueError("table must be a structured array with named columns")
    with atomic_write(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(",".join(names) + "\n")
            for row in table:
                fh.write(",".join(str(int(v)) if isinstance(v, (bool, np.bool_)) else f"{v:.6g}"
                                  for v in row) + "\n")
    return path


def read_table(path) -> np.ndarray:
    """Read a CSV written by :func:`write_table` back into a structured array."""
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return np.atleast_1d(data)


# ----------------------------------------------------------------------------- Zarr (large volumes)
def open_zarr(path, *, chunks=None):
    """Open a Zarr volume lazily as a dask array with its spacing (OME-Zarr metadata) or None.

    ``path`` is an OME-Zarr group (the full-resolution array ``0``) or a
    plain 3D Zarr array, axes (z, y, x).
    """
    import dask.array as da
    import zarr
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such Zarr store")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable Zarr store ({exc})") from exc
    spacing = None
    if isinstance(node, zarr.Group):
        ms = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        if not ms:
            raise ValueError(f"{path}: a Zarr group without OME multiscales metadata; give the array path")
        ds = ms[0]["datasets"][0]
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                spacing = as_spacing(t["scale"][-3:])
        arr = node[ds["path"]]
    else:
        arr = node
        sp = arr.attrs.get("spacing")
        spacing = as_spacing(sp) if sp else None
    if arr.ndim != 3:
        raise ValueError(f"{path}: Zarr array is {arr.ndim}D with shape {arr.shape}, expected 3D (z, y, x)")
    return da.from_zarr(arr, chunks=chunks), spacing


def write_zarr(path, volume, *, spacing=None, chunks=None, compute: bool = True):
    """Write a (z, y, x) numpy or dask array as OME-Zarr (NGFF 0.4, one scale, micrometres).

    Written into a temporary folder beside ``path`` and renamed when complete.
    With ``compute=False`` returns the dask task that writes the data (the
    metadata is written first).
    """
    import shutil

    import dask.array as da
    import zarr
    path = Path(path)
    arr = volume if isinstance(volume, da.Array) else da.from_array(
        np.asarray(volume), chunks=chunks or "auto")
    if chunks is not None:
        arr = arr.rechunk(chunks)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".zarr", dir=path.parent))
    group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    scale = list(spacing) if spacing is not None else [1.0, 1.0, 1.0]
    group.attrs["multiscales"] = [{
        "version": "0.4", "name": path.stem,
        "axes": [{"name": a, "type": "space", **({"unit": "micrometer"} if spacing is not None else {})}
                 for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]
    store = da.to_zarr(arr.astype(np.float32), str(tmp), component="0", compute=False, zarr_format=2,
                       mode="w")

    def finish(_=None):
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
        return path

    if compute:
        store.compute()
        return finish()
    return store, finish
