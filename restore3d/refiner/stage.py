"""The refiner as a pipeline stage: shipped weights, any checkpoint, adaptation to one microscope."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .._checks import as_spacing, as_volume
from ..pipeline import RunContext, Stage

__all__ = ["Refiner", "PRETRAINED", "SHIPPED", "DEFAULT_WEIGHTS"]

log = logging.getLogger(__name__)

#: The shipped weight sets by name (``Refiner(name)``): "pretrained-render", the default (a small network
#: trained on widefield, confocal and light-sheet simulations; predicts each bead's object and renders
#: the target after it: round beads with about the data's light on real confocal and light-sheet
#: stacks, fewer dim beads found on a dim NA 1.4 volume), and "pretrained" (the first default: trained on
#: widefield simulations, its input rendered at the target resolution; rounder beads on simulated
#: widefield volumes, flattened ones on real confocal beads; benchmarks/RESULTS.md, sections 1-2).
SHIPPED = {"pretrained": Path(__file__).with_name("weights") / "default.json",
           "pretrained-render": Path(__file__).with_name("weights") / "render.json"}
#: The weights :func:`restore3d.default_pipeline`, ``Refiner()`` and the command line use.
DEFAULT_WEIGHTS = "pretrained-render"
#: The checkpoint of the "pretrained" weight set.
PRETRAINED = SHIPPED["pretrained"]


class Refiner(Stage):
    """A 3D U-Net that turns the classical stages' output into round beads on black.

    Parameters
    ----------
    weights : "pretrained-render", "pretrained" or path
        One of the shipped weight sets (:data:`SHIPPED`; default
        :data:`DEFAULT_WEIGHTS`, trained by
        ``benchmarks/train_refiner.py``, see benchmarks/RESULTS.md) or a
        checkpoint written by :func:`restore3d.refiner.training.train.train`
        (its ``.json`` or ``.pt``).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default the run's device.
    tile_shape : (Z, Y, X) ints, optional
        Tile size for volumes above ``max_voxels`` (0 = the whole axis);
        default the even split that keeps every tile under ``max_voxels``.
    max_voxels : int
        Larger volumes (on the network's grid) are processed in overlapping
        tiles of at most this many voxels: the memory bound (about 44 bytes
        per voxel of a tile for the default network in float32, each level
        run in slabs, :mod:`restore3d.refiner.streaming`). A 34 x 512 x 512
        field's working grid (7.2 million voxels) runs as one tile.
    precision : {"auto", "fp32", "bf16"}
        Inference precision; "auto" uses bfloat16 where the CPU (AMX,
        AVX512-BF16) or GPU computes it natively, float32 elsewhere.
    intensity : (offset, scale), optional
        Fixed normalisation instead of the one measured on each volume
        (set by :meth:`freeze` so chunks of a large volume share it).
    check : bool
        Hold every refined volume to the promise of the restoration target
        (:func:`restore3d.selfcheck.check_restoration`: roundness, width,
        flux, consistency with the background-free data); the result goes
        to ``result.info["refiner"]["self_check"]``. Beads flattened,
        stretched, too narrow or too wide are logged as one warning saying
        what to do; the light and consistency measures are logged at INFO
        (they count the light the PSF used explains, which lacks the far
        wings of an estimated PSF). Needs a preceding
        :class:`~restore3d.SubtractBackground` and a PSF.
    calibrate : bool
        Refiners that render the target's kernel after their bead object:
        measure the width the object keeps on the volume's isolated beads and
        narrow the kernel by it, per axis, so beads come out at the target's
        FWHM (:mod:`restore3d.refiner.calibration`; reported in
        ``result.info["refiner"]["rendering"]``). No effect on other refiners.
    kernel_um : (sz, sy, sx) floats, optional
        A fixed rendered kernel (sigma, micrometres) instead of the measured
        one (set by :meth:`freeze` so chunks of a large volume share it).
    light_gain : float, optional
        Refiners on a working grid: the scale of the rendered samples
        (default measured on each volume; set by :meth:`freeze` so chunks of
        a large volume share it).
    round_beads : bool
        Refiners that render the target's kernel after their bead object:
        before rendering, make each bead's object as extended along z as
        across, its light and centre kept
        (:func:`restore3d.refiner.rounding.round_bead_objects`; reported in
        ``result.info["refiner"]["rendering"]["rounding"]``). Without it dim
        beads come out long (benchmarks/RESULTS.md section 7). No effect on
        other refiners.

    Notes
    -----
    The network expects what its training pipeline fed it (recorded in
    the checkpoint's ``prefix``); a different sequence of preceding stages is
    reported with a warning. Volumes whose spacing lies outside the
    training range are resampled into it and back.
    """

    default_name = "refiner"

    def __init__(self, weights=DEFAULT_WEIGHTS, *, device: str | None = None,
                 tile_shape: list | None = None, max_voxels: int = 8_000_000, intensity=None,
                 precision: str = "auto", check: bool = True, calibrate: bool = True, kernel_um=None,
                 light_gain: float | None = None, round_beads: bool = True):
        self.weights = weights
        self.round_beads = round_beads
        self.check = check
        self.calibrate = calibrate
        self.kernel_um = None if kernel_um is None else [float(v) for v in kernel_um]
        self.light_gain = None if light_gain is None else float(light_gain)
        self.precision = precision
        self.device = device
        self.tile_shape = tile_shape
        self.max_voxels = max_voxels
        self.intensity = intensity

    # ------------------------------------------------------------------ constructors
    @classmethod
    def pretrained(cls, name: str = DEFAULT_WEIGHTS, **kwargs) -> "Refiner":
        """A refiner whose weights ship inside the package (``name`` one of :data:`SHIPPED`)."""
        if name not in SHIPPED:
            raise ValueError(f"no shipped refiner weights named {name!r}; shipped: {sorted(SHIPPED)}")
        return cls(name, **kwargs)

    @classmethod
    def load(cls, path, **kwargs) -> "Refiner":
        """A refiner from a checkpoint file (``.json`` or ``.pt``); checked on first use."""
        path = Path(path)
        from .checkpoint import read_meta
        read_meta(path)  # fail early on a wrong file
        return cls(str(path), **kwargs)

    # ------------------------------------------------------------------ model
    @property
    def checkpoint_path(self) -> Path:
        """The checkpoint this stage uses (a shipped one for a name of :data:`SHIPPED`)."""
        return SHIPPED[self.weights] if self.weights in SHIPPED else Path(self.weights)

    def network(self):
        """``(model, meta)``: the network and its checkpoint description, loaded once (SHA-256 checked)."""
        key = (str(self.checkpoint_path),)
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != key:
            from .checkpoint import load_checkpoint
            path = self.checkpoint_path
            if self.weights in SHIPPED and not path.exists():
                raise ValueError(f"the shipped refiner weights are missing from the package ({path}); "
                                 "reinstall restore3d or pass Refiner.load(PATH)")
            model, meta = load_checkpoint(path)
            self._cache = (key, model, meta)
        return self._cache[1], self._cache[2]

    @property
    def renders(self) -> bool:
        """Whether the network predicts bead objects and renders the target's kernel after them.

        Read from the checkpoint's description (no network loaded). Such a
        refiner is followed by :class:`~restore3d.RemoveUnsupported` in
        :func:`restore3d.default_pipeline` and the napari widget.
        """
        from .checkpoint import read_meta
        from .transforms import RENDERING
        return read_meta(self.checkpoint_path).get("output_transform") in RENDERING

    @property
    def meta(self) -> dict:
        """The checkpoint's JSON description."""
        return self.network()[1]

    #: Memory of the network per voxel of a tile and per base channel (bytes, batch norms folded, each
    #: level in slabs, decoder outputs written over their skips): the shipped network (8 base channels,
    #: depth 3) measured 43 per voxel in float32 on a 64 x 336 x 336 tile (benchmarks/RESULTS.md, section 5),
    #: counted as 58 (as measured before the decoder outputs went over their skips): with 44 the budget let a
    #: 71 x 1024 x 1024 field's refiner run whole and peak at 3.3 GB under a 3 GB budget. bfloat16 holds its
    #: activations in half the bytes and is counted as float32 (not measured: the machines measured on
    #: computed no bfloat16 at the time).
    network_bytes_per_channel: dict = {"bf16": 7.25, "fp32": 7.25}

    def memory_bytes(self, shape, spacing, psf=None) -> float:
        """The network on its tiles, the working grid's arrays and the self-check's (bytes)."""
        from .inference import resample_spacing, working_grid_of
        model, meta = self.network()
        voxels = float(np.prod(shape))
        if meta.get("grid"):
            if psf is not None:
                work = float(np.prod(working_grid_of(meta, shape, spacing, psf).shape))
            else:
                work = voxels * float(meta["grid"].get("max_growth", 8.0))
        else:
            zoom = np.asarray(spacing, float) / np.asarray(resample_spacing(spacing, meta.get("spacing_range")))
            work = voxels * float(np.prod(zoom))
        from .precision import resolve_precision
        precision = resolve_precision(self.precision, self.device or "cpu")
        per_voxel = self.network_bytes_per_channel[precision] * model.config.base_channels
        least = min(work, float(self.max_voxels))
        tile = least * 1.15  # tiles are rounded up to the network's grid
        # a small tile's finest skip is held whole (restore3d.refiner.streaming.KEEP_FINEST_BYTES): counted
        # wherever the unrounded tile may be held, at the rounded tile's size (never under the need)
        from .streaming import finest_skip_bytes, keeps_finest
        held = finest_skip_bytes(model.config, (1, 1, tile)) if keeps_finest(model.config, (1, 1, least)) else 0.0
        # the working grid's arrays (the normalised grid and the blended output during the pass, the object and
        # its rendering after it: 3 counted; a 34 x 1024^2 field measured 0.85 of this estimate frozen,
        # benchmarks/RESULTS.md section 5); the self-check's and the kernel measurement's (a rendering and
        # ideal beads)
        from .transforms import RENDERING
        measured = 6 * self.check + 3 * (self.calibrate and meta.get("output_transform") in RENDERING)
        return per_voxel * tile + held + 3 * 4.0 * work + measured * 4.0 * voxels

    def halo(self, spacing, psf) -> tuple[int, int, int]:
        from .inference import working_grid_of
        from .transforms import extra_halo
        model, meta = self.network()
        halo = np.asarray(model.config.receptive_halo(), float)
        grid = working_grid_of(meta, (64, 64, 64), spacing, psf) if psf is not None else None
        if grid is not None:  # the network's context is counted in working voxels
            halo = halo * np.asarray(grid.spacing) / np.asarray(spacing) + 1
        return tuple(int(np.ceil(h)) for h in halo + extra_halo(meta, spacing, psf))

    def alignment(self, spacing) -> tuple[int, int, int]:
        return self.network()[0].config.multiple

    # ------------------------------------------------------------------ running
    def restore(self, volume: np.ndarray, spacing, *, psf=None, device=None, progress: bool = False,
                info: dict | None = None, part_of=None) -> np.ndarray:
        """Apply the network to a volume that already went through the preceding stages.

        ``psf``: the PSF those stages used (needed by refiners that render the
        target's isotropic kernel, ``meta["output_transform"]``, or their
        input at the target resolution, ``meta["input_transform"]``).
        ``info``: a dict filled with the rendering's report. ``part_of``: where
        the volume starts in a whole one it was cut from, and that one's
        shape (chunk-wise runs).
        """
        from .inference import refine
        model, meta = self.network()
        return refine(as_volume(volume), as_spacing(spacing), model=model, meta=meta, psf=psf,
                      device=device or self.device, tile_shape=self.tile_shape, max_voxels=self.max_voxels,
                      intensity=self.intensity, precision=self.precision, progress=progress,
                      calibrate=self.calibrate, kernel_um=self.kernel_um, info=info, part_of=part_of,
                      light_gain=self.light_gain, round_beads=self.round_beads)

    def freeze(self, sample, ctx):
        """Measure the intensity normalisation (and a rendering refiner's kernel and light) once on the sample.

        Chunks then lay the whole volume's working grid (``ctx.part_of``)
        and render alike, so a chunk-wise run equals a whole-volume run with
        the same frozen values away from chunk borders (benchmarks/RESULTS.md
        section 5).
        """
        from .checkpoint import normalizer_of
        from .inference import working_grid_of
        from .transforms import RENDERING, apply_input_transform
        model, meta = self.network()
        inp = apply_input_transform(sample, ctx.spacing, meta.get("input_transform"), ctx.psf)
        grid = working_grid_of(meta, inp.shape, ctx.spacing, ctx.psf)
        stats = normalizer_of(meta).stats(inp if grid is None else grid.to_work(inp))
        intensity = [float(stats[0]), float(stats[1])]
        kernel, gain = self.kernel_um, self.light_gain
        rendering = meta.get("output_transform") in RENDERING
        if rendering and ((kernel is None and self.calibrate) or (gain is None and grid is not None)):
            from .inference import refine
            info = {}  # the kernel and the light scale measured on the sample, rendered alike in every chunk
            refine(as_volume(sample), ctx.spacing, model=model, meta=meta, psf=ctx.psf,
                   device=self.device or ctx.device, tile_shape=self.tile_shape, max_voxels=self.max_voxels,
                   intensity=intensity, precision=self.precision, info=info, calibrate=self.calibrate,
                   kernel_um=kernel, round_beads=self.round_beads)
            if kernel is None and info["rendering"]["calibrated"]:
                from ..target import FWHM_PER_SIGMA
                kernel = [v / FWHM_PER_SIGMA for v in info["rendering"]["kernel_fwhm_um"]]
            if gain is None and grid is not None:
                gain = info["rendering"]["light_gain"]
        return Refiner(self.weights, device=self.device, tile_shape=self.tile_shape,
                       max_voxels=self.max_voxels, intensity=intensity, precision=self.precision, check=False,
                       calibrate=False, kernel_um=kernel, light_gain=gain, round_beads=self.round_beads)

    def __call__(self, volume, ctx: RunContext):
        _, meta = self.network()
        expected = [s["stage"] for s in meta.get("prefix", {}).get("steps", []) if s["stage"] != "passthrough"]
        ran = list(ctx.history)
        if ctx.psf_given:  # a PSF given by the user stands in for EstimatePSF
            expected = [s for s in expected if s != "EstimatePSF"]
            ran = [s for s in ran if s != "EstimatePSF"]
        if expected != ran:
            ctx.logger.warning("the refiner was trained after the stages %s but this run had %s before it; "
                               "its output may not be reliable", expected or "none", ran or "none")
        t0 = time.perf_counter()
        rendering = {}
        out = self.restore(volume, ctx.spacing, psf=ctx.psf, device=self.device or ctx.device,
                           progress=ctx.progress, info=rendering, part_of=ctx.part_of)
        report = {"weights": str(self.checkpoint_path), "sha256": meta.get("sha256"),
                  "seconds": time.perf_counter() - t0, **rendering}
        if self.check and ctx.background_free is not None and ctx.psf is not None:
            from ..memory import release_free_memory
            from ..selfcheck import check_restoration
            release_free_memory()  # the network's and the rendering's freed heap, before the check's arrays
            checked = check_restoration(out, ctx.background_free, ctx.psf, ctx.spacing)
            report["self_check"] = checked.as_dict()
            if not checked.shape_failed:
                # the light and consistency measures count only the light the PSF used explains: a PSF
                # estimated from the beads has no far wings, which a refiner may restore (the shipped one does)
                ctx.logger.info("refiner %s", checked.summary())
            else:
                other = [n for n in SHIPPED if n != self.weights]
                ctx.logger.warning("refiner %s. This refiner does not suit these data: try the other shipped "
                                   "weights (Refiner(%r), --refiner %s), adapt it to your microscope "
                                   "(restore3d train OUT --adapt-to STACK, or Refiner.adapt) or use the "
                                   "classical stages alone (--no-refiner)", checked.summary(), other[0],
                                   other[0])
        ctx.report(report)
        return out

    # ------------------------------------------------------------------ adaptation
    def adapt(self, volume, spacing, *, minutes: float = 3.0, steps: int | None = None, pool: int = 24,
              out=None, seed: int = 0, psf=None, device=None, progress: bool = False,
              consistency: float = 1.0) -> "Refiner":
        """Fine-tune this refiner to the microscope that recorded ``volume``.

        The PSF (estimated from the volume's beads unless given), the ambient
        light level and spread, the camera offset, the read noise, the bead
        density and the flux distribution are measured on the user's raw
        volume; training volumes are simulated with exactly those, passed
        through this refiner's own preceding stages, and the network is
        fine-tuned for at most ``minutes`` (or ``steps``).

        Parameters
        ----------
        volume : (Z, Y, X) ndarray
            A raw volume from the microscope.
        spacing : (dz, dy, dx) floats, micrometres
        minutes : float
            Time budget of the fine-tuning (simulation excluded).
        steps : int, optional
            Step budget (default: as many as fit in ``minutes``).
        pool : int
            Number of simulated volumes.
        out : path, optional
            Where to write the adapted checkpoint (default a temporary folder).
        seed : int
        psf : ndarray, optional
            The PSF, when known, instead of estimating it.
        consistency : float
            Weight of the self-supervised loss on the user's own volume
            (:class:`~restore3d.refiner.training.consistency.ConsistencyLoss`: the
            refined beads convolved with the PSF must match the data
            convolved with the target's kernel); 0 trains on the tuned
            simulations alone.

        Returns
        -------
        Refiner
            A new stage using the adapted weights.
        """
        from .training.adapt import adapt_refiner
        path = adapt_refiner(self, as_volume(volume), as_spacing(spacing), minutes=minutes, steps=steps,
                             pool=pool, out=out, seed=seed, psf=psf, device=device, progress=progress,
                             consistency=consistency)
        return Refiner(str(path), device=self.device, tile_shape=self.tile_shape, max_voxels=self.max_voxels,
                       precision=self.precision, check=self.check, calibrate=self.calibrate,
                       round_beads=self.round_beads)
