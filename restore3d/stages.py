"""Pipeline stages: thin wrappers that call the array functions.

Every stage stores its constructor arguments unchanged (so pipelines
round-trip through JSON) and does its work in ``__call__(volume, ctx)``.
"""
from __future__ import annotations

import numpy as np

from . import background as _bg
from .pipeline import RunContext, Stage

__all__ = ["SubtractBackground"]


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

    The estimated background level and the noise of the result are reported
    in ``ctx.info["background"]``.
    """

    default_name = "background"

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

    def __call__(self, volume: np.ndarray, ctx: RunContext) -> np.ndarray:
        bg = _bg.estimate_background(volume, ctx.spacing, method=self.method, **self._options())
        out = volume - bg
        if self.clip:
            np.maximum(out, 0, out=out)
        ctx.info["background"] = {"method": self.method, "mean": float(bg.mean()),
                                  "min": float(bg.min()), "max": float(bg.max()),
                                  "noise_sigma": _bg.estimate_noise(volume)}
        return out
