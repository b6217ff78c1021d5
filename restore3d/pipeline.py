"""Pipeline of named, swappable restoration stages and its result.

A stage (:class:`~restore3d.base.Stage`) is a small object whose
``__call__(volume, ctx)`` takes a float32 (z, y, x) volume and a
:class:`~restore3d.base.RunContext` and returns the new volume of the
same shape. A :class:`Pipeline` chains named stages, lets you reach, replace
or remove (``"passthrough"``) each one by name, sweep their parameters with
``set_params(rl__iterations=50)``, and round-trips to a plain dict / JSON file
so the exact pipeline behind a result can be kept and shared.
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Generator, Iterator

import numpy as np

from ._checks import as_device, as_rng, as_volume, check_restorable, check_voxel_spacing
from ._files import atomic_write
from ._stats import intensity_gain
from .memory import budget_bytes, release_free_memory
from ._version import __version__
from .base import PASSTHROUGH, RunContext, Stage, stage_types

__all__ = ["Stage", "RunContext", "Result", "Pipeline", "stage_types", "PASSTHROUGH", "FORMAT"]

#: Schema of a pipeline description (``Pipeline.to_dict``); older files without it are read as this one.
FORMAT = "restore3d-pipeline/1"

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- JSON encoding
def _encode(value, where):
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{where} has a value of type {type(value).__name__} that cannot be saved as "
                    "JSON; use numbers, strings, lists, dicts or arrays")


def _version_tuple(text) -> tuple:
    parts = re.findall(r"\d+", str(text))
    return tuple(int(p) for p in parts[:3])


def _decode(value):
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value.get("dtype", "float32")).reshape(
                value.get("shape", np.shape(value["__ndarray__"])))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class Result:
    """Output of :meth:`Pipeline.run`: the restored volume and what stages produced.

    ``np.asarray(result)`` gives the restored float32 (z, y, x) volume.

    Attributes
    ----------
    volume : (Z, Y, X) float32 ndarray
    spacing : (dz, dy, dx) tuple, micrometres
    psf : ndarray or None
        The PSF given or estimated during the run.
    timings : dict
        Seconds per stage name, and ``"total"``.
    beads : structured ndarray or None
        Bead table, when a stage produced one.
    pipeline : dict
        :meth:`Pipeline.to_dict` of the pipeline that produced this result.
    info : dict
        Other stage reports.
    intermediates : dict
        Outputs of the steps named in ``Pipeline.run(keep=...)``.
    """

    def __init__(self, volume, *, spacing, psf=None, timings=None, beads=None,
                 pipeline=None, info=None, intermediates=None):
        self.intermediates = dict(intermediates or {})
        self.volume = volume
        self.spacing = spacing
        self.psf = psf
        self.timings = dict(timings or {})
        self.beads = beads
        self.pipeline = pipeline or {}
        self.info = dict(info or {})

    def __array__(self, dtype=None, copy=None):
        arr = self.volume
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    @property
    def shape(self):
        return self.volume.shape

    @property
    def dtype(self):
        return self.volume.dtype

    def __repr__(self):
        t = self.timings.get("total", float("nan"))
        return (f"Result(shape={self.volume.shape}, spacing={self.spacing}, "
                f"psf={'yes' if self.psf is not None else 'no'}, total={t:.2f} s)")

class Pipeline:
    """A chain of named restoration stages.

    Parameters
    ----------
    steps : list
        Stages, ``(name, stage)`` pairs, or a mix. Bare stages are named by
        their ``default_name`` (``"background"``, ``"psf"``, ``"rl"``, ...),
        with ``_2``, ``_3`` appended when a name repeats. A stage may be the
        string ``"passthrough"`` (or None), which leaves the volume unchanged.

    Examples
    --------
    >>> import restore3d as r3
    >>> pipe = r3.Pipeline([r3.SubtractBackground(method="percentile")])
    >>> pipe.set_params(background__percentile=5.0)["background"].percentile
    5.0
    """

    def __init__(self, steps):
        if isinstance(steps, (Stage, str)) or not hasattr(steps, "__iter__"):
            raise TypeError(f"steps must be a list of stages or (name, stage) pairs, got {steps!r}")
        named: list[tuple[str, Any]] = []
        seen: dict[str, int] = {}
        explicit = {s[0] for s in steps if isinstance(s, tuple)}
        for item in steps:
            if isinstance(item, tuple):
                if len(item) != 2 or not isinstance(item[0], str):
                    raise TypeError(f"a named step must be a (name, stage) pair, got {item!r}")
                name, stage = item
            else:
                stage = item
                base = stage.default_name if isinstance(stage, Stage) else PASSTHROUGH
                count = seen.get(base, 0) + 1
                seen[base] = count
                name = base if count == 1 else f"{base}_{count}"
                while name in explicit:
                    count += 1
                    seen[base] = count
                    name = f"{base}_{count}"
            named.append((name, stage))
        self._check_names([n for n, _ in named])
        self.steps = [(n, self._check_stage(n, s)) for n, s in named]

    # ------------------------------------------------------------------ structure
    @staticmethod
    def _check_names(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"step names must be unique, these repeat: {dup}")
        bad = [n for n in names if "__" in n or not n]
        if bad:
            raise ValueError(f"step names must be non-empty and must not contain '__': {bad}")

    @staticmethod
    def _check_stage(name, stage):
        if stage is None or stage == PASSTHROUGH:
            return PASSTHROUGH
        if not isinstance(stage, Stage):
            raise TypeError(
                f"step {name!r} is {stage!r}; expected a restore3d Stage or 'passthrough'")
        return stage

    @property
    def named_steps(self) -> dict[str, Any]:
        """Stages by name (``"passthrough"`` for removed ones)."""
        return dict(self.steps)

    def _index(self, key) -> int:
        if isinstance(key, int):
            if not -len(self.steps) <= key < len(self.steps):
                raise IndexError(f"pipeline has {len(self.steps)} steps, no index {key}")
            return key % len(self.steps)
        names = [n for n, _ in self.steps]
        if key not in names:
            raise KeyError(f"no step named {key!r}; steps are {names}")
        return names.index(key)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return Pipeline(self.steps[key])
        return self.steps[self._index(key)][1]

    def __setitem__(self, key, stage):
        i = self._index(key)
        name = self.steps[i][0]
        self.steps[i] = (name, self._check_stage(name, stage))

    def replace(self, name, stage) -> "Pipeline":
        """Put ``stage`` (or ``"passthrough"``) in place of the step ``name``; returns self."""
        self[name] = stage
        return self

    def __len__(self):
        return len(self.steps)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.steps)

    def __repr__(self):
        inner = ",\n    ".join(f"({n!r}, {s!r})" for n, s in self.steps)
        return f"Pipeline([\n    {inner},\n])"

    # ------------------------------------------------------------------ parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Steps by name and, with ``deep``, every stage parameter as ``name__param``."""
        out: dict[str, Any] = {}
        for name, stage in self.steps:
            out[name] = stage
            if deep and isinstance(stage, Stage):
                for k, v in stage.get_params().items():
                    out[f"{name}__{k}"] = v
        return out

    def set_params(self, **params) -> "Pipeline":
        """Set ``name=stage`` (replace a step) or ``name__param=value``; returns self."""
        names = [n for n, _ in self.steps]
        for key, value in params.items():
            step, sep, param = key.partition("__")
            if step not in names:
                raise ValueError(f"no step named {step!r} (from {key!r}); steps are {names}")
            if not sep:
                self[step] = value
                continue
            stage = self[step]
            if not isinstance(stage, Stage):
                raise ValueError(f"step {step!r} is passthrough; it has no parameter {param!r}")
            stage.set_params(**{param: value})
        return self

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """A JSON-compatible description that :meth:`from_dict` turns back into this pipeline."""
        steps = []
        for name, stage in self.steps:
            if stage == PASSTHROUGH:
                steps.append({"name": name, "stage": PASSTHROUGH})
            else:
                steps.append({"name": name, "stage": type(stage).__name__,
                              "params": _encode(stage.get_params(), f"step {name!r}")})
        return {"format": FORMAT, "restore3d_version": __version__, "steps": steps}

    @classmethod
    def from_dict(cls, spec: dict) -> "Pipeline":
        """Rebuild a pipeline from :meth:`to_dict` output; unknown stages or keys raise ``ValueError``."""
        if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
            raise ValueError("a pipeline description is a dict with a 'steps' list")
        unknown_top = sorted(set(spec) - {"steps", "restore3d_version", "format"})
        if unknown_top:
            raise ValueError(f"unknown pipeline keys {unknown_top}; expected 'format', 'restore3d_version' and "
                             "'steps'")
        fmt = spec.get("format", FORMAT)  # files before the schema version had the same layout
        if fmt != FORMAT:
            raise ValueError(f"pipeline format {fmt!r} is not {FORMAT!r}, the one this restore3d "
                             f"({__version__}) reads; write it again with this version or upgrade restore3d")
        written = spec.get("restore3d_version")
        if written is not None and _version_tuple(written) > _version_tuple(__version__):
            log.warning("this pipeline was written by restore3d %s, newer than this one (%s): stages or "
                        "defaults may differ", written, __version__)
        steps = []
        for i, item in enumerate(spec["steps"]):
            if not isinstance(item, dict) or "stage" not in item:
                raise ValueError(f"step {i} must be a dict with 'name', 'stage' and 'params', got {item!r}")
            extra = sorted(set(item) - {"name", "stage", "params"})
            if extra:
                raise ValueError(f"step {i}: unknown keys {extra}; expected 'name', 'stage', 'params'")
            kind = item["stage"]
            name = item.get("name")
            if kind == PASSTHROUGH:
                stage = PASSTHROUGH
            else:
                known = stage_types()
                if kind not in known:
                    raise ValueError(f"step {i}: unknown stage type {kind!r}; known: {sorted(known)}")
                klass = known[kind]
                params = _decode(item.get("params") or {})
                if not isinstance(params, dict):
                    raise ValueError(f"step {i} ({kind}): 'params' must be a dict of parameters, got {params!r}")
                valid = klass._param_names()
                bad = sorted(set(params) - set(valid))
                if bad:
                    raise ValueError(f"step {i} ({kind}): unknown parameters {bad}; valid: {valid}")
                try:
                    stage = klass(**params).validate()
                except ValueError as exc:
                    raise ValueError(f"step {i}: {exc}") from None
            steps.append((name, stage) if name else stage)
        return cls(steps)

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as a JSON file."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2)
        with atomic_write(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def load(cls, path) -> "Pipeline":
        """Read a pipeline JSON file written by :meth:`save`."""
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such pipeline file") from None
        except IsADirectoryError:
            raise ValueError(f"{path} is a folder; give the pipeline's .json file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the pipeline file ({exc})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(spec)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    # ------------------------------------------------------------------ running
    def memory_estimate(self, shape, spacing, psf=None) -> float:
        """Working memory (bytes) a whole-volume run on ``shape`` needs beyond the volume it is given.

        The run's own float32 copies (its working volume, the stage output,
        the background-free volume kept for the refiner's self-check) plus
        the largest stage's :meth:`~restore3d.base.Stage.memory_bytes`.
        """
        voxels = float(np.prod(shape))
        stages = [s for _, s in self.steps if s != PASSTHROUGH]
        return 3 * 4.0 * voxels + max([s.memory_bytes(shape, spacing, psf) for s in stages] or [0.0])

    def run(self, volume, *, spacing, psf=None, seed=0, device: str | None = None,
            progress: bool = False, logger: logging.Logger | None = None, keep=(),
            rescale: bool = True, memory_budget: float | str | None = "auto",
            part_of=None) -> Result:
        """Restore one volume.

        Parameters
        ----------
        volume : (Z, Y, X) array_like
            Real numbers, finite. Never modified.
        spacing : (dz, dy, dx) floats
            Voxel size in micrometres.
        psf : (z, y, x) ndarray, optional
            A known PSF on the same spacing; stages use it unless one
            estimates its own.
        seed : int or Generator
            Seed of the run's random generator (``ctx.rng``): the same seed
            gives the same result.
        device : {"cpu", "cuda"}, optional
            Where torch stages run; default CUDA when available.
        progress : bool
            Show progress bars of long stages.
        keep : sequence of str
            Names of steps whose outputs are kept in ``Result.intermediates``
            (to compare stages without running them twice).
        rescale : bool
            Work on a volume of extreme values times a power of two (see
            Notes); chunk-wise runs fix that scale once for all chunks.
        memory_budget : float, "auto" or None
            Gigabytes of working memory the run may use beyond the volume it
            is given. When :meth:`memory_estimate` exceeds it, the volume is
            restored chunk-wise, stage by stage
            (:func:`restore3d.chunked.run_within_budget`: the PSF and other
            global quantities measured once on a central block, each stage
            over the volume in chunks sized to the budget with its own
            context; the same result away from chunk borders) and one log
            line says so. "auto":
            :func:`restore3d.memory.default_memory_budget`; None: never chunk.
        part_of : ((z, y, x), (Z, Y, X)), optional
            For a volume cut from a larger one: where it starts (voxels) and
            the larger volume's shape. Stages that lay a grid of their own
            (a rendering refiner's working grid) lay the larger volume's, so
            chunk-wise runs see what a whole-volume run sees. Set by the
            chunk-wise paths.

        Returns
        -------
        Result

        Raises
        ------
        ValueError
            Before any work: input not 3D, empty, smaller than
            :data:`restore3d._checks.MIN_SHAPE`, non-numeric or non-finite;
            spacing missing, not positive or outside a microscope's range
            (:data:`restore3d._checks.SPACING_RANGE_UM`); a stage parameter of
            the wrong type; an unknown or unavailable device; a PSF that is
            larger than the volume or holds several beads.

        Notes
        -----
        A given PSF is centred on its peak (:func:`restore3d.psf.given_psf`).
        A volume whose values are extreme (largest below 0.01 or above 1e8)
        is processed times a power of two and scaled back, so units do not
        matter; stage reports in ``Result.info`` are then in the scaled units
        (``info["intensity_gain"]`` says by how much).
        """
        steps = self.run_steps(volume, spacing=spacing, psf=psf, seed=seed, device=device, progress=progress,
                               logger=logger, keep=keep, rescale=rescale, memory_budget=memory_budget,
                               part_of=part_of)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def run_steps(self, volume, *, spacing, psf=None, seed=0, device: str | None = None,
                  progress: bool = False, logger: logging.Logger | None = None, keep=(),
                  rescale: bool = True, memory_budget: float | str | None = "auto", part_of=None
                  ) -> Generator[tuple[str, int, int], None, Result]:
        """:meth:`run` one step at a time: a generator that yields ``(step name, index, count)`` before each step.

        The generator's return value (``StopIteration.value``) is the
        :class:`Result`. Everything is checked on the first ``next()``,
        before any work; closing the generator between steps stops the run
        there (how a viewer cancels it). A chunk-wise run (over the memory
        budget) yields once, ``("chunk-wise", 0, 1)``. Parameters as in
        :meth:`run`.
        """
        vol = as_volume(volume, copy=True)
        check_restorable(vol.shape)
        sp = check_voxel_spacing(spacing)
        device = as_device(device)
        rng = as_rng(seed)
        part_of = _as_part_of(part_of, vol.shape)
        names = [n for n, _ in self.steps]
        unknown = [k for k in keep if k not in names]
        if unknown:
            raise ValueError(f"keep names unknown steps {unknown}; steps are {names}")
        for _, stage in self.steps:
            if stage != PASSTHROUGH:
                stage.validate()
        from .psf import given_psf
        psf_arr = given_psf(psf, volume_shape=vol.shape) if psf is not None else None
        budget = budget_bytes(memory_budget)
        if budget is not None:
            need = self.memory_estimate(vol.shape, sp, psf_arr)
            if need > budget and psf_arr is None:
                # stages sized by the PSF (the refiner's working grid) count the worst case without one:
                # count again with the PSF the first stages measure on a central block (about a second)
                from .chunked import sample_psf
                measured = sample_psf(self, vol, sp, device=device)
                if measured is not None:
                    need = self.memory_estimate(vol.shape, sp, measured)
            if need > budget:
                from .chunked import chunk_blocker, run_within_budget
                blocker = chunk_blocker(self, keep)
                if blocker is None:
                    yield "chunk-wise", 0, 1
                    return run_within_budget(self, vol, sp, psf_arr, rng, device, budget, need, logger or log)
                (logger or log).warning(
                    "this run needs about %.1f GB, above the memory budget of %.1f GB, but %s: running it whole "
                    "(raise memory_budget / --memory-budget to silence this)", need / 1e9, budget / 1e9, blocker)
        gain = intensity_gain(vol) if rescale else 1.0
        if gain != 1.0:
            ctx_logger = logger or log
            ctx_logger.info("volume values around %.3g: working on them times 2**%d, the result scaled back",
                            float(np.abs(vol).max()), int(np.log2(gain)))
            vol *= np.float32(gain)
        kept: dict[str, np.ndarray] = {}
        ctx = RunContext(spacing=sp, psf=psf_arr, rng=rng, logger=logger or log,
                         device=device, progress=progress, psf_given=psf_arr is not None,
                         part_of=part_of)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        active = [(name, stage) for name, stage in self.steps if stage != PASSTHROUGH]
        for index, (name, stage) in enumerate(active):
            yield name, index, len(active)
            t0 = time.perf_counter()
            ctx.step = name
            out = stage(vol, ctx)
            out = np.asarray(out)
            if out.shape != vol.shape:
                raise RuntimeError(f"stage {name!r} changed the shape from {vol.shape} to {out.shape}")
            if not np.isfinite(out).all():
                raise RuntimeError(f"stage {name!r} produced NaN or Inf values")
            vol = np.ascontiguousarray(out, dtype=np.float32)
            del out
            release_free_memory()  # the stage's freed heap, before the next one
            if name in keep:
                kept[name] = vol.copy()
            timings[name] = time.perf_counter() - t0
            ctx.history.append(type(stage).__name__)
            ctx.logger.info("stage %r done in %.2f s", name, timings[name])
        timings["total"] = time.perf_counter() - start
        if gain != 1.0:
            vol /= np.float32(gain)
            for k in kept:
                kept[k] /= np.float32(gain)
            ctx.info["intensity_gain"] = gain
        ctx.info["history"] = list(ctx.history)
        return Result(vol, spacing=sp, psf=ctx.psf, timings=timings, beads=ctx.beads,
                      pipeline=self.to_dict(), info=ctx.info, intermediates=kept)


def _as_part_of(part_of, shape) -> tuple | None:
    """``part_of`` checked: None, or ((z, y, x) start, (Z, Y, X) whole shape) holding ``shape`` from that start."""
    if part_of is None:
        return None
    try:
        origin, whole = part_of
        origin = tuple(int(v) for v in origin) if len(origin) == 3 and all(float(v) == int(v) for v in origin) else ()
        whole = tuple(int(v) for v in whole) if len(whole) == 3 and all(float(v) == int(v) for v in whole) else ()
    except (TypeError, ValueError):
        origin = whole = ()
    if len(origin) != 3 or len(whole) != 3 or min(origin) < 0 or any(
            o + n > w for o, n, w in zip(origin, shape, whole)):
        raise ValueError(f"part_of must be ((z, y, x) start, (Z, Y, X) shape) of a larger volume holding this "
                         f"{tuple(shape)} volume from that start, got {part_of!r}")
    return origin, whole
