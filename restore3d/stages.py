"""Pipeline stages: thin wrappers that call the array functions.

Every stage stores its constructor arguments unchanged (so pipelines
round-trip through JSON) and does its work in ``__call__(volume, ctx)``.
"""
from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from . import background as _bg
from .cleanup import remove_specks, speck_reference
from .blind import blind_richardson_lucy
from .deconvolution import richardson_lucy
from .detect import positions_of
from .pipeline import RunContext, Stage
from .psf import crop_psf, fwhm, given_psf, make_psf, resolution_um
from .psf_estimation import estimate_psf
from .support import check_min_support, remove_unsupported

__all__ = ["SubtractBackground", "EstimatePSF", "RichardsonLucy", "BlindDeconvolution", "FitBeads",
           "RemoveSpecks", "RemoveUnsupported"]


def _defaults(func):
    """Keyword defaults of an array function: the one source for its stage's defaults."""
    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


_RL = _defaults(richardson_lucy)
_BLIND = _defaults(blind_richardson_lucy)
_EST = _defaults(estimate_psf)


def _stage_psf(stage, ctx, volume):
    """The PSF a deconvolution stage uses: its own, else the run's."""
    if stage.psf is not None:
        psf = given_psf(stage.psf, volume_shape=volume.shape, name=f"{type(stage).__name__}.psf")
    elif ctx.psf is not None:
        psf = ctx.psf
    else:
        raise ValueError(
            f"{type(stage).__name__} needs a PSF: put EstimatePSF() before it in the pipeline, "
            f"pass psf= to Pipeline.run, or give {type(stage).__name__}(psf=array)")
    return psf


def _psf_halo(psf, factor=1.0):
    return tuple(int(np.ceil(factor * (p // 2))) for p in psf.shape)


def _fft_grid_voxels(shape, psf) -> float:
    """Voxels of the padded FFT grid Richardson-Lucy works on (a PSF of 17 x 33 x 33 assumed when unknown)."""
    from scipy import fft as sfft
    pshape = (17, 33, 33) if psf is None else np.shape(psf)
    # the object's domain is the volume plus half the PSF on each side, and the grid holds one more half
    return float(np.prod([sfft.next_fast_len(int(n) + 2 * (p // 2), real=True) for n, p in zip(shape, pshape)]))


class SubtractBackground(Stage):
    """Remove ambient light (camera offset, glow, haze) with :func:`restore3d.background.subtract_background`.

    Parameters
    ----------
    method : {"wavelet", "rolling_ball", "percentile"}
    clip : bool
        Clip negative values to zero.
    options : dict, optional
        Extra keyword arguments of the chosen estimator, e.g.
        ``{"scale": [4.0, 1.6, 1.6]}`` (micrometres) for ``"wavelet"`` or
        ``{"percentile": 5}`` for ``"percentile"``.
    percentile : float, optional
        Shortcut for ``options={"percentile": ...}`` with ``method="percentile"``.

    The estimated background level and the noise of the volume are reported
    under the step's name (``result.info["background"]``); the
    background-free volume and the noise level go to the run context for
    later stages.
    """

    default_name = "background"
    bytes_per_voxel = 28.0  # measured: 4.8-6.3 x the float32 volume

    def __init__(self, method: str = "wavelet", *, clip: bool = True, options: dict | None = None,
                 percentile: float | None = None):
        self.method = method
        self.clip = clip
        self.options = options
        self.percentile = percentile

    def _options(self):
        opts = dict(self.options or {})
        if self.percentile is not None:
            if self.method != "percentile":
                raise ValueError(f"percentile={self.percentile!r} only applies to method='percentile', "
                                 f"not {self.method!r}")
            opts["percentile"] = self.percentile
        return opts

    # --- chunked processing (restore3d.chunked)
    def freeze(self, sample, ctx):
        """Fix the global statistics (noise level, constant offset) measured on ``sample``."""
        opts = self._options()
        if self.method == "wavelet" and "noise" not in opts:
            opts["noise"] = _bg.estimate_noise(sample)
        if self.method == "percentile" and "level" not in opts:
            opts["level"] = float(np.percentile(sample, opts.pop("percentile", 50.0)))
        return SubtractBackground(self.method, clip=self.clip, options=opts)

    def alignment(self, spacing):
        """Wavelet blocks of ``2**level`` voxels: chunks must start on that grid."""
        if self.method != "wavelet":
            return (1, 1, 1)
        opts = self._options()
        return _bg.wavelet_blocks(spacing, scale=opts.get("scale"), wavelet=opts.get("wavelet", "db1"),
                                  axial=opts.get("axial", "planewise"))

    def halo(self, spacing, psf):
        opts = self._options()
        return _bg.context_voxels(self.method, spacing, scale=opts.get("scale"), radius=opts.get("radius"),
                                  axial=opts.get("axial", "planewise"))

    def __call__(self, volume: np.ndarray, ctx: RunContext) -> np.ndarray:
        bg = _bg.estimate_background(volume, ctx.spacing, method=self.method, **self._options())
        out = volume - bg
        if self.clip:
            np.maximum(out, 0, out=out)
        ctx.noise_sigma = _bg.estimate_noise(volume)
        ctx.report({"method": self.method, "mean": float(bg.mean()), "min": float(bg.min()),
                    "max": float(bg.max()), "noise_sigma": ctx.noise_sigma})
        ctx.background_free = out
        return out


class EstimatePSF(Stage):
    """Estimate the PSF from the beads of the volume (:func:`restore3d.psf_estimation.estimate_psf`).

    The volume passes through unchanged; the PSF goes to ``ctx.psf`` for the
    deconvolution stages and onto the :class:`~restore3d.pipeline.Result`,
    its statistics to the step's report (``result.info["psf"]``).

    Parameters
    ----------
    half_size_um, snr, model, model_params, max_beads
        As in :func:`~restore3d.psf_estimation.estimate_psf`.
    fallback : dict, optional
        A PSF model (``{"model": "widefield", "na": 1.1, "wavelength": 0.52,
        "n_immersion": 1.333}``) used, with a warning, when no usable bead
        is found; without it the run stops with the estimator's error.
    keep_given : bool
        When the run already has a PSF (``Pipeline.run(psf=...)``), keep it
        and skip the estimation.
    """

    default_name = "psf"
    bytes_per_voxel = 32.0  # measured: 3.8 x the float32 volume at 512^2, 7.2 x at 256^2 (fixed costs)

    def __init__(self, *, half_size_um=None, snr: float = _EST["snr"], model=None,
                 model_params: dict | None = None, max_beads: int = _EST["max_beads"],
                 fallback: dict | None = None, keep_given: bool = True):
        self.half_size_um = half_size_um
        self.snr = snr
        self.model = model
        self.model_params = model_params
        self.max_beads = max_beads
        self.fallback = fallback
        self.keep_given = keep_given

    def freeze(self, sample, ctx):
        """Estimate the PSF once, on the sample; chunks then only use it."""
        self(sample, ctx)
        return "passthrough"

    def __call__(self, volume, ctx: RunContext):
        if ctx.psf is not None and self.keep_given:
            ctx.logger.info("EstimatePSF: keeping the PSF given to the run")
            ctx.report({"source": "given", "fwhm_um": fwhm(ctx.psf, ctx.spacing).tolist()})
            return volume
        try:
            est = estimate_psf(volume, ctx.spacing, half_size_um=self.half_size_um, snr=self.snr,
                               model=self.model, model_params=self.model_params,
                               max_beads=self.max_beads, return_info=True)
        except ValueError as exc:
            if not self.fallback:
                raise
            spec = dict(self.fallback)
            ctx.logger.warning("PSF estimation failed (%s); using the fallback model %s", exc, spec)
            ctx.psf = make_psf(ctx.spacing, model=spec.pop("model", "widefield"), **spec)
            ctx.report({"source": "fallback", "fwhm_um": fwhm(ctx.psf, ctx.spacing).tolist()})
            return volume
        ctx.psf = est.psf
        ctx.report({"source": "estimated", "n_beads": est.n_beads, "n_candidates": est.n_candidates,
                    "rejected": est.rejected, "fwhm_um": est.fwhm_um.tolist(), "model_fit": est.model_fit})
        return volume


class RichardsonLucy(Stage):
    """Richardson-Lucy deconvolution (:func:`restore3d.deconvolution.richardson_lucy`).

    Uses ``psf`` when given, else the run's PSF (given to ``run`` or
    estimated by :class:`EstimatePSF`). Parameters as in the function; the
    run's device, threads and progress setting apply.
    """

    default_name = "rl"

    def memory_bytes(self, shape, spacing, psf=None):
        # about 4.8 float32 arrays of the padded FFT grid at the peak (34 x 512 x 512: 9.9x the volume
        # measured, less the data and the output): the estimate, its last value and last change, the OTF, one working buffer the
        # projections run in (restore3d._slab_fft), slabs and the heap's slack; the weights are a small
        # table (restore3d._border_weights; benchmarks/RESULTS.md, section 5); 7 counted
        return 7 * 4.0 * _fft_grid_voxels(shape, psf)

    def __init__(self, iterations: int = _RL["iterations"], *, acceleration: str = _RL["acceleration"],
                 boundary: str = _RL["boundary"], tv: float = _RL["tv"],
                 stop_tol: float | None = _RL["stop_tol"], backprojector: str = _RL["backprojector"],
                 background: float = _RL["background"], psf=None, init=_RL["init"], alphas=None):
        self.iterations = iterations
        self.acceleration = acceleration
        self.boundary = boundary
        self.tv = tv
        self.stop_tol = stop_tol
        self.backprojector = backprojector
        self.background = background
        self.psf = psf
        self.init = init
        self.alphas = alphas

    def __call__(self, volume, ctx: RunContext):
        psf = _stage_psf(self, ctx, volume)
        out, info = richardson_lucy(volume, psf, iterations=self.iterations, acceleration=self.acceleration,
                                    boundary=self.boundary, tv=self.tv, stop_tol=self.stop_tol,
                                    backprojector=self.backprojector, background=self.background,
                                    spacing=ctx.spacing, device=ctx.device, progress=ctx.progress,
                                    return_info=True, init=self.init, alphas=self.alphas)
        ctx.report({"iterations": info.iterations, "converged": info.converged, "seconds": info.seconds,
                    "alphas": info.alphas, "init_level": info.init_level})
        return out

    def freeze(self, sample, ctx):
        """Record the initial level and the extrapolation weights on the sample; chunks replay them.

        Unconverged RL depends on its start, and Biggs-Andrews weights are
        global dot products: fixed, every chunk runs the same local operator.
        """
        psf = _stage_psf(self, ctx, sample)
        _, info = richardson_lucy(sample, psf, iterations=self.iterations, acceleration=self.acceleration,
                                  boundary=self.boundary, tv=self.tv, backprojector=self.backprojector,
                                  background=self.background, spacing=ctx.spacing, device=ctx.device,
                                  return_info=True, init=self.init, alphas=self.alphas)
        params = self.get_params()
        params.update(init=info.init_level, alphas=info.alphas, stop_tol=None,
                      iterations=info.iterations)
        return RichardsonLucy(**params)

    def halo(self, spacing, psf):
        # Iterations spread information beyond one PSF, and each chunk's object lives on a domain
        # extended past the chunk's edges, where it can absorb light that belongs to its
        # neighbours. With the start level and the Biggs-Andrews weights frozen (freeze), a halo of
        # the PSF's full size kept even 4 x 8 x 8-voxel chunks within 0.3 % of the whole result's
        # maximum (half the PSF: 6.7 %; 16 x 32 x 32 chunks 0.17 % vs 0.7 %).
        return _psf_halo(psf if self.psf is None else np.asarray(self.psf), 2.0)


class BlindDeconvolution(Stage):
    """Blind Richardson-Lucy (:func:`restore3d.deconvolution.blind_richardson_lucy`).

    Starts from ``psf``, else the run's PSF, else the model ``initial``
    (default a widefield model); the refined PSF replaces ``ctx.psf``.
    """

    default_name = "blind_rl"

    def memory_bytes(self, shape, spacing, psf=None):
        return 18 * 4.0 * _fft_grid_voxels(shape, psf)  # RL's arrays and the PSF's own updates

    def __init__(self, iterations: int = _BLIND["iterations"], *,
                 object_iterations: int = _BLIND["object_iterations"],
                 psf_iterations: int = _BLIND["psf_iterations"], boundary: str = _BLIND["boundary"],
                 psf=None, initial: dict | None = None):
        self.iterations = iterations
        self.object_iterations = object_iterations
        self.psf = psf
        self.psf_iterations = psf_iterations
        self.boundary = boundary
        self.initial = initial

    def __call__(self, volume, ctx: RunContext):
        if self.psf is None and ctx.psf is None:
            from .optics import DEFAULT_OPTICS
            spec = dict(self.initial or DEFAULT_OPTICS)
            start = crop_psf(make_psf(ctx.spacing, model=spec.pop("model", "widefield"), **spec),
                             volume.shape)
        else:
            start = _stage_psf(self, ctx, volume)
        out, psf, info = blind_richardson_lucy(
            volume, start, iterations=self.iterations, object_iterations=self.object_iterations,
            psf_iterations=self.psf_iterations, boundary=self.boundary, device=ctx.device,
            progress=ctx.progress, return_info=True)
        ctx.psf = psf
        ctx.report({"iterations": info.iterations, "seconds": info.seconds,
                    "fwhm_um": fwhm(psf, ctx.spacing).tolist()})
        return out


def _add_distinct(kept, more, radius_um, spacing) -> np.ndarray:
    """``kept`` positions (voxels) plus those of ``more`` farther than ``radius_um`` (per axis) from all of them."""
    from scipy.spatial import cKDTree
    if len(kept) == 0 or len(more) == 0:
        return np.vstack([kept, more]) if len(more) else kept
    scale = np.asarray(spacing, float) / np.asarray(radius_um, float)
    dist, _ = cKDTree(kept * scale).query(more * scale)
    return np.vstack([kept, more[dist > 1.0]])


class FitBeads(Stage):
    """Fit every bead with the PSF and render the ideal volume (:mod:`restore3d.fitting`).

    The bead table goes to ``ctx.beads`` (and the :class:`Result`); the
    returned volume is :func:`~restore3d.target.render_target` of it: each
    bead an isotropic Gaussian of the PSF's lateral FWHM, flux kept, black
    background. The variance of an already subtracted background is the
    noise level :class:`SubtractBackground` measured in the run.

    Parameters
    ----------
    read_noise, min_significance, max_group, window_um
        As in :func:`~restore3d.fitting.fit_beads`.
    detect_on : {"both", "volume", "deconvolved"}
        Find the starting positions on the volume itself, on
        ``detect_iterations`` Richardson-Lucy iterations of it (separates
        close beads and lifts dim ones), or on both (default: the volume's
        candidates and those of the deconvolved volume farther than half a
        PSF FWHM from them; on leica-beads the deconvolved volume alone lost
        7 of the 65 beads the volume shows, on dim simulations the volume
        alone missed dim ones).
    detect_iterations : int
    detect_snr : float
        Candidates are maxima this many noise standard deviations above the
        measured noise floor (:func:`~restore3d.detect.detect_beads`); low,
        because each fit's significance (``min_significance`` standard
        errors of its flux) decides what is kept (benchmarks/RESULTS.md).
    fwhm_um : float, optional
        FWHM of the rendered beads; default the PSF's lateral FWHM.
    """

    default_name = "fit"
    chunkable = False

    def __init__(self, *, read_noise: float = 0.0, min_significance: float = 3.0, max_group: int = 6,
                 window_um=None, detect_on: str = "both", detect_iterations: int = 10,
                 detect_snr: float = 3.0, fwhm_um: float | None = None, psf=None):
        self.read_noise = read_noise
        self.detect_iterations = detect_iterations
        self.min_significance = min_significance
        self.max_group = max_group
        self.window_um = window_um
        self.detect_on = detect_on
        self.detect_snr = detect_snr
        self.fwhm_um = fwhm_um
        self.psf = psf

    def __call__(self, volume, ctx: RunContext):
        from .detect import detect_beads
        from .fitting import fit_beads
        from .target import render_target
        if self.detect_on not in ("both", "volume", "deconvolved"):
            raise ValueError(f"detect_on must be 'both', 'volume' or 'deconvolved', got {self.detect_on!r}")
        psf = _stage_psf(self, ctx, volume)
        variance = ctx.noise_sigma ** 2 if ctx.noise_sigma is not None else 0.0
        candidates = np.zeros((0, 3))
        if self.detect_on != "deconvolved":
            candidates = positions_of(detect_beads(volume, ctx.spacing, snr=self.detect_snr, measure=False))
        if self.detect_on != "volume":  # deconvolution adds the dim and the close beads the volume hides
            probe = richardson_lucy(volume, psf, iterations=self.detect_iterations, device=ctx.device)
            more = positions_of(detect_beads(probe, ctx.spacing, snr=self.detect_snr, measure=False))
            candidates = _add_distinct(candidates, more, 0.5 * resolution_um(psf, ctx.spacing), ctx.spacing)
        table = fit_beads(volume, psf, ctx.spacing, candidates=candidates, read_noise=self.read_noise,
                          variance_offset=max(variance - self.read_noise ** 2, 0.0),
                          min_significance=self.min_significance, max_group=self.max_group,
                          window_um=self.window_um)
        w = fwhm(psf, ctx.spacing)
        size = self.fwhm_um if self.fwhm_um is not None else float(np.nanmean(w[1:]))
        ctx.beads = table
        ctx.report({"n_beads": int(len(table)), "fwhm_um": size})
        return render_target(table, volume.shape, ctx.spacing, fwhm_um=size)

    def halo(self, spacing, psf):
        return _psf_halo(psf)

    def freeze(self, sample, ctx):
        raise ValueError("FitBeads does not run chunk-wise yet: process the volume whole, "
                         "or drop FitBeads from a chunked pipeline")


_SPECKS = _defaults(remove_specks)


class RemoveSpecks(Stage):
    """Set small, faint connected components to zero (:func:`restore3d.cleanup.remove_specks`).

    For after the refiner: it leaves isolated specks of amplified noise on
    dense volumes, which this removes (each far less light than a bead).
    ``scale`` and ``reference`` (the typical bead peak and light) are
    measured on the volume unless given; chunk-wise runs measure them once.
    Not in :func:`restore3d.default_pipeline`; add it with
    ``Pipeline(default_pipeline().steps + [("specks", RemoveSpecks())])``
    or in a JSON config. The run's report (``result.info["specks"]``) gives
    the components found and removed and the share of light removed.
    """

    default_name = "specks"

    def __init__(self, *, threshold: float = _SPECKS["threshold"], min_fraction: float = _SPECKS["min_fraction"],
                 scale: float | None = None, reference: float | None = None):
        self.threshold = threshold
        self.min_fraction = min_fraction
        self.scale = scale
        self.reference = reference

    def __call__(self, volume, ctx: RunContext):
        out, info = remove_specks(volume, threshold=self.threshold, min_fraction=self.min_fraction,
                                  scale=self.scale, reference=self.reference, return_info=True)
        ctx.report(dataclasses.asdict(info))
        return out

    def freeze(self, sample, ctx):
        """Measure the typical bead peak and light once on the sample; every chunk uses them."""
        if self.scale is not None and self.reference is not None:
            return self
        scale, reference = speck_reference(sample, threshold=self.threshold, scale=self.scale)
        params = self.get_params()
        params.update(scale=scale, reference=self.reference if self.reference is not None else reference)
        return RemoveSpecks(**params)

    def halo(self, spacing, psf):
        # a component must lie whole inside a chunk with its halo for the cut to be
        # the whole volume's: specks are a few voxels, beads about one PSF
        if psf is not None:
            return _psf_halo(psf, 1.0)
        return tuple(int(np.ceil(u / s)) for u, s in zip((1.5, 0.8, 0.8), spacing))


_SUPPORT = _defaults(remove_unsupported)


class RemoveUnsupported(Stage):
    """Remove the spots the data do not hold (:func:`restore3d.support.remove_unsupported`).

    For after any restoration (the refiner, RL, FitBeads): each spot's
    support, the background-free data's matched filter there over what the
    restored volume predicts, is compared with the typical bead's; a spot
    below ``min_support`` of it is set to zero. Needs a preceding
    :class:`SubtractBackground` and a PSF. The run's report
    (``result.info["support"]``) gives the spots examined and removed and
    the share of light removed.
    """

    default_name = "support"
    bytes_per_voxel = 12.0  # the restored copy, float32 views of the inputs and the removal's masks

    def __init__(self, *, min_support: float = _SUPPORT["min_support"], fraction: float = _SUPPORT["fraction"],
                 radius_um: float | None = None, typical_support: float | None = None):
        check_min_support(min_support)
        self.min_support = min_support
        self.fraction = fraction
        self.radius_um = radius_um
        self.typical_support = typical_support

    def _needs(self, ctx):
        if ctx.background_free is None or ctx.psf is None:
            raise ValueError("RemoveUnsupported compares the restoration with the background-free data through "
                             "the PSF: run it after SubtractBackground and a PSF (EstimatePSF or psf=)")

    def __call__(self, volume, ctx: RunContext):
        self._needs(ctx)
        out, info = remove_unsupported(volume, ctx.background_free, ctx.psf, ctx.spacing,
                                       min_support=self.min_support, fraction=self.fraction,
                                       radius_um=self.radius_um, typical_support=self.typical_support,
                                       return_info=True)
        ctx.report(dataclasses.asdict(info))
        if info.n_removed:
            ctx.logger.info("support: %d of %d spots not in the data removed (%.2f %% of the light)",
                            info.n_removed, info.n_spots, 100 * info.light_removed)
        return out

    def freeze(self, sample, ctx):
        """Measure the typical support once on the sample; every chunk uses it."""
        if self.typical_support is not None:
            return self
        self._needs(ctx)
        _, info = remove_unsupported(sample, ctx.background_free, ctx.psf, ctx.spacing,
                                     min_support=self.min_support, fraction=self.fraction, return_info=True)
        return RemoveUnsupported(**{**self.get_params(), "typical_support": info.typical_support})

    def halo(self, spacing, psf):
        # a spot's support reads the data over the PSF's autocorrelation (twice the PSF)
        if psf is not None:
            return _psf_halo(psf, 2.0)
        return tuple(int(np.ceil(u / s)) for u, s in zip((3.0, 1.6, 1.6), spacing))
