"""Bead localisation table: positions, intensities and widths of bright spots.

A light-weight detector (smoothed local maxima above a noise-based
threshold, sub-voxel peaks from log-parabolas) with per-bead measurements
(local background, integrated intensity, FWHM per axis in micrometres). It
serves the metrics, PSF estimation and the CLI's bead table.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
from scipy import ndimage

from ._checks import as_spacing, as_volume
from ._filters import gaussian_filter
from ._profiles import profile_fwhm, profile_peak
from ._stats import half_normal_sigma, mad_sigma
from .beads import BEAD_DTYPE, new_table

__all__ = ["detect_beads", "measure_beads", "positions_of", "DETECTION_DTYPE", "robust_sigma",
           "noise_threshold", "typical_peak", "typical_height", "local_maxima", "find_maxima", "Maxima"]

log = logging.getLogger(__name__)

#: Detection tables are bead tables (:data:`restore3d.beads.BEAD_DTYPE`): sub-voxel
#: position, intensity above the local background, peak height above it, local
#: background, detection score (smoothed peak height) and FWHM per axis (um).
DETECTION_DTYPE = BEAD_DTYPE


def positions_of(table_or_array) -> np.ndarray:
    """(N, 3) float positions in voxels from a bead table (fields z, y, x) or an array."""
    if isinstance(table_or_array, np.ndarray) and table_or_array.dtype.names:
        t = table_or_array
        return np.stack([t["z"], t["y"], t["x"]], axis=1).astype(float) if len(t) else np.zeros((0, 3))
    arr = np.asarray(table_or_array, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"positions must be a bead table or an (N, 3) array of (z, y, x), got shape {arr.shape}")
    return arr


def robust_sigma(values: np.ndarray) -> tuple[float, float]:
    """Noise level and base of a mostly-background volume: ``(base, sigma)``.

    Normally the median and 1.4826 x the median absolute deviation (robust
    to sparse beads). When more than a quarter of the values sit at the
    minimum (a background-subtracted volume clipped at zero, a restored
    volume with a black background), the positive values above the minimum
    are treated as half-normal noise: ``sigma = median / 0.6745``.
    """
    v = np.asarray(values).reshape(-1)
    if v.size > 4_000_000:  # subsampled before the float64 copy (a view of a contiguous volume)
        v = v[:: v.size // 2_000_000]
    v = v.astype(np.float64)
    lo = float(v.min())
    tiny = 1e-6 * max(float(np.abs(v).max()), 1e-30)
    floor = v <= lo + tiny
    if floor.mean() > 0.25:
        pos = v[~floor] - lo
        return lo, half_normal_sigma(pos)
    med = float(np.median(v))
    return med, mad_sigma(v, med)


def _window_slices(centre, half, shape):
    return tuple(slice(max(0, c - h), min(n, c + h + 1)) for c, h, n in zip(centre, half, shape))


def measure_beads(volume: np.ndarray, spacing: Sequence[float], positions, *,
                  window_um: Sequence[float] = (1.5, 0.6, 0.6)) -> np.ndarray:
    """Measure beads at given positions: local background, intensity, peak, FWHM.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
    spacing : (dz, dy, dx) floats, micrometres
    positions : bead table or (N, 3) array
        Approximate positions in voxels; each bead is measured around the
        brightest voxel within one voxel of it.
    window_um : (wz, wy, wx) floats
        Half-size of the measurement window in micrometres. The local
        background is the median of the window's faces.

    Returns
    -------
    table : structured ndarray (:data:`DETECTION_DTYPE`)
        ``score`` is the peak height; widths are NaN where a profile does not
        fall to half maximum inside the window (touching beads, edges).
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    pos = positions_of(positions)
    half = np.maximum(1, np.round(np.asarray(window_um) / np.asarray(spacing)).astype(int))
    table = new_table(len(pos))
    shape = vol.shape
    for i, p in enumerate(pos):
        c = np.clip(np.round(p).astype(int), 0, np.asarray(shape) - 1)
        near = vol[_window_slices(c, (1, 1, 1), shape)]
        off = np.unravel_index(int(np.argmax(near)), near.shape)
        c = np.array([max(0, ci - 1) + o for ci, o in zip(c, off)])
        win_sl = _window_slices(c, half, shape)
        win = vol[win_sl]
        faces = np.concatenate([win[[0, -1]].ravel(), win[:, [0, -1]].ravel(), win[:, :, [0, -1]].ravel()])
        bg = float(np.median(faces))
        local = win.astype(np.float64) - bg
        lc = c - np.array([s.start for s in win_sl])
        profiles = (local[:, lc[1], lc[2]], local[lc[0], :, lc[2]], local[lc[0], lc[1], :])
        sub = []
        widths = []
        for a, prof in enumerate(profiles):
            pos_a, _ = profile_peak(prof, lc[a])
            sub.append(pos_a + win_sl[a].start)
            widths.append(profile_fwhm(prof, lc[a]) * spacing[a])
        table[i]["z"], table[i]["y"], table[i]["x"] = sub
        table[i]["peak"] = float(local[tuple(lc)])
        table[i]["background"] = bg
        table[i]["intensity"] = float(local.sum())
        table[i]["score"] = table[i]["peak"]
        table[i]["fwhm_z"], table[i]["fwhm_y"], table[i]["fwhm_x"] = widths
    for a, ax in enumerate("zyx"):
        table[ax + "_um"] = table[ax] * spacing[a]
    return table


def maximum_filter(volume: np.ndarray, size) -> np.ndarray:
    """``scipy.ndimage.maximum_filter(volume, size, mode="nearest")`` for odd sizes, the same values in half the time.

    Along each axis the running maximum over ``2^k`` samples is built by
    doubling (``k`` whole-array maxima) and two overlapping runs cover the
    window; the edge padding makes ``"nearest"`` exact (a repeated edge
    value is already in the window). Even sizes go to scipy.
    """
    vol = np.asarray(volume)
    sizes = [int(s) for s in (size if np.ndim(size) else (size,) * vol.ndim)]
    if any(s < 1 or s % 2 == 0 for s in sizes) or len(sizes) != vol.ndim:
        return ndimage.maximum_filter(vol, size=size, mode="nearest")
    out = vol
    for axis, length in enumerate(sizes):
        if length == 1:
            continue
        n, h = vol.shape[axis], length // 2

        def cut(a, b, axis=axis):
            return (slice(None),) * axis + (slice(a, b),)

        run, width = np.pad(out, [(h, h) if a == axis else (0, 0) for a in range(vol.ndim)], mode="edge"), 1
        while 2 * width <= length:  # run[i] = max of the padded line's [i, i + width)
            m = run.shape[axis]
            run = np.maximum(run[cut(0, m - width)], run[cut(width, m)])
            width *= 2
        out = np.maximum(run[cut(0, n)], run[cut(length - width, length - width + n)])
    return out if out is not vol else vol.copy()


def local_maxima(volume: np.ndarray, size) -> np.ndarray:
    """Heights of the local maxima of ``volume`` (each the largest of its ``size`` neighbourhood, above 0)."""
    vol = np.asarray(volume, np.float32)
    return vol[(vol == maximum_filter(vol, size)) & (vol > 0)]


def typical_peak(volume: np.ndarray, *, fraction: float = 0.1, size=(3, 5, 5)) -> float:
    """The typical bead peak of a background-free volume: the median height of its local maxima above
    ``fraction`` of the brightest.

    Stays put as bead density and brightness change, where percentiles of the
    voxel values move with the number of beads. 0 when nothing is positive.
    """
    return typical_height(local_maxima(volume, size), fraction=fraction)


def typical_height(heights, *, fraction: float = 0.1) -> float:
    """Median of the peak heights (or detection scores) above ``fraction`` of the largest; 0 when none."""
    h = np.asarray(heights, np.float64)
    if h.size == 0 or h.max() <= 0:
        return 0.0
    return float(np.median(h[h >= fraction * h.max()]))


def noise_threshold(heights: np.ndarray, n_voxels: int, snr: float) -> float:
    """Height above which a local maximum is a bead rather than noise.

    When the maxima are mostly noise, the threshold is their median plus
    ``snr`` robust standard deviations (1.4826 MAD) of their heights: noise
    in restored volumes is heavy-tailed (deconvolution turns it into
    spikes) and so is the noise of 8-bit stacks (hot pixels on a clipped
    background), so thresholds in units of the voxel noise let thousands of
    spikes through; the distribution of the maxima themselves does not.

    The maxima are mostly noise when they are plentiful (more than one per
    400 voxels: smoothed noise gives about one per 250-300 with the default
    neighbourhood, while even a crowded bead volume has fewer than one bead
    per 500 voxels) or when their median is a small fraction (under 5 %) of
    the brightest (a clipped 8-bit background leaves few maxima, but they
    are low and the beads stand far above them). Where the noise maxima's
    tail is heavier than that (hot pixels) and even their top percent lies
    under 5 % of the brightest, the threshold rises to where an exponential
    tail through their 90th and 99th percentiles predicts half a noise
    maximum in the whole volume. Otherwise the volume is
    clean (noise-free, or restored with a black background) and every
    maximum counts (threshold 0).
    """
    h = np.asarray(heights, np.float64)
    if h.size == 0:
        return 0.0
    med = float(np.median(h))
    if h.size <= n_voxels / 400 and med >= 0.05 * float(h.max()):
        return 0.0
    spread = mad_sigma(h, med)
    threshold = med + snr * spread
    q90, q99 = np.percentile(h, [90.0, 99.0])
    if h.size >= 1000 and q99 < 0.05 * float(h.max()):
        # heavy tails, with even the top percent of the maxima far below the beads (noise): extend
        # the exponential tail through the 90th and 99th percentiles to the height that half a
        # noise maximum of the whole volume would exceed
        tail = q99 + (q99 - q90) / np.log(10.0) * np.log(0.01 * h.size / 0.5)
        threshold = max(threshold, float(tail))
    return threshold


@dataclasses.dataclass(frozen=True)
class Maxima:
    """Local maxima of a smoothed volume: voxel coordinates (N, 3), heights above the base level."""

    coords: np.ndarray
    heights: np.ndarray
    base: float
    n_voxels: int


def find_maxima(volume: np.ndarray, spacing: Sequence[float], *, smooth: Sequence[float] | float = 0.7,
                min_distance_um: Sequence[float] | None = None) -> Maxima:
    """The local maxima :func:`detect_beads` chooses from (see its parameters)."""
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    sm = gaussian_filter(vol, smooth, mode="nearest") if np.any(np.asarray(smooth) > 0) else vol
    base, _ = robust_sigma(sm)
    if min_distance_um is None:
        half = np.array([2, 2, 2])
    else:
        half = np.maximum(1, np.round(np.asarray(min_distance_um, float) / np.asarray(spacing)).astype(int))
    size = tuple(2 * h + 1 for h in half)
    peaks = (sm == maximum_filter(sm, size)) & (sm > base)
    return Maxima(coords=np.argwhere(peaks), heights=sm[peaks] - base, base=float(base), n_voxels=int(sm.size))


def detect_beads(volume: np.ndarray, spacing: Sequence[float], *, threshold: float | None = None,
                 snr: float = 6.0, smooth: Sequence[float] | float = 0.7,
                 min_distance_um: Sequence[float] | None = None, measure: bool = True,
                 window_um: Sequence[float] = (1.5, 0.6, 0.6), max_beads: int | None = None,
                 maxima: "Maxima | None" = None) -> np.ndarray:
    """Find beads as local maxima of the smoothed volume.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Preferably background-free (any restoration output).
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    threshold : float, optional
        Minimal smoothed peak height above the background base. Default:
        :func:`noise_threshold` of the local maxima with ``snr``.
    snr : float
        Used when ``threshold`` is None: robust standard deviations of the
        noise maxima heights above their median.
    smooth : float or (sz, sy, sx) floats
        Gaussian smoothing in voxels before the search.
    min_distance_um : (dz, dy, dx) floats, optional
        Half-size of the neighbourhood a maximum must dominate, in
        micrometres. Default: two voxels on each axis.
    measure : bool
        Also measure each bead (:func:`measure_beads`); otherwise only
        positions and scores are filled.
    window_um : (wz, wy, wx) floats
        Measurement window, see :func:`measure_beads`.
    max_beads : int, optional
        Keep only the highest-scoring ones.
    maxima : Maxima, optional
        The volume's local maxima from :func:`find_maxima` (with its
        ``smooth`` and ``min_distance_um``), to detect at several thresholds
        without smoothing and filtering the volume again.

    Returns
    -------
    table : structured ndarray (:data:`DETECTION_DTYPE`), highest score first
        ``score`` is the smoothed peak height above the background base.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    mx = maxima if maxima is not None else find_maxima(vol, spacing, smooth=smooth,
                                                         min_distance_um=min_distance_um)
    coords, scores, base = mx.coords, mx.heights, mx.base
    if threshold is None:
        threshold = noise_threshold(scores, mx.n_voxels, snr)
    keep = scores > threshold
    coords, scores = coords[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    coords, scores = coords[order], scores[order]
    if max_beads is not None:
        coords, scores = coords[:max_beads], scores[:max_beads]
    if measure:
        table = measure_beads(vol, spacing, coords, window_um=window_um)
    else:
        # sub-voxel peaks on the unsmoothed volume: smoothing an undersampled
        # peak biases the log-parabola, the raw samples do not
        table = new_table(len(coords))
        for a, ax in enumerate("zyx"):
            sub = []
            for c in coords:
                line = [slice(None) if k == a else int(c[k]) for k in range(3)]
                p, _ = profile_peak(vol[tuple(line)] - base, int(c[a]))
                sub.append(p)
            table[ax] = sub if len(coords) else []
            table[ax + "_um"] = table[ax] * spacing[a]
    table["score"] = scores
    log.debug("detected %d beads above %.3g", len(table), threshold)
    return table
