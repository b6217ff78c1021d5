"""TIFF and OME-TIFF stacks, with the voxel size from ImageJ or OME metadata (units converted)."""
from __future__ import annotations

from struct import error as struct_error

import numpy as np

from ._common import check_array, log, unit_to_um


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


def read(path, variable):
    """``(data, spacing, stored_axes, None)`` of a TIFF; singleton channel/time axes dropped."""
    data, file_axes, spacing = _read_tiff(path)
    data = check_array(data, path)
    stored = file_axes.lower() if sorted(file_axes.lower()) == ["x", "y", "z"] else "zyx"
    return data, spacing, stored, None


def write(path, arr, *, spacing, axes, variable, ome=False):
    """Write a (z, y, x) stack as ImageJ TIFF or OME-TIFF (``ome``)."""
    _save_tiff(path, arr, spacing, ome=ome)
