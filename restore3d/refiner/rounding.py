"""Round bead objects: each bead's object made no longer along z than it is across, its light kept.

A rendering refiner predicts each bead's object and renders the target's
isotropic Gaussian after it (:mod:`restore3d.refiner.transforms`). Where a
bead is dim its depth is uncertain, and a network trained voxel by voxel
paints every plane the bead may lie in: the object comes out longer along z
than across, and no kernel narrowing can undo that once the object alone is
longer than the target (benchmarks/RESULTS.md section 7: dim beads at 1.5-1.8
x the ideal's elongation).

Beads are small and round, so their objects should be as extended along z
as across. :func:`round_bead_objects` finds the beads of the object (local
maxima, each the highest within one target FWHM, above the noise of the
maxima themselves as :func:`restore3d.detect.detect_beads` judges it, and
above a fraction of the typical bead), gives each the voxels of its core (nearer to it than to
any other bead, within a box of a few target FWHMs, at least ``core`` of
its peak: by default :data:`CORE`, the level above which a Gaussian bead
holds 95 % of its light), and moves that light along z towards the bead's
light-weighted centre so that its axial variance equals its lateral one. Light is only
moved, never made or removed, along z only, to linearly shared planes; a
bead's centre does not move; a bead round within 5 % or flatter
(:data:`ROUND_ENOUGH`: round beads up to twice the target's FWHM, flattened
ones) is left as it is. The box is narrower across (``reach``) than along
z, so a round bead more than twice the target's FWHM, its core cut at the
box's sides, is shortened a little (2.35 x the FWHM: its axial spread by
6 %). Light outside the bead cores (noise, the faint carpet of a dim
volume) stays where it is.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["round_bead_objects", "CORE", "ROUND_ENOUGH"]

#: A bead's core: its voxels at or above this fraction of its peak. A Gaussian
#: bead (of any axial stretch) holds 95 % of its light there:
#: exp(-q / 2), q = 7.815 the 95 % quantile of chi-square with 3 degrees of
#: freedom. At 0.15 (before stop 32) the core held 72 %, and the tails left
#: out kept dim beads long (benchmarks/RESULTS.md, section 7).
CORE = float(np.exp(-0.5 * 7.814727903251178))

#: A bead whose axial variance is at most this times its lateral one (its
#: axial spread within 5 %) is round enough: left as it is.
ROUND_ENOUGH = 1.1


def round_bead_objects(obj: np.ndarray, spacing: Sequence[float], fwhm_um: float, *, snr: float = 5.0,
                       floor: float = 0.02, fraction: float = 0.1, core: float = CORE, reach=(3.0, 2.0),
                       in_place: bool = False) -> tuple[np.ndarray, dict]:
    """Make each bead's object as extended along z as across, its light and centre kept.

    Parameters
    ----------
    obj : (Z, Y, X) ndarray
        A rendering refiner's bead object (non-negative), e.g. on its
        working grid. Not changed unless ``in_place`` (C-contiguous float32).
    spacing : (dz, dy, dx) floats, micrometres
        The grid of ``obj``.
    fwhm_um : float
        The target's FWHM (sets the boxes a bead's core is sought in).
    snr : float
        Beads are maxima of the object (smoothed by one voxel) higher than
        the median of all its maxima plus this many robust deviations of
        them (:func:`restore3d.detect.noise_threshold`) ...
    floor : float
        ... those maxima counted from ``floor`` of the typical bead's height
        up (lower ones are the black floor's ripples, whose heights would
        set the noise level near zero) ...
    fraction : float
        ... and at least this fraction of the typical bead's height.
    core : float
        A bead's core: the voxels whose smoothed value is at least this
        fraction of its peak (default :data:`CORE`, 0.020: 95 % of a
        Gaussian bead's light).
    reach : (axial, lateral) floats
        Half-size of the box a bead's core is sought in, in target FWHMs.
    in_place : bool
        Write into ``obj`` (float32) instead of a copy: no second volume.

    Returns
    -------
    rounded : (Z, Y, X) float32 ndarray
        The object with its beads' cores moved along z (``obj`` itself
        when ``in_place``).
    report : dict
        ``beads`` (found), ``rounded`` (beads moved: longer along z than
        across), ``axial_scale`` (median factor their axial spread was
        scaled by; 1 when none was moved).
    """
    from scipy.spatial import cKDTree

    from .._filters import gaussian_filter
    from ..detect import maximum_filter, noise_threshold, typical_height
    vol = np.asarray(obj, np.float32)
    if in_place and (vol is not obj or not vol.flags.c_contiguous):
        raise ValueError(f"round_bead_objects(in_place=True) needs a C-contiguous float32 ndarray, got "
                         f"{type(obj).__name__} of {getattr(obj, 'dtype', None)}; pass in_place=False")
    sp = np.asarray(spacing, float)
    report = {"beads": 0, "rounded": 0, "axial_scale": 1.0}
    unchanged = vol if in_place or vol is not obj else vol.copy()  # a converted input is already a copy
    if vol.ndim != 3 or vol.size == 0 or not np.any(vol > 0):
        return unchanged, report
    smooth = gaussian_filter(vol, 1.0)
    # a bead is the highest point within one target FWHM: a long dim bead's object holds one maximum, not several
    size = [2 * max(1, int(round(fwhm_um / d))) + 1 for d in sp]
    peaks = smooth == maximum_filter(smooth, size)
    peaks &= smooth > 0
    coords = np.argwhere(peaks)
    del peaks
    heights = smooth[tuple(coords.T)].astype(np.float64)
    # the black floor's ripples (maxima under ``floor`` of the typical bead) are not the noise beads stand out of
    heights_above = heights[heights >= floor * typical_height(heights)]
    level = noise_threshold(heights_above, vol.size, snr)
    level = max(level, fraction * typical_height(heights_above[heights_above > level]))
    keep = heights > level
    coords, heights = coords[keep], heights[keep]
    report["beads"] = int(len(coords))
    if not len(coords):
        return unchanged, report
    tree = cKDTree(coords * sp)
    half = np.maximum(1, np.round(np.array([reach[0], reach[1], reach[1]]) * fwhm_um / sp)).astype(int)
    shape = np.asarray(vol.shape)
    moved_idx, moved_w, moved_z, scales = [], [], [], []
    for b, (c, h) in enumerate(zip(coords, heights)):
        lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, shape)
        sl = tuple(slice(a, e) for a, e in zip(lo, hi))
        grid = np.stack(np.meshgrid(*(np.arange(a, e) for a, e in zip(lo, hi)), indexing="ij"), -1).reshape(-1, 3)
        w = vol[sl].ravel().astype(np.float64)
        mine = (smooth[sl].ravel() >= core * h) & (w > 0)
        if mine.any():
            _, nearest = tree.query(grid[mine] * sp)
            mine[mine] = nearest == b
        if mine.sum() < 2:
            continue
        g, w = grid[mine], w[mine]
        total = w.sum()
        centre = (g * w[:, None]).sum(0) / total
        var = ((g - centre) ** 2 * w[:, None]).sum(0) / total * sp ** 2
        lateral = 0.5 * (var[1] + var[2])
        if var[0] <= ROUND_ENOUGH * lateral or var[0] <= 0:
            continue
        s = float(np.sqrt(lateral / var[0]))
        scales.append(s)
        moved_idx.append(np.ravel_multi_index(tuple(g.T), vol.shape))
        moved_w.append(w)
        moved_z.append(centre[0] + s * (g[:, 0] - centre[0]))
    del smooth
    out = unchanged
    if not scales:
        return out, report
    idx, w, z = np.concatenate(moved_idx), np.concatenate(moved_w), np.concatenate(moved_z)
    flat = out.reshape(-1)
    flat[idx] = 0
    plane = vol.shape[1] * vol.shape[2]
    within = idx % plane
    z0 = np.floor(z).astype(np.int64)
    frac = z - z0
    # each moved voxel's light shared linearly between the two planes about its new depth (inside the grid:
    # it moved towards its bead's centre)
    target = np.concatenate([z0 * plane + within, np.minimum(z0 + 1, vol.shape[0] - 1) * plane + within])
    light = np.concatenate([w * (1 - frac), w * frac])
    where, which = np.unique(target, return_inverse=True)
    flat[where] += np.bincount(which, light).astype(np.float32)
    report.update(rounded=len(scales), axial_scale=float(np.median(scales)))
    log.debug("rounded %d of %d bead objects (axial spread x %.2f median)", len(scales), len(coords),
              report["axial_scale"])
    return out, report
