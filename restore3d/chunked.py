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

Each block knows where it lies in the whole volume (``part_of``): a
rendering refiner lays the whole volume's working grid over it, so chunks
see the samples and poolings a whole-volume run sees.

A volume held in memory but over the run's memory budget goes through
:func:`run_within_budget` instead: the same frozen stages, each run over
the whole volume in chunks with its own context only (not the sum of all
the stages'), into whole-volume arrays between stages.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from ._checks import MIN_SHAPE, as_device, as_rng, as_spacing, check_restorable, check_voxel_spacing
from ._stats import intensity_gain
from .memory import release_free_memory
from .pipeline import PASSTHROUGH, Pipeline, Result, RunContext

__all__ = ["freeze_pipeline", "run_chunked", "pipeline_halo", "pipeline_alignment", "plan_chunks",
           "chunk_blocker", "run_within_budget", "sample_psf"]

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
    # a last chunk thinner than the halo joins the one before it (Dask would rechunk it otherwise, and
    # each block's place in the whole volume must be known: stages lay the whole volume's grids)
    arr = arr.rechunk(tuple(_merge_thin_tail(c, h) for c, h in zip(arr.chunks, halo)))
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in arr.chunks]

    def restore_block(block, block_info=None):
        if block.size == 0 or min(block.shape) == 0:
            return block.astype(np.float32)
        # where the block (its chunk and the context before it) starts in the whole volume
        where = block_info[0]["chunk-location"] if block_info else (0, 0, 0)
        origin = tuple(int(max(0, st[i] - h)) for st, i, h in zip(starts, where, halo))
        if block_info:
            expected = tuple(min(st[i] + c[i] + h, n) - o for st, c, i, h, n, o in
                             zip(starts, arr.chunks, where, halo, arr.shape, origin))
            if block.shape != expected:
                raise RuntimeError(f"chunk {where}: block {block.shape} where {expected} was planned")
        block = np.asarray(block, np.float32) * np.float32(gain)
        pad = [(0, max(0, m - n)) for n, m in zip(block.shape, MIN_SHAPE)]  # a thin remainder at an edge
        padded = np.pad(block, pad, mode="edge") if any(b for _, b in pad) else block
        psf_b = fixed_psf
        if psf_b is not None and any(p > n for p, n in zip(psf_b.shape, padded.shape)):
            from .psf import crop_psf
            psf_b = crop_psf(psf_b, padded.shape)
        # the chunks are already sized to the budget: a chunk never goes chunk-wise again
        res = frozen.run(padded, spacing=spacing, psf=psf_b, seed=seed, device=device, rescale=False,
                         part_of=(origin, tuple(arr.shape)), memory_budget=None)
        out = np.asarray(res, np.float32)[tuple(slice(0, n) for n in block.shape)]
        return out / np.float32(gain)

    out = arr.map_overlap(restore_block, depth=halo, boundary="none", dtype=np.float32, trim=True)
    if return_context:
        return out, ctx, {"chunks": tuple(int(c) for c in arr.chunksize), "halo": tuple(halo),
                          "n_chunks": int(np.prod(arr.numblocks))}
    return out


def _merge_thin_tail(chunks, halo) -> tuple:
    """Chunk sizes along one axis with a last chunk thinner than ``halo`` merged into the one before."""
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) > 1 and chunks[-1] < halo:
        return chunks[:-2] + (chunks[-2] + chunks[-1],)
    return chunks


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


def sample_psf(pipeline: Pipeline, volume, spacing, *, sample_shape=(64, 256, 256), device=None):
    """The PSF the pipeline's first stages measure on a central block of ``volume``, or None.

    The stages run in order on the block until one sets the PSF (an
    :class:`~restore3d.EstimatePSF`); None when none does or one cannot run
    there. For memory estimates made before a run (:meth:`Pipeline.run`).
    """
    sample = _sample(volume, sample_shape)
    x = sample * np.float32(intensity_gain(sample))
    ctx = RunContext(spacing=tuple(spacing), device=device, logger=logging.getLogger("restore3d.chunked.sample"))
    for name, stage in pipeline.steps:
        if stage == PASSTHROUGH:
            continue
        ctx.step = name
        try:
            x = np.asarray(stage(x, ctx), np.float32)
        except ValueError:
            return None
        ctx.history.append(type(stage).__name__)
        if ctx.psf is not None:
            return ctx.psf
    return None


def run_within_budget(pipeline: Pipeline, vol, spacing, psf, rng, device, budget, need, logger,
                      sample_shape=(64, 256, 256)) -> Result:
    """``pipeline`` run on ``vol`` within ``budget`` bytes, stage by stage in chunks (see :func:`chunk_blocker` first).

    Global quantities are measured once on a central sample block
    (:func:`freeze_pipeline`); then each stage runs over the whole volume
    chunk by chunk with its own context (:meth:`~restore3d.base.Stage.halo`),
    its result written into a whole-volume array the next stage reads. Each
    chunk's context is then one stage's, not the sum of all (as a chunk
    that runs every stage needs, :func:`run_chunked`), at the price of three
    float32 copies of the volume: the one being read, the one being written
    and the background-free volume later stages compare with. ``vol`` (the
    run's own float32 copy) is overwritten.
    """
    start = time.perf_counter()
    vol = np.asarray(vol, np.float32)
    sample = _sample(vol, sample_shape)
    gain = intensity_gain(sample)
    frozen, fctx = freeze_pipeline(pipeline, sample * np.float32(gain), spacing=spacing, psf=psf, seed=rng,
                                   device=device)
    if gain != 1.0:
        vol *= np.float32(gain)
    arrays = 3 * 4.0 * vol.size  # the volume read, the one written and the background-free one
    left = max(budget - arrays, 0.25 * budget)
    logger.info("the volume %s needs about %.1f GB whole, above the memory budget of %.1f GB: restoring it "
                "in chunks, stage by stage", vol.shape, need / 1e9, budget / 1e9)
    ctx = RunContext(spacing=spacing, psf=fctx.psf, rng=as_rng(rng), logger=logger, device=device,
                     psf_given=psf is not None, info=fctx.info)
    current, spare, background_free = vol, None, None
    plans, timings = {}, {}
    originals = dict(pipeline.steps)
    for name, stage in frozen.steps:
        if stage == PASSTHROUGH:  # done on the sample (e.g. EstimatePSF): in the history, as a whole run has it
            if originals.get(name, PASSTHROUGH) != PASSTHROUGH:
                ctx.history.append(type(originals[name]).__name__)
            continue
        t0 = time.perf_counter()
        ctx.step = name
        one = Pipeline([(name, stage)])
        grid = pipeline_alignment(one, spacing)
        halo = _round_up(stage.halo(spacing, ctx.psf), grid)
        chunks = plan_chunks(one, vol.shape, spacing, ctx.psf, halo, grid, left)
        out = spare if spare is not None and spare is not background_free else np.empty_like(vol)
        n = _stage_in_chunks(stage, current, out, chunks, halo, ctx, background_free)
        release_free_memory()  # the chunks' freed heap, before the next stage
        plans[name] = {"chunks": tuple(int(c) for c in chunks), "halo": tuple(int(h) for h in halo),
                       "n_chunks": n}
        ctx.history.append(type(stage).__name__)
        if type(stage).__name__ == "SubtractBackground":
            background_free = out
        spare, current = current, out
        timings[name] = time.perf_counter() - t0
        logger.info("stage %r done in %.2f s (%d chunks of %s, context %s)", name, timings[name], n,
                    plans[name]["chunks"], plans[name]["halo"])
    if gain != 1.0:
        current /= np.float32(gain)
    widest = max(plans.values(), key=lambda p: p["n_chunks"])
    ctx.info["chunked"] = {"stagewise": plans, "n_chunks": widest["n_chunks"], "chunks": widest["chunks"],
                           "halo": widest["halo"], "estimate_gb": need / 1e9, "budget_gb": budget / 1e9}
    ctx.info["history"] = list(ctx.history)
    timings["total"] = time.perf_counter() - start
    return Result(current, spacing=spacing, psf=ctx.psf, timings=timings, beads=None,
                  pipeline=pipeline.to_dict(), info=ctx.info, intermediates={})


def _stage_in_chunks(stage, src, out, chunks, halo, ctx, background_free) -> int:
    """Run one frozen stage over ``src`` chunk by chunk into ``out``; returns the number of chunks."""
    from .psf import crop_psf
    shape = src.shape
    starts = [range(0, n, c) for n, c in zip(shape, chunks)]
    count = 0
    for z0 in starts[0]:
        for y0 in starts[1]:
            for x0 in starts[2]:
                own = [(a, min(a + c, n)) for a, c, n in zip((z0, y0, x0), chunks, shape)]
                lo = [max(0, a - h) for (a, _), h in zip(own, halo)]
                hi = [min(n, b + h) for (_, b), h, n in zip(own, halo, shape)]
                block = tuple(slice(a, b) for a, b in zip(lo, hi))
                data = src[block]
                pad = [(0, max(0, m - k)) for k, m in zip(data.shape, MIN_SHAPE)]  # a thin volume's edge
                if any(b for _, b in pad):
                    data = np.pad(data, pad, mode="edge")
                psf = ctx.psf
                if psf is not None and any(p > k for p, k in zip(psf.shape, data.shape)):
                    psf = crop_psf(psf, data.shape)
                bctx = RunContext(spacing=ctx.spacing, psf=psf, rng=ctx.rng, logger=ctx.logger, device=ctx.device,
                                  background_free=None if background_free is None else background_free[block],
                                  psf_given=ctx.psf_given, history=list(ctx.history), step=ctx.step,
                                  part_of=(tuple(lo), tuple(shape)))
                res = np.asarray(stage(np.ascontiguousarray(data), bctx), np.float32)
                inner = tuple(slice(a - l, b - l) for (a, b), l in zip(own, lo))
                out[tuple(slice(a, b) for a, b in own)] = res[inner]
                count += 1
    return count
