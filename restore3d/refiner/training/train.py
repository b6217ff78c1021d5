"""Training loop of the refiner: simulated pairs, AdamW, cosine schedule, early stopping, resume."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from ... import metrics
from ...pipeline import Pipeline
from ..checkpoint import load_checkpoint, save_checkpoint, write_meta
from ...presets import classical_stages
from .data import Pair, SimulationRanges, make_pairs, random_patch
from .losses import make_loss
from ..model import UNetConfig, build_model
from ..normalize import Normalizer
from ..precision import autocast, resolve_precision
from ..transforms import RENDERING, render_torch

__all__ = ["TrainConfig", "train", "TrainResult", "DEFAULT_GRID"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training recipe; the defaults are the recipe of the shipped weights (with a time limit).

    Attributes
    ----------
    steps : int
        Optimiser steps at most.
    batch : int
        Patches per step.
    patch : (Z, Y, X)
        Patch shape (the full 32-plane depth by default).
    lr, weight_decay : float
        AdamW settings; the learning rate follows a cosine from ``lr`` to
        ``lr / 100`` after a linear warm-up of ``warmup`` steps.
    warmup : int
    pool : int
        Simulated training volumes generated up front and cropped randomly
        (simulation and the classical stages cost about a second per volume).
    validation : int
        Fixed validation volumes, from seeds the training never sees.
    epoch_steps : int
        Steps between validations, checkpoints and log lines.
    patience : int
        Stop after this many epochs without a better validation loss.
    loss : str
        ``"imbalanced"``, ``"l1"``, ``"mse"`` or ``"combined"``.
    loss_params : dict
        E.g. ``{"weight": 100, "tau": 0.01}`` (the default; also ``dilate``,
        ``false_weight`` and ``false_reach``:
        :func:`restore3d.refiner.training.losses.imbalanced_loss`).
    seed : int
    time_limit : float or None
        Stop after this many seconds of training (pool generation excluded).
    precision : {"auto", "fp32", "bf16"}
        Autocast precision (:func:`restore3d.refiner.precision.resolve_precision`).
    face_crops : float
        Share of patches cropped flush with the volume's first or last
        plane (:func:`restore3d.refiner.training.data.random_patch`).
    """

    steps: int = 3000
    batch: int = 4
    patch: tuple = (32, 64, 64)
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup: int = 50
    pool: int = 200
    validation: int = 8
    epoch_steps: int = 100
    patience: int = 10
    loss: str = "imbalanced"
    loss_params: dict = dataclasses.field(default_factory=lambda: {"weight": 100.0, "tau": 0.01})
    seed: int = 0
    time_limit: float | None = None
    precision: str = "auto"
    face_crops: float = 0.0

    def __post_init__(self):
        if not 0.0 <= float(self.face_crops) <= 1.0:
            raise ValueError(f"face_crops is a share of patches in [0, 1], got {self.face_crops!r}")

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["patch"] = list(self.patch)
        return d


@dataclasses.dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    seconds: float
    pool_seconds: float
    best: dict
    log: list


#: The working grid of rendering refiners: voxels of half the target FWHM, at most 3x finer than the data.
DEFAULT_GRID = {"samples": 2.0, "max_zoom": 3.0}

_VAL_SEED = 10 ** 9  # validation seeds live far from the training seeds


def _lr_at(step, cfg):
    if step < cfg.warmup:
        return float(cfg.lr * (step + 1) / cfg.warmup)
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return float(cfg.lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(t, 1.0)))))


def _forward(model, x, sigmas):
    """The network's prediction as the restored volume: its object rendered when ``sigmas`` are given."""
    pred = model(x)
    return pred if sigmas is None else render_torch(pred.float(), sigmas)


def _validate(model, pairs: list[Pair], loss_fn, device, precision="fp32"):
    import torch
    model.eval()
    losses, nrmses, elongs, stds = [], [], [], []
    with torch.no_grad(), autocast(precision, device):
        for p in pairs:
            x = torch.from_numpy(p.input)[None, None].to(device)
            y = torch.from_numpy(p.target)[None, None].to(device)
            pad = [(0, (-n) % m) for n, m in zip(p.input.shape, model.config.multiple)]
            if any(q[1] for q in pad):
                x = torch.nn.functional.pad(x, [v for q in reversed(pad) for v in q], mode="replicate")
            pred = model(x)[..., : p.input.shape[0], : p.input.shape[1], : p.input.shape[2]].float()
            if p.sigma is not None:
                pred = render_torch(pred, p.sigma[None])
            losses.append(float(loss_fn(pred / p.loss_scale, y / p.loss_scale)))
            out = pred[0, 0].cpu().numpy()
            stds.append(float(out.std()))
            nrmses.append(metrics.nrmse(out, p.target))
            elongs.append(metrics.elongation(out * p.scale, p.spacing, truth=p.truth))
    model.train()
    finite = [e for e in elongs if np.isfinite(e)]
    return {"val_loss": float(np.mean(losses)), "val_nrmse": float(np.mean(nrmses)),
            "val_elongation": float(np.median(finite)) if finite else float("nan"),
            "val_output_std": float(np.min(stds))}


def _transforms(init, prefix, input_transform, output_transform, grid):
    """The input/output transforms and working grid: the ``init`` checkpoint's, or "auto" resolved."""
    if init is not None:
        from ..checkpoint import read_meta
        meta = read_meta(init)
        return meta.get("input_transform"), meta.get("output_transform"), meta.get("grid")
    if input_transform == "auto":
        input_transform = None
    if output_transform == "auto":
        output_transform = "render_grid" if len(prefix) else None
    if grid == "auto":
        grid = dict(DEFAULT_GRID) if output_transform in RENDERING else None
    return input_transform, output_transform, grid


def _batch_loss(model, loss_fn, batch, patch, rng, dev, precision, render, faces=0.0):
    """The loss of one batch of random patches, each pair weighted by ``1 / loss_scale``."""
    import torch
    xs, ys = zip(*(random_patch(p, patch, rng, faces) for p in batch))
    x = torch.from_numpy(np.stack(xs))[:, None].to(dev)
    y = torch.from_numpy(np.stack(ys))[:, None].to(dev)
    sigmas = np.stack([p.sigma for p in batch]) if render else None
    with autocast(precision, dev):
        pred = _forward(model, x, sigmas)
    weight = torch.tensor([1.0 / p.loss_scale for p in batch], device=dev).view(-1, 1, 1, 1, 1)
    return loss_fn(pred.float() * weight, y * weight)


def _save_state(path, model, opt, rng, step, best, history, seconds):
    """Everything needed to resume: weights, optimiser, step, best row, history, both RNGs."""
    import torch
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "best": json.dumps(best), "history": json.dumps(history), "seconds": seconds,
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": json.dumps(rng.bit_generator.state)}, path)


def _load_state(path, model, opt, rng):
    """Restore :func:`_save_state`'s state; returns (step, best, history, seconds)."""
    import torch
    st = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    torch.set_rng_state(st["torch_rng"])
    rng.bit_generator.state = json.loads(st["numpy_rng"])
    step = int(st["step"])
    log.info("resuming from step %d", step)
    return step, (json.loads(st["best"]) if st["best"] else None), json.loads(st["history"]), float(st["seconds"])


def _record_totals(ckpt, steps, seconds, history):
    """Write the run's final totals and history next to the best checkpoint's metadata."""
    m = json.loads(ckpt.read_text())
    m["training"]["total_steps"] = steps
    m["training"]["total_seconds"] = round(seconds, 1)
    m["training"]["history"] = history
    write_meta(ckpt, m)
    return ckpt


def _checkpoint_meta(input_transform, output_transform, grid, normalizer, prefix, ranges, config,
                     command, dev, precision, init, init_meta):
    """The checkpoint's metadata: how inputs and outputs are transformed, and the recipe that made it."""
    import torch
    return {
        "input_transform": input_transform,
        "output_transform": output_transform,
        "grid": grid,
        "normalization": normalizer.to_dict(),
        "prefix": prefix.to_dict(),
        "spacing_range": None if grid else {"dz": list(ranges.dz), "dxy": list(ranges.dxy)},
        "simulation_ranges": ranges.to_dict(),
        "loss": {"name": config.loss, "params": dict(config.loss_params)},
        "training": {"config": config.to_dict(), "command": command, "device": dev.type,
                     "precision": precision,
                     "threads": torch.get_num_threads(), "init": None if init is None else str(init),
                     "init_sha256": None if init_meta is None else init_meta.get("sha256")},
    }


def train(out, *, config: TrainConfig = TrainConfig(), model_config: UNetConfig = UNetConfig(),
          normalizer: Normalizer | None = None, ranges: SimulationRanges = SimulationRanges(),
          prefix: Pipeline | None = None, init=None, resume: bool = False, device=None,
          threads: int | None = None, progress: bool = True, command: str | None = None,
          pairs: list[Pair] | None = None, input_transform="auto", output_transform="auto",
          extra_loss=None, extra_weight: float = 1.0, grid="auto") -> TrainResult:
    """Train (or fine-tune) a refiner and write its checkpoint ``out.pt`` / ``out.json``.

    Parameters
    ----------
    out : path
        Checkpoint path stem; also ``out.log.jsonl`` (one line per epoch)
        and ``out.state.pt`` (optimiser state to resume).
    config : TrainConfig
    model_config : UNetConfig
        Ignored when ``init`` is given (its architecture is kept).
    normalizer : Normalizer, optional
        Default: peaks scaling, zero offset after classical stages and
        median offset for raw input (no prefix).
    ranges : SimulationRanges
    prefix : Pipeline, optional
        The stages before the refiner (default
        :func:`restore3d.presets.classical_stages`); an empty
        ``Pipeline([])`` trains on raw volumes (the original approach).
    init : path, optional
        Checkpoint to start from (fine-tuning).
    resume : bool
        Continue from ``out.state.pt``.
    device : str, optional
    threads : int, optional
        CPU threads for torch.
    progress : bool
    command : str, optional
        The command line that launched training, recorded in the JSON.
    pairs : list of Pair, optional
        Pre-made training pairs (skips generating the pool); they must have
        been made with the same ``input_transform`` and ``output_transform``.
    input_transform : "auto", None or "target_blur"
        How the preceding stages' output becomes the network input
        (:func:`restore3d.refiner.transforms.apply_input_transform`); "auto"
        is None. Kept by ``init`` when fine-tuning.
    output_transform : "auto", None, "render" or "render_grid"
        ``"render"``: the network predicts the bead object and the target's
        isotropic Gaussian is rendered after it; ``"render_grid"``: the
        same, the kernel narrowed by the working grid's own blur
        (:mod:`restore3d.refiner.transforms`); "auto" is "render_grid" after
        classical stages, None for raw input. Kept by ``init``.
    grid : "auto", dict or None
        The working grid (:func:`restore3d.refiner.grid.working_grid`
        options) on which the network runs; "auto" is
        :data:`DEFAULT_GRID` for rendering refiners, None (the volume's own
        grid) otherwise. Kept by ``init``.
    extra_loss : callable, optional
        ``extra_loss(model, rng, device)`` returns a scalar loss added to
        every step's, times ``extra_weight`` (e.g. the self-supervised
        :class:`restore3d.refiner.consistency.ConsistencyLoss` on the user's
        own volume, when adapting).

    Returns
    -------
    TrainResult
    """
    import torch
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prefix = classical_stages() if prefix is None else prefix
    if normalizer is None:
        normalizer = Normalizer(offset="zero" if len(prefix) else "median")
    input_transform, output_transform, grid = _transforms(init, prefix, input_transform, output_transform, grid)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    t0 = time.perf_counter()
    if pairs is None:
        pairs = make_pairs(config.pool, ranges, prefix, normalizer, seed=config.seed * 100_000,
                           progress=progress, desc="training volumes", input_transform=input_transform,
                           output_transform=output_transform, grid=grid)
    val_pairs = make_pairs(config.validation, ranges, prefix, normalizer, seed=_VAL_SEED + config.seed,
                           progress=progress, desc="validation volumes", input_transform=input_transform,
                           output_transform=output_transform, grid=grid)
    pool_seconds = time.perf_counter() - t0

    if init is not None:
        model, init_meta = load_checkpoint(init, device="cpu")
        model_config = model.config
    else:
        model = build_model(model_config)
        init_meta = None
    model = model.to(dev).train()
    precision = resolve_precision(config.precision, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = make_loss(config.loss, **config.loss_params)
    state_path = out.with_suffix(".state.pt")
    log_path = out.with_suffix(".log.jsonl")
    start_step, best, history, train_seconds = 0, None, [], 0.0
    if resume and state_path.exists():
        start_step, best, history, train_seconds = _load_state(state_path, model, opt, rng)
    elif log_path.exists():
        log_path.unlink()  # a fresh run over an old checkpoint: its log starts anew
    meta = _checkpoint_meta(input_transform, output_transform, grid, normalizer, prefix, ranges, config,
                            command, dev, precision, init, init_meta)
    from tqdm.auto import tqdm
    bar = tqdm(total=config.steps, initial=start_step, desc="training", disable=not progress)
    stale = 0 if best is None else best.get("stale", 0)
    step = start_step
    t_start = time.perf_counter() - train_seconds
    running = []
    ckpt = None
    # the loop reads better whole: schedule, step, validation, checkpoint and early stop
    while step < config.steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, config)
        batch = [pairs[int(rng.integers(len(pairs)))] for _ in range(config.batch)]
        loss = _batch_loss(model, loss_fn, batch, config.patch, rng, dev, precision,
                           output_transform is not None, config.face_crops)
        if extra_loss is not None:
            with autocast(precision, dev):
                loss = loss + extra_weight * extra_loss(model, rng, dev)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(float(loss.detach()))
        step += 1
        bar.update(1)
        elapsed = time.perf_counter() - t_start
        end = step >= config.steps or (config.time_limit is not None and elapsed >= config.time_limit)
        if step % config.epoch_steps == 0 or end:
            val = _validate(model, val_pairs, loss_fn, dev, precision)
            row = {"step": step, "seconds": round(elapsed, 1), "train_loss": float(np.mean(running)),
                   "lr": _lr_at(step - 1, config), **val}
            running = []
            if val["val_output_std"] < 1e-6:
                log.warning("refiner output is constant at step %d: training collapsed", step)
            history.append(row)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{row['train_loss']:.4g}", val=f"{val['val_loss']:.4g}",
                            elong=f"{val['val_elongation']:.2f}")
            improved = best is None or val["val_loss"] < best["val_loss"]
            if improved:
                best = dict(row)
                stale = 0
                meta["training"].update(steps=step, seconds=round(elapsed, 1),
                                        pool_seconds=round(pool_seconds, 1), best=best)
                ckpt = save_checkpoint(out, model, meta)
            else:
                stale += 1
            best["stale"] = stale
            _save_state(state_path, model, opt, rng, step, best, history, elapsed)
            if stale >= config.patience:
                log.info("early stopping at step %d", step)
                break
            if end:
                break
    bar.close()
    seconds = time.perf_counter() - t_start
    ckpt = _record_totals(ckpt or out.with_suffix(".json"), step, seconds, history)
    return TrainResult(checkpoint=ckpt, steps=step, seconds=seconds, pool_seconds=pool_seconds,
                       best=best or {}, log=history)
