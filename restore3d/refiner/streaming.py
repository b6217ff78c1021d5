"""Inference of the U-Net level by level, each block in slabs: no full-resolution block held whole.

A tile of the U-Net (:func:`restore3d.refiner.model.UNet3D`) evaluated in one
call holds, at its finest level, the joined decoder input (upsampled and
skip channels: three times the base channels), the block's output and the
input: about 36 values per voxel (176 bytes per voxel in float32 for the
shipped network, benchmarks/RESULTS.md section 5). Every block is a few convolutions, so its output at a
voxel depends only on ``convs_per_level * (kernel_size // 2)`` voxels of its
input on each side. Here each block runs on slabs along x with that much
context (rounded out to the coarser level's grid where upsampled values are
joined) and writes its slab into the level's output. The finest level's
skip is not kept: only its pooled copy is, and each decoder slab computes
its columns again from the input; that slab goes on through the head, the
residual and the ReLU to the single output channel. A coarser decoder
level's output has its skip's shape: it is written over the skip, each slab
once the next has read its context, so the two are never held side by side.
What is held whole is the input, the output and the coarser levels' arrays:
43 bytes per voxel (64 x 336 x 336 in float32; 46 with each decoder output
beside its skip, 176 for the whole pass), for more time than the whole
pass (the slabs' context and the finest block are computed twice: 7-11 %
with bfloat16 on AVX512, 30 % in float32 on an AVX2 CPU).
The values are those of the whole pass, to the bit.

Slabs run along x because PyTorch's CPU convolution takes its slow path
(no oneDNN) when batch x channels x z x y of the input is small, which thin
y slabs are.

Where the finest skip is small (at most :data:`KEEP_FINEST_BYTES`: the
working grid of a 32 x 256 x 256 widefield stack holds 3-5 M voxels, 92-151
MB with 8 base channels) it is held rather than computed again: what the
slabs save in memory is then not worth their time (on 2 AVX2 cores the
refiner on issue 4's setting C took 4.1 s with the skip computed again, 3.3
s held; on the demo 9.3-10.2 s against 6.8-7.1 s, its pipeline's peak 90 MB
higher; benchmarks/RESULTS.md section 5). A 34 x 512 x 512 field's working
grid (about 7 M voxels, 230 MB) still runs in slabs.
"""
from __future__ import annotations

import numpy as np

__all__ = ["forward_by_slabs", "slab_bounds", "keeps_finest", "finest_skip_bytes", "KEEP_FINEST_BYTES"]

#: The finest level's skip (base channels x voxels, counted in float32) is held whole up to this size.
KEEP_FINEST_BYTES = 192 * 2 ** 20

#: Values (voxels x channels) of a block's widest array in one slab: 16 MB in float32.
SLAB_VALUES = 4_000_000
#: A slab is at least this many times its context wide (the context is computed twice: at most 1/3
#: more work). On 64 x 336 x 336 (2 AVX2 cores, float32) 6 took the time of 8 within the noise and
#: 25-60 MB less memory (218-223 vs 246-282 MB); 4 and 5 ran slower.
LEAST_WIDTH = 6


def slab_bounds(n: int, rows: int, halo: int, align: int = 1):
    """Slabs ``(a, b, lo, hi)`` covering ``range(n)``: rows ``[a, b)`` kept, ``[lo, hi)`` computed.

    ``rows`` is rounded to a multiple of ``align`` (at least one); ``lo``
    and ``hi`` extend the slab by ``halo`` rows (clipped to ``[0, n]``) and
    are multiples of ``align`` (or ``n``).
    """
    if n < 1 or halo < 0 or align < 1:
        raise ValueError(f"slab_bounds needs n >= 1, halo >= 0, align >= 1; got {n}, {halo}, {align}")
    rows = max(align, int(rows) // align * align)
    out = []
    for a in range(0, n, rows):
        b = min(n, a + rows)
        lo = max(0, (a - halo) // align * align)
        hi = min(n, -(-(b + halo) // align) * align)
        out.append((a, b, lo, hi))
    return out


def _by_slabs(torch, compute, n, rows, halo, align, fmt, shrink=1):
    """``compute(lo, hi)`` per slab along x (dim 4), the kept columns gathered into one tensor of format ``fmt``.

    ``shrink``: ``compute`` returns its slab pooled by this factor along x
    (``align`` is then a multiple of it).
    """
    out = None
    for a, b, lo, hi in slab_bounds(n, rows, halo, align):
        part = compute(lo, hi)[..., (a - lo) // shrink: (b - lo) // shrink]
        if out is None:
            shape = tuple(part.shape[:4]) + (n // shrink,)
            out = torch.empty(shape, dtype=part.dtype, device=part.device, memory_format=fmt)
        out[..., a // shrink: b // shrink].copy_(part)
        del part
    _release(out)
    return out


def _release(t):
    """Give the C heap's free pages back after a level on the CPU: its slabs' arrays, freed, stay there
    and fragment it (the refiner stage's peak at 512^2: 13.2 -> 11.1x the volume; benchmarks/RESULTS.md)."""
    if t.device.type == "cpu":
        from ..memory import release_free_memory
        release_free_memory()


def _by_slabs_into(compute, dest, rows, halo, align):
    """``compute(lo, hi)`` per slab along x, the kept columns written into ``dest``, the array it reads, one slab late.

    Slab ``k`` reads ``dest`` at most ``halo`` columns (rounded out to
    ``align``) left of its own; its output is written once slab ``k + 1``
    has computed (and so read what it needs), which is safe while a slab is
    at least that reach wide: no slab reads a column already overwritten.
    The caller checks that width (:func:`_fits_in_place`).
    """
    pending = None
    for a, b, lo, hi in slab_bounds(dest.shape[4], rows, halo, align):
        part = compute(lo, hi)[..., a - lo: b - lo]
        if part.shape[:4] != dest.shape[:4] or part.dtype != dest.dtype:  # copy_ would broadcast or cast silently
            raise ValueError(f"a block's output {tuple(part.shape[:4])} {part.dtype} cannot be written over its "
                             f"source {tuple(dest.shape[:4])} {dest.dtype}; hold it in its own array")
        if pending is not None:
            dest[..., pending[0]:pending[1]].copy_(pending[2])
        pending = (a, b, part)
        del part
    dest[..., pending[0]:pending[1]].copy_(pending[2])
    del pending
    _release(dest)
    return dest


def _output_dtype(x, model):
    """The dtype of the network's output for input ``x``: the head's under autocast, promoted with the
    residual's (the input's)."""
    import torch
    kind = x.device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
    if not on:
        head = model.head.weight.dtype
    elif hasattr(torch, "get_autocast_dtype"):
        head = torch.get_autocast_dtype(kind)
    else:  # torch < 2.4
        head = torch.get_autocast_cpu_dtype() if kind == "cpu" else torch.get_autocast_gpu_dtype()
    return torch.promote_types(head, x.dtype) if model.config.residual else head


def _fits_in_place(rows, halo, align):
    """Whether slabs of ``rows`` columns (rounded as :func:`slab_bounds` does) can write back into their source."""
    width = max(align, int(rows) // align * align)
    return width >= -(-halo // align) * align


def _columns(shape, channels, slab_values, least=1):
    """Columns of x per slab so that one slab of a ``channels``-channel array holds about ``slab_values`` values
    (at least ``least``)."""
    return max(least, int(slab_values // (max(1, shape[2] * shape[3]) * max(1, channels))))


def finest_skip_bytes(config, shape) -> float:
    """Bytes of the finest level's skip for an input of ``shape`` (N, C, Z, Y, X), counted in float32."""
    n, _, *spatial = shape
    return 4.0 * config.base_channels * float(n) * float(np.prod(spatial))


def keeps_finest(config, shape) -> bool:
    """Whether :func:`forward_by_slabs` holds the finest skip by default: at most :data:`KEEP_FINEST_BYTES`."""
    return finest_skip_bytes(config, shape) <= KEEP_FINEST_BYTES


def forward_by_slabs(model, x, *, slab_values: int = SLAB_VALUES, least_width: int = LEAST_WIDTH,
                     channels_last: bool = False, keep_finest="auto", overwrite_input: bool = False):
    """``model(x)`` without gradients, each level's blocks run in slabs along x (module docstring).

    Parameters
    ----------
    model : UNet3D
        In evaluation mode (batch norms use their running statistics, or are
        folded: :func:`restore3d.refiner.model.fold_batchnorm`).
    x : (N, 1, Z, Y, X) tensor
        Sizes multiples of ``model.config.multiple``.
    slab_values : int
        Slab size: values (voxels x channels) of a block's widest array.
    least_width : int
        Slabs are at least this many times a block's context wide.
    channels_last : bool
        Hold the arrays channels-last (what oneDNN convolves fastest on CPUs).
    keep_finest : bool or "auto"
        Hold the finest level's skip (the base channels at full resolution)
        for the decoder. False: keep only its pooled copy and compute it
        again slab by slab where the decoder joins it (its first block runs
        twice; only the input and the output are held whole at full
        resolution). "auto" (default): hold it where it takes at most
        :data:`KEEP_FINEST_BYTES` (:func:`keeps_finest`).
    overwrite_input : bool
        Write the output over ``x`` (slab by slab, once no slab reads those
        columns again) and return ``x``: the input and the output are then
        never held side by side. For callers that own ``x``; where the
        output's dtype differs from ``x``'s, a new tensor as usual.

    Returns
    -------
    (N, 1, Z, Y, X) tensor
    """
    import torch
    from .model import _upsample_join
    cfg = model.config
    if isinstance(keep_finest, str) and keep_finest == "auto":
        keep_finest = keeps_finest(cfg, x.shape)
    elif not isinstance(keep_finest, bool):
        raise ValueError(f"keep_finest must be True, False or 'auto', got {keep_finest!r}")
    halo = cfg.convs_per_level * (cfg.kernel_size // 2)
    ch = [cfg.base_channels * 2 ** i for i in range(cfg.depth + 1)]
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format

    def columns(shape, channels):
        return _columns(shape, channels, slab_values, least_width * halo)

    def block_on(block, src):
        return lambda lo, hi: block(src[..., lo:hi].contiguous(memory_format=fmt))

    def finest_skip(lo, hi):  # the first block's output on columns [lo, hi), from the input with its context
        a, b = max(0, lo - halo), min(x.shape[4], hi + halo)
        return model.down[0](x[..., a:b].contiguous(memory_format=fmt))[..., lo - a: hi - a]

    with torch.no_grad():
        skips, h = [], x
        for i, (block, pool) in enumerate(zip(model.down, model.pools)):
            cols = columns(h.shape, ch[i] + h.shape[1])
            if i == 0 and not keep_finest:
                skips.append(None)
                px = cfg.pools[0][2]
                h = _by_slabs(torch, lambda lo, hi: pool(finest_skip(lo, hi)), x.shape[4], cols, 0, px, fmt,
                              shrink=px)
                continue
            skip = _by_slabs(torch, block_on(block, h), h.shape[4], cols, halo, 1, fmt)
            skips.append(skip)
            del h
            h = pool(skip)
        h = _by_slabs(torch, block_on(model.bottom, h), h.shape[4], columns(h.shape, ch[-1] + h.shape[1]), halo, 1, fmt)
        for i in reversed(range(cfg.depth)):
            low, skip, factor = h, skips.pop(), cfg.pools[i]
            del h
            px = factor[2]

            def compute(lo, hi, low=low, skip=skip, factor=factor, i=i, px=px):
                here = skip[..., lo:hi] if skip is not None else finest_skip(lo, hi)
                joined = _upsample_join(torch, low[..., lo // px: hi // px], here, factor, memory_format=fmt)
                del here
                layers = list(model.up[i])
                y = layers[0](joined)
                del joined
                for layer in layers[1:]:
                    y = layer(y)
                if i:
                    return y
                y = model.head(y)
                if cfg.residual:
                    y = y + x[..., lo:hi]
                return torch.relu(y)

            shape = x.shape if skip is None else skip.shape
            rows = columns(shape, ch[i + 1] + 2 * ch[i])
            if i and _fits_in_place(rows, halo, px):  # (the finest level ends in the one-channel head)
                # the level's output has the skip's shape: written over it, slab by slab, once no slab needs it
                h = _by_slabs_into(compute, skip, rows, halo, px)
            elif not i and overwrite_input and _output_dtype(x, model) == x.dtype and \
                    _fits_in_place(rows, halo + (0 if skip is not None else halo), px):
                # the one-channel output over the input; a slab reads the input up to its own halo and
                # the recomputed finest skip's beyond it
                h = _by_slabs_into(compute, x, rows, halo + (0 if skip is not None else halo), px)
            else:
                h = _by_slabs(torch, compute, shape[4], rows, halo, px, fmt)
            del low, skip
        return h
