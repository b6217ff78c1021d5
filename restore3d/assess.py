"""Judge a restoration of real data against its own raw volume, bead by bead.

Real stacks have no ground truth, but their beads can be compared before
and after: where they are, how many there are, how wide they look, how much
light each holds, and what the restoration shows where the raw volume has
no bead. The yardstick for shape is the *ideal* of DESIGN.md measured the
same way on the same grid: isotropic Gaussians of the raw beads' lateral
FWHM, rendered at the raw beads' positions (an ideal round bead measures
above 1 where z is coarsely sampled, so "round" means "as the ideal").

Every length scale (neighbourhoods, windows, isolation, match tolerance)
follows the raw beads' measured FWHM, so a confocal stack sampled at
0.1 / 0.044 um and a widefield one at 0.3 / 0.1 um are judged alike.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ._checks import as_psf, as_spacing, as_volume
from .detect import detect_beads, measure_beads, positions_of, typical_height

__all__ = ["BeadComparison", "compare_to_raw", "bead_scales", "beads_above", "ideal_volume"]


@dataclasses.dataclass
class BeadComparison:
    """What a restoration did to the beads of a real volume (:func:`compare_to_raw`).

    Widths in micrometres; ratios are restored / raw unless named otherwise.

    Attributes
    ----------
    raw_beads, beads : int
        Beads (local maxima scoring at least ``fraction`` of the typical
        bead) in the raw and in the restored volume, their maximum inside
        the volume: a maximum on its outermost layer belongs to a bead
        centred beyond the face, which a restoration whose object extends
        past the faces (Richardson-Lucy's ``"extend"`` boundary) rightly
        places there (on leica-beads 8 of the raw's 65).
    raw_face_beads : int
        Raw beads left out for that (still used as neighbours and as what a
        restored bead may stand for).
    matched : int
        Restored beads matched one-to-one to raw beads.
    invented : int
        Restored beads farther than ``invent_um`` from every raw bead.
    isolated : int
        Matched beads with no other raw bead near them: where shapes and
        fluxes are measured.
    raw_elongation, elongation, ideal_elongation : float
        Median axial / lateral FWHM of the isolated beads in the raw, the
        restored and the ideal volume.
    raw_lateral_um, lateral_um, raw_axial_um, axial_um : float
        Median FWHMs.
    raw_lateral_smoothed_um, lateral_smoothed_um : float
        Median lateral FWHMs measured after a lateral Gaussian of one voxel's
        sigma, its width removed in quadrature: a half-maximum through the
        brightest voxel of a noisy raw bead sits on a noise peak and reads
        narrow (on leica-beads 8 % narrower than the beads' PSF); smoothing
        first removes that bias and leaves smooth (restored) beads as they
        are.
    flux_ratio, flux_spread : float
        Median over the isolated beads of restored / raw light, and the
        half-width of its central 68 % (0.16-0.84 quantiles). The restored
        bead's light is the sum of its +-2 FWHM window above the window's
        face median (a restored bead is compact: the window holds it); the
        raw bead's is its flux fitted with the PSF when one is given
        (``flux_method`` ``"psf fit"``), else the same window's
        (``"window"``), which misses the wings.
    window_flux_ratio : float
        The same median with the raw bead's light taken in the window, for
        comparison (equal to ``flux_ratio`` without a PSF).
    flux_method : str
        ``"psf fit"`` or ``"window"``.
    background : float
        :func:`restore3d.metrics.background_residual` of the restored volume
        away from the raw beads (0 = black).
    """

    raw_beads: int
    beads: int
    matched: int
    invented: int
    isolated: int
    raw_elongation: float
    elongation: float
    ideal_elongation: float
    raw_lateral_um: float
    lateral_um: float
    raw_axial_um: float
    axial_um: float
    flux_ratio: float
    flux_spread: float
    background: float
    raw_lateral_smoothed_um: float = float("nan")
    lateral_smoothed_um: float = float("nan")
    raw_face_beads: int = 0
    window_flux_ratio: float = float("nan")
    flux_method: str = "window"

    @property
    def elongation_vs_ideal(self) -> float:
        """Restored elongation over the ideal's: 1 = as round as ideal beads, < 1 flattened."""
        return self.elongation / self.ideal_elongation

    @property
    def lateral_vs_raw(self) -> float:
        return self.lateral_um / self.raw_lateral_um

    @property
    def lateral_vs_raw_smoothed(self) -> float:
        """Lateral FWHM over the raw's, both measured after the same light smoothing (noise-robust)."""
        return self.lateral_smoothed_um / self.raw_lateral_smoothed_um

    @property
    def count_ratio(self) -> float:
        return self.beads / self.raw_beads if self.raw_beads else float("nan")

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(elongation_vs_ideal=self.elongation_vs_ideal, lateral_vs_raw=self.lateral_vs_raw,
                 lateral_vs_raw_smoothed=self.lateral_vs_raw_smoothed, count_ratio=self.count_ratio)
        return d


@dataclasses.dataclass(frozen=True)
class _Scales:
    fwhm: np.ndarray       # (z, y=x) micrometres of the typical raw bead
    spacing: tuple

    def um(self, fz, fxy):
        return (fz * self.fwhm[0], fxy * self.fwhm[1], fxy * self.fwhm[1])


def bead_scales(volume: np.ndarray, spacing: Sequence[float], *, fraction: float = 0.5) -> np.ndarray:
    """Median axial and lateral FWHM ``(fz, fxy)`` in micrometres of the bright beads of a volume.

    Measured with generous windows (3 um axially, 1.2 um laterally, at
    least 4 voxels) on the beads scoring at least ``fraction`` of the typical
    one, so the scales of the other measurements can follow the data.
    """
    vol = as_volume(volume)
    spacing = as_spacing(spacing)
    det = detect_beads(vol, spacing, threshold=0.0, measure=False)
    if len(det) == 0:
        raise ValueError("no bead found in the volume: is it background-free and does it hold beads?")
    strong = det[det["score"] >= fraction * typical_height(det["score"])][:200]
    window = tuple(max(w, 4 * d) for w, d in zip((3.0, 1.2, 1.2), spacing))
    t = measure_beads(vol, spacing, strong, window_um=window)
    fz = np.nanmedian(t["fwhm_z"]) if np.isfinite(t["fwhm_z"]).any() else 3 * spacing[0]
    lat = np.concatenate([t["fwhm_y"], t["fwhm_x"]])
    fxy = np.nanmedian(lat) if np.isfinite(lat).any() else 3 * spacing[1]
    return np.array([float(fz), float(fxy)])


def beads_above(volume, spacing, *, fraction: float = 0.1, neighbourhood_um=None) -> tuple[np.ndarray, float]:
    """Detected beads scoring at least ``fraction`` of the typical bead, and that typical score.

    Beads are :func:`restore3d.detect.detect_beads` detections (above its
    noise floor); the typical bead is the median score of those above a
    tenth of the brightest (:func:`restore3d.detect.typical_height`). The
    fraction rule keeps faint specks and the maxima of quantised noise
    (which a clean, clipped 8-bit volume has few of, so the detector
    counts them) out of the count.
    """
    det = detect_beads(volume, spacing, measure=False, min_distance_um=neighbourhood_um)
    typ = typical_height(det["score"])
    return det[det["score"] >= fraction * typ], typ


def ideal_volume(beads, shape, spacing, fwhm_um: float) -> np.ndarray:
    """Ideal round beads: isotropic Gaussians of ``fwhm_um`` at the beads' positions, unit flux each."""
    from .beads import new_table
    from .target import render_target
    truth = new_table(len(beads))
    for a in "zyx":
        truth[a] = beads[a]
    truth["flux"] = 1.0
    return render_target(truth, shape, spacing, fwhm_um=fwhm_um)


def compare_to_raw(restored: np.ndarray, raw: np.ndarray, spacing: Sequence[float], *, psf=None,
                   fraction: float = 0.1, invent_um: float = 1.0) -> BeadComparison:
    """Compare a restored volume with the background-free raw volume it came from.

    Parameters
    ----------
    restored : (Z, Y, X) ndarray
        The restoration (any stage's output).
    raw : (Z, Y, X) ndarray
        The raw volume with its background removed (e.g. the output of
        :class:`restore3d.SubtractBackground`), on the same grid.
    spacing : (dz, dy, dx) floats, micrometres
    psf : (z, y, x) ndarray, optional
        The PSF on the same spacing (e.g. ``Result.psf``, the one the
        restoration used). Given, each raw bead's light is its flux fitted
        with the PSF (:func:`restore3d.fitting.fit_beads`, its local
        background fitted too): all its light as the PSF accounts for it,
        wings beyond any window included, so a restoration that keeps every
        bead's light scores 1 where the PSF holds all of it, a little above
        where it lacks far wings (an estimated PSF: 1.10 on a simulated
        confocal stack like leica-beads, 2.3 on a widefield one). Without
        it, the raw bead's light is taken in the +-2 FWHM window, which
        misses the wings and takes part of them for background (1.15 and
        3.4 there).
    fraction : float
        A bead is a local maximum scoring at least this fraction of the
        typical bead of its volume (so 8-bit noise, hot pixels and faint
        specks do not count as beads).
    invent_um : float
        A restored bead farther than this from every raw bead is invented.

    Returns
    -------
    BeadComparison

    Notes
    -----
    Scales follow the raw beads' median FWHM ``(fz, fxy)``
    (:func:`bead_scales`): detection neighbourhood half-size ``(fz, fxy) / 2``,
    measurement and flux window +-2 FWHM, isolation ellipsoid ``(3 fz, 4
    fxy)`` (at least 2 / 1 um), match tolerance one FWHM (at least 0.6 /
    0.3 um). The flux window holds all of a restored bead but not the
    wings of a raw one (see ``psf``).
    """
    from .metrics import background_residual, match_beads
    res = as_volume(restored, name="restored")
    raw = as_volume(raw, name="raw")
    spacing = as_spacing(spacing)
    if psf is not None:
        psf = as_psf(psf)
    if res.shape != raw.shape:
        raise ValueError(f"restored shape {res.shape} differs from raw shape {raw.shape}; compare the same grid")
    sc = _Scales(bead_scales(raw, spacing), spacing)
    nbh = sc.um(0.5, 0.5)
    window = tuple(max(w, 3 * d) for w, d in zip(sc.um(2.0, 2.0), spacing))
    isolation = tuple(max(a, b) for a, b in zip(sc.um(3.0, 4.0), (2.0, 1.0, 1.0)))
    tolerance = tuple(max(a, b) for a, b in zip(sc.um(1.0, 1.0), (0.6, 0.3, 0.3)))

    raw_all, _ = beads_above(raw, spacing, fraction=fraction, neighbourhood_um=nbh)
    out_all, _ = beads_above(res, spacing, fraction=fraction, neighbourhood_um=nbh)
    raw_beads, out_beads = raw_all[_inside(raw_all, raw.shape)], out_all[_inside(out_all, res.shape)]
    i_out, i_raw = match_beads(out_beads, raw_beads, spacing=spacing, tolerance_um=tolerance)
    invented = _far_from(out_beads, raw_all, spacing, invent_um)

    from .metrics import isolated as isolated_mask
    iso = isolated_mask(raw_beads[i_raw], spacing=spacing, radius_um=isolation, others=raw_all)
    raw_iso = raw_beads[i_raw][iso]
    out_iso = out_beads[i_out][iso]
    m_raw = measure_beads(raw, spacing, raw_iso, window_um=window)
    m_out = measure_beads(res, spacing, out_iso, window_um=window)

    def elong(t):
        lat = np.nanmean(np.stack([t["fwhm_y"], t["fwhm_x"]]), axis=0) if len(t) else np.zeros(0)
        r = t["fwhm_z"] / lat
        return _median(r[np.isfinite(r)]), _median(lat), _median(t["fwhm_z"])

    e_raw, lat_raw, ax_raw = elong(m_raw)
    e_out, lat_out, ax_out = elong(m_out)
    if np.isfinite(lat_raw):
        ideal = elong(measure_beads(ideal_volume(raw_all, raw.shape, spacing, lat_raw), spacing, raw_iso,
                                    window_um=window))[0]
    else:
        ideal = float("nan")
    window_flux, spread = _ratio(m_out["intensity"], m_raw["intensity"])
    flux = window_flux
    if psf is not None:
        flux, spread = _ratio(m_out["intensity"], _fitted_flux(raw, psf, spacing, raw_iso))
    return BeadComparison(
        raw_beads=len(raw_beads), beads=len(out_beads), matched=len(i_out), invented=int(invented.sum()),
        isolated=len(raw_iso), raw_elongation=e_raw, elongation=e_out, ideal_elongation=ideal,
        raw_lateral_um=lat_raw, lateral_um=lat_out, raw_axial_um=ax_raw, axial_um=ax_out,
        flux_ratio=flux, flux_spread=spread,
        background=background_residual(res, spacing, raw_all, exclusion_um=isolation),
        raw_lateral_smoothed_um=_lateral_smoothed(raw, spacing, raw_iso, window),
        lateral_smoothed_um=_lateral_smoothed(res, spacing, out_iso, window),
        raw_face_beads=len(raw_all) - len(raw_beads), window_flux_ratio=window_flux,
        flux_method="window" if psf is None else "psf fit")


def _ratio(restored_light, raw_light) -> tuple[float, float]:
    """Median of restored / raw light over the beads with raw light, and the half-width of its central 68 %."""
    ok = (raw_light > 0) & np.isfinite(raw_light) & np.isfinite(restored_light)
    ratio = restored_light[ok] / raw_light[ok]
    if not ratio.size:
        return float("nan"), float("nan")
    q16, q50, q84 = np.quantile(ratio, [0.16, 0.5, 0.84])
    return float(q50), float(0.5 * (q84 - q16))


def _fitted_flux(raw, psf, spacing, beads) -> np.ndarray:
    """Each bead's flux fitted with the PSF at its position (NaN where the fit lost it), in ``beads``' order.

    One round of :func:`restore3d.fitting.fit_beads` from the given positions: no bead added or dropped; a
    fitted bead is matched back to the nearest given one within two voxels.
    """
    from scipy.spatial import cKDTree

    from .fitting import fit_beads
    flux = np.full(len(beads), np.nan)
    if not len(beads):
        return flux
    fit = fit_beads(raw, psf, spacing, candidates=beads, rounds=1, min_significance=0.0)
    if len(fit):
        d, j = cKDTree(positions_of(fit)).query(positions_of(beads))
        near = d <= 2.0
        flux[near] = fit["flux"][j[near]]
    return flux


def _inside(beads, shape) -> np.ndarray:
    """Beads whose maximum is not on the volume's outermost layer (a sub-voxel peak one voxel in lies at
    0.5 or more from the edge voxel's centre; an edge maximum's is the edge itself)."""
    p = positions_of(beads)
    n = np.asarray(shape, float)
    return np.all((p >= 0.5 - 1e-6) & (p <= n - 1.5 + 1e-6), axis=1) if len(p) else np.zeros(0, bool)


def _lateral_smoothed(volume, spacing, beads, window, sigma_voxels: float = 1.0) -> float:
    """Median lateral FWHM (um) after a lateral Gaussian of ``sigma_voxels``, its width removed in quadrature."""
    from scipy import ndimage

    from .target import FWHM_PER_SIGMA
    if not len(beads):
        return float("nan")
    smooth = ndimage.gaussian_filter(np.asarray(volume, np.float32), (0, sigma_voxels, sigma_voxels))
    t = measure_beads(smooth, spacing, beads, window_um=window)
    added = [(FWHM_PER_SIGMA * sigma_voxels * d) ** 2 for d in spacing[1:]]
    lat = [np.sqrt(np.clip(t[f"fwhm_{a}"] ** 2 - v, 0, None)) for a, v in zip("yx", added)]
    return _median(np.nanmean(np.stack(lat), axis=0))


def _median(x):
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _far_from(pred, ref, spacing, distance_um):
    from scipy.spatial import cKDTree
    p = positions_of(pred) * np.asarray(spacing)
    if len(p) == 0:
        return np.zeros(0, bool)
    r = positions_of(ref) * np.asarray(spacing)
    if len(r) == 0:
        return np.ones(len(p), bool)
    d, _ = cKDTree(r).query(p)
    return d > distance_um
