"""Refiner checkpoints: a state_dict file plus a JSON description that vouches for it.

``NAME.pt`` holds only tensors (loaded with ``torch.load(weights_only=True)``);
``NAME.json`` holds the architecture, the normalisation, the configuration
of the stages the network follows, the training spacing range, the loss,
the training record and the SHA-256 of ``NAME.pt``, checked on loading.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

from .._files import atomic_write
from .._version import __version__
from .model import UNetConfig, build_model
from .normalize import Normalizer

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "write_meta", "FORMAT", "sha256_of"]

FORMAT = "restore3d-refiner/1"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _paths(path):
    path = Path(path)
    if path.suffix in (".json", ".pt"):
        path = path.with_suffix("")
    return path.with_suffix(".pt"), path.with_suffix(".json")


def save_checkpoint(path, model, meta: dict) -> Path:
    """Write ``path.pt`` (state_dict) and ``path.json`` (``meta`` + format, version, sha256); returns the JSON path."""
    import torch
    pt, js = _paths(path)
    pt.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, buf)
    with atomic_write(pt) as tmp:
        tmp.write_bytes(buf.getvalue())
    full = {"format": FORMAT, "restore3d_version": __version__, **meta,
            "architecture": model.config.to_dict(), "weights": pt.name, "sha256": sha256_of(pt)}
    write_meta(js, full)
    return js


def write_meta(path, meta: dict) -> Path:
    """Write a checkpoint's JSON description atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return Path(path)


def read_meta(path) -> dict:
    """The JSON description of a checkpoint (``path`` to its .json or .pt)."""
    _, js = _paths(path)
    if not js.exists():
        raise ValueError(f"{js}: no such refiner checkpoint description")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{js}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ValueError(f"{js}: cannot read the checkpoint description ({exc.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{js}: not a restore3d refiner checkpoint (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    missing = [k for k in ("weights", "sha256", "architecture") if k not in meta]
    if missing:
        raise ValueError(f"{js}: checkpoint description lacks {missing}; it was not written by restore3d "
                         "(or was edited): use the .json written next to the weights by training")
    return meta


def load_checkpoint(path, *, device="cpu"):
    """Load ``(model, meta)``; the weights must match the SHA-256 recorded in the JSON."""
    import torch
    meta = read_meta(path)
    pt, js = _paths(path)
    pt = js.with_name(meta["weights"])
    if not pt.exists():
        raise ValueError(f"{pt}: weights file named in {js.name} is missing")
    digest = sha256_of(pt)
    if digest != meta["sha256"]:
        raise ValueError(f"{pt}: SHA-256 {digest[:12]}... does not match {meta['sha256'][:12]}... recorded in "
                         f"{js.name}; the weights are corrupted or were replaced")
    try:
        config = UNetConfig.from_dict(meta["architecture"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{js}: bad architecture description ({exc})") from None
    model = build_model(config)
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, ... on broken files
        raise ValueError(f"{pt}: the weights cannot be loaded into the described network "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    model.eval()
    return model.to(device), meta


def normalizer_of(meta: dict) -> Normalizer:
    return Normalizer.from_dict(meta.get("normalization", {}))
