"""Training pairs for the refiner: simulated beads passed through the preceding stages.

The network's input is exactly what the stages before it output (the
pipeline prefix is run on the simulated raw volume); the target is the
isotropic restoration target. Optics (widefield, confocal and light-sheet
PSFs, dry to oil immersion, index mismatch), the sampling of that PSF, bead
size, density and brightness, ambient light, noise and the recording
(8-bit, clipped background, saturation, scan tails) are drawn from
:class:`SimulationRanges`.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ...detect import typical_peak
from ...pipeline import Pipeline
from ...psf import centre_psf, crop_psf, make_psf
from ...simulate import AmbientLight, Detector, simulate_beads
from ...target import lateral_fwhm, render_target, target_sigma
from ..normalize import Normalizer
from ..grid import working_grid
from ..transforms import OUTPUT_TRANSFORMS, RENDERING, apply_input_transform, render_sigma

__all__ = ["SimulationRanges", "Pair", "make_pair", "make_pairs", "random_patch", "IMMERSION"]

log = logging.getLogger(__name__)


#: Immersion media the simulations draw from: refractive index and the NA range of such objectives.
IMMERSION = {"air": (1.0, (0.7, 0.95)), "water": (1.333, (0.8, 1.2)), "silicone": (1.406, (1.0, 1.35)),
             "oil": (1.518, (1.2, 1.45))}

_PSF_MODELS = ("widefield", "confocal", "lightsheet")


def _approx_fwhm(model: str, na: float, wavelength: float, n: float, sheet: float) -> tuple[float, float]:
    """Textbook (axial, lateral) FWHM in micrometres of a PSF model, to choose a sampling for it."""
    axial = 0.88 * wavelength / (n - np.sqrt(max(n ** 2 - na ** 2, 1e-6)))
    lateral = 0.51 * wavelength / na
    if model == "confocal":
        return 0.75 * axial, 0.75 * lateral
    if model == "lightsheet":
        return 1.0 / np.sqrt(1.0 / axial ** 2 + 1.0 / sheet ** 2), lateral
    return axial, lateral


@dataclasses.dataclass(frozen=True)
class SimulationRanges:
    """Ranges the training volumes are drawn from (uniform unless noted).

    Lengths in micrometres, fluxes in photons, light levels in photons per
    voxel (offset in counts).

    Optics: a PSF model (``models``: names and probabilities), an immersion
    medium of ``media`` and an NA in that medium's range (clipped to ``na``;
    light-sheet detection at most 1.1), an emission ``wavelength``, for
    confocal an excitation 20-100 nm shorter and a ``pinhole_au``, for light
    sheets a ``sheet_fwhm``, and with ``mismatch_probability`` a sample
    index of 1.33-1.45 at a ``depth``. Sampling, as microscopists choose it
    for their PSF: ``lateral_samples`` pixels per lateral FWHM and
    ``axial_samples`` planes per axial FWHM (log-uniform), clipped to
    ``dxy`` and ``dz``. Beads: ``n_beads`` per working volume of
    ``work_shape`` (log-uniform; or ``density`` beads per cubic micrometre
    when given; the margins at the same density), ``bead_diameter``, a log-uniform
    median ``flux`` with a log-normal ``flux_spread``. Recording: with
    ``eight_bit_probability`` an 8-bit file whose typical bead peaks at
    ``peak_counts`` (above 255 it saturates) with the background at the
    clipped bottom of the range (a glow of ``eight_bit_glow`` counts
    (log-uniform), read noise ``eight_bit_read_noise`` counts), as confocal
    systems write them; otherwise float counts on an ``offset``. Confocal PSFs get a scan tail along x (a
    one-sided exponential of ``scan_tail`` pixels) with
    ``scan_tail_probability``.

    Size: ``shape`` (z, y, x) voxels; None sizes each volume so that the
    refiner's working grid (:mod:`restore3d.refiner.grid`, voxels of half
    the lateral FWHM) holds ``work_shape`` voxels, at least ``min_shape``.

    ``psf`` fixes the PSF array (then ``dz`` and ``dxy`` must be fixed too,
    as ``(v, v)`` ranges): used to adapt to one microscope.
    ``given_psf_probability`` is the fraction of volumes whose preceding
    stages are given the simulation's PSF (cropped to the volume, as a
    measured PSF would be) instead of estimating it from the beads.
    """

    shape: tuple | None = None
    work_shape: tuple = (40, 96, 96)
    min_shape: tuple = (24, 48, 48)
    models: tuple = (("widefield", 0.4), ("confocal", 0.35), ("lightsheet", 0.25))
    media: tuple = ("air", "water", "silicone", "oil")
    na: tuple = (0.7, 1.45)
    wavelength: tuple = (0.45, 0.7)
    pinhole_au: tuple = (0.5, 1.5)
    sheet_fwhm: tuple = (0.6, 3.0)
    mismatch_probability: float = 0.4
    depth: tuple = (0.0, 20.0)
    lateral_samples: tuple = (1.5, 7.0)
    axial_samples: tuple = (1.2, 8.0)
    dz: tuple = (0.1, 0.6)
    dxy: tuple = (0.04, 0.2)
    n_beads: tuple = (6.0, 100.0)
    density: tuple | None = None
    bead_diameter: tuple = (0.02, 0.2)
    flux: tuple = (500.0, 50000.0)
    flux_spread: tuple = (0.2, 0.6)
    ambient_level: tuple = (1.0, 100.0)
    ambient_strength: tuple = (0.2, 0.8)
    offset: tuple = (50.0, 200.0)
    read_noise: tuple = (0.5, 5.0)
    eight_bit_probability: float = 0.35
    peak_counts: tuple = (40.0, 320.0)
    eight_bit_glow: tuple = (0.2, 10.0)
    eight_bit_read_noise: tuple = (0.2, 1.5)
    scan_tail_probability: float = 0.3
    scan_tail: tuple = (0.5, 4.0)
    given_psf_probability: float = 0.0
    psf: object = None

    def __post_init__(self):
        for name in ("mismatch_probability", "given_psf_probability", "eight_bit_probability",
                     "scan_tail_probability"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p!r}")
        models = tuple((str(m), float(p)) for m, p in self.models)
        if not models or any(m not in _PSF_MODELS or p < 0 for m, p in models) or sum(p for _, p in models) <= 0:
            raise ValueError(f"models must pair names of {_PSF_MODELS} with probabilities >= 0 (not all 0), "
                             f"got {self.models!r}")
        object.__setattr__(self, "models", models)
        bad = [m for m in self.media if m not in IMMERSION]
        if bad or not self.media:
            raise ValueError(f"media must be some of {sorted(IMMERSION)}, got {self.media!r}")

    def _optics(self, rng, u, lu):
        """A PSF model specification and the spacing a microscopist would record it with."""
        names = [m for m, _ in self.models]
        probs = np.asarray([p for _, p in self.models], float)
        model = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        medium = self.media[int(rng.integers(len(self.media)))]
        n_imm, (lo, hi) = IMMERSION[medium]
        if model == "lightsheet":
            hi = min(hi, 1.1)
        lo, hi = max(lo, self.na[0]), min(hi, self.na[1])
        na = u((min(lo, hi), hi))
        wavelength = u(self.wavelength)
        spec = {"model": model, "na": na, "wavelength": wavelength, "n_immersion": n_imm}
        if model == "confocal":
            spec.update(excitation=wavelength - u((0.02, 0.1)), pinhole_au=u(self.pinhole_au))
        elif model == "lightsheet":
            spec.update(sheet_fwhm=u(self.sheet_fwhm))
        if rng.random() < self.mismatch_probability:
            spec.update(n_sample=u((1.33, 1.45)), depth=u(self.depth))
        n_eff = min(spec.get("n_sample", n_imm), n_imm)
        axial, lateral = _approx_fwhm(model, min(na, 0.98 * n_eff), wavelength, n_eff,
                                      spec.get("sheet_fwhm", np.inf))
        dxy = float(np.clip(lateral / lu(self.lateral_samples), *self.dxy))
        dz = float(np.clip(axial / lu(self.axial_samples), *self.dz))
        return spec, (dz, dxy, dxy), lateral

    def _shape(self, spacing, lateral_fwhm):
        """The volume shape: given, or what fills the working grid (half-FWHM voxels, z at most 3x finer)."""
        if self.shape is not None:
            return tuple(int(n) for n in self.shape)
        step = 0.5 * lateral_fwhm
        out = []
        for want, least, d in zip(self.work_shape, self.min_shape, spacing):
            work = max(step, d / 3.0)
            out.append(max(int(least), int(np.ceil(1.15 * want * work / d))))
        return tuple(out)

    def sample(self, rng: np.random.Generator) -> dict:
        """Keyword arguments of :func:`restore3d.simulate.simulate_beads` for one volume."""
        u = lambda r: float(rng.uniform(*r)) if r[0] != r[1] else float(r[0])  # noqa: E731
        lu = lambda r: float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1])))) if r[0] != r[1] else float(r[0])  # noqa: E731,E501
        if self.psf is not None:
            psf = np.asarray(self.psf, np.float32)
            dxy = u(self.dxy)
            spacing = (u(self.dz), dxy, dxy)
            from ...target import lateral_fwhm as _lat
            lateral = _lat(psf, spacing)
        else:
            spec, spacing, lateral = self._optics(rng, u, lu)
            psf = make_psf(spacing, **spec)
            if spec["model"] == "confocal" and rng.random() < self.scan_tail_probability:
                psf = _scan_tail(psf, u(self.scan_tail))
        flux = lu(self.flux)
        shape = self._shape(spacing, lateral)
        if self.density is not None:
            n_beads = lu(self.density) * float(np.prod(np.asarray(shape) * np.asarray(spacing)))
        else:
            n_beads = lu(self.n_beads) * float(np.prod(shape)) / float(np.prod(self._work_volume(spacing, lateral)))
        kwargs = dict(shape=shape, spacing=spacing, psf=psf, n_beads=max(1, int(round(n_beads))),
                      bead_diameter=u(self.bead_diameter), flux=flux, flux_spread=u(self.flux_spread),
                      read_noise=u(self.read_noise))
        level, strength = lu(self.ambient_level), u(self.ambient_strength)
        if rng.random() < self.eight_bit_probability:
            # 8 bits span the beads: the glow is a few counts at the clipped bottom of the range
            gain = u(self.peak_counts) / max(flux * float(psf.max()), 1e-6)
            kwargs["detector"] = Detector(bits=8, gain=gain, floor=float(rng.integers(0, 2)))
            kwargs["read_noise"] = u(self.eight_bit_read_noise) / gain
            kwargs["ambient"] = AmbientLight(offset=u((0.0, 2.0)), level=lu(self.eight_bit_glow) / gain,
                                             strength=strength)
        else:
            kwargs["ambient"] = AmbientLight(offset=u(self.offset), level=level, strength=strength)
        return kwargs

    def _work_volume(self, spacing, lateral_fwhm):
        """Source voxels that cover ``work_shape`` working voxels (``n_beads`` is counted per that volume)."""
        step = 0.5 * lateral_fwhm
        return tuple(w * max(step, d / 3.0) / d for w, d in zip(self.work_shape, spacing))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["psf"] = None if self.psf is None else "array"
        return d


def _scan_tail(psf: np.ndarray, length: float) -> np.ndarray:
    """Blur a PSF along x with a one-sided exponential of ``length`` pixels (a point scanner's detector lag)."""
    from scipy import ndimage
    k = np.exp(-np.arange(int(np.ceil(6 * length)) + 1) / length)
    k = np.concatenate([np.zeros(k.size - 1), k])  # centred kernel, light trailing after the peak
    out = ndimage.convolve1d(psf.astype(np.float64), k / k.sum(), axis=2, mode="constant")
    return centre_psf(out.astype(np.float32))


@dataclasses.dataclass
class Pair:
    """One training volume: normalised input and target, and what made them.

    ``sigma`` is the per-axis sigma (voxels) of the target's isotropic
    Gaussian, for refiners that render it after the network (None
    otherwise). ``loss_scale`` is the target's typical bead peak: losses are
    divided by it, so that every volume weighs alike whatever the ratio of
    its target's peaks to its input's (which changes by orders of magnitude
    with the sampling and the optics).
    """

    input: np.ndarray
    target: np.ndarray
    spacing: tuple
    scale: float
    truth: np.ndarray
    sigma: np.ndarray | None = None
    loss_scale: float = 1.0


def make_pair(ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, seed: int,
              input_transform: str | None = None, output_transform: str | None = None,
              grid: dict | None = None) -> Pair:
    """Simulate one volume, run the preceding stages on it, transform and normalise input and target alike.

    With ``output_transform="render"`` the target is what the stages
    promise at inference: every bead an isotropic Gaussian of the lateral
    FWHM of the PSF the stages used (estimated from the beads, so it already
    holds the bead's size; a given PSF widens it by the bead), holding the
    light that PSF can explain: the bead's flux times the share of the true
    PSF inside the box of the PSF used (a PSF estimated from the beads of
    one volume misses the far wings, and light the data cannot show is not
    restored; :mod:`restore3d.selfcheck` checks the same). With ``grid``
    (:func:`restore3d.refiner.grid.working_grid` options) input and target
    are on the refiner's working grid, the pair's ``spacing`` and ``truth``
    positions too.
    """
    rng = np.random.default_rng(seed)
    kwargs = ranges.sample(rng)
    sim = simulate_beads(**kwargs, seed=rng)
    psf, estimated = sim.psf, False
    if len(prefix):
        # drawn after the simulation, so a zero probability leaves every pair as it was
        given = ranges.given_psf_probability > 0 and rng.random() < ranges.given_psf_probability
        res = None
        if not given:
            try:
                res = prefix.run(sim.raw, spacing=sim.spacing, seed=seed)
                estimated = res.psf is not None
            except ValueError:
                pass  # too few isolated beads to estimate a PSF: give the stages the true one
        if res is None:
            try:
                res = prefix.run(sim.raw, spacing=sim.spacing, psf=crop_psf(sim.psf, sim.raw.shape), seed=seed)
            except ValueError as exc:  # e.g. an aberrated PSF split into two lobes, refused as a given PSF
                raise UnusableSimulation(f"seed {seed}: the stages took neither an estimated nor the true "
                                         f"PSF ({exc})") from exc
        psf = res.psf if res.psf is not None else sim.psf
        inp = apply_input_transform(np.asarray(res), sim.spacing, input_transform, psf)
    else:
        inp = apply_input_transform(sim.raw, sim.spacing, input_transform, sim.psf)
    target, sigma, spacing, truth = sim.target, None, sim.spacing, sim.truth
    if output_transform in RENDERING:
        fw = lateral_fwhm(psf, sim.spacing)
        light = float(sim.params["detector"]["gain"]) * _box_share(sim.psf, psf.shape)
        shape = sim.raw.shape
        if grid is not None:
            g = working_grid(sim.raw.shape, sim.spacing, fw, **grid)
            inp = g.to_work(inp)
            truth = sim.truth.copy()
            moved = g.positions_to_work(np.stack([truth["z"], truth["y"], truth["x"]], axis=1))
            for a, ax in enumerate("zyx"):
                truth[ax] = moved[:, a]
                truth[ax + "_um"] = moved[:, a] * g.spacing[a]
            shape, spacing = g.shape, g.spacing
            light /= g.volume_ratio  # the working grid holds source light per source voxel
        target = render_target(truth, shape, spacing, fwhm_um=fw,
                               bead_diameter=0.0 if estimated else kwargs["bead_diameter"]) * np.float32(light)
        sigma = target_sigma(spacing, fw) if output_transform == "render" else render_sigma(fw, spacing, spacing)
    elif output_transform is not None:
        raise ValueError(f"unknown output transform {output_transform!r}; expected one of {OUTPUT_TRANSFORMS}")
    off, scale = normalizer.stats(inp)
    target = (target / scale).astype(np.float32)
    return Pair(input=((inp - off) / scale).astype(np.float32), target=target, spacing=spacing, scale=scale,
                truth=truth, sigma=sigma, loss_scale=typical_peak(target) or 1.0)


class UnusableSimulation(ValueError):
    """A simulated volume the preceding stages cannot run on (:func:`make_pairs` draws another)."""


def _box_share(psf: np.ndarray, shape) -> float:
    """Share of a unit-sum PSF's light inside a centred box of ``shape``."""
    sl = tuple(slice(max(0, n // 2 - m // 2), n // 2 + m // 2 + 1) for n, m in zip(psf.shape, shape))
    return float(psf[sl].sum(dtype=np.float64) / psf.sum(dtype=np.float64))


#: Volumes drawn in place of an unusable one before giving up.
_REDRAWS = 5


def make_pairs(n: int, ranges: SimulationRanges, prefix: Pipeline, normalizer: Normalizer, *,
               seed: int, progress: bool = False, desc: str = "simulating",
               input_transform: str | None = None, output_transform: str | None = None,
               grid: dict | None = None) -> list[Pair]:
    """``n`` pairs from the seeds ``seed, seed + 1, ...``.

    A seed whose volume the stages cannot run on (:class:`UnusableSimulation`)
    is replaced by ``seed + i + k * 2**40`` (k = 1, 2, ...: far from every
    other seed), so each pair still depends on its own seed alone.
    """
    from tqdm.auto import tqdm
    pairs = []
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        for k in range(_REDRAWS + 1):
            try:
                pairs.append(make_pair(ranges, prefix, normalizer, seed + i + k * 2 ** 40, input_transform,
                                       output_transform, grid))
                break
            except UnusableSimulation as exc:
                if k == _REDRAWS:
                    raise
                log.info("%s; drawing another volume", exc)
    return pairs


def random_patch(pair: Pair, patch: tuple, rng: np.random.Generator, faces: float = 0.0):
    """A random crop of a pair with random flips (and a quarter turn when dy == dx).

    A pair smaller than ``patch`` along an axis is padded with empty space.
    With probability ``faces`` the crop along z is flush with the volume's
    first or last plane (each half the time). Inference meets the stack's
    faces on every volume; uniform crops of 32 planes from a 46-plane
    training volume show them in 2 of 15 patches, their other z ends
    cutting the volume where light goes on beyond.
    """
    if not 0.0 <= float(faces) <= 1.0:
        raise ValueError(f"faces is a probability in [0, 1], got {faces!r}")
    short = [(0, max(0, p - n)) for n, p in zip(pair.input.shape, patch)]
    if any(b for _, b in short):
        pair = dataclasses.replace(pair, input=np.pad(pair.input, short), target=np.pad(pair.target, short))
    shape = pair.input.shape
    # no draw when faces == 0: the crops are then those drawn before the option
    flush = float(faces) > 0 and rng.random() < float(faces)
    sl = []
    for axis, (n, p) in enumerate(zip(shape, patch)):
        p = min(p, n)
        if axis == 0 and flush:
            s = (n - p) * int(rng.integers(0, 2))
        else:
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
