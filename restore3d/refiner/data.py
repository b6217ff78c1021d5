"""Training pairs for the refiner: simulated beads passed through the preceding stages.

The network's input is exactly what the stages before it output (the
pipeline prefix is run on the simulated raw volume); the target is the
simulation's isotropic restoration target. Optics, spacing, density,
brightness, ambient light and noise are drawn from :class:`SimulationRanges`.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..pipeline import Pipeline
from ..psf import crop_psf
from ..simulate import AmbientLight, simulate_beads
from .normalize import Normalizer

__all__ = ["SimulationRanges", "Pair", "make_pair", "make_pairs", "default_prefix", "random_patch",
           "target_blur", "target_blur_sigma", "apply_input_transform", "INPUT_TRANSFORMS", "lateral_fwhm"]

log = logging.getLogger(__name__)


def default_prefix() -> Pipeline:
    """The classical stages the shipped refiner follows (background, PSF estimation, 10 RL iterations)."""
    from ..stages import EstimatePSF, RichardsonLucy, SubtractBackground
    return Pipeline([SubtractBackground(), EstimatePSF(), RichardsonLucy(iterations=10)])


@dataclasses.dataclass(frozen=True)
class SimulationRanges:
    """Ranges the training volumes are drawn from (uniform unless noted).

    Lengths in micrometres, fluxes in photons, light levels in counts.
    ``psf`` fixes the PSF array (then ``spacing`` must be fixed too, as
    ``dz = (v, v)`` ranges): used to adapt to one microscope.
    ``given_psf_probability`` is the fraction of volumes whose preceding
    stages are given the simulation's PSF (cropped to the volume, as a
    measured PSF would be) instead of estimating it from the beads, so the
    refiner also suits runs with a measured PSF (``run(..., psf=...)``).
    """

    shape: tuple = (32, 128, 128)
    dz: tuple = (0.2, 0.4)
    dxy: tuple = (0.08, 0.13)
    na: tuple = (0.9, 1.35)
    wavelength: tuple = (0.45, 0.65)
    mismatch_probability: float = 0.3
    depth: tuple = (0.0, 10.0)
    density: tuple = (0.005, 0.04)
    flux: tuple = (1000.0, 20000.0)  # log-uniform median flux
    flux_spread: tuple = (0.2, 0.6)
    ambient_level: tuple = (5.0, 100.0)
    ambient_strength: tuple = (0.2, 0.8)
    offset: tuple = (50.0, 200.0)
    read_noise: tuple = (1.0, 5.0)
    given_psf_probability: float = 0.0
    psf: object = None

    def __post_init__(self):
        for name in ("mismatch_probability", "given_psf_probability"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p!r}")

    def sample(self, rng: np.random.Generator) -> dict:
        """Keyword arguments of :func:`restore3d.simulate.simulate_beads` for one volume."""
        u = lambda r: float(rng.uniform(*r)) if r[0] != r[1] else float(r[0])  # noqa: E731
        dz, dxy = u(self.dz), u(self.dxy)
        if self.psf is not None:
            psf = np.asarray(self.psf, np.float32)
        else:
            na = u(self.na)
            n_imm = 1.333 if na <= 1.2 else 1.518
            psf = {"model": "widefield", "na": na, "wavelength": u(self.wavelength), "n_immersion": n_imm}
            if rng.random() < self.mismatch_probability:
                psf.update(n_sample=float(rng.uniform(1.33, 1.45)), depth=u(self.depth))
                if psf["n_sample"] <= na:
                    psf["n_sample"] = na + 0.05
        flux = float(np.exp(rng.uniform(np.log(self.flux[0]), np.log(self.flux[1]))))
        ambient = AmbientLight(offset=u(self.offset), level=u(self.ambient_level),
                               strength=u(self.ambient_strength))
        return dict(shape=tuple(self.shape), spacing=(dz, dxy, dxy), psf=psf, density=u(self.density),
                    flux=flux, flux_spread=u(self.flux_spread), ambient=ambient,
                    read_noise=u(self.read_noise))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["psf"] = None if self.psf is None else "array"
        return d


INPUT_TRANSFORMS = (None, "target_blur")


def target_blur(volume: np.ndarray, spacing, fwhm_um: float) -> np.ndarray:
    """Render a (near point-like) deconvolved volume at the target's resolution.

    Richardson-Lucy recovers sparse beads as near-points, sharper than the
    target laterally; convolving with the target's isotropic Gaussian
    (``fwhm_um``, the PSF's lateral FWHM) gives the target's lateral shape
    exactly, so the network is left with the part physics cannot do: the
    remaining axial elongation and noise (benchmarks/RESULTS.md).
    """
    from scipy import ndimage
    sigma = target_blur_sigma(spacing, fwhm_um)
    return ndimage.gaussian_filter(np.asarray(volume, np.float32), sigma, mode="reflect",
                                   truncate=TARGET_BLUR_TRUNCATE)


#: Gaussian support of :func:`target_blur` in sigmas (also the refiner's extra halo).
TARGET_BLUR_TRUNCATE = 4.0


def target_blur_sigma(spacing, fwhm_um: float) -> np.ndarray:
    """Per-axis sigma in voxels (z, y, x) of the isotropic Gaussian of FWHM ``fwhm_um`` micrometres."""
    from .._profiles import FWHM_PER_SIGMA
    if not np.isfinite(fwhm_um) or fwhm_um <= 0:
        raise ValueError(f"target blur FWHM must be a positive number of micrometres, got {fwhm_um!r}")
    return fwhm_um / FWHM_PER_SIGMA / np.asarray(spacing, float)


def lateral_fwhm(psf, spacing) -> float:
    """The PSF's lateral FWHM in micrometres (mean of y and x): the target's FWHM."""
    from ..psf import fwhm
    w = fwhm(psf, spacing)
    return float(np.nanmean(w[1:]))


def apply_input_transform(volume, spacing, transform, psf):
    """The refiner's input from the preceding stages' output (see :data:`INPUT_TRANSFORMS`)."""
    if transform is None:
        return volume
    if transform != "target_blur":
        raise ValueError(f"unknown input transform {transform!r}; expected one of {INPUT_TRANSFORMS}")
    if psf is None:
        raise ValueError("this refiner renders its input at the target resolution and needs the PSF of the "
                         "preceding stages: run it after EstimatePSF (or pass psf= to the run)")
    return target_blur(volume, spacing, lateral_fwhm(psf, spacing))


@dataclasses.dataclass
class Pair:
    """One training volume: normalised input and target, and what made them."""

    input: np.ndarray
    target: np.ndarray
    spacing: tuple
    scale: float
    truth: np.ndarray


def make_pair(ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, seed: int,
              input_transform: str | None = None) -> Pair:
    """Simulate one volume, run the preceding stages on it, transform and normalise input and target alike."""
    rng = np.random.default_rng(seed)
    kwargs = ranges.sample(rng)
    sim = simulate_beads(**kwargs, seed=rng)
    if len(prefix):
        # drawn after the simulation, so a zero probability leaves every pair as it was
        given = ranges.given_psf_probability > 0 and rng.random() < ranges.given_psf_probability
        res = None
        if not given:
            try:
                res = prefix.run(sim.raw, spacing=sim.spacing, seed=seed)
            except ValueError:
                pass  # too few isolated beads to estimate a PSF: give the stages the true one
        if res is None:
            psf = crop_psf(sim.psf, sim.raw.shape)
            res = prefix.run(sim.raw, spacing=sim.spacing, psf=psf, seed=seed)
        inp = apply_input_transform(np.asarray(res), sim.spacing, input_transform,
                                    res.psf if res.psf is not None else sim.psf)
    else:
        inp = apply_input_transform(sim.raw, sim.spacing, input_transform, sim.psf)
    off, scale = normalizer.stats(inp)
    return Pair(input=((inp - off) / scale).astype(np.float32),
                target=(sim.target / scale).astype(np.float32),
                spacing=sim.spacing, scale=scale, truth=sim.truth)


def make_pairs(n: int, ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, *,
               seed: int, progress: bool = False, desc: str = "simulating",
               input_transform: str | None = None) -> list[Pair]:
    """``n`` pairs from the seeds ``seed, seed + 1, ...``."""
    from tqdm.auto import tqdm
    return [make_pair(ranges, prefix, normalizer, seed + i, input_transform)
            for i in tqdm(range(n), desc=desc, disable=not progress, leave=False)]


def random_patch(pair: Pair, patch: tuple, rng: np.random.Generator):
    """A random crop of a pair with random flips (and a quarter turn when dy == dx)."""
    shape = pair.input.shape
    sl = []
    for n, p in zip(shape, patch):
        p = min(p, n)
        s = int(rng.integers(0, n - p + 1))
        sl.append(slice(s, s + p))
    x = pair.input[tuple(sl)]
    y = pair.target[tuple(sl)]
    for axis in (0, 1, 2):
        if rng.random() < 0.5:
            x = np.flip(x, axis)
            y = np.flip(y, axis)
    if x.shape[1] == x.shape[2] and abs(pair.spacing[1] - pair.spacing[2]) < 1e-9 and rng.random() < 0.5:
        x = np.rot90(x, axes=(1, 2))
        y = np.rot90(y, axes=(1, 2))
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
