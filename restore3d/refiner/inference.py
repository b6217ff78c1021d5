"""Tiled, resampling-aware inference of a refiner network."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from .normalize import Normalizer
from .tiling import blend_weight, pad_to_multiple, plan_tile_shape, tiles, weight_sums

__all__ = ["predict", "refine", "resample_spacing", "working_grid_of"]

log = logging.getLogger(__name__)


def resample_spacing(spacing, spacing_range):
    """The spacing inside the training range closest to ``spacing`` (per axis), or ``spacing`` itself."""
    if not spacing_range:
        return tuple(spacing)
    lo = [spacing_range["dz"][0], spacing_range["dxy"][0], spacing_range["dxy"][0]]
    hi = [spacing_range["dz"][1], spacing_range["dxy"][1], spacing_range["dxy"][1]]
    return tuple(float(np.clip(s, a, b)) for s, a, b in zip(spacing, lo, hi))


def _tile_of(vol, tile, padded_shape):
    """``np.pad(vol, ..., mode="reflect")[tile]`` for a volume padded at its ends to ``padded_shape``,
    without the padded volume (only the tile is made)."""
    src, extra = [], []
    for sl, n, m in zip(tile, vol.shape, padded_shape):
        beyond = max(0, sl.stop - n)  # planes past the end, mirrored from the ones before it
        start = max(0, min(sl.start, n - 1 - beyond))
        src.append(slice(start, min(sl.stop, n)))
        extra.append((sl.start - start, beyond))
    part = vol[tuple(src)]
    if any(b for _, b in extra):
        part = np.pad(part, [(0, b) for _, b in extra], mode="reflect")
    return part[tuple(slice(a, a + (sl.stop - sl.start)) for (a, _), sl in zip(extra, tile))]


def _network_pass(model, held, *, device, tile_shape, max_voxels, ramp, progress, precision="fp32"):
    """The network on the normalised volume in ``held`` (a one-element list, emptied: the volume is freed
    as soon as its last tile is cut, unless the caller holds it too), tiles blended."""
    import torch
    from tqdm.auto import tqdm

    from .model import fold_batchnorm
    from .precision import autocast
    model = fold_batchnorm(model)
    cfg = model.config
    mult = cfg.multiple
    vol = held.pop()
    padded_shape = tuple(n + p[1] for n, p in zip(vol.shape, pad_to_multiple(vol.shape, mult)))
    halo = cfg.receptive_halo()
    overlap = tuple(2 * h + ramp for h in halo)
    if tile_shape is None:
        tile_shape = plan_tile_shape(padded_shape, max_voxels, overlap, mult)
    tile_shape = tuple(min(int(t), n) if t else n for t, n in zip(tile_shape, padded_shape))
    tile_shape = tuple(n if t >= n else max(m, t // m * m) for t, n, m in zip(tile_shape, padded_shape, mult))
    all_tiles = tiles(padded_shape, tile_shape, overlap, mult)
    out, shape = None, vol.shape
    channels_last = device.type == "cpu"
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    with torch.no_grad(), autocast(precision, device):
        for k, t in enumerate(tqdm(all_tiles, desc="refiner tiles", disable=not progress or len(all_tiles) == 1,
                                   leave=False)):
            part = np.ascontiguousarray(_tile_of(vol, t, padded_shape))
            if len(all_tiles) > 1 and np.shares_memory(part, vol):  # the pass writes over its input
                part = part.copy()
            x = torch.from_numpy(part)[None, None].to(device)
            del part
            if k == len(all_tiles) - 1:
                del vol
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            y = _forward(model, x)[0, 0].float().cpu().numpy()
            del x
            if len(all_tiles) == 1:
                out = y
                break
            if out is None:
                out = np.zeros(padded_shape, np.float32)
            y *= blend_weight(t, padded_shape, halo, ramp)
            out[t] += y
            del y
    if len(all_tiles) > 1:  # divided by the summed weights, one axis at a time (no weight volume)
        sz, sy, sx = (np.maximum(w, 1e-12).astype(np.float32)
                      for w in weight_sums(all_tiles, padded_shape, halo, ramp))
        out /= sz[:, None, None]
        out /= sy[:, None] * sx[None, :]
    return out[tuple(slice(0, n) for n in shape)]


def _forward(model, x):
    """``model(x)`` (no gradients) for an ``x`` the caller gives up: a U-Net's output is written over it."""
    if hasattr(model, "_channels_last"):  # UNet3D
        from .streaming import forward_by_slabs
        return forward_by_slabs(model, x, channels_last=model._channels_last(), overwrite_input=True)
    return model(x)


def predict(model, volume: np.ndarray, spacing: Sequence[float], *, normalizer: Normalizer,
            spacing_range: dict | None = None, device=None, tile_shape=None,
            max_voxels: int = 8_000_000, ramp: int = 8, progress: bool = False,
            stats: tuple | None = None, precision: str = "fp32") -> np.ndarray:
    """Run a refiner network on a (z, y, x) volume.

    The volume is normalised once (never per tile), resampled to the nearest
    spacing of the training range when outside it (and the result back, flux
    kept), and processed whole when it has at most ``max_voxels`` voxels,
    else in overlapping tiles blended with smooth windows that ignore each
    tile's padded margins, so the result equals the whole-volume
    prediction. The tiles are ``tile_shape`` (0 = the whole axis) or, when
    None, the fewest voxels in all with at most ``max_voxels`` per tile
    (:func:`restore3d.refiner.tiling.plan_tile_shape`); the network's memory
    grows with the tile (about 44 bytes per voxel for the default one in float32). ``stats`` = ``(offset,
    scale)`` fixes the normalisation (chunks of a large volume).
    ``precision`` ("fp32", "bf16" or "auto") sets the autocast precision.

    Returns
    -------
    (Z, Y, X) float32 ndarray, non-negative.
    """
    import torch
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    vol = np.asarray(volume, np.float32)
    target_spacing = resample_spacing(spacing, spacing_range)
    zoom = np.asarray(spacing, float) / np.asarray(target_spacing, float)
    resample = bool(np.any(np.abs(zoom - 1) > 1e-3))
    if resample:
        log.info("refiner: resampling from spacing %s to %s (training range)", tuple(spacing), target_spacing)
        work = ndimage.zoom(vol, zoom, order=1, mode="nearest", grid_mode=True)
    else:
        work = vol
    off, scale = normalizer.stats(work) if stats is None else stats
    norm = np.subtract(work, np.float32(off), dtype=np.float32)
    norm /= np.float32(scale)
    if work.size <= max_voxels:
        tile_shape = (0, 0, 0)
    if tile_shape is not None and len(tile_shape) != 3:
        raise ValueError(f"tile_shape must be (Z, Y, X) or None, got {tile_shape!r}")
    model = model.to(dev).eval()
    from .precision import resolve_precision
    if not resample:
        del work, vol, volume  # the normalised copy is all the pass needs (freed here if the caller lets go)
    held = [norm]
    del norm
    out = _network_pass(model, held, device=dev, tile_shape=tile_shape, max_voxels=max_voxels, ramp=ramp,
                        progress=progress, precision=resolve_precision(precision, dev))
    out *= np.float32(scale)
    if resample:
        back = ndimage.zoom(out, np.asarray(vol.shape) / np.asarray(out.shape), order=1, mode="nearest",
                            grid_mode=True)
        back = back[: vol.shape[0], : vol.shape[1], : vol.shape[2]]
        if back.shape != vol.shape:
            back = np.pad(back, [(0, n - s) for n, s in zip(vol.shape, back.shape)], mode="edge")
        # the flux the network gave on the resampled grid, relative to what it got, is kept
        gain = float(out.sum()) / max(float(work.sum()), 1e-30)
        total = gain * float(vol.sum())
        out = back * (total / max(float(back.sum()), 1e-30)) if total > 0 else back
    out = np.ascontiguousarray(out, dtype=np.float32)
    return np.clip(out, 0, None, out=out)


def working_grid_of(meta: dict, shape, spacing, psf, *, part_of=None, multiple=(1, 1, 1)):
    """The working grid (:mod:`restore3d.refiner.grid`) of a refiner that has one, for this volume; else None.

    ``part_of``: (start, shape) of a whole volume it was cut from;
    ``multiple``: the network's pooling grid (:func:`restore3d.refiner.grid.working_grid`).
    """
    if not meta.get("grid"):
        return None
    from ..target import lateral_fwhm
    from .grid import working_grid
    if psf is None:
        raise ValueError("this refiner works on a grid sized by the PSF: run it after EstimatePSF "
                         "(or pass psf= to the run)")
    origin, whole = part_of if part_of is not None else ((0, 0, 0), None)
    return working_grid(shape, spacing, lateral_fwhm(psf, spacing), origin=origin, whole_shape=whole,
                        multiple=multiple,
                        **meta["grid"])


def refine(volume: np.ndarray, spacing: Sequence[float], *, model, meta: dict, psf=None, device=None,
           tile_shape=None, max_voxels: int = 8_000_000, intensity=None, precision: str = "auto",
           progress: bool = False, calibrate: bool = True, kernel_um=None, info: dict | None = None,
           part_of=None, light_gain: float | None = None, round_beads: bool = True) -> np.ndarray:
    """Apply a refiner network to the output of its preceding stages.

    The input transform of the checkpoint (``meta["input_transform"]``), the
    working grid (``meta["grid"]``: the volume resampled to voxels of half
    the target FWHM and the network's object brought back, light kept),
    the tiled, normalised network pass (:func:`predict`) and the output
    transform (``meta["output_transform"]``: the target's isotropic
    Gaussian rendered on the volume's grid).

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        What the preceding stages (``meta["prefix"]``) produced.
    spacing : (dz, dy, dx) floats, micrometres
    model, meta
        The network and the checkpoint description
        (:func:`restore3d.refiner.checkpoint.load_checkpoint`).
    psf : ndarray, optional
        The PSF those stages used (required by refiners with a grid or
        transforms: it sets the target's FWHM).
    device, tile_shape, max_voxels, precision, progress
        As in :func:`predict`.
    intensity : (offset, scale), optional
        Fixed normalisation (chunks of a large volume).
    calibrate : bool
        For rendering refiners: measure the width the network's object
        keeps on the volume's isolated beads and narrow the rendered kernel
        by it, so beads come out at the target's FWHM along every axis
        (:mod:`restore3d.refiner.calibration`).
    kernel_um : (3,) floats, optional
        The rendered kernel's sigma per axis (um), fixed (chunks of a large
        volume); overrides ``calibrate``.
    info : dict, optional
        Filled with the rendering's report (``"rendering"``).
    part_of : ((z, y, x), (Z, Y, X)), optional
        Where the volume starts in a whole volume it was cut from (a
        chunk), and that volume's shape: the working grid is the whole
        volume's (see :func:`restore3d.refiner.grid.working_grid`).
    light_gain : float, optional
        A working grid's rendered samples times this (chunks of a large
        volume: the sample's); default measured on the volume (see
        :func:`_render_on`).
    round_beads : bool
        For rendering refiners: make each bead's object as extended along z
        as across before rendering, its light and centre kept
        (:func:`restore3d.refiner.rounding.round_bead_objects`; dim beads
        otherwise come out long).

    Returns
    -------
    (Z, Y, X) float32 ndarray, non-negative.
    """
    from .checkpoint import normalizer_of
    from .transforms import RENDERING, apply_input_transform, apply_output_transform
    volume = apply_input_transform(np.asarray(volume, np.float32), spacing, meta.get("input_transform"), psf)
    grid = working_grid_of(meta, volume.shape, spacing, psf, part_of=part_of, multiple=model.config.multiple)
    # the working grid is made in the call and held only by predict, which frees it once normalised
    out = predict(model, volume if grid is None else grid.to_work(volume), spacing if grid is None else grid.spacing,
                  normalizer=normalizer_of(meta),
                  spacing_range=meta.get("spacing_range"), device=device, tile_shape=tile_shape,
                  max_voxels=max_voxels, progress=progress,
                  stats=None if intensity is None else tuple(intensity), precision=precision)
    transform = meta.get("output_transform")
    if transform not in RENDERING:
        return apply_output_transform(out if grid is None else grid.object_to_source(out), spacing,
                                      transform, psf)
    rounding = None
    if round_beads:
        from ..target import lateral_fwhm
        from .rounding import round_bead_objects
        out, rounding = round_bead_objects(out, spacing if grid is None else grid.spacing,
                                           lateral_fwhm(psf, spacing), in_place=True)
    sigma, report = _rendered_kernel(out, spacing, transform, psf, grid, calibrate, kernel_um)
    if grid is not None:  # report the kernel as rendered (its floor on resampled axes included)
        from ..target import FWHM_PER_SIGMA
        sigma = grid.rendered_sigma(sigma)
        report["kernel_fwhm_um"] = [float(v) for v in FWHM_PER_SIGMA * sigma]
    if rounding is not None:
        report["rounding"] = rounding
    rendered = _render_on(out, spacing, grid, sigma, light_gain, report)
    if info is not None:
        info["rendering"] = report
    return rendered


def _render_on(obj, spacing, grid, sigma_um, gain=None, report=None):
    """The object rendered with a kernel of ``sigma_um``, on the volume's grid.

    A working grid's object is rendered at the volume's voxel centres (the
    kernel evaluated there, as the ideal target is sampled;
    :meth:`restore3d.refiner.grid.Grid.render_to_source`), its light set to
    the object's: point samples of beads narrower than a plane hold more or
    less than their light
    depending on where the beads sit, so the samples are scaled by
    ``gain`` (default: the object's light over theirs, measured on this
    volume; chunks of a large volume share the sample's). ``report``: a dict
    that gets the ``"light_gain"`` used.
    """
    if grid is None:
        from .calibration import render
        return render(obj, spacing, sigma_um)
    out = grid.render_to_source(obj, sigma_um)
    if gain is None:
        light, got = float(obj.sum(dtype=np.float64)) * grid.volume_ratio, float(out.sum(dtype=np.float64))
        gain = light / got if got > 0 else 1.0
    if report is not None:
        report["light_gain"] = float(gain)
    out *= np.float32(gain)
    return np.clip(out, 0, None, out=out)


def _rendered_kernel(obj, spacing, transform, psf, grid, calibrate, kernel_um):
    """Sigma (um per axis) of the kernel to render and its report: fixed, measured or as trained."""
    from ..target import FWHM_PER_SIGMA, lateral_fwhm
    from .calibration import calibrate_kernel
    from .transforms import output_kernel_um, render_sigma
    if kernel_um is not None:
        sigma = np.asarray(kernel_um, float)
        return sigma, {"calibrated": False, "fixed": True, "kernel_fwhm_um": list(map(float, FWHM_PER_SIGMA * sigma))}
    if grid is not None:  # the kernel the refiner was trained with, on its working grid
        sigma = render_sigma(lateral_fwhm(psf, spacing), grid.spacing, grid.spacing) * np.asarray(grid.spacing)
    else:
        sigma = output_kernel_um(spacing, transform, psf)
    if not calibrate:
        return sigma, {"calibrated": False, "kernel_fwhm_um": list(map(float, FWHM_PER_SIGMA * sigma))}
    sigma, report = calibrate_kernel(lambda s: _render_on(obj, spacing, grid, s), spacing,
                                     lateral_fwhm(psf, spacing), sigma)
    if not report["calibrated"]:
        log.info("refiner: %d isolated beads, too few to measure the object's width: the kernel is "
                 "rendered as trained", report["n_beads"])
    return sigma, report

