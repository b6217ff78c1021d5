"""PSF estimation from the beads in the user's own volume.

Isolated, unsaturated beads are detected, cut out with sub-voxel
registration, freed of their local background, normalised and averaged
robustly; the average is centred on its peak and normalised to unit sum.
Optionally a model (anisotropic Gaussian or the widefield model) is fitted
to the average to denoise its tails.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Sequence

import numpy as np
from scipy import ndimage, optimize

from ._checks import as_spacing, as_volume
from ._profiles import profile_peak
from ._stats import mad_sigma
from .detect import detect_beads, find_maxima
from .psf import fwhm, gaussian_psf, widefield_psf

__all__ = ["estimate_psf", "PSFEstimate", "normalized_cross_correlation", "MODELS"]

log = logging.getLogger(__name__)

MODELS = (None, "gaussian", "widefield")


@dataclasses.dataclass
class PSFEstimate:
    """Result of :func:`estimate_psf`.

    Attributes
    ----------
    psf : (z, y, x) float32 ndarray
        Unit sum, peak on the central voxel.
    fwhm_um : (3,) ndarray
        FWHM along (z, y, x) in micrometres.
    n_beads : int
        Beads averaged.
    n_candidates : int
        Beads detected before rejection.
    rejected : dict
        Number of candidates rejected per reason (``"neighbour"``,
        ``"edge"``, ``"saturated"``, ``"outlier"``).
    beads : structured ndarray
        Detections of the beads used.
    model_fit : dict or None
        Fitted model parameters when a model was requested.
    """

    psf: np.ndarray
    fwhm_um: np.ndarray
    n_beads: int
    n_candidates: int
    rejected: dict
    beads: np.ndarray
    model_fit: dict | None = None

    def summary(self) -> str:
        z, y, x = self.fwhm_um
        return (f"PSF from {self.n_beads} beads ({self.n_candidates} candidates): "
                f"FWHM z {z:.3f} um, y {y:.3f} um, x {x:.3f} um")


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two PSFs over their common centred box (1 = same shape)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    shape = [min(p, q) for p, q in zip(a.shape, b.shape)]

    def crop(v):
        return v[tuple(slice(n // 2 - m // 2, n // 2 - m // 2 + m) for n, m in zip(v.shape, shape))]

    a, b = crop(a).ravel(), crop(b).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _extract(prefiltered, centre, half, order=3, *, offset=(0, 0, 0), shape=None):
    """Box of half-size ``half`` centred at a sub-voxel position (NaN outside the volume).

    ``prefiltered`` holds the spline coefficients of the volume, or of a
    block of it starting at ``offset`` (``shape``: the whole volume's).
    """
    grids = [np.arange(-h, h + 1) + c for h, c in zip(half, centre)]
    coords = np.meshgrid(*grids, indexing="ij")
    shape = prefiltered.shape if shape is None else shape
    outside = np.zeros(coords[0].shape, bool)
    for a, c in enumerate(coords):
        outside |= (c < -0.01) | (c > shape[a] - 0.99)
    local = [c - o for c, o in zip(coords, offset)]
    vals = ndimage.map_coordinates(prefiltered, local, order=order, mode="nearest", prefilter=False)
    vals = vals.astype(np.float64)
    vals[outside] = np.nan
    return vals


#: Voxels of context around a bead's box for its spline coefficients: the cubic B-spline prefilter's
#: influence falls by 0.268 per voxel, to 3e-6 after 10, so a block gives the whole volume's values.
_SPLINE_MARGIN = 10


class _Splines:
    """Cubic spline coefficients of the blocks around beads, computed once per bead (not the whole volume)."""

    def __init__(self, vol, half):
        self.vol, self.half = vol, np.asarray(half)
        self.blocks = {}

    def box(self, key, centre):
        if key not in self.blocks:
            c = np.floor(centre).astype(int)
            lo = np.maximum(c - self.half - _SPLINE_MARGIN - 2, 0)
            hi = np.minimum(c + self.half + _SPLINE_MARGIN + 3, self.vol.shape)
            block = self.vol[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float64)
            self.blocks[key] = (ndimage.spline_filter(block, order=3, mode="nearest"), lo)
        coef, lo = self.blocks[key]
        return _extract(coef, centre, self.half, offset=lo, shape=self.vol.shape)


def _faces(box):
    f = np.concatenate([box[[0, -1]].ravel(), box[:, [0, -1]].ravel(), box[:, :, [0, -1]].ravel()])
    return f[np.isfinite(f)]


def _core_mask(half, core_half):
    grids = np.meshgrid(*[np.arange(-h, h + 1) / max(c, 1e-9) for h, c in zip(half, core_half)],
                        indexing="ij")
    return sum(g ** 2 for g in grids) <= 1.0


def _register(box, template, grad):
    """Gauss-Newton shift (voxels) and scale of ``box`` onto ``template``, on finite voxels."""
    ok = np.isfinite(box)
    b = box[ok]
    t = template[ok]
    g = [gi[ok] for gi in grad]
    s = float(np.dot(b, t) / max(np.dot(t, t), 1e-30))
    # b ~ s (t - g . d)  ->  linear in (s, s d)
    A = np.stack([t] + [-gi for gi in g], axis=1)
    sol, *_ = np.linalg.lstsq(A, b, rcond=None)
    s = sol[0]
    if s <= 0:
        return np.zeros(3), 0.0
    return sol[1:] / s, s


def _nan_percentiles(stack, qs):
    """``np.nanpercentile(stack, q, axis=0)`` for each q (linear interpolation), vectorised.

    NumPy's nanpercentile falls back to one Python call per position when
    NaNs are present (26 s for the boxes of 24 beads of a 33 x 49 x 49 PSF);
    sorting once with the NaNs last and interpolating between the ranks
    gives the same values. Positions with no finite value are NaN.
    """
    ordered = np.sort(stack, axis=0)
    n = np.sum(np.isfinite(stack), axis=0)
    out = []
    for q in qs:
        pos = q / 100.0 * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        v_lo = np.take_along_axis(ordered, lo[None], axis=0)[0]
        v_hi = np.take_along_axis(ordered, hi[None], axis=0)[0]
        val = v_lo + (v_hi - v_lo) * (pos - lo)
        out.append(np.where(n > 0, val, np.nan))
    return out


def _usable(vol, cands, everyone, pos, half, core_half, neighbour_fraction, saturation, rejected):
    """Which candidates make good PSF samples: no brighter neighbour in the box, core inside, unsaturated.

    Counts each rejection by reason in ``rejected``.
    """
    n_cand = len(cands)
    keep = np.ones(n_cand, bool)
    all_pos = np.stack([everyone["z"], everyone["y"], everyone["x"]], 1) if len(everyone) else np.zeros((0, 3))
    vmax = float(vol.max())
    for i in range(n_cand):
        if len(all_pos):
            # neighbours: any detection brighter than a fraction of the candidate inside its box
            d = np.abs(all_pos - pos[i])
            inside = np.all(d <= half + 0.5, axis=1) & np.any(d > 1.0, axis=1)
            if np.any(everyone["score"][inside] > neighbour_fraction * cands["score"][i]):
                keep[i] = False
                rejected["neighbour"] += 1
                continue
        # the core must lie in the volume
        if np.any(pos[i] - core_half < -0.5) or np.any(pos[i] + core_half > np.asarray(vol.shape) - 0.5):
            keep[i] = False
            rejected["edge"] += 1
            continue
        c = np.round(pos[i]).astype(int)
        peak_raw = vol[tuple(c)]
        if saturation is not None:
            saturated = peak_raw >= saturation
        else:  # a plateau at the volume's maximum
            sl = tuple(slice(max(0, ci - 1), ci + 2) for ci in c)
            saturated = peak_raw >= vmax and np.count_nonzero(vol[sl] >= vmax * (1 - 1e-6)) > 1
        if saturated:
            keep[i] = False
            rejected["saturated"] += 1
    return keep


def estimate_psf(volume: np.ndarray, spacing: Sequence[float], *,
                 half_size_um: Sequence[float] | None = None, snr: float = 8.0,
                 local_background: str = "median",
                 min_beads: int = 1, max_beads: int = 300, neighbour_fraction: float = 0.05,
                 saturation: float | None = None, refine: int = 2,
                 model: str | None = None, model_params: dict | None = None,
                 return_info: bool = False):
    """Estimate the PSF from the isolated beads of a volume.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Raw or background-subtracted bead volume.
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    half_size_um : (hz, hy, hx) floats, optional
        Half-size of the PSF box in micrometres. Default: 2.5 axial FWHM
        along z and 4 lateral FWHM across, from the brightest beads' widths
        (capped so the box fits the volume).
    snr : float
        Detection threshold of candidate beads, in noise standard deviations.
    min_beads : int
        Fewer usable beads than this raises ``ValueError``.
    max_beads : int
        Use at most this many (the brightest isolated ones).
    neighbour_fraction : float
        A candidate is rejected when another detection brighter than this
        fraction of it lies inside its box.
    saturation : float, optional
        Raw value at which the camera saturates; beads reaching it are
        rejected. Default: beads whose peak is a plateau at the volume's
        maximum are rejected.
    local_background : {"median", "low", "none"}
        Level subtracted from each bead's box: the median of the box faces
        (default: also removes the positive floor that clipped noise leaves
        after background subtraction, measured to matter most), their 10th
        percentile (keeps more of a widefield PSF's own wings, for
        noise-free data), or nothing.
    refine : int
        Rounds of sub-voxel re-registration of every bead onto the average.
    model : {None, "gaussian", "widefield"}
        Fit a model to the average and return the model (smooth tails).
    model_params : dict, optional
        Fixed parameters of the widefield model (``wavelength``,
        ``n_immersion``, ``n_sample``); NA and depth are fitted.
    return_info : bool
        Return a :class:`PSFEstimate` instead of the array.

    Returns
    -------
    psf : (z, y, x) float32 ndarray, or PSFEstimate
        Odd shape, peak on the central voxel, unit sum.

    Raises
    ------
    ValueError
        No usable bead (none detected, all touching a neighbour, the edge
        or saturation): pass a PSF or a PSF model instead.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    if local_background not in ("low", "median", "none"):
        raise ValueError(f"local_background must be 'low', 'median' or 'none', got {local_background!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    maxima = find_maxima(vol, spacing)  # once, for both thresholds
    cands = detect_beads(vol, spacing, snr=snr, measure=True, maxima=maxima)
    # possible neighbours: everything clearly above the noise, dimmer than the candidates too
    everyone = detect_beads(vol, spacing, snr=min(4.0, snr), measure=False, maxima=maxima)
    n_cand = len(cands)
    rejected = {"neighbour": 0, "edge": 0, "saturated": 0, "outlier": 0, "unmeasurable": 0}

    def fail(reason):
        raise ValueError(
            f"no usable bead to estimate the PSF from ({reason}; {n_cand} candidates above "
            f"noise level {snr:g}, rejected: {rejected}); pass a measured PSF (psf=..., --psf PSF.tif) or "
            "use a PSF model (EstimatePSF(fallback={'model': 'widefield', 'na': ..., 'wavelength': ...}))")

    if n_cand == 0:
        fail("no bead detected")
    half, core_half = _box_geometry(cands, spacing, vol.shape, half_size_um)
    if half is None:
        rejected["unmeasurable"] = n_cand
        fail("no bead with a measurable width")
    pos = np.stack([cands["z"], cands["y"], cands["x"]], 1)
    keep = _usable(vol, cands, everyone, pos, half, core_half, neighbour_fraction, saturation, rejected)
    idx = np.nonzero(keep)[0]
    idx = idx[np.argsort(-cands["score"][idx])][:max_beads]
    if len(idx) < max(1, min_beads):
        fail(f"{len(idx)} usable beads, {min_beads} needed")

    stack = _BeadStack(_Splines(vol, half), _core_mask(half, core_half), local_background)
    centres = pos[idx].copy()
    boxes, fluxes = stack.gather(centres, idx)
    good = fluxes > 0
    boxes, fluxes, centres, idx = boxes[good], fluxes[good], centres[good], idx[good]
    if len(idx) == 0:
        fail("no bead with positive flux after background removal")
    avg = _average(boxes, fluxes)
    for _ in range(int(refine)):
        avg, boxes, fluxes, centres, idx = _reregister(stack, avg, boxes, centres, idx, rejected)
    psf = _centre_on_peak(avg, half)
    fit = None
    if model is not None:
        psf, fit = _fit_model(psf, spacing, model, model_params or {})
    widths_um = fwhm(psf, spacing)
    used = cands[idx]
    result = PSFEstimate(psf=psf, fwhm_um=widths_um, n_beads=len(idx), n_candidates=n_cand,
                         rejected=rejected, beads=used, model_fit=fit)
    log.info("%s", result.summary())
    return result if return_info else psf


def _box_geometry(cands, spacing, shape, half_size_um):
    """Half-size of the PSF box and of its core (voxels) from the brightest beads' widths.

    The box reaches 2.5 axial and 4 lateral FWHM unless ``half_size_um`` is
    given (capped so it fits the volume); the core, +-0.75 FWHM around the
    centre, is where each bead's flux is measured. (None, None) when no
    candidate has a measurable width.
    """
    widths = np.stack([cands["fwhm_z"], cands["fwhm_y"], cands["fwhm_x"]], 1)
    good_w = np.all(np.isfinite(widths), axis=1)
    if not good_w.any():
        return None, None
    top = np.argsort(-cands["peak"] * good_w)[: max(5, min(20, good_w.sum()))]
    top = top[good_w[top]]
    w_med = np.median(widths[top], axis=0)  # um
    if half_size_um is None:
        lat = float(np.mean(w_med[1:]))
        half_size_um = (2.5 * w_med[0], 4.0 * lat, 4.0 * lat)
    half = np.maximum(1, np.round(np.asarray(half_size_um, float) / np.asarray(spacing)).astype(int))
    half = np.minimum(half, (np.asarray(shape) - 1) // 2)
    core_half = np.maximum(1.0, 0.75 * w_med / np.asarray(spacing))
    return half, core_half


class _BeadStack:
    """Cuts beads' boxes at sub-voxel centres, each minus its local level and divided by its core flux."""

    def __init__(self, splines, core, local_background):
        self.splines, self.core, self.local_background = splines, core, local_background

    def gather(self, centres, keys):
        """(boxes normalised to unit core flux, fluxes); a box without positive flux is NaN."""
        boxes, fluxes = [], []
        for c, key in zip(centres, keys):
            box = self.splines.box(key, c)
            if self.local_background != "none":
                faces = _faces(box)
                level = (np.median(faces) if self.local_background == "median" else
                         np.percentile(faces, 10)) if faces.size else 0.0
                box = box - level
            flux = np.nansum(box[self.core])
            boxes.append(box / flux if flux > 0 else box * np.nan)
            fluxes.append(flux)
        return np.stack(boxes), np.asarray(fluxes)


def _average(boxes, fluxes):
    """Flux-weighted mean of the boxes, winsorised per voxel (10-90 %) from five beads on."""
    w = np.clip(fluxes, 0, None)[:, None, None, None] * np.isfinite(boxes)
    vals = np.nan_to_num(boxes)
    if len(boxes) >= 5:  # robust to a bead with a hidden neighbour
        lo, hi = _nan_percentiles(boxes, (10.0, 90.0))
        vals = np.clip(vals, np.nan_to_num(lo), np.nan_to_num(hi))
    wsum = w.sum(0)
    return np.where(wsum > 0, (vals * w).sum(0) / np.maximum(wsum, 1e-30), 0.0)


def _reregister(stack, avg, boxes, centres, idx, rejected):
    """One round: shift every bead onto the average (sub-voxel), drop outliers, average again."""
    grad = np.gradient(avg)
    shifts = np.clip(np.asarray([_register(box, avg, grad)[0] for box in boxes]), -1.0, 1.0)
    centres = centres + shifts
    boxes, fluxes = stack.gather(centres, idx)
    # beads far from the consensus shape are outliers (a hidden neighbour, a doublet)
    with warnings.catch_warnings():  # a box with no positive flux is all-NaN: its residual is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        resid = np.array([np.nanmean((b - avg) ** 2) for b in boxes])
    ok = np.isfinite(resid) & (fluxes > 0)  # a bead shifted onto nothing is dropped
    if ok.sum() >= 5:
        med = np.median(resid[ok])
        mad = mad_sigma(resid[ok], med) + 1e-30
        ok &= resid <= med + 5 * mad
    if ok.any() and not ok.all():
        rejected["outlier"] += int((~ok).sum())
        boxes, fluxes, centres, idx = boxes[ok], fluxes[ok], centres[ok], idx[ok]
    return _average(boxes, fluxes), boxes, fluxes, centres, idx


def _centre_on_peak(avg, half):
    """The average moved so that its peak (sub-voxel) sits on the box centre, clipped at 0, unit sum."""
    peak = np.unravel_index(int(np.argmax(avg)), avg.shape)
    lines = (avg[:, peak[1], peak[2]], avg[peak[0], :, peak[2]], avg[peak[0], peak[1], :])
    sub = [profile_peak(line, p)[0] for line, p in zip(lines, peak)]
    shift = np.asarray(half) - np.asarray(sub)
    avg = ndimage.shift(avg, shift, order=3, mode="constant", cval=0.0)
    avg = np.clip(avg, 0, None)
    return (avg / avg.sum()).astype(np.float32)


def _scaled_residual(model, target):
    """Residual of ``a * model - target`` with the best amplitude ``a`` (the fit follows the shape)."""
    a = float(np.vdot(model, target) / max(np.vdot(model, model), 1e-30))
    return (a * model - target).ravel()


def _fit_model(psf, spacing, model, params):
    """Least-squares fit of a PSF model to a measured average; returns (model psf, parameters)."""
    shape = psf.shape
    target = psf.astype(np.float64)
    if model == "gaussian":
        w0 = fwhm(psf, spacing)
        lat0 = float(np.nanmean(w0[1:]))
        ax0 = float(w0[0]) if np.isfinite(w0[0]) else 3 * lat0

        def render(p):
            return gaussian_psf(spacing, fwhm_lateral=abs(p[1]) + 1e-6, fwhm_axial=abs(p[0]) + 1e-6,
                                shape=shape).astype(np.float64)

        res = optimize.least_squares(lambda p: _scaled_residual(render(p), target), [ax0, lat0],
                                     x_scale=[ax0, lat0])
        out = render(res.x)
        fit = {"model": "gaussian", "fwhm_axial": float(abs(res.x[0])), "fwhm_lateral": float(abs(res.x[1]))}
    else:
        wavelength = float(params.get("wavelength", 0.52))
        n_imm = float(params.get("n_immersion", 1.333))
        n_s = params.get("n_sample")
        lat = float(np.nanmean(fwhm(psf, spacing)[1:]))
        na0 = float(np.clip(0.51 * wavelength / lat, 0.1, 0.98 * n_imm))

        def render(p):
            na = float(np.clip(p[0], 0.05, 0.995 * n_imm))
            depth = float(max(p[1], 0.0))
            return widefield_psf(spacing, na=na, wavelength=wavelength, n_immersion=n_imm,
                                 n_sample=n_s, depth=depth, shape=shape).astype(np.float64)

        starts = [[na0, 0.0], [na0 * 0.9, 5.0]] if n_s is not None and n_s != n_imm else [[na0, 0.0]]
        best = None
        for x0 in starts:
            r = optimize.least_squares(lambda p: _scaled_residual(render(p), target), x0,
                                       bounds=([0.05, 0.0], [0.995 * n_imm, 200.0]), x_scale=[0.1, 5.0])
            if best is None or r.cost < best.cost:
                best = r
        out = render(best.x)
        fit = {"model": "widefield", "na": float(best.x[0]), "depth": float(best.x[1]),
               "wavelength": wavelength, "n_immersion": n_imm, "n_sample": n_s}
    out = np.clip(out, 0, None)
    fit["ncc"] = normalized_cross_correlation(out, target)
    return (out / out.sum()).astype(np.float32), fit
