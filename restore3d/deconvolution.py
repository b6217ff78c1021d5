"""Richardson-Lucy deconvolution, accelerated and boundary-aware.

The forward model of a recorded volume ``y`` on the observed domain D is

    mu = crop_D(h * x) + b

with the object ``x`` living on D extended by half the PSF on every side
(so beads just outside the stack can explain the haze they send into it),
``h`` the PSF and ``b`` a known background (:mod:`restore3d.forward_model`).
Richardson-Lucy maximises the Poisson likelihood of ``y`` with the
multiplicative update

    x <- x / H^T 1_D * H^T (y / mu)

where ``H^T 1_D`` is the Bertero-Boccacci normalisation: it keeps voxels
near the border of the extended domain, seen by only part of the PSF, from
dimming or ringing. Blind deconvolution lives in :mod:`restore3d.blind`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Sequence

import numpy as np

from ._border_weights import BorderWeights
from ._checks import as_psf, as_volume
from ._fused import kernels as fused_kernels
from ._fused import kernels_available
from ._slab_fft import PaddedGrid
from .forward_model import (BACKPROJECTORS, ForwardModel, as_background, i_divergence_of, torch_device,
                            torch_threads)

__all__ = ["richardson_lucy", "blind_richardson_lucy", "i_divergence", "RLInfo", "fused_kernels",
           "kernels_available", "BOUNDARIES", "ACCELERATIONS", "BACKPROJECTORS"]

log = logging.getLogger(__name__)

BOUNDARIES = ("extend", "zero", "periodic")
ACCELERATIONS = ("biggs", "none")


@dataclasses.dataclass
class RLInfo:
    """What a Richardson-Lucy run did.

    Attributes
    ----------
    iterations : int
        Iterations actually run.
    converged : bool
        Whether the stopping rule ended the run early.
    i_divergence : list of float
        Csiszar I-divergence between data and model at each iteration's
        forward projection (monitored when ``stop_tol`` or ``monitor`` is set).
    seconds : float
        Wall time of the iterations.
    psf : ndarray or None
        Final PSF (blind deconvolution only).
    alphas : list of float
        Biggs-Andrews extrapolation weight of each iteration.
    init_level : float
        The constant initial estimate (``init="mean"``).
    fused : bool
        Whether the element-wise update ran in the compiled kernels of
        ``restore3d._kernels`` (False: PyTorch operations, e.g. on CUDA,
        with TV or an unmatched back projector, or without the extension).
    """

    iterations: int = 0
    converged: bool = False
    i_divergence: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    psf: np.ndarray | None = None
    alphas: list = dataclasses.field(default_factory=list)
    init_level: float | None = None
    fused: bool = False


def _tv_factor(x, weight, spacing_ratio, eps=1e-3):
    """Dey et al. 2006: 1 / (1 - weight * div(grad x / |grad x|)), on voxel units."""
    import torch
    grads = []
    for axis, s in enumerate(spacing_ratio):
        g = torch.diff(x, dim=axis, append=x.narrow(axis, x.shape[axis] - 1, 1)) / s
        grads.append(g)
    norm = torch.sqrt(sum(g * g for g in grads) + eps * eps)
    div = torch.zeros_like(x)
    for axis, (g, s) in enumerate(zip(grads, spacing_ratio)):
        n = g / norm
        div += torch.diff(n, dim=axis, prepend=n.narrow(axis, 0, 1) * 0) / s
    denom = 1.0 - weight * div
    return 1.0 / torch.clamp(denom, min=0.2)


def check_inputs(volume, psf, boundary, acceleration, iterations):
    """The volume (float32) and unit-sum PSF of a deconvolution, its options checked; ``ValueError`` otherwise."""
    vol = as_volume(volume)
    h = as_psf(psf, volume_shape=vol.shape if boundary == "periodic" else None)
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    if acceleration not in ACCELERATIONS:
        raise ValueError(f"acceleration must be one of {ACCELERATIONS}, got {acceleration!r}")
    if int(iterations) != iterations or iterations < 0:
        raise ValueError(f"iterations must be a non-negative integer, got {iterations!r}")
    if vol.min() < 0:
        raise ValueError(
            f"volume has negative values (min {vol.min():.3g}); Richardson-Lucy needs counts >= 0: "
            "subtract the background with clipping first, or pass it as background=")
    return vol, h


def richardson_lucy(volume: np.ndarray, psf: np.ndarray, *, iterations: int = 30,
                    acceleration: str = "biggs", background=0.0, boundary: str = "extend",
                    extend="auto", tv: float = 0.0, spacing: Sequence[float] | None = None,
                    stop_tol: float | None = None, monitor: bool = False,
                    backprojector: str = "matched", init="mean", device=None,
                    threads: int | None = None, progress: bool = False,
                    callback: Callable | None = None, return_info: bool = False,
                    alphas: Sequence[float] | None = None):
    """Richardson-Lucy deconvolution of a 3D volume.

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Recorded counts, >= 0 (background-subtracted and clipped, or raw
        with the background given as ``background``).
    psf : (z, y, x) ndarray
        PSF on the same spacing, centre voxel at ``shape // 2``; normalised
        to unit sum here.
    iterations : int
        Maximum number of iterations.
    acceleration : {"biggs", "none"}
        Biggs-Andrews vector extrapolation (1997): each step is extrapolated
        along the last change with a weight from the correlation of the last
        two changes; several times fewer iterations for the same likelihood.
    background : float or (Z, Y, X) ndarray
        Known background ``b >= 0`` in the forward model ``h * x + b``
        (modelled, not clipped away).
    boundary : {"extend", "zero", "periodic"}
        ``"extend"``: the object lives on the volume extended by ``extend``
        voxels on every side, with Bertero-Boccacci normalisation (no edge
        dimming or ringing; beads outside the stack can explain their haze).
        ``"zero"``: object and data on the volume, zero-padded convolutions,
        no normalisation (scikit-image's ``richardson_lucy``).
        ``"periodic"``: circular convolutions on the volume (fastest, wraps).
    extend : "auto" or (ez, ey, ex) ints
        Extension in voxels for ``boundary="extend"``; "auto" is half the PSF
        (none with the Wiener-Butterworth back projector).
    tv : float
        Weight of total-variation regularisation (Dey et al. 2006), 0 = off;
        typical 0.001-0.01.
    spacing : (dz, dy, dx) floats, optional
        Voxel size in micrometres, used to weight TV gradients; isotropic if None.
    stop_tol : float, optional
        Stop when the relative change of the I-divergence between the data
        and the model falls below this (e.g. 1e-4).
    monitor : bool
        Record the I-divergence of every iteration in the info.
    backprojector : {"matched", "wiener_butterworth"}
        ``"wiener_butterworth"``: the unmatched back projector of Guo et al.
        2020, which needs only a few iterations (use with ``acceleration="none"``);
        the object then stays on the volume (no extension: the unmatched
        update is unstable there) and its total is rescaled to the data's.
    init : "mean", float or ndarray
        Initial estimate: a constant at the data's mean (default), a given
        constant, or a volume (of the extended-domain shape or of the volume's).
    device : str, optional
        ``"cpu"`` or ``"cuda"``; default CUDA when available.
    threads : int, optional
        CPU threads for the run (torch); default torch's setting.
    progress : bool
        Show a progress bar.
    callback : callable, optional
        ``callback(k, estimate)`` after iteration ``k`` with the current
        estimate cropped to the volume (a numpy array).
    return_info : bool
        Also return an :class:`RLInfo`.
    alphas : sequence of float, optional
        Biggs-Andrews extrapolation weights to use instead of computing
        them (they are recorded in :attr:`RLInfo.alphas`): replaying the
        weights of a reference run makes the iteration a local operator, so
        chunks of a large volume agree with each other.

    Returns
    -------
    restored : (Z, Y, X) float32 ndarray
        Non-negative estimate of the object on the volume's grid.
    info : RLInfo
        Only with ``return_info``.

    Notes
    -----
    Each iteration costs four real FFTs of the padded grid (the inverse of
    the forward projection pruned to the volume) plus the element-wise
    work: two complex OTF products and, on the CPU with the matched back
    projector and no TV term, three fused passes in the compiled kernels of
    ``restore3d._kernels`` (the ratio; the update with the Biggs
    correlations; the extrapolation; see :attr:`RLInfo.fused`), otherwise
    about eight PyTorch operations. Flux is kept: at convergence the model's
    total equals the data's.

    References
    ----------
    Richardson, JOSA 62 (1972) 55; Lucy, AJ 79 (1974) 745; Bertero &
    Boccacci, A&A 437 (2005) 369; Biggs & Andrews, Appl. Opt. 36 (1997) 1766;
    Dey et al., Microsc. Res. Tech. 69 (2006) 260; Guo et al., Nat.
    Biotechnol. 38 (2020) 1337.

    Examples
    --------
    >>> from restore3d.psf import gaussian_psf
    >>> psf = gaussian_psf((0.3, 0.1, 0.1), fwhm_lateral=0.3, fwhm_axial=0.9)
    >>> vol = np.zeros((16, 32, 32), np.float32); vol[8, 16, 16] = 100
    >>> from scipy.ndimage import convolve
    >>> blurred = convolve(vol, psf, mode="constant")
    >>> out = richardson_lucy(blurred, psf, iterations=50)
    >>> bool(out[8, 16, 16] > 3 * blurred[8, 16, 16])
    True
    """
    vol, h = check_inputs(volume, psf, boundary, acceleration, iterations)
    import torch
    dev = torch_device(device)
    info = RLInfo()
    with torch_threads(threads), torch.no_grad():
        if backprojector != "matched" and boundary == "extend":
            # the unmatched update is unstable where few data voxels see the
            # object: the estimate drained into the extension within a few
            # iterations (benchmarks/RESULTS.md), so it stays on the volume
            if not (isinstance(extend, str) and extend == "auto") and np.any(np.asarray(extend) != 0):
                log.warning("backprojector=%r keeps the object on the volume: extend=%r ignored",
                            backprojector, extend)
            extend = (0, 0, 0)
        model = ForwardModel(vol.shape, h, boundary=boundary, extend=extend, device=dev,
                             backprojector=backprojector)
        loop = _Loop(model, vol, h, as_background(background, vol.shape, dev), boundary=boundary,
                     backprojector=backprojector, tv=tv, spacing=spacing, watch=stop_tol is not None or monitor)
        x = _initial(init, vol, loop.b, model, loop.layout, loop.weights, dev)
        info.init_level = float(x.max())
        info.fused = loop.fused_update
        acc = _Biggs(x, loop.fused_update, alphas) if acceleration == "biggs" else None
        est, last = x, None
        start = time.perf_counter()
        bar = _progress(iterations, progress, "Richardson-Lucy")
        for k in range(int(iterations)):
            x_new = loop.update(est, loop.back_ratio(est, info), acc)
            if acc is None:
                loop.spare, est, last = est, x_new, x_new
            else:
                alpha, loop.spare = acc.extrapolate(k, x_new, est)
                info.alphas.append(alpha)
                last = x_new
            info.iterations = k + 1
            if callback is not None:
                callback(k + 1, loop.layout.real(last)[model.d_slice].cpu().numpy())
            bar.update(1)
            if stop_tol is not None and len(info.i_divergence) >= 2:
                prev, cur = info.i_divergence[-2], info.i_divergence[-1]
                if abs(prev - cur) <= stop_tol * max(abs(prev), 1e-30):
                    info.converged = True
                    break
        bar.close()
        final = loop.layout.real(last if last is not None else x)[model.d_slice]
        # the other grids go before the output is made: it is not the run's peak
        x = est = x_new = last = acc = loop = model = None
        out = final.clamp(min=0).cpu().numpy()
        info.seconds = time.perf_counter() - start
    log.debug("RL: %d iterations in %.2f s (fused kernels: %s)", info.iterations, info.seconds, info.fused)
    return (out, info) if return_info else out


class _Loop:
    """The data, the normalisation and the steps of one RL run, on grids in the padded layout.

    Every grid of the run (estimate, Biggs buffers) is held in the layout
    of :class:`restore3d._slab_fft.PaddedGrid`, and both
    projections of an iteration run in place in one working buffer, slab by
    slab: the forward projection ``crop_D(h * est)`` reaches the ratio
    ``y / mu`` a slab of planes at a time (only the data domain D's planes
    and rows are transformed back), the ratio is written into the buffer
    with its zero frame, and the back projection turns it into ``H^T``
    (ratio) on the object's support. So an iteration holds one grid beside
    the estimate, not the three of whole-grid transforms. On the CPU with
    the matched model and no TV term, the compiled kernels of
    :mod:`restore3d._fused` do each element-wise step in one pass, reading
    the normalisation from its small exact table
    (:class:`restore3d._border_weights.BorderWeights`; elsewhere it is
    expanded into a grid); the I-divergence monitor needs the clamped model,
    so it keeps the PyTorch ratio.
    """

    def __init__(self, model, vol, h, b, *, boundary, backprojector, tv, spacing, watch):
        import torch

        from . import _fused
        self.model, self.b, self.tv, self.watch = model, b, tv, watch
        self.y = torch.from_numpy(vol).to(model.device)
        dev = model.device
        self.layout = PaddedGrid(model.grid, dev)
        # 1 / the Bertero-Boccacci normalisation H^T 1_D (1 on D or on the grid where the model is plain),
        # exact, as a small table; a grid of it only where the update runs in PyTorch operations
        self.weights = BorderWeights(h, model.shape, model.ext, model.grid, boundary, row=self.layout.shape[2])
        # where the object can be non-zero: D extended (D itself for "zero"; the grid when periodic)
        self.support = tuple(slice(0, n + 2 * e) for n, e in zip(model.shape, model.ext))
        self.rescale = None
        if backprojector != "matched":
            # an unmatched back projector does not keep flux by itself: after
            # each step rescale so the model's total equals the data's (the
            # condition RL's fixed point satisfies), using
            # sum_D(H x) = <x, H^T 1_D> with the matched H^T
            w_matched = self.layout.padded(model.sensitivity() * model.support)
            b_total = (b * float(np.prod(vol.shape))) if isinstance(b, float) else float(b.sum())
            self.rescale = (w_matched.view(-1), float(vol.sum(dtype=np.float64)) - b_total)
        self.back_filter = (model.otf, True) if model.botf is None else (model.botf, False)
        self.spacing_ratio = (np.asarray(spacing) / min(spacing)).tolist() if spacing is not None else [1.0] * 3
        # floor of the model: FFT round-off can make it 0 or slightly negative
        self.eps = 1e-6 * max(float(vol.max()), 1e-12)
        #: a grid buffer no longer needed (the estimate an iteration replaced), reused by the next one
        self.spare = None
        self.fused_ratio = (_fused.available(self.y) and self.y.is_contiguous() and not watch
                            and (isinstance(b, float) or b.is_contiguous()))
        self.fused_update = (_fused.available(self.y) and tv == 0 and self.rescale is None
                             and self.weights.compact)
        #: the weights as a grid (padded layout) for the PyTorch update; None with the fused kernels
        self.inv_w = None if self.fused_update else self.weights.grid(dev)
        self._fused = _fused

    def back_ratio(self, est, info):
        """``H^T (y / max(crop_D(h * est) + b, eps))`` on the support, in a grid buffer (padded layout).

        Records the I-divergence of the model when watched.
        """
        import torch
        buf, self.spare = (self.spare if self.spare is not None else self.layout.zeros()), None
        dz, dy, dx = self.model.d_slice
        divergence = []

        def ratio(z0, z1, r, dst):
            mu, out, y = r[:, :, dx], dst[:, dy, dx], self.y[z0 - dz.start:z1 - dz.start]
            b = self.b if isinstance(self.b, float) else self.b[z0 - dz.start:z1 - dz.start]
            if self.fused_ratio:
                self._fused.ratio(y, mu, b, self.eps, out)  # in one pass
                return
            if not isinstance(b, float) or b:
                mu.add_(b)
            mu.clamp_(min=self.eps)
            if self.watch:
                divergence.append(i_divergence_of(y, mu))
            torch.div(y, mu, out=out)

        def back(z0, z1, r, dst):
            dst[:, self.support[1]] = r

        self.layout.convolve(est, buf, self.model.otf, conj=False, inp=self.support[:2], out=(dz, dy), sink=ratio)
        if self.watch:
            info.i_divergence.append(float(sum(divergence)))
        filt, conj = self.back_filter
        self.layout.convolve(buf, buf, filt, conj=conj, inp=(dz, dy), out=self.support[:2], sink=back)
        return buf

    def update(self, est, x_new, acc):
        """The multiplicative RL update ``est / H^T 1_D * x_new`` in place in ``x_new`` (+ TV, flux rescaling).

        ``x_new``: the back projection of the ratio (:meth:`back_ratio`).
        """
        import torch
        if acc is not None and self.fused_update and acc.correlate:
            acc.norms = self._fused.update_biggs(x_new, self.weights, est, acc.gbuf[0].view(x_new.shape))
        elif self.fused_update:
            self._fused.update(x_new, self.weights, est)
        else:
            x_new.mul_(self.inv_w).mul_(est)
        if self.tv > 0:
            real = self.layout.real
            real(x_new).mul_(_tv_factor(real(est), self.tv, self.spacing_ratio))
        if self.rescale is not None:
            x_new.clamp_(min=0)
            model_total = float(torch.dot(x_new.view(-1), self.rescale[0]))
            if model_total > 0 and self.rescale[1] > 0:
                x_new.mul_(self.rescale[1] / model_total)
        return x_new


class _Biggs:
    """Biggs-Andrews extrapolation along the last change, weighted by the last two changes' correlation.

    With PyTorch operations the last two changes sit in one (2, N) buffer
    so both correlations come from one matrix-vector pass; the fused update
    kernel computes them itself and overwrites the previous change in
    place (one row). Replayed weights (``alphas``) need no correlations.
    """

    def __init__(self, x, fused, alphas):
        import torch
        self.fused, self.alphas = fused, alphas
        self.correlate = alphas is None
        if self.correlate:
            self.gbuf = torch.zeros((1 if fused else 2, x.numel()), dtype=x.dtype, device=x.device)
        self.slot = 0
        self.prev_norm2 = None
        self.norms = None
        self.x_prev = None

    def extrapolate(self, k, x_new, est):
        """Write the next estimate into ``est``; return the weight used and the grid no longer needed."""
        import torch
        if not self.correlate:
            alpha = float(self.alphas[k]) if k < len(self.alphas) else 0.0
        else:
            if not self.fused:
                g = self.gbuf[self.slot]
                torch.sub(x_new.view(-1), est.view(-1), out=g)
                dots = torch.mv(self.gbuf, g)  # <g, g> and <g, g_prev> in one pass
                self.norms = (float(dots[self.slot]), float(dots[1 - self.slot]))
            g_norm2, g_cross = self.norms
            alpha = 0.0
            if self.prev_norm2 is not None:
                alpha = min(max(g_cross / (self.prev_norm2 + 1e-30), 0.0), 0.99)
            self.prev_norm2 = g_norm2
            self.slot = 1 - self.slot  # (the eager path's two rows)
        if self.x_prev is None or alpha == 0.0:
            est.copy_(x_new)
        elif self.fused:  # est = max(x_new + alpha (x_new - x_prev), 0) in one pass
            from . import _fused
            _fused.extrapolate(x_new, self.x_prev, alpha, est)
        else:  # the same as a lerp, clipped at 0
            torch.lerp(self.x_prev, x_new, 1.0 + alpha, out=est).clamp_(min=0)
        freed, self.x_prev = self.x_prev, x_new
        return alpha, freed


def _initial(init, vol, b, model, layout, weights, dev):
    """The first estimate in the padded layout, zero where the data sees nothing."""
    import torch
    x = layout.zeros()
    real = layout.real(x)
    if isinstance(init, str):
        if init != "mean":
            raise ValueError(f"init must be 'mean', a number or an array, got {init!r}")
        bmean = b if isinstance(b, float) else float(b.mean())
        real.fill_(max(float(vol.mean()) - bmean, 1e-6 * max(float(vol.mean()), 1e-12), 1e-12))
    elif np.ndim(init) == 0:
        real.fill_(float(init))
    else:
        arr = np.asarray(init, np.float32)
        ext_shape = tuple(n + 2 * e for n, e in zip(model.shape, model.ext))
        if arr.shape == model.shape:
            real[model.d_slice] = torch.from_numpy(arr).to(dev)
        elif arr.shape == ext_shape:
            real[tuple(slice(0, n) for n in ext_shape)] = torch.from_numpy(arr).to(dev)
        else:
            raise ValueError(f"init array shape {arr.shape} must be the volume's {model.shape} "
                             f"or the extended domain's {ext_shape}")
    for z in range(x.shape[0]):  # zero where the weight is (outside the support, or seen too little)
        x[z].mul_(weights.plane(z).to(dev) > 0)
    return x


def _progress(total, enabled, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def i_divergence(volume: np.ndarray, estimate: np.ndarray, psf: np.ndarray, *, background=0.0,
                 boundary: str = "extend", extend="auto") -> float:
    """Csiszar I-divergence between a volume and the model of an estimate.

    ``sum(y log(y / mu) - y + mu)`` over the volume, with ``mu = h * x + b``
    computed as :func:`richardson_lucy` does for the same ``boundary``
    (the estimate given on the volume's grid, zero outside it). The
    quantity RL decreases; 0 for a perfect model.
    """
    import torch
    vol, h = check_inputs(volume, psf, boundary, "none", 0)
    est = as_volume(estimate, name="estimate")
    with torch.no_grad():
        model = ForwardModel(vol.shape, h, boundary=boundary, extend=extend, device=torch.device("cpu"))
        x = model.embed(torch.from_numpy(est))
        mu = model.forward(x)[model.d_slice] + float(background)
        y = torch.from_numpy(vol)
        return i_divergence_of(y, mu.clamp(min=1e-12))


def blind_richardson_lucy(*args, **kwargs):
    """Blind Richardson-Lucy: see :func:`restore3d.blind.blind_richardson_lucy`."""
    from .blind import blind_richardson_lucy as blind
    return blind(*args, **kwargs)
