"""The stage contract: the base class every stage derives from and the context of one run.

A stage is a small object whose ``__call__(volume, ctx)`` takes a float32
(z, y, x) volume and a :class:`RunContext` and returns the new volume of the
same shape. Its constructor only stores its keyword arguments (so a stage
round-trips through JSON); :meth:`Stage.validate` checks them against their
annotations. Stage classes register by name for :meth:`Pipeline.from_dict
<restore3d.pipeline.Pipeline.from_dict>`.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import numbers
import re
from typing import Any, ClassVar

import numpy as np

__all__ = ["Stage", "RunContext", "stage_types", "PASSTHROUGH"]

log = logging.getLogger("restore3d.pipeline")

PASSTHROUGH = "passthrough"
_REGISTRY: dict[str, type["Stage"]] = {}


def stage_types() -> dict[str, type["Stage"]]:
    """All stage classes known to :meth:`Pipeline.from_dict`, by class name."""
    return dict(_REGISTRY)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclasses.dataclass
class RunContext:
    """What the stages of one run share.

    Attributes
    ----------
    spacing : (dz, dy, dx) tuple of float
        Voxel size in micrometres.
    psf : ndarray or None
        The current PSF (unit sum, (z, y, x), same spacing): given to
        :meth:`Pipeline.run`, or set by a stage that estimates it.
    rng : numpy.random.Generator
        The only source of randomness for stages.
    logger : logging.Logger
    device : str or None
        ``"cpu"``, ``"cuda"`` or None (CUDA when available) for torch stages.
    progress : bool
        Whether stages show progress bars.
    beads : structured ndarray or None
        A bead table, when a stage produced one.
    background_free : ndarray or None
        The volume with its ambient light removed, set by
        :class:`~restore3d.SubtractBackground`: what later stages' results
        must stay consistent with (:mod:`restore3d.selfcheck`).
    noise_sigma : float or None
        Noise standard deviation of the raw volume (its units), set by
        :class:`~restore3d.SubtractBackground`.
    psf_given : bool
        The PSF came with the run (``Pipeline.run(psf=...)``), not from a stage.
    history : list of str
        Class names of the stages that ran so far, in order.
    step : str
        Name of the step running now: :meth:`report` files under it.
    info : dict
        The stages' reports by step name (and anything else they add); it
        ends up on the :class:`~restore3d.pipeline.Result`.
    part_of : ((z, y, x), (Z, Y, X)) or None
        For a chunk of a larger volume: where it starts in that volume
        (voxels) and that volume's shape; None for a whole volume.
    """

    spacing: tuple
    psf: np.ndarray | None = None
    rng: np.random.Generator = dataclasses.field(default_factory=np.random.default_rng)
    logger: logging.Logger = log
    device: str | None = None
    progress: bool = False
    beads: np.ndarray | None = None
    background_free: np.ndarray | None = None
    noise_sigma: float | None = None
    psf_given: bool = False
    history: list = dataclasses.field(default_factory=list)
    step: str = ""
    info: dict = dataclasses.field(default_factory=dict)
    part_of: tuple | None = None

    def report(self, values: dict) -> None:
        """File a stage's report under its step name (two RL steps keep two reports)."""
        self.info[self.step or "stage"] = dict(values)


class Stage:
    """Base class of pipeline stages.

    Subclasses store their keyword arguments as attributes of the same name
    in ``__init__`` (and do nothing else there), and implement
    ``__call__(volume, ctx) -> volume``. The class attribute ``default_name``
    names the step when a bare stage is given to a pipeline. Subclasses are
    registered by class name so pipelines can be rebuilt from JSON.
    """

    default_name: ClassVar[str] = ""
    #: Working memory per voxel of the input (bytes) beyond the input and output volumes, measured on
    #: 34 x 512 x 512 volumes; stages whose memory depends on more than the voxel count override
    #: :meth:`memory_bytes`.
    bytes_per_voxel: ClassVar[float] = 32.0
    #: Whether the stage can run chunk-wise (:mod:`restore3d.chunked`).
    chunkable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("default_name"):
            cls.default_name = _snake(cls.__name__)
        _REGISTRY[cls.__name__] = cls

    def __call__(self, volume: np.ndarray, ctx: RunContext) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments of this stage, by name."""
        return {name: getattr(self, name) for name in self._param_names()}

    def validate(self) -> "Stage":
        """Check every parameter against its annotated type; ``ValueError`` names the first wrong one.

        Called when a pipeline is loaded, when parameters are set and before
        a run does any work, so ``{"iterations": "ten"}`` fails where it was
        written, not two stages later. Annotations of ``int``, ``float``,
        ``bool``, ``str``, ``dict``, ``list`` / ``tuple`` (and ``| None``) are
        checked; others accept anything.
        """
        hints = {p.name: p.annotation for p in inspect.signature(type(self).__init__).parameters.values()}
        for name in self._param_names():
            ok = _type_ok(getattr(self, name), hints.get(name, inspect.Parameter.empty))
            if not ok:
                raise ValueError(f"{type(self).__name__}: parameter {name!r} must be "
                                 f"{_describe(hints[name])}, got {getattr(self, name)!r}")
        return self

    def set_params(self, **params) -> "Stage":
        """Change constructor arguments in place; unknown names raise ``ValueError``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {key!r}; valid parameters: {valid}")
            setattr(self, key, value)
        return self.validate()

    def memory_bytes(self, shape, spacing, psf=None) -> float:
        """Working memory (bytes) this stage needs on a volume of ``shape``, beyond its input and output.

        An estimate for the memory budget of :meth:`Pipeline.run
        <restore3d.pipeline.Pipeline.run>`; ``psf`` is the PSF when known.
        """
        return self.bytes_per_voxel * float(np.prod(shape))

    def halo(self, spacing, psf) -> tuple[int, int, int]:
        """Voxels of context this stage needs on each side of a chunk (z, y, x)."""
        return (0, 0, 0)

    def alignment(self, spacing) -> tuple[int, int, int]:
        """Grid (z, y, x) that chunk origins must follow for chunked results to equal whole ones."""
        return (1, 1, 1)

    def freeze(self, sample: np.ndarray, ctx: "RunContext"):
        """The stage as it must run on every chunk of a large volume.

        Global quantities (a PSF, a background level, an intensity scale)
        are measured once on ``sample`` (a central block, after the previous
        stages) and fixed, so all chunks use the same values. Returns a
        stage or ``"passthrough"``; the default returns the stage itself.
        """
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        shown = []
        for k, v in self.get_params().items():
            d = defaults.get(k, inspect.Parameter.empty)
            if isinstance(v, np.ndarray) or isinstance(d, np.ndarray) or v != d:
                shown.append(f"{k}={_short_repr(v)}")
        return f"{type(self).__name__}({', '.join(shown)})"


_TYPES = {"int": (numbers.Integral,), "float": (numbers.Real,), "bool": (bool, np.bool_), "str": (str,),
          "dict": (dict,), "list": (list, tuple), "tuple": (list, tuple)}


def _type_ok(value, annotation) -> bool:
    if annotation is inspect.Parameter.empty or not isinstance(annotation, str):
        return True
    tokens = [t.strip() for t in annotation.split("|")]
    if value is None:
        return "None" in tokens or not all(t in _TYPES or t == "None" for t in tokens)
    allowed = []
    for t in tokens:
        if t == "None":
            continue
        if t not in _TYPES:
            return True  # a type this check does not know: anything goes
        allowed.extend(_TYPES[t])
    if isinstance(value, (bool, np.bool_)) and bool not in allowed:
        return False  # True is an int in Python, not an iteration count
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return isinstance(value, tuple(allowed))


def _describe(annotation) -> str:
    return " or ".join(t.strip() for t in str(annotation).split("|"))


def _short_repr(v):
    if isinstance(v, np.ndarray):
        return f"<array {v.shape} {v.dtype}>"
    return repr(v)
