"""Richardson-Lucy deconvolution, accelerated and boundary-aware, and blind RL.

The forward model of a recorded volume ``y`` on the observed domain D is

    mu = crop_D(h * x) + b

with the object ``x`` living on D extended by half the PSF on every side
(so beads just outside the stack can explain the haze they send into it),
``h`` the PSF and ``b`` a known background. Richardson-Lucy maximises the
Poisson likelihood of ``y`` with the multiplicative update

    x <- x / H^T 1_D * H^T (y / mu)

where ``H^T 1_D`` is the Bertero-Boccacci normalisation: it keeps voxels
near the border of the extended domain, seen by only part of the PSF, from
dimming or ringing. Convolutions are real FFTs (torch, float32) on a padded
grid, the PSF's transform computed once; the same code runs on CUDA.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Callable, Sequence

import numpy as np
from scipy import fft as sfft

from ._checks import as_psf, as_volume

__all__ = ["richardson_lucy", "blind_richardson_lucy", "i_divergence", "RLInfo",
           "BOUNDARIES", "ACCELERATIONS", "BACKPROJECTORS"]

log = logging.getLogger(__name__)

BOUNDARIES = ("extend", "zero", "periodic")
ACCELERATIONS = ("biggs", "none")
BACKPROJECTORS = ("matched", "wiener_butterworth")
_WEIGHT_FLOOR = 1e-3  # voxels seen by less than this fraction of the PSF stay empty


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


def _torch():
    import torch
    return torch


def _device(device):
    torch = _torch()
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use device='cpu'")
    return dev


@contextlib.contextmanager
def _threads(n):
    torch = _torch()
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _extension(psf_shape, extend):
    if extend is None or extend == "auto":
        return tuple(p // 2 for p in psf_shape)
    ext = tuple(int(e) for e in (extend if np.ndim(extend) else (extend,) * 3))
    if len(ext) != 3 or min(ext) < 0:
        raise ValueError(f"extend must be 'auto' or three non-negative voxel counts, got {extend!r}")
    return ext


class _Model:
    """Forward projector and back projector of one volume on a padded FFT grid."""

    def __init__(self, shape, psf, *, boundary, extend, device, backprojector="matched",
                 wb_alpha=1e-3, wb_beta=1e-2, wb_order=8):
        torch = _torch()
        self.torch = torch
        self.device = device
        self.shape = tuple(shape)
        P = psf.shape
        if boundary == "periodic":
            ext = (0, 0, 0)
            grid = self.shape
        else:
            ext = _extension(P, extend) if boundary == "extend" else (0, 0, 0)
            # object on E = D + 2 ext with D at offset ext: circular convolutions
            # between E and D alias onto the PSF support unless N >= n + ext + P // 2
            need = [n + e + p // 2 for n, e, p in zip(self.shape, ext, P)]
            grid = tuple(sfft.next_fast_len(int(n), real=True) for n in need)
        self.ext = ext
        self.grid = grid
        self.d_slice = tuple(slice(e, e + n) for e, n in zip(ext, self.shape))
        padded = np.zeros(grid, np.float32)
        # place the PSF with its centre voxel at the origin (wrapped)
        cz, cy, cx = [p // 2 for p in P]
        idx = [(np.arange(p) - c) % g for p, c, g in zip(P, (cz, cy, cx), grid)]
        padded[np.ix_(*idx)] += psf
        self.otf = torch.fft.rfftn(torch.from_numpy(padded).to(device))
        if backprojector == "matched":
            self.botf = torch.conj_physical(self.otf)  # materialised: a lazy conj view is resolved on every product
        elif backprojector == "wiener_butterworth":
            self.botf = self._wiener_butterworth(wb_alpha, wb_beta, wb_order)
        else:
            raise ValueError(f"backprojector must be one of {BACKPROJECTORS}, got {backprojector!r}")
        # object support: D extended (or D itself)
        support = np.zeros(grid, np.float32)
        support[tuple(slice(0, n + 2 * e) for n, e in zip(self.shape, ext))] = 1
        self.support = torch.from_numpy(support).to(device)
        ones_d = np.zeros(grid, np.float32)
        ones_d[self.d_slice] = 1
        self.ones_d = torch.from_numpy(ones_d).to(device)

    def _wiener_butterworth(self, alpha, beta, order):
        """Unmatched back projector of Guo et al. 2020: Wiener filter x Butterworth low-pass."""
        torch = self.torch
        otf = self.otf
        mag = torch.abs(otf)
        peak = float(mag.max())
        wiener = torch.conj(otf) / (mag ** 2 + alpha * peak ** 2)
        # cut-off along each axis: where the OTF falls below 1 % of its peak
        freqs, kc = _cutoffs(mag.cpu().numpy(), self.grid, 0.01)
        r2 = _ellipsoid_r2(freqs, kc)
        eps2 = 1.0 / beta ** 2 - 1.0
        butter = 1.0 / np.sqrt(1.0 + eps2 * r2 ** order)
        b = wiener * torch.from_numpy(butter.astype(np.float32)).to(self.device)
        return b / b[0, 0, 0].real

    def embed(self, data_d):
        out = self.torch.zeros(self.grid, dtype=self.torch.float32, device=self.device)
        out[self.d_slice] = data_d
        return out

    def conv(self, x, otf):
        """Circular convolution of ``x`` with the filter ``otf`` (a fresh tensor: faster than ``out=``, which copies)."""
        torch = self.torch
        return torch.fft.irfftn(torch.fft.rfftn(x).mul_(otf), s=self.grid)

    def forward(self, x):
        return self.conv(x, self.otf)

    def forward_d(self, x):
        """The forward projection ``crop_D(h * x)``, computed on the data domain D only.

        A pruned inverse FFT: after the inverse transform along z only D's
        planes go on to the transform along y, and only D's rows to the real
        transform along x, so the inverse does about the share of the work
        that D fills of the grid (benchmarks/RESULTS.md, section 4).
        """
        torch = self.torch
        if self.shape == self.grid:  # nothing to prune (periodic boundary)
            return self.conv(x, self.otf)
        dz, dy, dx = self.d_slice
        a = torch.fft.ifft(torch.fft.rfftn(x).mul_(self.otf), dim=0)[dz]
        a = torch.fft.ifft(a, dim=1)[:, dy]
        return torch.fft.irfft(a, n=self.grid[2], dim=2)[:, :, dx]

    def back(self, r):
        return self.conv(r, self.botf)

    def sensitivity(self):
        """``H^T 1_D`` with the matched ``H^T``: how much of each object voxel's light reaches the data.

        Also for an unmatched back projector: the Wiener-Butterworth filter
        applied to the box ``1_D`` rings (-2..7) and is no weight.
        """
        return self.conv(self.ones_d, self.torch.conj(self.otf))


def _cutoffs(otf_abs: np.ndarray, grid, fraction: float):
    """Frequency (cycles/voxel) along each axis where an OTF magnitude falls below ``fraction`` of its peak."""
    freqs = [np.fft.fftfreq(grid[0]), np.fft.fftfreq(grid[1]), np.fft.rfftfreq(grid[2])]
    peak = float(otf_abs.max())
    lines = [otf_abs[:, 0, 0], otf_abs[0, :, 0], otf_abs[0, 0, :]]
    kc = []
    for f, line in zip(freqs, lines):
        order = np.argsort(np.abs(f))
        af, lv = np.abs(f)[order], line[order]
        below = np.nonzero(lv < fraction * peak)[0]
        kc.append(float(af[below[0]]) if below.size else float(af.max()) + 1e-6)
    return freqs, kc


def _ellipsoid_r2(freqs, kc):
    kz, ky, kx = np.meshgrid(freqs[0] / kc[0], freqs[1] / kc[1], freqs[2] / kc[2],
                             indexing="ij", sparse=True)
    return kz ** 2 + ky ** 2 + kx ** 2


def _as_background(background, shape, device):
    torch = _torch()
    if np.ndim(background) == 0:
        b = float(background)
        if not np.isfinite(b) or b < 0:
            raise ValueError(f"background must be a finite number >= 0 or a volume, got {background!r}")
        return b
    arr = as_volume(background, name="background")
    if arr.shape != tuple(shape):
        raise ValueError(f"background shape {arr.shape} differs from the volume {tuple(shape)}")
    if arr.min() < 0:
        raise ValueError("background must be >= 0 everywhere")
    return torch.from_numpy(arr).to(device)


def _i_div(y_d, mu_d):
    torch = _torch()
    return float((torch.xlogy(y_d, y_d / mu_d) - y_d + mu_d).sum(dtype=torch.float64))


def _tv_factor(x, weight, spacing_ratio, eps=1e-3):
    """Dey et al. 2006: 1 / (1 - weight * div(grad x / |grad x|)), on voxel units."""
    torch = _torch()
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


def _prepare(volume, psf, boundary, acceleration, iterations):
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
    vol, h = _prepare(volume, psf, boundary, acceleration, iterations)
    torch = _torch()
    dev = _device(device)
    info = RLInfo()
    with _threads(threads), torch.no_grad():
        if backprojector != "matched" and boundary == "extend":
            # the unmatched update is unstable where few data voxels see the
            # object: the estimate drained into the extension within a few
            # iterations (benchmarks/RESULTS.md), so it stays on the volume
            if not (isinstance(extend, str) and extend == "auto") and np.any(np.asarray(extend) != 0):
                log.warning("backprojector=%r keeps the object on the volume: extend=%r ignored",
                            backprojector, extend)
            extend = (0, 0, 0)
        model = _Model(vol.shape, h, boundary=boundary, extend=extend, device=dev,
                       backprojector=backprojector)
        y_vol = torch.from_numpy(vol).to(dev)
        b = _as_background(background, vol.shape, dev)
        # Bertero-Boccacci normalisation H^T 1_D (or 1 where the model is plain)
        sens = model.sensitivity() if boundary == "extend" or backprojector != "matched" else None
        if boundary == "zero":
            inv_w = model.ones_d.clone()
        elif boundary == "periodic":
            inv_w = torch.ones(model.grid, dtype=torch.float32, device=dev)
        else:
            inv_w = torch.where(sens > _WEIGHT_FLOOR, 1.0 / sens.clamp(min=_WEIGHT_FLOOR), torch.zeros_like(sens))
            inv_w *= model.support
        x = _initial(init, vol, b, model, inv_w, dev)
        info.init_level = float(x.max())
        rescale = None
        if backprojector != "matched":
            # an unmatched back projector does not keep flux by itself: after
            # each step rescale so the model's total equals the data's
            # (the condition RL's fixed point satisfies), using
            # sum_D(H x) = <x, H^T 1_D> with the matched H^T
            w_matched = sens * model.support
            b_total = (b * float(np.prod(vol.shape))) if isinstance(b, float) else float(b.sum())
            rescale = (w_matched.view(-1), float(vol.sum(dtype=np.float64)) - b_total)
        spacing_ratio = (np.asarray(spacing) / min(spacing)).tolist() if spacing is not None else [1.0] * 3
        # floor of the model: FFT round-off can make it 0 or slightly negative
        eps = 1e-6 * max(float(vol.max()), 1e-12)
        # The data y and the background b live on D only, and so does the
        # ratio y / mu (zero outside D): the model is computed on D alone
        # (a pruned inverse FFT), and clamping and dividing on D alone
        # halves those passes. `ratio` is preallocated with its zero frame;
        # the FFTs return fresh tensors (faster than writing through `out=`,
        # which copies). `x_prev` keeps the last RL update for the
        # Biggs-Andrews extrapolation. With PyTorch operations the last two
        # changes `g` sit in one (2, N) buffer so both correlations come from
        # one matrix-vector pass; the fused kernel keeps one change and
        # overwrites it in place.
        ratio = torch.zeros_like(x)
        ratio_d = ratio[model.d_slice]
        est = x
        x_prev = None
        biggs = acceleration == "biggs"
        # the fused C kernels (restore3d/_fused.py) do the element-wise steps in
        # one pass each where they apply: CPU, matched model with no TV term
        from . import _fused
        # (the I-divergence monitor needs the clamped model, so it keeps the PyTorch ratio)
        fused_ratio = (_fused.available(x, y_vol) and y_vol.is_contiguous() and stop_tol is None
                       and not monitor and (isinstance(b, float) or b.is_contiguous()))
        fused_update = _fused.available(x, inv_w) and tv == 0 and rescale is None
        info.fused = fused_update
        if biggs and alphas is None:  # replayed weights need no correlations
            # the fused update overwrites the previous change in place: one row
            gbuf = torch.zeros((1 if fused_update else 2, x.numel()), dtype=x.dtype, device=dev)
            slot = 0
        g_prev_norm2 = None
        start = time.perf_counter()
        bar = _progress(iterations, progress, "Richardson-Lucy")
        for k in range(int(iterations)):
            mu_d = model.forward_d(est)
            if fused_ratio:
                _fused.ratio(y_vol, mu_d, b, eps, ratio_d)  # y / clamp(mu + b, eps) in one pass
            else:
                if not isinstance(b, float) or b:
                    mu_d.add_(b)
                mu_d.clamp_(min=eps)
                if stop_tol is not None or monitor:
                    info.i_divergence.append(_i_div(y_vol, mu_d))
                torch.div(y_vol, mu_d, out=ratio_d)
            del mu_d
            x_new = model.back(ratio)
            if fused_update and biggs and alphas is None:
                g_norm2, g_cross = _fused.update_biggs(x_new, inv_w, est, gbuf[0])
            elif fused_update:
                _fused.update(x_new, inv_w, est)
            else:
                x_new.mul_(inv_w).mul_(est)
            if tv > 0:
                x_new.mul_(_tv_factor(est, tv, spacing_ratio))
            if rescale is not None:
                x_new.clamp_(min=0)
                model_total = float(torch.dot(x_new.view(-1), rescale[0]))
                if model_total > 0 and rescale[1] > 0:
                    x_new.mul_(rescale[1] / model_total)
            if biggs:
                if alphas is not None:
                    alpha = float(alphas[k]) if k < len(alphas) else 0.0
                else:
                    if not fused_update:
                        g = gbuf[slot]
                        torch.sub(x_new.view(-1), est.view(-1), out=g)
                        dots = torch.mv(gbuf, g)  # <g, g> and <g, g_prev> in one pass
                        g_norm2, g_cross = float(dots[slot]), float(dots[1 - slot])
                    alpha = 0.0
                    if g_prev_norm2 is not None:
                        alpha = min(max(g_cross / (g_prev_norm2 + 1e-30), 0.0), 0.99)
                    g_prev_norm2 = g_norm2
                    slot = 1 - slot  # (the eager path's two rows)
                info.alphas.append(alpha)
                if x_prev is None or alpha == 0.0:
                    est.copy_(x_new)
                elif fused_update:  # est = max(x_new + alpha (x_new - x_prev), 0) in one pass
                    _fused.extrapolate(x_new, x_prev, alpha, est)
                else:  # the same as a lerp, clipped at 0
                    torch.lerp(x_prev, x_new, 1.0 + alpha, out=est).clamp_(min=0)
                x_prev = x_new
            else:
                est = x_new
                x_prev = est
            info.iterations = k + 1
            if callback is not None:
                callback(k + 1, x_prev[model.d_slice].cpu().numpy())
            bar.update(1)
            if stop_tol is not None and len(info.i_divergence) >= 2:
                prev, cur = info.i_divergence[-2], info.i_divergence[-1]
                if abs(prev - cur) <= stop_tol * max(abs(prev), 1e-30):
                    info.converged = True
                    break
        bar.close()
        final = x_prev if x_prev is not None else x
        out = final[model.d_slice].clamp(min=0).cpu().numpy().astype(np.float32)
        info.seconds = time.perf_counter() - start
    log.debug("RL: %d iterations in %.2f s (fused kernels: %s)", info.iterations, info.seconds, info.fused)
    return (out, info) if return_info else out


def _initial(init, vol, b, model, inv_w, dev):
    torch = _torch()
    if isinstance(init, str):
        if init != "mean":
            raise ValueError(f"init must be 'mean', a number or an array, got {init!r}")
        bmean = b if isinstance(b, float) else float(b.mean())
        level = max(float(vol.mean()) - bmean, 1e-6 * max(float(vol.mean()), 1e-12), 1e-12)
        x = torch.full(model.grid, level, dtype=torch.float32, device=dev)
    elif np.ndim(init) == 0:
        x = torch.full(model.grid, float(init), dtype=torch.float32, device=dev)
    else:
        arr = np.asarray(init, np.float32)
        x = torch.zeros(model.grid, dtype=torch.float32, device=dev)
        ext_shape = tuple(n + 2 * e for n, e in zip(model.shape, model.ext))
        if arr.shape == model.shape:
            x[model.d_slice] = torch.from_numpy(arr).to(dev)
        elif arr.shape == ext_shape:
            x[tuple(slice(0, n) for n in ext_shape)] = torch.from_numpy(arr).to(dev)
        else:
            raise ValueError(f"init array shape {arr.shape} must be the volume's {model.shape} "
                             f"or the extended domain's {ext_shape}")
    return x * (inv_w > 0)


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
    vol, h = _prepare(volume, psf, boundary, "none", 0)
    est = as_volume(estimate, name="estimate")
    torch = _torch()
    with torch.no_grad():
        model = _Model(vol.shape, h, boundary=boundary, extend=extend, device=torch.device("cpu"))
        x = model.embed(torch.from_numpy(est))
        mu = model.forward(x)[model.d_slice] + float(background)
        y = torch.from_numpy(vol)
        return _i_div(y, mu.clamp(min=1e-12))


def blind_richardson_lucy(volume: np.ndarray, psf: np.ndarray, *, iterations: int = 5,
                          object_iterations: int = 4, psf_iterations: int = 2,
                          background=0.0, boundary: str = "extend", support=None,
                          bandlimit: float | None = 1.0, radial: bool = True,
                          device=None, threads: int | None = None, progress: bool = False,
                          return_info: bool = False):
    """Blind Richardson-Lucy: alternate object and PSF updates (Fish et al. 1995).

    Each of ``iterations`` rounds runs ``object_iterations`` RL steps on the
    object with the current PSF, then ``psf_iterations`` RL steps on the PSF
    with the current object (the same multiplicative update with the roles
    swapped). After every PSF step the PSF is kept non-negative, zero
    outside its support box and normalised to unit sum.

    Unconstrained, the alternation drifts to the trivial maximum of the
    likelihood (a delta PSF and an object equal to the data). Two
    constraints keep the PSF physical: its transfer function is cut to an
    ellipsoid ``bandlimit`` times the starting PSF's cut-offs (where its
    OTF falls below 1 % of the peak): an optical PSF is band-limited, a
    delta is not; and with ``radial`` it is averaged over rotations about
    the optical axis (widefield PSFs are rotationally symmetric).

    Parameters
    ----------
    volume : (Z, Y, X) ndarray
        Counts >= 0.
    psf : (z, y, x) ndarray
        Initial PSF (e.g. estimated from the beads, or a Gaussian model);
        its shape is the support unless ``support`` is given.
    iterations, object_iterations, psf_iterations : int
    background : float or ndarray
    boundary : {"extend", "zero", "periodic"}
    support : (sz, sy, sx) odd ints, optional
        Support box of the PSF in voxels (at most the initial PSF's shape).
    bandlimit : float or None
        Widening of the starting PSF's frequency cut-offs allowed to the
        estimate; None: no band limit (not recommended).
    radial : bool
        Average the PSF over rotations about z (assumes dy == dx).
    device, threads, progress, return_info
        As in :func:`richardson_lucy`.

    Returns
    -------
    restored : (Z, Y, X) float32 ndarray
    psf : (z, y, x) float32 ndarray
        The final PSF, unit sum, same shape as the initial one.
    info : RLInfo
        Only with ``return_info``.

    References
    ----------
    Fish, Brinicombe, Pike & Walker, JOSA A 12 (1995) 58.
    """
    vol, h = _prepare(volume, psf, boundary, "none", iterations)
    torch = _torch()
    dev = _device(device)
    sup = tuple(h.shape) if support is None else tuple(int(s) for s in support)
    if len(sup) != 3 or any(s < 1 or s > p or s % 2 == 0 for s, p in zip(sup, h.shape)):
        raise ValueError(f"support must be three odd sizes no larger than the PSF {h.shape}, got {support!r}")
    info = RLInfo()
    start = time.perf_counter()
    with _threads(threads), torch.no_grad():
        model = _Model(vol.shape, h, boundary=boundary, extend="auto", device=dev)
        grid = model.grid
        y = model.embed(torch.from_numpy(vol).to(dev))
        b = _as_background(background, vol.shape, dev)
        b_grid = model.embed(b) if not isinstance(b, float) else b
        # PSF support mask on the wrapped grid
        mask = np.zeros(grid, np.float32)
        idx = [(np.arange(s) - s // 2) % g for s, g in zip(sup, grid)]
        mask[np.ix_(*idx)] = 1
        mask_t = torch.from_numpy(mask).to(dev)
        h_grid = torch.fft.irfftn(model.otf, s=grid) * mask_t
        h_grid = h_grid.clamp(min=0) / h_grid.clamp(min=0).sum()
        band = None
        if bandlimit is not None:
            freqs, kc = _cutoffs(torch.abs(model.otf).cpu().numpy(), grid, 1e-2)
            r2 = _ellipsoid_r2(freqs, [bandlimit * k for k in kc])
            band = torch.from_numpy((r2 <= 1.0).astype(np.float32)).to(dev)
        radial_avg = _radial_averager(sup, grid, dev) if radial else None

        def constrain(hg):
            if band is not None:
                hg = torch.fft.irfftn(torch.fft.rfftn(hg) * band, s=grid)
            if radial_avg is not None:
                hg = radial_avg(hg)
            hg = (hg * mask_t).clamp(min=0)
            return hg / hg.sum().clamp(min=1e-30)

        h_grid = constrain(h_grid)
        x = None
        eps = 1e-6 * max(float(vol.max()), 1e-12)
        bar = _progress(iterations, progress, "blind RL")
        for k in range(int(iterations)):
            model.otf = torch.fft.rfftn(h_grid)
            model.botf = torch.conj_physical(model.otf)
            x = torch.from_numpy(richardson_lucy_grid(model, y, b_grid, x, object_iterations, eps))
            x = x.to(dev)
            X = torch.fft.rfftn(x)
            norm = torch.fft.irfftn(torch.conj(X) * torch.fft.rfftn(model.ones_d), s=grid)
            norm_inv = torch.where(norm > 1e-12, 1.0 / norm.clamp(min=1e-12), torch.zeros_like(norm))
            for _ in range(int(psf_iterations)):
                mu = torch.fft.irfftn(torch.fft.rfftn(h_grid) * X, s=grid)
                mu = (mu + b_grid).clamp_(min=eps)
                ratio = y / mu
                corr = torch.fft.irfftn(torch.conj(X) * torch.fft.rfftn(ratio), s=grid)
                h_grid = constrain(h_grid * corr * norm_inv)
            info.iterations = k + 1
            bar.update(1)
        bar.close()
        model.otf = torch.fft.rfftn(h_grid)
        model.botf = torch.conj_physical(model.otf)
        x = torch.from_numpy(richardson_lucy_grid(model, y, b_grid, x, object_iterations, eps)).to(dev)
        out = x[model.d_slice].clamp(min=0).cpu().numpy().astype(np.float32)
        h_np = h_grid.cpu().numpy()
        h_out = h_np[np.ix_(*[(np.arange(p) - p // 2) % g for p, g in zip(h.shape, grid)])]
        h_out = (h_out / h_out.sum()).astype(np.float32)
    info.seconds = time.perf_counter() - start
    info.psf = h_out
    return (out, h_out, info) if return_info else (out, h_out)


def _radial_averager(support, grid, device):
    """Average a wrapped PSF over rings of equal lateral radius in each z plane."""
    torch = _torch()
    sz, sy, sx = support
    ys = (np.arange(sy) - sy // 2)
    xs = (np.arange(sx) - sx // 2)
    r = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    ring = np.round(r * 2).astype(np.int64)  # half-voxel rings
    n_rings = int(ring.max()) + 1
    iy = torch.as_tensor(ys % grid[1], device=device)
    ix = torch.as_tensor(xs % grid[2], device=device)
    iz = torch.as_tensor((np.arange(sz) - sz // 2) % grid[0], device=device)
    ring_t = torch.as_tensor(ring.ravel(), device=device)
    counts = torch.bincount(ring_t, minlength=n_rings).clamp(min=1).to(torch.float32)

    def average(hg):
        box = hg[iz][:, iy][:, :, ix].reshape(sz, -1)
        sums = torch.zeros((sz, n_rings), dtype=hg.dtype, device=device)
        sums.index_add_(1, ring_t, box)
        box = (sums / counts)[:, ring_t].reshape(sz, sy, sx)
        out = torch.zeros_like(hg)
        out[iz[:, None, None], iy[None, :, None], ix[None, None, :]] = box
        return out

    return average


def richardson_lucy_grid(model, y, b_grid, x, iterations, eps):
    """Plain Bertero-Boccacci RL iterations on a model's grid (used by blind RL); returns numpy."""
    torch = _torch()
    w = model.sensitivity()
    inv_w = torch.where(w > _WEIGHT_FLOOR, 1.0 / w.clamp(min=_WEIGHT_FLOOR), torch.zeros_like(w))
    inv_w *= model.support
    if x is None:
        x = torch.full(model.grid, max(float(y[model.d_slice].mean()), 1e-12),
                       dtype=torch.float32, device=y.device) * (inv_w > 0)
    for _ in range(int(iterations)):
        mu = (model.forward(x) + b_grid).clamp_(min=eps)
        x = model.back(y / mu).mul_(inv_w).mul_(x)
    return x.cpu().numpy()
