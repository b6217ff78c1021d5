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


def default_pipeline(*, refiner: bool | str = True) -> Pipeline:
    """The recommended pipeline: :func:`classical_stages` and the shipped refiner.

    With ``refiner=False`` the last step (``"refiner"``) is ``"passthrough"``.
    ``refiner`` may also name a shipped weight set
    (:data:`restore3d.refiner.SHIPPED`; True: :data:`~restore3d.refiner.DEFAULT_WEIGHTS`).
    A rendering one (the default, ``"pretrained-render"``) is followed by
    :class:`~restore3d.RemoveUnsupported` (``"support"``), which removes the
    spots it puts where a dim volume's data hold none (benchmarks/RESULTS.md,
    section 1).
    """
    from .refiner import DEFAULT_WEIGHTS, SHIPPED, Refiner
    from .stages import RemoveUnsupported
    name = DEFAULT_WEIGHTS if refiner is True else refiner
    if name is not False and name not in SHIPPED:
        raise ValueError(f"refiner must be True, False or one of {sorted(SHIPPED)}, got {refiner!r}")
    steps = list(classical_stages().steps)
    stage = Refiner.pretrained(name) if name else "passthrough"
    steps.append(("refiner", stage))
    if name and stage.renders:
        steps.append(("support", RemoveUnsupported()))
    return Pipeline(steps)
