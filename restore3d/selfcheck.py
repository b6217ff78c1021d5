"""Does a restoration keep its promise? A check against its own data, without ground truth.

A restoration promises three things (DESIGN.md): beads isotropic at the
target's FWHM, each bead's light kept, and consistency with the data.
Consistency can be tested without ground truth: with ``target = object * G``
(G the target's isotropic Gaussian) and ``data - background = object * PSF +
noise``, the restored volume convolved with the PSF must match the
background-free data convolved with G, both being ``object * PSF * G``.

:func:`check_restoration` measures all three on any restored volume (the
refiner's, FitBeads', ...):

* **roundness**: median axial / lateral FWHM of the restored volume's
  isolated beads, over the same measure on ideal beads (isotropic
  Gaussians of the target FWHM rendered at the same positions): 1 = as round
  as the target, below 1 flattened, above 1 stretched;
* **width**: median lateral FWHM over the ideal's;
* **flux**: median over beads of the light of ``restored * PSF`` over that
  of ``data * G`` in the same window (both blurred alike, so the window
  holds the same share of each): the light the PSF used can explain, so
  with a PSF estimated from the beads (whose box misses far wings) a bead
  is as bright as its visible light, never brighter;
* **consistency**: ``||restored * PSF - data * G|| / ||data * G||`` over the
  bead cores (voxels where either is above half the typical bead, a
  quarter of the PSF's size away from the faces, where light from beads
  outside the volume enters; the data's floor, e.g. clipped noise,
  removed), against the same ratio for pure noise (``noise_floor``).
  Missing, invented, shifted or misshapen beads raise it.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ._checks import as_restoration
from .target import lateral_fwhm, target_blur

__all__ = ["SelfCheck", "check_restoration", "widths_against_ideal", "isolated_beads", "measurement_window_um",
           "LIMITS"]

#: Pass windows: roundness and width (ratios to the ideal), flux (ratio), consistency (residual).
LIMITS = {"roundness": (0.85, 1.2), "width": (0.85, 1.15), "flux": (0.8, 1.25), "consistency": (0.0, 0.45)}


@dataclasses.dataclass
class SelfCheck:
    """Result of :func:`check_restoration` (see the module docstring for each measure)."""

    roundness: float
    width: float
    flux: float
    consistency: float
    noise_floor: float
    n_beads: int
    fwhm_um: float
    failed: list

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def shape_failed(self) -> bool:
        """Whether the beads' shape (roundness or lateral width) is outside its window."""
        return any(f.startswith(("roundness", "width")) for f in self.failed)

    def summary(self) -> str:
        """One line: the measures and what failed."""
        state = "passed" if self.passed else "FAILED (" + "; ".join(self.failed) + ")"
        return (f"self-check {state}: roundness {self.roundness:.2f} x ideal, lateral width "
                f"{self.width:.2f} x target, flux {self.flux:.2f}, consistency {self.consistency:.2f} "
                f"(noise alone {self.noise_floor:.2f}), {self.n_beads} beads")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        d["shape_passed"] = not self.shape_failed
        return d


def _fft_convolve(volume, psf):
    """``volume * psf`` of the volume's shape (the PSF's centre on each voxel), zero outside, float32.

    A circular convolution on a grid of ``n + k // 2`` per axis (the PSF's
    centre at the origin) equals the zero-padded one on the volume: what
    wraps around lands only beyond the volume's end (a grid 30 % smaller
    than the full ``n + k - 1`` one at 512^2 with a 31 x 65 x 65 PSF).
    """
    from scipy import fft as sfft
    fast = [sfft.next_fast_len(n + k // 2, real=True) for n, k in zip(volume.shape, psf.shape)]
    h = np.zeros(fast, np.float32)
    idx = [(np.arange(k) - k // 2) % g for k, g in zip(psf.shape, fast)]
    h[np.ix_(*idx)] = psf
    otf = sfft.rfftn(h, workers=-1)
    del h
    spectrum = sfft.rfftn(np.asarray(volume, np.float32), fast, workers=-1)
    spectrum *= otf
    del otf
    out = sfft.irfftn(spectrum, fast, workers=-1, overwrite_x=True)
    del spectrum  # before the crop's copy
    return np.ascontiguousarray(out[tuple(slice(0, n) for n in volume.shape)], dtype=np.float32)


def check_restoration(restored: np.ndarray, data: np.ndarray, psf: np.ndarray, spacing: Sequence[float], *,
                      fwhm_um: float | None = None, noise_sigma: float | None = None,
                      limits: dict | None = None, max_beads: int = 300) -> SelfCheck:
    """Hold a restored volume to the promise of the restoration target, using only its own data.

    Parameters
    ----------
    restored : (Z, Y, X) ndarray
        The restored volume.
    data : (Z, Y, X) ndarray
        The background-free data it was restored from (the output of
        :class:`restore3d.SubtractBackground`).
    psf : (z, y, x) ndarray
        The PSF the restoration used, same spacing.
    spacing : (dz, dy, dx) floats, micrometres
    fwhm_um : float, optional
        The target's FWHM; default the PSF's lateral FWHM.
    noise_sigma : float, optional
        Noise standard deviation of ``data`` for the consistency's noise
        floor; default measured (:func:`restore3d.background.estimate_noise`).
    limits : dict, optional
        Pass windows overriding :data:`LIMITS`.
    max_beads : int
        Beads measured at most (the brightest).

    Returns
    -------
    SelfCheck
        ``failed`` lists each measure outside its window with what it means.
    """
    from .background import estimate_noise
    from .detect import measure_beads
    res, dat, psf, spacing = as_restoration(restored, data, psf, spacing)
    lim = {**LIMITS, **(limits or {})}
    fw = lateral_fwhm(psf, spacing) if fwhm_um is None else float(fwhm_um)
    window = measurement_window_um(fw, spacing)
    beads, iso, m, ideal = widths_against_ideal(res, spacing, fw, max_beads=max_beads)
    roundness = width = float("nan")
    if len(iso):
        def elong(t):
            lat = 0.5 * (t["fwhm_y"] + t["fwhm_x"])  # NaN where either is unmeasurable
            return t["fwhm_z"] / lat, lat

        e, lat = elong(m)
        e_ideal, lat_ideal = elong(ideal)
        roundness = _median(e / e_ideal)
        width = _median(lat / lat_ideal)

    forward = _fft_convolve(res, psf)
    smoothed = target_blur(dat, spacing, fw)
    smoothed -= _floor_of(smoothed)  # the data's floor (clipped noise, residual glow)
    level = 0.5 * _median(_peaks_at(smoothed, beads))
    mask = (forward > level) | (smoothed > level) if np.isfinite(level) and level > 0 else np.zeros(res.shape, bool)
    # near the faces the data holds light of beads outside the volume and both sides feel their edge rule
    for axis, (n, p) in enumerate(zip(res.shape, psf.shape)):
        b = min(p // 4, n // 3)
        if b:
            mask[(slice(None),) * axis + (slice(0, b),)] = False
            mask[(slice(None),) * axis + (slice(n - b, n),)] = False
    flux = consistency = floor = float("nan")
    if mask.any():
        diff = forward[mask] - smoothed[mask]
        ref = float(np.linalg.norm(smoothed[mask]))
        consistency = float(np.linalg.norm(diff)) / ref if ref > 0 else float("nan")
        sigma = estimate_noise(dat) if noise_sigma is None else float(noise_sigma)
        g = target_blur(_delta(res.shape), spacing, fw)
        floor = sigma * float(np.sqrt((g ** 2).sum() * mask.sum())) / ref if ref > 0 else float("nan")
    if len(iso):
        a = measure_beads(forward, spacing, iso, window_um=window)["intensity"]
        b = measure_beads(smoothed, spacing, iso, window_um=window)["intensity"]
        ok = b > 0
        flux = _median(a[ok] / b[ok])

    failed = []
    for name, value, what in (("roundness", roundness, "beads flattened (<) or stretched (>)"),
                              ("width", width, "beads narrower or wider than the target across"),
                              ("flux", flux, "bead light not kept"),
                              ("consistency", consistency, "restored * PSF does not match the data")):
        lo, hi = lim[name]
        if np.isfinite(value) and not lo <= value <= hi:
            failed.append(f"{name} {value:.2f} outside [{lo}, {hi}]: {what}")
    return SelfCheck(roundness=roundness, width=width, flux=flux, consistency=consistency, noise_floor=floor,
                     n_beads=len(iso), fwhm_um=fw, failed=failed)


def measurement_window_um(fwhm_um, spacing):
    """Half-size (um per axis) of the window a bead's widths are measured in."""
    return tuple(max(3 * fwhm_um, 3 * d) for d in spacing)


def isolated_beads(volume: np.ndarray, spacing: Sequence[float], fwhm_um: float, *, max_beads: int = 300):
    """A restored volume's beads and the isolated ones among them (bead tables).

    Beads are those scoring at least a tenth of the typical bead
    (:func:`restore3d.assess.beads_above`, maxima at least half a FWHM
    apart), the brightest ``max_beads``; isolated means no other within 6
    FWHM.
    """
    from .assess import beads_above
    from .metrics import isolated
    beads, _ = beads_above(volume, spacing, neighbourhood_um=tuple(0.5 * fwhm_um for _ in range(3)))
    beads = beads[:max_beads]
    if not len(beads):
        return beads, beads
    return beads, beads[isolated(beads, spacing=spacing, radius_um=tuple(6 * fwhm_um for _ in range(3)))]


def widths_against_ideal(volume: np.ndarray, spacing: Sequence[float], fwhm_um: float, *,
                         max_beads: int = 300):
    """The isolated beads of a restored volume measured beside ideal ones at the same positions.

    Beads as :func:`isolated_beads`. The ideal beads are isotropic Gaussians
    of ``fwhm_um`` rendered on the same grid at the same positions, so a
    ratio of the two measures cancels the sampling's own effect on a width.

    Returns
    -------
    beads, isolated_beads : bead tables
    measured, ideal : :func:`restore3d.detect.measure_beads` tables of the isolated beads (widths in um)
        (None when no bead is isolated).
    """
    from .assess import ideal_volume
    from .detect import measure_beads
    beads, iso = isolated_beads(volume, spacing, fwhm_um, max_beads=max_beads)
    if not len(iso):
        return beads, iso, None, None
    window = measurement_window_um(fwhm_um, spacing)
    measured = measure_beads(volume, spacing, iso, window_um=window)
    ideal = measure_beads(ideal_volume(iso, volume.shape, spacing, fwhm_um), spacing, iso, window_um=window)
    return beads, iso, measured, ideal


def _peaks_at(volume, beads):
    if len(beads) == 0:
        return np.zeros(0)
    idx = np.clip(np.round(np.stack([beads["z"], beads["y"], beads["x"]], 1)).astype(int), 0,
                  np.asarray(volume.shape) - 1)
    return volume[idx[:, 0], idx[:, 1], idx[:, 2]]


#: Voxels the floor's median is taken over at most (a regular subsample of larger volumes).
FLOOR_SAMPLES = 2 ** 22


def _floor_of(smoothed):
    """The median of a smooth volume, over a regular subsample of at most :data:`FLOOR_SAMPLES` voxels
    (the median otherwise sorts a copy of the whole volume)."""
    flat = smoothed.reshape(-1)
    return float(np.median(flat[::-(-flat.size // FLOOR_SAMPLES)]))


def _delta(shape):
    d = np.zeros(tuple(min(s, 33) for s in shape), np.float32)
    d[tuple(n // 2 for n in d.shape)] = 1.0
    return d


def _median(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")
