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
import os
from pathlib import Path

from .._version import __version__
from .model import UNetConfig, build_model
from .normalize import Normalizer

__all__ = ["save_checkpoint", "load_checkpoint", "read_meta", "FORMAT", "sha256_of"]

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
    tmp = pt.with_name(pt.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, pt)
    full = {"format": FORMAT, "restore3d_version": __version__, **meta,
            "architecture": model.config.to_dict(), "weights": pt.name, "sha256": sha256_of(pt)}
    tmpj = js.with_name(js.name + ".tmp")
    tmpj.write_text(json.dumps(full, indent=2))
    os.replace(tmpj, js)
    return js


def read_meta(path) -> dict:
    """The JSON description of a checkpoint (``path`` to its .json or .pt)."""
    _, js = _paths(path)
    if not js.exists():
        raise ValueError(f"{js}: no such refiner checkpoint description")
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{js}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{js}: not a restore3d refiner checkpoint (format {meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
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
    config = UNetConfig.from_dict(meta["architecture"])
    model = build_model(config)
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model.to(device), meta


def normalizer_of(meta: dict) -> Normalizer:
    return Normalizer.from_dict(meta.get("normalization", {}))
