"""The rendered kernel measured on the volume: beads at the target's FWHM along every axis.

A rendering refiner (:mod:`restore3d.refiner.transforms`) predicts each
bead's compact object and renders the target's isotropic Gaussian after it.
The object is never a point: what width it keeps (a bead's own diameter,
what the network could not make compact, the grids' sampling) adds to the
kernel's, per axis, so the rendered beads come out wider than the target and
wider along the axis the network sharpened least (measured on real stacks:
1.2x the raw's lateral width, 1.17x the ideal's elongation).

Variances of convolved blurs add, so the object's own variance along each
axis is what the rendered beads have beyond the kernel's. It is measured on
the volume's own isolated beads, beside ideal beads rendered at the same
positions on the same grid (which cancels the sampling's effect on a width):
from half-maximum widths along axes sampled at two or more voxels per FWHM,
from profile variances along coarser ones (where a half-maximum on one or
two planes moves with the bead's position between them). The kernel's
variance is lowered by it, ``kernel^2 = target^2 - object^2`` per axis
within ``[(floor * target)^2, target^2]``, in two rounds. Nothing is
sharpened: the kernel is still a blur, only a narrower one, and each bead's
light is kept.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .._filters import gaussian_filter
from ..target import FWHM_PER_SIGMA, TARGET_TRUNCATE

__all__ = ["render", "calibrate_kernel", "marginal_variances"]


def render(obj: np.ndarray, spacing: Sequence[float], sigma_um) -> np.ndarray:
    """The object blurred by a Gaussian of ``sigma_um`` (z, y, x micrometres), mirrored edges, float32."""
    sigma = np.asarray(sigma_um, float) / np.asarray(spacing, float)
    return gaussian_filter(obj, sigma, mode="reflect", truncate=TARGET_TRUNCATE)


def marginal_variances(volume: np.ndarray, spacing: Sequence[float], positions, half_um) -> np.ndarray:
    """Variance (um^2) of each bead's light along z, y and x: (N, 3), NaN where unmeasurable.

    Each bead's window (``half_um`` per axis around its brightest voxel
    within one voxel of ``positions``), its local background (median of the
    window's faces) removed, is summed onto each axis and the second moment
    of that profile taken. Variances of blurs add under convolution, and a
    Gaussian sampled at 1.2 voxels per FWHM or finer has the discrete variance
    of the continuous one to within 1.5 % (5 % at one voxel per FWHM), so
    the measure holds on coarse axes where a half-maximum width does not
    (there it moves with where the bead sits between planes).
    """
    from ..detect import positions_of
    vol = np.asarray(volume, np.float32)
    sp = np.asarray(spacing, float)
    half = np.maximum(2, np.round(np.asarray(half_um, float) / sp).astype(int))
    out = np.full((len(positions), 3), np.nan)
    for i, p in enumerate(positions_of(positions)):
        c = np.clip(np.round(p).astype(int), 0, np.asarray(vol.shape) - 1)
        near = vol[tuple(slice(max(0, ci - 1), ci + 2) for ci in c)]
        c = np.maximum(c - 1, 0) + np.unravel_index(int(np.argmax(near)), near.shape)
        sl = tuple(slice(max(0, ci - h), min(n, ci + h + 1)) for ci, h, n in zip(c, half, vol.shape))
        win = vol[sl].astype(np.float64)
        if min(win.shape) < 3:
            continue
        faces = np.concatenate([win[[0, -1]].ravel(), win[:, [0, -1]].ravel(), win[:, :, [0, -1]].ravel()])
        win -= np.median(faces)
        for a in range(3):
            prof = win.sum(axis=tuple(b for b in range(3) if b != a))
            total = prof.sum()
            if total <= 0:
                continue
            x = np.arange(prof.size) * sp[a]
            mean = (x * prof).sum() / total
            out[i, a] = ((x - mean) ** 2 * prof).sum() / total
    return out


def calibrate_kernel(render_with, spacing: Sequence[float], fwhm_um: float, sigma_um, *,
                     rounds: int = 2, min_beads: int = 3, floor: float = 0.25, fine_samples: float = 2.0,
                     max_beads: int = 200):
    """The kernel (sigma per axis, um) that renders a volume's beads at the target's FWHM.

    Parameters
    ----------
    render_with : callable
        ``render_with(sigma_um)``: the network's object rendered with a
        kernel of ``sigma_um`` (z, y, x micrometres), on the volume's grid.
    spacing : (dz, dy, dx) floats, micrometres
        The volume's grid.
    fwhm_um : float
        The target's FWHM (the PSF's lateral FWHM).
    sigma_um : (3,) floats
        The kernel rendered without measurement (the starting point).
    rounds : int
        Measure-and-correct rounds (the second takes up what the first's
        non-Gaussian profiles left), on the isolated beads found in the
        first.
    min_beads : int
        Fewer isolated beads than this: the starting kernel is kept.
    floor : float
        The kernel's sigma stays at least ``floor`` x the target's.
    fine_samples : float
        Axes sampled at least this many voxels per target FWHM are measured
        by half-maximum widths (what users and the self-check measure), the
        coarser ones by profile variances (:func:`marginal_variances`).

    Returns
    -------
    sigma_um : (3,) float ndarray
    report : dict
        ``calibrated`` (bool), ``n_beads``, ``kernel_fwhm_um`` (z, y, x),
        ``excess_fwhm_um`` (z, y, x: what the rendered beads had beyond the
        ideal's in the last round, signed, from the variances),
        ``target_fwhm_um``.
    """
    from ..assess import ideal_volume
    from ..detect import measure_beads
    from ..selfcheck import isolated_beads, measurement_window_um
    target = fwhm_um / FWHM_PER_SIGMA
    lo, hi = (floor * target) ** 2, target ** 2
    half = tuple(3.0 * fwhm_um for _ in range(3))
    sigma = np.asarray(sigma_um, float).copy()
    fine = fwhm_um / np.asarray(spacing, float) >= fine_samples
    report = {"calibrated": False, "n_beads": 0, "target_fwhm_um": float(fwhm_um),
              "half_maximum_axes": "".join(a for a, f in zip("zyx", fine) if f)}
    iso = ideal_var = ideal = None
    window = measurement_window_um(fwhm_um, spacing)
    for _ in range(max(1, int(rounds))):
        rendered = None  # the last round's volume goes before the next is made
        rendered = render_with(sigma)
        if iso is None:  # the beads are found once: a narrower kernel moves no maximum
            _, iso = isolated_beads(rendered, spacing, fwhm_um, max_beads=max_beads)
            report["n_beads"] = int(len(iso))
            if len(iso) < min_beads:
                break
            # the ideal beads' widths do not change with the kernel: measured once, their volume freed
            ideal_vol = ideal_volume(iso, rendered.shape, spacing, fwhm_um)
            ideal_var = None if np.all(fine) else marginal_variances(ideal_vol, spacing, iso, half)
            ideal = measure_beads(ideal_vol, spacing, iso, window_um=window) if np.any(fine) else None
            del ideal_vol
        excess = np.zeros(3)
        if not np.all(fine):  # profile variances where too coarse for a half-maximum
            diff = marginal_variances(rendered, spacing, iso, half) - ideal_var
            excess = np.array([np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in diff.T])
        if np.any(fine):  # half-maximum widths where sampled finely enough: the width users measure
            got = measure_beads(rendered, spacing, iso, window_um=window)
            for a, ax in enumerate("zyx"):
                if fine[a]:
                    diff = got[f"fwhm_{ax}"] ** 2 - ideal[f"fwhm_{ax}"] ** 2
                    diff = diff[np.isfinite(diff)]  # no measurable bead: NaN, the kernel as trained
                    excess[a] = np.median(diff) / FWHM_PER_SIGMA ** 2 if diff.size else np.nan
        if not np.all(np.isfinite(excess)):
            break
        report["excess_fwhm_um"] = [float(np.sign(v) * FWHM_PER_SIGMA * np.sqrt(abs(v))) for v in excess]
        # what the rendered beads have beyond the ideal's variance is the object's own, beyond a point's
        sigma = np.sqrt(np.clip(sigma ** 2 - excess, lo, hi))
        report["calibrated"] = True
    report["kernel_fwhm_um"] = [float(v) for v in FWHM_PER_SIGMA * sigma]
    return sigma, report
