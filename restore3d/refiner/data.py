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

__all__ = ["SimulationRanges", "Pair", "make_pair", "make_pairs", "default_prefix", "random_patch"]

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
    psf: object = None

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


@dataclasses.dataclass
class Pair:
    """One training volume: normalised input and target, and what made them."""

    input: np.ndarray
    target: np.ndarray
    spacing: tuple
    scale: float
    truth: np.ndarray


def make_pair(ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, seed: int) -> Pair:
    """Simulate one volume, run the preceding stages on it, normalise input and target alike."""
    rng = np.random.default_rng(seed)
    kwargs = ranges.sample(rng)
    sim = simulate_beads(**kwargs, seed=rng)
    if len(prefix):
        try:
            inp = np.asarray(prefix.run(sim.raw, spacing=sim.spacing, seed=seed))
        except ValueError:
            # too few isolated beads to estimate a PSF: give the stages the true one
            psf = crop_psf(sim.psf, sim.raw.shape)
            inp = np.asarray(prefix.run(sim.raw, spacing=sim.spacing, psf=psf, seed=seed))
    else:
        inp = sim.raw
    off, scale = normalizer.stats(inp)
    return Pair(input=((inp - off) / scale).astype(np.float32),
                target=(sim.target / scale).astype(np.float32),
                spacing=sim.spacing, scale=scale, truth=sim.truth)


def make_pairs(n: int, ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, *,
               seed: int, progress: bool = False, desc: str = "simulating") -> list[Pair]:
    """``n`` pairs from the seeds ``seed, seed + 1, ...``."""
    from tqdm.auto import tqdm
    return [make_pair(ranges, prefix, normalizer, seed + i)
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
