"""Figures: maximum-intensity projections before/after and PSF views, with micrometre scale bars.

Uses matplotlib's non-interactive Agg backend; every function writes a PNG
and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ._checks import as_spacing
from ._files import atomic_write

__all__ = ["projections_figure", "psf_figure"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _scale_bar(ax, length_px, label, shape):
    h, w = shape
    x0 = w * 0.05
    y0 = h * 0.92
    ax.plot([x0, x0 + length_px], [y0, y0], color="white", lw=2.5, solid_capstyle="butt")
    ax.text(x0 + length_px / 2, y0 - h * 0.03, label, color="white", ha="center", va="bottom", fontsize=7)


def _nice_length(um):
    for v in (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500):
        if v >= um:
            return v
    return um


def _mips(vol):
    return vol.max(axis=0), vol.max(axis=1), vol.max(axis=2)  # yx, zx, zy


def projections_figure(path, volumes: dict, spacing: Sequence[float], *, title: str = "",
                       table: str | None = None, gamma: float = 0.5) -> Path:
    """Maximum-intensity projections (xy, xz, yz) of each volume, one row per volume.

    Parameters
    ----------
    path : path of the PNG to write
    volumes : dict name -> (Z, Y, X) array
        E.g. ``{"input": raw, "restored": out}``.
    spacing : (dz, dy, dx) micrometres
        Sets the aspect of the side views and the scale bar.
    title : str
    table : str, optional
        Text (e.g. a metrics table) printed under the images.
    gamma : float
        Display gamma (values are shown as ``v ** gamma`` after min-max
        scaling) so dim beads stay visible.
    """
    plt = _plt()
    dz, dy, dx = as_spacing(spacing)
    n = len(volumes)
    first = np.asarray(next(iter(volumes.values())))
    Z, Y, X = first.shape
    widths = [X * dx, X * dx, Z * dz]
    fig_w = 10.0
    row_h = fig_w * max(Y * dy, Z * dz) / sum(widths) + 0.4
    extra = 0.25 * (table.count("\n") + 1) if table else 0.0
    fig, axes = plt.subplots(n, 3, figsize=(fig_w, row_h * n + extra + 0.6),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for r, (name, vol) in enumerate(volumes.items()):
        vol = np.asarray(vol, np.float32)
        lo, hi = np.percentile(vol, 1), vol.max()
        views = _mips(vol)
        labels = ("xy", "xz", "yz")
        extents = ([0, X * dx, Y * dy, 0], [0, X * dx, Z * dz, 0], [0, Y * dy, Z * dz, 0])
        for c, (img, lab, ext) in enumerate(zip(views, labels, extents)):
            ax = axes[r, c]
            shown = np.clip((img - lo) / max(hi - lo, 1e-12), 0, 1) ** gamma
            if c == 2:
                shown = shown.T  # yz: z horizontal
                ext = [0, Z * dz, Y * dy, 0]
            ax.imshow(shown, cmap="magma", extent=ext, interpolation="nearest", aspect="equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} - {lab}" if c == 0 else lab, fontsize=8)
            bar = _nice_length((ext[1] - ext[0]) / 5)
            _scale_bar(ax, bar, f"{bar:g} um", (ext[2], ext[1]))
    if title:
        fig.suptitle(title, fontsize=10)
    if table:
        fig.text(0.01, 0.005, table, family="monospace", fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, extra / (row_h * n + extra + 0.6), 1, 0.97))
    path = Path(path)
    _save(fig, path)
    return path


def psf_figure(path, psf: np.ndarray, spacing: Sequence[float], *, fwhm_um=None, title: str = "PSF") -> Path:
    """Central sections (xy, xz) and axial / lateral profiles of a PSF with its FWHM in micrometres."""
    from .psf import fwhm as measure
    plt = _plt()
    dz, dy, dx = as_spacing(spacing)
    p = np.asarray(psf, np.float32)
    w = measure(p, spacing) if fwhm_um is None else np.asarray(fwhm_um)
    c = np.unravel_index(int(np.argmax(p)), p.shape)
    Z, Y, X = p.shape
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    axes[0].imshow(p[c[0]] ** 0.5, cmap="magma", extent=[0, X * dx, Y * dy, 0])
    axes[0].set_title("xy (sqrt)", fontsize=9)
    axes[1].imshow(p[:, c[1], :] ** 0.5, cmap="magma", extent=[0, X * dx, Z * dz, 0], aspect="equal")
    axes[1].set_title("xz (sqrt)", fontsize=9)
    for ax in axes[:2]:
        ax.set_xlabel("um")
    zc = (np.arange(Z) - c[0]) * dz
    xc = (np.arange(X) - c[2]) * dx
    axes[2].plot(zc, p[:, c[1], c[2]] / p.max(), label=f"z: FWHM {w[0]:.3f} um")
    axes[2].plot(xc, p[c[0], c[1], :] / p.max(), label=f"x: FWHM {w[2]:.3f} um")
    axes[2].plot((np.arange(Y) - c[1]) * dy, p[c[0], :, c[2]] / p.max(), "--", label=f"y: FWHM {w[1]:.3f} um")
    axes[2].axhline(0.5, color="grey", lw=0.5)
    axes[2].set_xlabel("um from the peak")
    axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path


def _save(fig, path):
    """Write a figure atomically (same format as the path's extension) and close it."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    _plt().close(fig)
