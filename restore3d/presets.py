"""Ready-made pipelines: the recommended one and the classical stages it starts with.

One source for the default stages: :func:`default_pipeline` is what the
command line, the demo and the README run, and :func:`classical_stages` is
what the shipped refiner was trained after (its checkpoint records them).
"""
from __future__ import annotations

from .pipeline import Pipeline

__all__ = ["default_pipeline", "classical_stages"]


def classical_stages() -> Pipeline:
    """Wavelet background, the PSF from the volume's beads, 10 accelerated Richardson-Lucy iterations.

    Ten iterations detect dim beads best (more amplify noise into false beads).
    """
    from .stages import EstimatePSF, RichardsonLucy, SubtractBackground
    return Pipeline([SubtractBackground(), EstimatePSF(), RichardsonLucy(iterations=10)])


def default_pipeline(*, refiner: bool = True) -> Pipeline:
    """The recommended pipeline: :func:`classical_stages` and the shipped refiner.

    With ``refiner=False`` the last step (``"refiner"``) is ``"passthrough"``.
    """
    from .refiner import Refiner
    steps = list(classical_stages().steps)
    steps.append(("refiner", Refiner.pretrained() if refiner else "passthrough"))
    return Pipeline(steps)
