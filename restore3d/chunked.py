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
import time
from typing import Sequence

import numpy as np

from ._checks import MIN_SHAPE, as_device, as_rng, as_spacing, check_restorable, check_voxel_spacing
from ._stats import intensity_gain
from .pipeline import PASSTHROUGH, Pipeline, Result, RunContext

__all__ = ["freeze_pipeline", "run_chunked", "pipeline_halo", "pipeline_alignment", "plan_chunks",
           "chunk_blocker", "run_within_budget"]

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
    from .psf import given_psf
    ctx = RunContext(spacing=spacing, psf=None if psf is None else given_psf(psf, volume_shape=sample.shape),
                     rng=as_rng(seed), device=device)
    vol = np.asarray(sample, np.float32).copy()
    frozen = []
    stages = [(n, s) for n, s in pipeline.steps if s != PASSTHROUGH]
    for i, (name, stage) in enumerate(stages):
        ctx.step = name
        fs = stage.freeze(vol, ctx)
        frozen.append((name, fs))
        if i + 1 < len(stages) and fs != PASSTHROUGH:
            vol = np.asarray(fs(vol, ctx), np.float32)
        ctx.history.append(type(stage).__name__)
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


def plan_chunks(pipeline: Pipeline, shape, spacing, psf, halo, grid, budget_bytes: float) -> tuple:
    """The largest chunks whose run, with their halo, fits ``budget_bytes`` (:meth:`Pipeline.memory_estimate`).

    Chunks keep the whole depth while a lateral size of at least one halo
    fits (the halo is recomputed for every chunk: the smaller the chunk,
    the more of its work goes into it), are square laterally, on the
    stages' grid. Each chunk is also held twice more by Dask (its block
    with context and its result).
    """
    shape = tuple(int(n) for n in shape)

    def need(c):
        ext = [min(n, ci + 2 * h) for n, ci, h in zip(shape, c, halo)]
        return pipeline.memory_estimate(ext, spacing, psf) + 2 * 4.0 * float(np.prod(ext))

    floor = [max(m, h, g) for m, h, g in zip(MIN_SHAPE, halo, grid)]
    lateral_floor = max(floor[1], floor[2])
    cz = shape[0]
    smallest = None
    while True:
        c = max(shape[1], shape[2])
        while True:
            chunk = _round_up((cz, min(c, shape[1]), min(c, shape[2])), grid)
            if need(chunk) <= budget_bytes:
                return tuple(min(a, n) for a, n in zip(chunk, shape))
            smallest = chunk
            if c <= lateral_floor:
                break
            c = max(lateral_floor, int(c * 0.8))
        if cz <= floor[0]:
            log.warning("no chunk fits the memory budget of %.2f GB: using %s (about %.2f GB)",
                        budget_bytes / 1e9, smallest, need(smallest) / 1e9)
            return tuple(min(a, n) for a, n in zip(smallest, shape))
        cz = max(floor[0], cz // 2)


def run_chunked(pipeline: Pipeline, volume, *, spacing: Sequence[float], chunks=(64, 256, 256),
                psf=None, seed=0, device=None, sample_shape=(64, 256, 256), halo=None,
                memory_budget: float | None = None, return_context: bool = False):
    """Restore a large volume chunk-wise; returns a lazy dask array (float32, same shape).

    Parameters
    ----------
    pipeline : Pipeline
    volume : dask array, zarr array or ndarray, (Z, Y, X)
    spacing : (dz, dy, dx) micrometres
    chunks : (cz, cy, cx) or "auto"
        Chunk shape (the volume is rechunked to it, rounded up to the
        stages' grid: wavelet blocks, network poolings); "auto": the
        largest that fit ``memory_budget`` (:func:`plan_chunks`).
    psf : ndarray, optional
        A known PSF; else :class:`~restore3d.stages.EstimatePSF` measures it on the sample.
    sample_shape : (Z, Y, X)
        Central block on which global quantities are measured.
    halo : (hz, hy, hx), optional
        Override of the context per side (default :func:`pipeline_halo`).
    memory_budget : float, optional
        Bytes of working memory for one chunk's run (with ``chunks="auto"``).
    return_context : bool
        Also return the frozen run's :class:`~restore3d.base.RunContext`
        (PSF, stage reports) and the plan (``{"chunks", "halo"}``).

    Examples
    --------
    Compute into Zarr without holding the volume::

        arr, spacing = restore3d.io.open_zarr("big.zarr")
        out = run_chunked(restore3d.default_pipeline(), arr, spacing=spacing)
        restore3d.io.write_zarr("restored.zarr", out, spacing=spacing)
    """
    import dask.array as da
    spacing = check_voxel_spacing(spacing)
    device = as_device(device)
    auto = isinstance(chunks, str) and chunks == "auto"
    if auto and (memory_budget is None or not memory_budget > 0):
        raise ValueError(f"chunks='auto' needs a positive memory_budget (bytes), got {memory_budget!r}")
    chunks = tuple(volume.shape) if auto else _positive_triple(chunks, "chunks")
    arr = volume if isinstance(volume, da.Array) else da.from_array(volume, chunks=chunks)
    if arr.ndim != 3:
        raise ValueError(f"volume must be 3D (z, y, x), got shape {arr.shape}")
    check_restorable(arr.shape)
    sample = _sample(arr, sample_shape)
    gain = intensity_gain(sample)  # one scale for every chunk: frozen levels are absolute
    frozen, ctx = freeze_pipeline(pipeline, sample * np.float32(gain), spacing=spacing, psf=psf, seed=seed,
                                  device=device)
    grid = pipeline_alignment(frozen, spacing)
    if halo is None:
        halo = pipeline_halo(frozen, spacing, ctx.psf)
    # halos on the stages' grid: every chunk then sees the same wavelet blocks and poolings as the whole
    halo = _round_up(_positive_triple(halo, "halo", allow_zero=True), grid)
    if auto:
        chunks = plan_chunks(frozen, arr.shape, spacing, ctx.psf, halo, grid, float(memory_budget))
    # a chunk thinner than its halo would get less context than the stages need: enlarge it
    wanted = [max(c, h, m) for c, h, m in zip(chunks, halo, MIN_SHAPE)]
    final = tuple(min(c, n) for c, n in zip(_round_up(wanted, grid), arr.shape))
    if any(f > min(c, n) for f, c, n in zip(final, chunks, arr.shape)):
        log.info("chunks %s enlarged to %s: a chunk must be at least its halo %s of context", tuple(chunks),
                 final, tuple(halo))
    arr = arr.rechunk(final).astype(np.float32)
    halo = tuple(int(min(h, c)) for h, c in zip(halo, arr.chunksize))
    log.info("chunked run: chunks %s, halo %s, PSF %s", arr.chunksize, halo,
             None if ctx.psf is None else ctx.psf.shape)
    fixed_psf = ctx.psf

    def restore_block(block):
        if block.size == 0 or min(block.shape) == 0:
            return block.astype(np.float32)
        block = np.asarray(block, np.float32) * np.float32(gain)
        pad = [(0, max(0, m - n)) for n, m in zip(block.shape, MIN_SHAPE)]  # a thin remainder at an edge
        padded = np.pad(block, pad, mode="edge") if any(b for _, b in pad) else block
        psf_b = fixed_psf
        if psf_b is not None and any(p > n for p, n in zip(psf_b.shape, padded.shape)):
            from .psf import crop_psf
            psf_b = crop_psf(psf_b, padded.shape)
        res = frozen.run(padded, spacing=spacing, psf=psf_b, seed=seed, device=device, rescale=False)
        out = np.asarray(res, np.float32)[tuple(slice(0, n) for n in block.shape)]
        return out / np.float32(gain)

    out = arr.map_overlap(restore_block, depth=halo, boundary="none", dtype=np.float32, trim=True)
    if return_context:
        return out, ctx, {"chunks": tuple(int(c) for c in arr.chunksize), "halo": tuple(halo),
                          "n_chunks": int(np.prod(arr.numblocks))}
    return out


def _positive_triple(values, name, allow_zero=False):
    try:
        vals = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three whole numbers (z, y, x), got {values!r}") from None
    low = 0 if allow_zero else 1
    if len(vals) != 3 or any(v < low for v in vals) or any(float(v) != float(w) for v, w in zip(vals, values)):
        raise ValueError(f"{name} must be three whole numbers >= {low} (z, y, x), got {tuple(values)!r}")
    return vals


def chunk_blocker(pipeline: Pipeline, keep=()) -> str | None:
    """Why ``pipeline`` cannot run chunk-wise (a stage that cannot, intermediates asked for), or None."""
    blocked = [type(s).__name__ for _, s in pipeline.steps if s != PASSTHROUGH and not s.chunkable]
    if blocked:
        return f"{blocked} cannot run chunk-wise"
    return "intermediates were asked for" if keep else None


def run_within_budget(pipeline: Pipeline, vol, spacing, psf, rng, device, budget, need, logger) -> Result:
    """``pipeline`` run on ``vol`` chunk-wise within ``budget`` bytes (see :func:`chunk_blocker` first)."""
    import dask
    import dask.array as da
    start = time.perf_counter()
    # the run's input copy and its output stay whole: the chunks share what is left
    lazy, ctx, plan = run_chunked(pipeline, vol, spacing=spacing, chunks="auto", psf=psf, seed=rng, device=device,
                                  memory_budget=max(budget - 4.0 * vol.size, 0.25 * budget),
                                  return_context=True)
    logger.info("the volume %s needs about %.1f GB whole, above the memory budget of %.1f GB: "
                "restoring it in chunks of %s with %s voxels of context", vol.shape, need / 1e9, budget / 1e9,
                plan["chunks"], plan["halo"])
    out = np.empty(vol.shape, np.float32)
    with dask.config.set(scheduler="synchronous"):
        da.store(lazy, out, lock=False)
    ctx.info["chunked"] = {**plan, "estimate_gb": need / 1e9, "budget_gb": budget / 1e9}
    ctx.info["history"] = list(ctx.history)
    return Result(out, spacing=spacing, psf=ctx.psf, timings={"total": time.perf_counter() - start},
                  beads=None, pipeline=pipeline.to_dict(), info=ctx.info, intermediates={})
