"""Fine-tuning a refiner to one microscope from one of its raw volumes."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ...background import estimate_background, estimate_noise
from ...detect import detect_beads
from ...pipeline import Pipeline
from ...psf_estimation import estimate_psf
from ..transforms import RENDERING
from .data import SimulationRanges

__all__ = ["measure_microscope", "adapt_refiner"]

_WINDOW_UM = (1.5, 0.6, 0.6)  # restore3d.detect.measure_beads' default window

log = logging.getLogger(__name__)


def measure_microscope(volume: np.ndarray, spacing, *, psf=None, read_noise: float = 2.0) -> dict:
    """PSF, ambient light, camera offset, bead density and brightness of a raw bead volume.

    The background level splits into camera offset and glow through the
    shot noise: in photon units the noise variance of the background is
    ``glow + read_noise**2``, so ``glow = noise**2 - read_noise**2`` and the
    offset is the rest. ``read_noise`` (counts) is assumed, the rest measured.

    Returns a dict with ``psf`` (array), ``offset`` (counts), ``ambient_level``
    and ``ambient_strength`` (glow above the offset and its relative spread),
    ``read_noise``, ``density`` (beads per cubic micrometre) and ``flux``
    (median, photons) with ``flux_spread`` (standard deviation of its log).
    """
    bg = estimate_background(volume, spacing)
    clean = np.clip(volume - bg, 0, None)
    if psf is None:
        psf = estimate_psf(clean, spacing)
    noise = estimate_noise(volume)
    level = float(bg.mean())
    glow = float(np.clip(noise ** 2 - read_noise ** 2, 0.0, level))
    offset = level - glow
    strength = float(np.clip(bg.std() / glow, 0.0, 1.0)) if glow > 0 else 0.0
    beads = detect_beads(clean, spacing)
    vol_um3 = float(np.prod(np.asarray(volume.shape) * np.asarray(spacing)))
    # measured intensities cover the bead's window only: scale to the PSF's total
    psf = np.asarray(psf, np.float64)
    half = np.maximum(1, np.round(np.asarray(_WINDOW_UM) / np.asarray(spacing)).astype(int))
    c = np.asarray(psf.shape) // 2
    inside = psf[tuple(slice(max(0, ci - h), ci + h + 1) for ci, h in zip(c, half))].sum() / psf.sum()
    flux = beads["intensity"][np.isfinite(beads["intensity"]) & (beads["intensity"] > 0)] / max(inside, 1e-3)
    return {"psf": np.asarray(psf, np.float32), "offset": offset, "ambient_level": glow,
            "ambient_strength": strength, "read_noise": float(read_noise),
            "density": max(len(beads) / vol_um3, 1e-4),
            "flux": float(np.median(flux)) if flux.size else 3000.0,
            "flux_spread": float(np.clip(np.std(np.log(flux)), 0.05, 1.0)) if flux.size > 3 else 0.4}


def adapt_refiner(refiner, volume, spacing, *, minutes, steps, pool, out, seed, psf, device, progress,
                  consistency: float = 1.0):
    """Measure the microscope, simulate pairs with it, fine-tune; returns the new checkpoint path.

    With ``consistency > 0`` every step also takes the self-supervised
    :class:`~restore3d.refiner.consistency.ConsistencyLoss` of a patch of the
    user's own volume (times ``consistency``), so the fine-tuned refiner
    explains these very data, not only simulations tuned to them.
    """
    from ..checkpoint import normalizer_of
    from .consistency import ConsistencyLoss
    from .train import TrainConfig, train
    model, meta = refiner.network()
    prefix = Pipeline.from_dict(meta["prefix"])
    bg_steps = [n for n, s in prefix.steps if type(s).__name__ == "SubtractBackground"]
    res = prefix.run(volume, spacing=spacing, psf=psf, keep=bg_steps[:1])
    if psf is None and res.psf is not None:
        psf = res.psf  # the stages' own estimate: what the refiner will see at inference
    stats = measure_microscope(volume, spacing, psf=psf)
    log.info("adapting to: offset %.1f, glow %.1f, read noise %.2f, density %.4f /um3, flux %.0f",
             stats["offset"], stats["ambient_level"], stats["read_noise"], stats["density"], stats["flux"])
    dz, dy, dx = spacing
    Z, Y, X = volume.shape
    shape = (Z, min(Y, 128), min(X, 128))

    def around(v, rel=0.3):
        return (v * (1 - rel), v * (1 + rel))

    ranges = SimulationRanges(
        shape=shape, dz=(dz, dz), dxy=(dy, dy), psf=stats["psf"],
        density=around(stats["density"]), flux=around(stats["flux"]),
        flux_spread=(stats["flux_spread"], stats["flux_spread"]),
        ambient_level=around(max(stats["ambient_level"], 0.1)),
        ambient_strength=(0.0, min(1.0, 2 * stats["ambient_strength"] + 0.1)),
        offset=(stats["offset"], stats["offset"]), read_noise=around(stats["read_noise"]))
    base = meta["training"]["config"]
    cfg = TrainConfig(steps=steps or 100_000, batch=base.get("batch", 4), patch=tuple(base.get("patch", (32, 64, 64))),
                      lr=base.get("lr", 1e-3) * 0.3, warmup=10, pool=pool, validation=3,
                      epoch_steps=25, patience=10 ** 6, loss=meta["loss"]["name"],
                      loss_params=meta["loss"]["params"], seed=seed, time_limit=60.0 * minutes,
                      face_crops=base.get("face_crops", 0.0))
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="restore3d-adapted-")) / "adapted"
        log.info("adapted refiner written to %s (pass out= to keep it elsewhere)", out)
    extra = None
    if consistency > 0 and meta.get("output_transform") in RENDERING and res.psf is not None and bg_steps:
        extra = ConsistencyLoss(np.asarray(res), res.intermediates[bg_steps[0]], res.psf, spacing,
                                normalizer_of(meta), multiple=model.config.multiple,
                                output_transform=meta["output_transform"])
    result = train(out, config=cfg, normalizer=normalizer_of(meta), ranges=ranges, prefix=prefix,
                   init=refiner.checkpoint_path, device=device, progress=progress, extra_loss=extra,
                   extra_weight=consistency,
                   command=f"Refiner.adapt(minutes={minutes}, steps={steps}, pool={pool}, seed={seed}, "
                           f"consistency={consistency})")
    return result.checkpoint
