"""Zarr volumes (OME-Zarr NGFF 0.4 groups or plain arrays), read lazily with Dask, written atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .._checks import as_spacing


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
