"""Intensity normalisation for sparse bead volumes.

Plain percentile normalisation fails on bead volumes: most voxels are
background, so low and high percentiles both sit in the background or on
the brightest bead depending on how many beads there are, and the network
sees beads at a scale that changes with density. ``"peaks"`` scales by the
median height of the bead peaks instead (local maxima above a tenth of the
brightest), which stays put as density and brightness change (measured in
benchmarks/RESULTS.md). Normalisation is computed once per volume, never per
tile, so tiled inference equals whole-volume inference.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..detect import typical_peak

__all__ = ["Normalizer", "METHODS"]

METHODS = ("peaks", "percentile", "max")


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """``(volume - offset) / scale`` with offset and scale from the volume itself.

    Attributes
    ----------
    method : {"peaks", "percentile", "max"}
        ``"peaks"``: scale = median of the local maxima above
        ``peak_fraction`` of the maximum (the typical bead peak).
        ``"percentile"``: scale = ``high`` percentile minus offset.
        ``"max"``: scale = maximum minus offset.
    offset : {"zero", "median"}
        ``"zero"`` for background-free input (after the classical stages),
        ``"median"`` for raw input whose background is the median.
    peak_fraction : float
    high : float
        Percentile for ``method="percentile"``.
    """

    method: str = "peaks"
    offset: str = "zero"
    peak_fraction: float = 0.1
    high: float = 99.8

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"normalisation method must be one of {METHODS}, got {self.method!r}")
        if self.offset not in ("zero", "median"):
            raise ValueError(f"offset must be 'zero' or 'median', got {self.offset!r}")

    def stats(self, volume: np.ndarray) -> tuple[float, float]:
        """``(offset, scale)`` of a volume."""
        vol = np.asarray(volume, np.float32)
        off = float(np.median(vol)) if self.offset == "median" else 0.0
        v = vol - off if off else vol
        top = float(v.max())
        if top <= 0:
            return off, 1.0
        if self.method == "max":
            scale = top
        elif self.method == "percentile":
            scale = float(np.percentile(v, self.high))
        else:
            scale = typical_peak(v, fraction=self.peak_fraction) or top
        if not np.isfinite(scale) or scale <= 1e-12 * max(top, 1e-30):
            scale = top
        return off, scale

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(**d)
