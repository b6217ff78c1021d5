"""Reading and writing volumes: MATLAB .mat (v5 and v7.3), TIFF / OME-TIFF, NumPy, Zarr; CSV bead tables.

Inside restore3d every volume is float32 with axes (z, y, x) and a spacing
``(dz, dy, dx)`` in micrometres. Files with another axis order are
transposed here, at the boundary, with ``axes="yxz"`` (depth last, as MATLAB
users usually store stacks) or any other permutation of ``"zyx"``. One
module per format (:mod:`.mat`, :mod:`.tiff`, :mod:`.numpy_files`,
:mod:`.zarr`), registered in :data:`FORMATS`; :func:`load` and :func:`save`
are the front doors.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from .._checks import as_spacing
from .._files import atomic_write
from . import mat, numpy_files, tiff
from ._common import UNITS_UM, check_array, from_zyx, log, parse_axes, to_zyx, unit_to_um
from .tables import read_table, write_table
from .zarr import open_zarr, write_zarr

__all__ = ["load", "load_file", "LoadedVolume", "save", "write_table", "read_table", "parse_axes", "format_of",
           "open_zarr", "write_zarr", "unit_to_um", "UNITS_UM", "FORMATS"]


@dataclasses.dataclass(frozen=True)
class Format:
    """A file format: its reader ``(path, variable) -> (data, spacing, stored_axes, variable)`` and writer."""

    name: str
    read: object
    write: object
    axes_in_file: bool = True   # whether a written file can hold another axis order than (z, y, x)
    writes_atomically: bool = False  # the writer itself writes beside and renames (a Zarr folder)


def _read_zarr(path, variable):
    arr, spacing = open_zarr(path)
    return check_array(np.asarray(arr), path), spacing, "zyx", None


def _write_zarr(path, arr, *, spacing, axes, variable):
    write_zarr(path, arr, spacing=spacing)


#: Extensions and their formats.
FORMATS = {
    ".mat": Format("mat", mat.read, mat.write),
    ".tif": Format("tiff", tiff.read, tiff.write, axes_in_file=False),
    ".tiff": Format("tiff", tiff.read, tiff.write, axes_in_file=False),
    ".npy": Format("npy", numpy_files.read_npy, numpy_files.write_npy),
    ".npz": Format("npz", numpy_files.read_npz, numpy_files.write_npz),
    ".zarr": Format("zarr", _read_zarr, _write_zarr, axes_in_file=False, writes_atomically=True),
}


def _format(path) -> Format:
    suffix = Path(path).suffix.lower()
    try:
        return FORMATS[suffix]
    except KeyError:
        raise ValueError(
            f"{path}: unknown file extension {suffix!r}; restore3d reads and writes "
            f"{', '.join(sorted(FORMATS))} (and .ome.tif, .ome.zarr)") from None


def format_of(path) -> str:
    """File format from the extension: ``"mat"``, ``"tiff"``, ``"npy"``, ``"npz"`` or ``"zarr"``."""
    return _format(path).name


@dataclasses.dataclass
class LoadedVolume:
    """What :func:`load_file` read: the (z, y, x) float32 volume, its spacing (um, or None), the
    variable it came from (``.mat`` / ``.npz``) and the file's axis order."""

    volume: np.ndarray
    spacing: tuple | None
    variable: str | None
    axes: str


def load_file(path, *, axes: str | None = None, variable: str | None = None) -> LoadedVolume:
    """:func:`load`, also saying which variable and axis order the volume came from."""
    path = Path(path)
    fmt = _format(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if path.is_dir() and fmt.name != "zarr":
        raise ValueError(f"{path} is a folder, not a {fmt.name} file")
    data, spacing, stored_axes, name = fmt.read(path, variable)
    if spacing is not None:
        try:
            spacing = as_spacing(spacing)
        except ValueError as exc:
            log.warning("%s: ignoring the stored voxel size %s (%s); pass --spacing DZ DY DX", path, spacing, exc)
            spacing = None
    if axes is None and fmt.name == "mat" and stored_axes is None and 2 * data.shape[2] <= min(data.shape[:2]):
        # MATLAB stacks are (y, x, z): a last axis far shorter than the others is depth
        stored_axes = "yxz"
        log.warning("%s: no axis order stored and the last axis (%d) is far shorter than the others %s: "
                    "reading it as depth, axes='yxz' (MATLAB's convention); pass axes='zyx' (--axes zyx) "
                    "if the first axis is depth", path, data.shape[2], data.shape[:2])
    order = parse_axes(axes if axes is not None else stored_axes)
    volume = np.ascontiguousarray(to_zyx(data, order), dtype=np.float32)
    if not np.isfinite(volume).all():
        log.warning("%s contains NaN or Inf values", path)
    return LoadedVolume(volume=volume, spacing=spacing, variable=name, axes=order)


def load(path, *, axes: str | None = None, variable: str | None = None):
    """Load a 3D volume and its voxel spacing.

    Parameters
    ----------
    path : str or Path
        ``.mat`` (v5 or v7.3), ``.tif``/``.tiff``/``.ome.tif``, ``.npy``, ``.npz`` or ``.zarr``.
    axes : str, optional
        Axis order of the array in the file, a permutation of ``"zyx"``
        (``"yxz"``: depth last, as MATLAB stacks usually are). Default: the
        order stored by restore3d in the file, the TIFF's own axes; a
        ``.mat`` without one whose last axis is at most half the others is
        read depth-last (with a warning); else ``"zyx"``.
    variable : str, optional
        Which variable of a ``.mat`` or ``.npz`` file holds the volume;
        needed only when it holds several 3D arrays.

    Returns
    -------
    volume : (Z, Y, X) float32 ndarray
    spacing : (dz, dy, dx) tuple of float in micrometres, or None
        None when the file does not record it (or records it in pixels or
        an unknown unit, or an invalid value: then with a warning).

    Raises
    ------
    ValueError
        Missing file, unknown extension, no or several candidate 3D arrays,
        2D / 4D data, non-numeric data, corrupt or truncated file; the
        message names the file and the fix.
    """
    loaded = load_file(path, axes=axes, variable=variable)
    return loaded.volume, loaded.spacing


def save(path, volume, *, spacing: Sequence[float] | None = None, axes: str | None = None,
         variable: str = "volume", mat_version: str = "5", dtype=None) -> Path:
    """Save a (z, y, x) volume, with its spacing where the format can hold it.

    The file is written to a temporary name in the same folder and renamed,
    so an interrupted save never leaves a half-written ``path``; it gets the
    permissions an ordinary write would.

    Parameters
    ----------
    path : str or Path
        Destination; the extension chooses the format. ``.tif`` is written
        ImageJ-compatible (Fiji and napari show micrometres), ``.ome.tif``
        as OME-TIFF, ``.mat`` as MATLAB v5 or v7.3 (``mat_version``), ``.npz``
        with ``spacing`` and ``axes`` arrays beside ``volume``, ``.zarr`` as
        OME-Zarr.
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats, optional
        Voxel size in micrometres, always given in (z, y, x) order.
    axes : str, optional
        Axis order to write (e.g. ``"yxz"`` for depth-last MATLAB files);
        not available for TIFF and Zarr, whose axes are always (z, y, x).
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
    fmt = _format(path)
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
    if not fmt.axes_in_file and order != "zyx":
        raise ValueError(f"{path}: {fmt.name.upper()} stacks are written as (z, y, x); drop axes={axes!r}")
    if not path.parent.exists():
        raise ValueError(f"{path}: folder {path.parent} does not exist")
    options = {}
    if fmt.name == "mat":
        options["mat_version"] = mat_version
    elif fmt.name == "tiff":
        options["ome"] = path.name.lower().endswith((".ome.tif", ".ome.tiff"))
    if fmt.writes_atomically:
        fmt.write(path, from_zyx(arr, order), spacing=spacing, axes=order, variable=variable, **options)
        return path
    with atomic_write(path) as tmp:
        fmt.write(tmp, from_zyx(arr, order), spacing=spacing, axes=order, variable=variable, **options)
    return path
