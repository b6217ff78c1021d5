"""Synthetic bead volumes with known truth, for tests, benchmarks and training.

A simulation draws sub-resolution beads (also in margins above, below and
around the stack, so their out-of-focus haze enters it), images them through
a PSF, adds ambient light (camera offset + smooth glow) and Poisson + read
noise, and renders the restoration target of DESIGN.md: every bead blurred
by an isotropic Gaussian whose FWHM equals the PSF's lateral FWHM, zero
background, same flux.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
from scipy import fft as sfft

from ._checks import as_psf, as_rng, as_spacing
from .optics import DEFAULT_OPTICS
from .psf import fwhm, make_psf
from .beads import BEAD_DTYPE as _BEADS
from .beads import new_table, set_positions
from .target import render_target

__all__ = ["AmbientLight", "Detector", "Simulation", "simulate_beads", "render_target",
           "ambient_field", "BEAD_DTYPE", "DEFAULT_OPTICS"]

log = logging.getLogger(__name__)


#: A simulation's truth is a bead table (:data:`restore3d.beads.BEAD_DTYPE`): position,
#: flux (photons) and whether the bead lies inside the stack.
BEAD_DTYPE = _BEADS

_AMBIENT_SHAPES = ("gradient", "blobs", "drift")


@dataclasses.dataclass(frozen=True)
class AmbientLight:
    """Ambient light added to the imaged beads.

    Parameters
    ----------
    offset : float
        Camera offset in counts, added after noise (it carries no shot noise).
    level : float
        Mean of the smooth glow in photons per voxel.
    shapes : tuple of str
        Which spatial components the glow has: ``"gradient"`` (a linear ramp
        in a random lateral direction), ``"blobs"`` (a few broad Gaussian
        patches of light), ``"drift"`` (a slow change of the level along z).
        Empty: a flat glow.
    strength : float
        Relative modulation of each component (0 = flat, 1 = the field
        varies by about +-100 %).
    """

    offset: float = 100.0
    level: float = 20.0
    shapes: tuple = _AMBIENT_SHAPES
    strength: float = 0.5

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in _AMBIENT_SHAPES]
        if unknown:
            raise ValueError(f"unknown ambient shapes {unknown}; expected any of {_AMBIENT_SHAPES}")
        for label in ("offset", "level", "strength"):
            v = getattr(self, label)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"AmbientLight.{label} must be >= 0, got {v!r}")
        object.__setattr__(self, "shapes", tuple(self.shapes))


@dataclasses.dataclass(frozen=True)
class Detector:
    """How photons become the numbers in the file (after the noise is drawn).

    ``counts = clip(round(gain * photons + offset), floor, 2**bits - 1)``
    where ``offset`` is :attr:`AmbientLight.offset`. Real stacks show all
    three artefacts: integer (often 8-bit) values, a background clipped at
    the bottom of the range when the offset is set low, and saturated bead
    centres at the top.

    Parameters
    ----------
    bits : int or None
        Bit depth (e.g. 8, 12, 16); None keeps float values, unrounded and
        unclipped.
    gain : float
        Counts per photon.
    floor : float
        Lowest value the file holds (values below are clipped to it).
    """

    bits: int | None = None
    gain: float = 1.0
    floor: float = 0.0

    def __post_init__(self):
        if self.bits is not None and (int(self.bits) != self.bits or not 1 <= self.bits <= 32):
            raise ValueError(f"Detector.bits must be a whole number of bits in 1-32 or None, got {self.bits!r}")
        if not np.isfinite(self.gain) or self.gain <= 0:
            raise ValueError(f"Detector.gain must be a positive number of counts per photon, got {self.gain!r}")
        if not np.isfinite(self.floor):
            raise ValueError(f"Detector.floor must be a finite number of counts, got {self.floor!r}")

    def digitize(self, photons: np.ndarray, offset: float) -> np.ndarray:
        """Counts recorded for ``photons`` (noise already drawn) on top of ``offset`` counts."""
        counts = self.gain * photons + np.float32(offset)
        if self.bits is None:
            return counts.astype(np.float32)
        return np.clip(np.round(counts), self.floor, 2.0 ** self.bits - 1).astype(np.float32)


@dataclasses.dataclass
class Simulation:
    """Output of :func:`simulate_beads`; every array is float32 (z, y, x).

    Attributes
    ----------
    raw : ndarray
        What the camera records: blurred beads + ambient light + noise +
        offset, digitised by the :class:`Detector`.
    target : ndarray
        The restoration target: beads blurred by an isotropic Gaussian of
        ``target_fwhm`` micrometres, zero background, flux preserved (in
        counts: photons times the detector gain).
    clean : ndarray
        Noise-free blurred beads without ambient light (counts).
    background : ndarray
        Noise-free ambient light including the camera offset (counts).
    truth : structured ndarray
        One row per bead (:data:`BEAD_DTYPE`), including beads in the margins.
    psf : ndarray
        The PSF used, unit sum.
    spacing : tuple
        ``(dz, dy, dx)`` in micrometres.
    target_fwhm : float
        FWHM of the target's isotropic Gaussian in micrometres.
    params : dict
        The arguments that reproduce this simulation.
    """

    raw: np.ndarray
    target: np.ndarray
    clean: np.ndarray
    background: np.ndarray
    truth: np.ndarray
    psf: np.ndarray
    spacing: tuple
    target_fwhm: float
    params: dict

    @property
    def inside(self) -> np.ndarray:
        """Rows of ``truth`` for the beads inside the stack."""
        return self.truth[self.truth["inside"]]


def _resolve_psf(psf, spacing):
    if psf is None:
        psf = dict(DEFAULT_OPTICS)
    if isinstance(psf, str):
        psf = {"model": psf} if psf != "widefield" else dict(DEFAULT_OPTICS)
    if isinstance(psf, dict):
        params = dict(psf)
        model = params.pop("model", "widefield")
        return make_psf(spacing, model=model, **params)
    return as_psf(psf)


def _draw_positions(rng, n, low, high, min_separation_vox):
    """Uniform positions in the box [low, high) (voxels), optionally kept apart."""
    low = np.asarray(low, float)
    high = np.asarray(high, float)
    if min_separation_vox is None:
        return low + rng.random((n, 3)) * (high - low)
    scale = np.asarray(min_separation_vox, float)  # anisotropic: compare in um
    accepted = np.empty((0, 3))
    attempts = 0
    while len(accepted) < n and attempts < 50:
        cand = low + rng.random((2 * (n - len(accepted)) + 8, 3)) * (high - low)
        for c in cand:
            if len(accepted) >= n:
                break
            if len(accepted):
                d = np.sqrt((((accepted - c) / scale) ** 2).sum(1)).min()
                if d < 1.0:
                    continue
            accepted = np.vstack([accepted, c])
        attempts += 1
    if len(accepted) < n:
        log.warning("could only place %d of %d beads with the requested separation", len(accepted), n)
    return accepted


def ambient_field(shape: Sequence[int], spacing: Sequence[float], ambient: AmbientLight,
                  rng: np.random.Generator) -> np.ndarray:
    """Smooth ambient glow in photons per voxel (without the camera offset).

    The field has mean ``ambient.level``; its components are described in
    :class:`AmbientLight`. Lengths of the blobs scale with the field of view.
    """
    Z, Y, X = shape
    dz, dy, dx = spacing
    z = (np.arange(Z) - (Z - 1) / 2) / max(Z - 1, 1)
    y = (np.arange(Y) - (Y - 1) / 2) / max(Y - 1, 1)
    x = (np.arange(X) - (X - 1) / 2) / max(X - 1, 1)
    s = ambient.strength
    lateral = np.ones((Y, X))
    if "gradient" in ambient.shapes:
        angle = rng.uniform(0, 2 * np.pi)
        lateral = lateral + s * 2 * (np.cos(angle) * y[:, None] + np.sin(angle) * x[None, :])
    if "blobs" in ambient.shapes:
        n_blobs = int(rng.integers(2, 5))
        fov = np.hypot(Y * dy, X * dx)
        for _ in range(n_blobs):
            cy, cx = rng.uniform(-0.5, 0.5, 2)
            width = rng.uniform(0.15, 0.35) * fov
            amp = rng.uniform(0.5, 1.0) * s * 2
            r2 = ((y[:, None] - cy) * Y * dy) ** 2 + ((x[None, :] - cx) * X * dx) ** 2
            lateral = lateral + amp * np.exp(-0.5 * r2 / width ** 2)
    lateral = np.clip(lateral, 0.05, None)
    axial = np.ones(Z)
    if "drift" in ambient.shapes:
        slope = rng.uniform(-1, 1) * s
        curve = rng.uniform(-1, 1) * s
        axial = np.clip(1 + slope * z + curve * (4 * z ** 2 - 1 / 3), 0.05, None)
    field = axial[:, None, None] * lateral[None, :, :]
    field *= ambient.level / max(field.mean(), 1e-12)
    return field.astype(np.float32)


def _sphere_form_factor(q_radius):
    """Fourier transform of a uniform ball, unit at zero frequency."""
    out = np.ones_like(q_radius)
    nz = q_radius > 1e-6
    x = q_radius[nz]
    out[nz] = 3 * (np.sin(x) - x * np.cos(x)) / x ** 3
    return out


def _image_beads(positions, fluxes, psf, shape, spacing, bead_diameter, margins):
    """Blurred beads on the volume grid, rendered exactly in Fourier space.

    Each bead is a uniform ball (``bead_diameter`` um) at a continuous
    position; its spectrum is computed analytically (a separable sum of
    phase ramps, evaluated as one complex matrix product), multiplied by the
    PSF's transfer function and transformed back once. The grid is padded by
    the margins and the PSF size so nothing wraps into the volume.
    """
    shape = np.asarray(shape)
    pshape = np.asarray(psf.shape)
    offset = np.asarray(margins) + pshape // 2 + 1
    grid = [sfft.next_fast_len(int(n), real=True) for n in shape + 2 * offset + pshape // 2 + 1]
    freqs = [np.fft.fftfreq(grid[0]), np.fft.fftfreq(grid[1]), np.fft.rfftfreq(grid[2])]
    coords = positions + offset  # grid coordinates
    spectrum = np.zeros((grid[0] * grid[1], freqs[2].size), np.complex64)
    chunk = max(1, int(2e7 // (grid[0] * grid[1])))
    for start in range(0, len(coords), chunk):
        c = coords[start:start + chunk]
        ez = np.exp(-2j * np.pi * c[:, 0:1] * freqs[0][None, :]).astype(np.complex64)
        ey = np.exp(-2j * np.pi * c[:, 1:2] * freqs[1][None, :]).astype(np.complex64)
        ex = np.exp(-2j * np.pi * c[:, 2:3] * freqs[2][None, :]).astype(np.complex64)
        a = (fluxes[start:start + chunk, None, None].astype(np.complex64)
             * ez[:, :, None] * ey[:, None, :]).reshape(len(c), -1)
        spectrum += a.T @ ex
    spectrum = spectrum.reshape(grid[0], grid[1], -1)
    if bead_diameter > 0:
        qz, qy, qx = np.meshgrid(freqs[0] / spacing[0], freqs[1] / spacing[1],
                                 freqs[2] / spacing[2], indexing="ij", sparse=True)
        q = 2 * np.pi * np.sqrt(qz ** 2 + qy ** 2 + qx ** 2)
        spectrum *= _sphere_form_factor(q * bead_diameter / 2).astype(np.float32)
    padded = np.zeros(grid, np.float32)
    padded[:psf.shape[0], :psf.shape[1], :psf.shape[2]] = psf
    padded = np.roll(padded, tuple(-(p // 2) for p in psf.shape), axis=(0, 1, 2))
    spectrum *= sfft.rfftn(padded, workers=-1)
    image = sfft.irfftn(spectrum, s=grid, workers=-1)
    sl = tuple(slice(o, o + n) for o, n in zip(offset, shape))
    return np.clip(image[sl], 0, None).astype(np.float32)


def _bead_positions(rng, shape, spacing, margin_vox, n_beads, density, sep):
    """Bead centres (N, 3) in voxels over the stack and its margins (beads outside still shine in).

    ``n_beads`` puts exactly that many inside the stack and the margins at
    the same density; otherwise a Poisson number at ``density`` per um^3.
    """
    low = -0.5 - margin_vox
    high = np.asarray(shape) - 0.5 + margin_vox
    vol_um3 = float(np.prod(np.asarray(shape) * spacing))
    ext_um3 = float(np.prod((high - low) * spacing))
    if n_beads is None:
        return _draw_positions(rng, int(rng.poisson(density * ext_um3)), low, high, sep).reshape(-1, 3)
    n_total = int(round(n_beads * ext_um3 / vol_um3))
    inner = _draw_positions(rng, n_beads, [-0.5] * 3, np.asarray(shape) - 0.5, sep)
    outer = _draw_positions(rng, 4 * max(n_total - n_beads, 0) + 4, low, high, None)
    is_out = ~np.all((outer >= -0.5) & (outer < np.asarray(shape) - 0.5), axis=1)
    outer = outer[is_out][:max(n_total - n_beads, 0)]
    return (np.vstack([inner, outer]) if len(outer) else inner).reshape(-1, 3)


def simulate_beads(shape: Sequence[int] = (32, 256, 256),
                   spacing: Sequence[float] = (0.3, 0.1, 0.1), *,
                   n_beads: int | None = None, density: float = 0.02,
                   bead_diameter: float = 0.1, flux: float = 3000.0, flux_spread: float = 0.4,
                   psf=None, ambient: AmbientLight | dict | None = None,
                   read_noise: float = 2.0, poisson: bool = True,
                   margin: Sequence[float] | None = None,
                   min_separation: float | None = None,
                   target_fwhm: float | None = None,
                   detector: Detector | dict | None = None,
                   seed=None) -> Simulation:
    """Simulate a widefield bead volume, its truth and its restoration target.

    Parameters
    ----------
    shape : (Z, Y, X) ints
        Shape of the recorded volume.
    spacing : (dz, dy, dx) floats
        Voxel size in micrometres.
    n_beads : int, optional
        Number of beads inside the stack; the margins get beads at the same
        density. Overrides ``density``.
    density : float
        Beads per cubic micrometre (inside the stack and in the margins).
    bead_diameter : float
        Bead diameter in micrometres (default 0.1, below the resolution).
    flux : float
        Median number of photons a bead emits into the recorded PSF.
    flux_spread : float
        Standard deviation of ``log(flux)`` between beads (0: all equal).
    psf : ndarray, dict or str, optional
        A PSF array (same spacing), a model dict such as
        ``{"model": "widefield", "na": 1.2, "wavelength": 0.6}`` or
        ``{"model": "gaussian", "fwhm_lateral": 0.3, "fwhm_axial": 0.9}``,
        or a model name. Default: :data:`DEFAULT_OPTICS`.
    ambient : AmbientLight or dict, optional
        Ambient light; default ``AmbientLight()``. ``AmbientLight(offset=0,
        level=0)`` for none.
    read_noise : float
        Standard deviation of the Gaussian camera read noise, in photons (before the detector gain).
    poisson : bool
        Apply Poisson shot noise to the expected photon counts.
    margin : (mz, my, mx) floats, optional
        Thickness in micrometres of the margins around the stack that also
        hold beads. Default: the PSF's half size on each axis, so every bead
        whose haze reaches the stack is simulated.
    min_separation : float, optional
        Minimal distance between beads in micrometres (isolated beads).
    target_fwhm : float, optional
        FWHM of the target's isotropic Gaussian in micrometres; default the
        lateral FWHM of the PSF.
    detector : Detector or dict, optional
        Digitisation (gain, bit depth, clipping); default float counts, gain 1.
    seed : int or Generator, optional
        Everything random comes from this seed.

    Returns
    -------
    Simulation

    Examples
    --------
    >>> sim = simulate_beads((16, 64, 64), n_beads=10, seed=0)
    >>> sim.raw.shape, sim.raw.dtype.name, int(sim.inside.size)
    ((16, 64, 64), 'float32', 10)
    """
    params = dict(shape=tuple(int(s) for s in shape), spacing=tuple(spacing), n_beads=n_beads,
                  density=density, bead_diameter=bead_diameter, flux=flux,
                  flux_spread=flux_spread, read_noise=read_noise, poisson=poisson,
                  margin=margin, min_separation=min_separation, target_fwhm=target_fwhm,
                  seed=seed if not isinstance(seed, np.random.Generator) else None)
    spacing = as_spacing(spacing)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive integers (Z, Y, X), got {shape!r}")
    for label, v in (("density", density), ("bead_diameter", bead_diameter), ("flux", flux),
                     ("flux_spread", flux_spread), ("read_noise", read_noise)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {v!r}")
    if n_beads is not None and n_beads < 0:
        raise ValueError(f"n_beads must be >= 0, got {n_beads!r}")
    if ambient is None:
        ambient = AmbientLight()
    elif isinstance(ambient, dict):
        ambient = AmbientLight(**ambient)
    if detector is None:
        detector = Detector()
    elif isinstance(detector, dict):
        detector = Detector(**detector)
    rng = as_rng(seed)
    psf_arr = _resolve_psf(psf, spacing)
    if isinstance(psf, np.ndarray):
        params["psf"] = "array"
    else:
        params["psf"] = psf if psf is not None else dict(DEFAULT_OPTICS)
    params["ambient"] = dataclasses.asdict(ambient)
    params["detector"] = dataclasses.asdict(detector)

    if margin is None:
        margin_vox = np.array(psf_arr.shape) // 2
    else:
        margin_vox = np.ceil(np.asarray(as_spacing(margin, name="margin")) /
                             np.asarray(spacing)).astype(int)
    sep = None if min_separation is None else min_separation / np.asarray(spacing)
    positions = _bead_positions(rng, shape, spacing, margin_vox, n_beads, density, sep)
    fluxes = flux * np.exp(flux_spread * rng.standard_normal(len(positions)) - 0.5 * flux_spread ** 2) \
        if flux_spread > 0 else np.full(len(positions), float(flux))
    truth = new_table(len(positions))
    set_positions(truth, positions, spacing)
    truth["flux"] = fluxes
    truth["inside"] = np.all((positions >= -0.5) & (positions < np.asarray(shape) - 0.5), axis=1)

    if len(positions):
        clean = _image_beads(positions, fluxes, psf_arr, shape, spacing, bead_diameter, margin_vox)
    else:
        clean = np.zeros(shape, np.float32)
    glow = ambient_field(shape, spacing, ambient, rng)
    expected = clean + glow
    if poisson:
        counts = rng.poisson(expected.astype(np.float64)).astype(np.float32)
    else:
        counts = expected.copy()
    if read_noise > 0:
        counts += (read_noise * rng.standard_normal(shape)).astype(np.float32)
    raw = detector.digitize(counts, ambient.offset)
    gain = np.float32(detector.gain)

    if target_fwhm is None:
        widths = fwhm(psf_arr, spacing)
        target_fwhm = float(np.nanmean(widths[1:]))
    target = render_target(truth, shape, spacing, fwhm_um=target_fwhm, bead_diameter=bead_diameter)
    return Simulation(raw=raw, target=target * gain, clean=clean * gain,
                      background=(gain * glow + np.float32(ambient.offset)).astype(np.float32),
                      truth=truth, psf=psf_arr, spacing=spacing, target_fwhm=float(target_fwhm),
                      params=params)
