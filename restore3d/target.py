"""The restoration target of DESIGN.md: every bead an isotropic Gaussian of the PSF's lateral FWHM.

"Remove the axial elongation" means: make the effective PSF as narrow along
z as across x/y. The target renders each bead as an isotropic Gaussian
whose FWHM (micrometres) is the PSF's lateral FWHM, with zero background and
the bead's flux. Simulations score against it, the refiner renders it, and
the self-check holds restorations to it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ._checks import as_spacing
from ._filters import gaussian_filter
from ._profiles import FWHM_PER_SIGMA

__all__ = ["render_target", "target_sigma", "target_blur", "lateral_fwhm", "TARGET_TRUNCATE"]

#: Support of the target's Gaussian kernel in sigmas.
TARGET_TRUNCATE = 4.0


def lateral_fwhm(psf: np.ndarray, spacing: Sequence[float]) -> float:
    """The PSF's lateral FWHM in micrometres (mean of y and x): the target's FWHM."""
    from .psf import fwhm
    return float(np.nanmean(fwhm(psf, spacing)[1:]))


def target_sigma(spacing: Sequence[float], fwhm_um: float) -> np.ndarray:
    """Per-axis sigma in voxels (z, y, x) of the isotropic Gaussian of FWHM ``fwhm_um`` micrometres."""
    if not np.isfinite(fwhm_um) or fwhm_um <= 0:
        raise ValueError(f"target FWHM must be a positive number of micrometres, got {fwhm_um!r}")
    return fwhm_um / FWHM_PER_SIGMA / np.asarray(spacing, float)


def target_blur(volume: np.ndarray, spacing: Sequence[float], fwhm_um: float) -> np.ndarray:
    """Convolve a volume with the target's isotropic Gaussian of ``fwhm_um`` micrometres FWHM (mirrored edges).

    A bead object rendered this way is the target's bead; the kernel sums to
    1, so flux is kept.
    """
    return gaussian_filter(volume, target_sigma(spacing, fwhm_um), mode="reflect", truncate=TARGET_TRUNCATE)


def render_target(truth: np.ndarray, shape: Sequence[int], spacing: Sequence[float], *,
                  fwhm_um: float, bead_diameter: float = 0.0) -> np.ndarray:
    """Render beads as isotropic Gaussian blobs: the restoration target.

    Each bead becomes a Gaussian of ``fwhm_um`` micrometres FWHM on every
    axis (its variance widened by the ball's ``(d/2)^2 / 5``), point-sampled
    at voxel centres and normalised so the samples of every bead sum to its
    flux (exact even when z is undersampled). Parts outside the volume are
    cut.

    Parameters
    ----------
    truth : structured ndarray
        Bead table with at least the fields ``z, y, x`` (voxels) and ``flux``.
    shape : (Z, Y, X) ints
    spacing : (dz, dy, dx) floats, micrometres
    fwhm_um : float
        FWHM of the isotropic Gaussian in micrometres.
    bead_diameter : float
        Bead diameter in micrometres.

    Returns
    -------
    target : (Z, Y, X) float32 ndarray
    """
    spacing = as_spacing(spacing)
    if not np.isfinite(fwhm_um) or fwhm_um <= 0:
        raise ValueError(f"fwhm_um must be a positive number of micrometres, got {fwhm_um!r}")
    out = np.zeros(tuple(int(s) for s in shape), np.float32)
    sigma_um = np.sqrt((fwhm_um / FWHM_PER_SIGMA) ** 2 + (bead_diameter / 2) ** 2 / 5)
    sig = sigma_um / np.asarray(spacing)
    half = np.ceil(4 * sig).astype(int) + 1
    for row in truth:
        c = np.array([row["z"], row["y"], row["x"]])
        base = np.round(c).astype(int)
        profiles, slices = [], []
        for a in range(3):
            idx = np.arange(base[a] - half[a], base[a] + half[a] + 1)
            g = np.exp(-0.5 * ((idx - c[a]) / sig[a]) ** 2)
            g /= g.sum()
            keep = (idx >= 0) & (idx < out.shape[a])
            if not keep.any():
                break
            profiles.append(g[keep])
            slices.append(slice(idx[keep][0], idx[keep][-1] + 1))
        else:
            out[tuple(slices)] += (row["flux"] * profiles[0][:, None, None]
                                   * profiles[1][None, :, None] * profiles[2][None, None, :])
    return out
