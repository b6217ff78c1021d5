"""Volumes larger than memory: chunk-wise processing with Dask ``map_overlap``, from and to Zarr.

Global quantities are measured once on a central sample block (each stage's
:meth:`~restore3d.pipeline.Stage.freeze`): the PSF, the background noise
level, the refiner's intensity scale. Every chunk is then restored with the
frozen pipeline plus a halo of context on each side, the sum of the stages'
halos: the wavelet background's block size and smoothing, the PSF's
half-size for Richardson-Lucy (with its start and extrapolation weights
frozen, more context changed the result by less than 1e-3 of the maximum;
measured in benchmarks/RESULTS.md), the refiner's receptive field, rounded
up to the wavelet and pooling grids. Peak memory grows
with the chunk size and the number of workers, not with the volume.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ._checks import as_psf, as_rng, as_spacing
from .pipeline import PASSTHROUGH, Pipeline, RunContext

__all__ = ["freeze_pipeline", "run_chunked", "pipeline_halo", "pipeline_alignment"]

log = logging.getLogger(__name__)


def _sample(volume, shape):
    """A central block of at most ``shape`` voxels, as numpy."""
    sl = []
    for n, s in zip(volume.shape, shape):
        s = min(int(s), n)
        start = (n - s) // 2
        sl.append(slice(start, start + s))
    return np.asarray(volume[tuple(sl)], dtype=np.float32)


def freeze_pipeline(pipeline: Pipeline, sample: np.ndarray, *, spacing, psf=None, seed=0,
                    device=None) -> tuple[Pipeline, RunContext]:
    """Measure global quantities on ``sample`` and return the pipeline every chunk runs, with its context."""
    spacing = as_spacing(spacing)
    ctx = RunContext(spacing=spacing, psf=None if psf is None else as_psf(psf), rng=as_rng(seed),
                     device=device)
    vol = np.asarray(sample, np.float32).copy()
    frozen = []
    stages = [(n, s) for n, s in pipeline.steps if s != PASSTHROUGH]
    for i, (name, stage) in enumerate(stages):
        fs = stage.freeze(vol, ctx)
        frozen.append((name, fs))
        if i + 1 < len(stages) and fs != PASSTHROUGH:
            vol = np.asarray(fs(vol, ctx), np.float32)
        ctx.info.setdefault("history", []).append(type(stage).__name__)
    return Pipeline(frozen or [("identity", PASSTHROUGH)]), ctx


def pipeline_halo(pipeline: Pipeline, spacing, psf) -> tuple[int, int, int]:
    """Voxels of context per side a chunk needs: the sum of the stages' halos."""
    total = np.zeros(3, int)
    for _, stage in pipeline.steps:
        if stage != PASSTHROUGH:
            total += np.asarray(stage.halo(spacing, psf), int)
    return tuple(int(h) for h in total)


def pipeline_alignment(pipeline: Pipeline, spacing) -> tuple[int, int, int]:
    """Least common multiple of the stages' grids (wavelet blocks, network poolings)."""
    total = np.ones(3, int)
    for _, stage in pipeline.steps:
        if stage != PASSTHROUGH:
            total = np.lcm(total, np.asarray(stage.alignment(spacing), int))
    return tuple(int(a) for a in total)


def _round_up(values, grid):
    return tuple(int(-(-v // g) * g) for v, g in zip(values, grid))


def run_chunked(pipeline: Pipeline, volume, *, spacing: Sequence[float], chunks=(64, 256, 256),
                psf=None, seed=0, device=None, sample_shape=(64, 256, 256), halo=None):
    """Restore a large volume chunk-wise; returns a lazy dask array (float32, same shape).

    Parameters
    ----------
    pipeline : Pipeline
    volume : dask array, zarr array or ndarray, (Z, Y, X)
    spacing : (dz, dy, dx) micrometres
    chunks : (cz, cy, cx)
        Chunk shape (the volume is rechunked to it, rounded up to the
        stages' grid: wavelet blocks, network poolings).
    psf : ndarray, optional
        A known PSF; else :class:`~restore3d.stages.EstimatePSF` measures it on the sample.
    sample_shape : (Z, Y, X)
        Central block on which global quantities are measured.
    halo : (hz, hy, hx), optional
        Override of the context per side (default :func:`pipeline_halo`).

    Examples
    --------
    Compute into Zarr without holding the volume::

        arr, spacing = restore3d.io.open_zarr("big.zarr")
        out = run_chunked(restore3d.default_pipeline(), arr, spacing=spacing)
        restore3d.io.write_zarr("restored.zarr", out, spacing=spacing)
    """
    import dask.array as da
    spacing = as_spacing(spacing)
    arr = volume if isinstance(volume, da.Array) else da.from_array(volume, chunks=chunks)
    if arr.ndim != 3:
        raise ValueError(f"volume must be 3D (z, y, x), got shape {arr.shape}")
    grid = pipeline_alignment(pipeline, spacing)
    chunks = _round_up([min(c, n) for c, n in zip(chunks, arr.shape)], grid)
    arr = arr.rechunk(tuple(min(c, n) for c, n in zip(chunks, arr.shape))).astype(np.float32)
    frozen, ctx = freeze_pipeline(pipeline, _sample(arr, sample_shape), spacing=spacing, psf=psf, seed=seed,
                                  device=device)
    if halo is None:
        halo = pipeline_halo(frozen, spacing, ctx.psf)
    # halos on the stages' grid: every chunk then sees the same wavelet blocks and poolings as the whole
    halo = _round_up(halo, grid)
    halo = tuple(int(min(h, c)) for h, c in zip(halo, arr.chunksize))
    log.info("chunked run: chunks %s, halo %s, PSF %s", arr.chunksize, halo,
             None if ctx.psf is None else ctx.psf.shape)
    fixed_psf = ctx.psf

    def restore_block(block):
        if block.size == 0 or min(block.shape) == 0:
            return block.astype(np.float32)
        psf_b = fixed_psf
        if psf_b is not None and any(p > n for p, n in zip(psf_b.shape, block.shape)):
            from .psf import crop_psf
            psf_b = crop_psf(psf_b, block.shape)
        res = frozen.run(np.asarray(block), spacing=spacing, psf=psf_b, seed=seed, device=device)
        return np.asarray(res, np.float32)

    return arr.map_overlap(restore_block, depth=halo, boundary="none", dtype=np.float32, trim=True)
