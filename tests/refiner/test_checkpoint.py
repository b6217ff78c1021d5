"""Refiner checkpoints (restore3d.refiner.checkpoint)."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from .conftest import random_model  # noqa: E402

from restore3d.refiner.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from restore3d.refiner.inference import predict  # noqa: E402
from restore3d.refiner.normalize import Normalizer  # noqa: E402

SP = (0.3, 0.1, 0.1)


def test_checkpoint_round_trip_bit_identical(tmp_path):
    """Saving and loading a checkpoint gives bit-identical predictions; a tampered file is refused."""
    model = random_model()
    meta = {"normalization": Normalizer().to_dict(), "prefix": {"steps": []}}
    js = save_checkpoint(tmp_path / "m", model, meta)
    loaded, back = load_checkpoint(js)
    vol = np.random.default_rng(2).random((8, 32, 32)).astype(np.float32)
    a = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    b = predict(loaded, vol, SP, normalizer=Normalizer(), device="cpu")
    np.testing.assert_array_equal(a, b)
    assert back["architecture"]["base_channels"] == 4 and len(back["sha256"]) == 64
    pt = tmp_path / "m.pt"
    raw = bytearray(pt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pt.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(js)
    (tmp_path / "x.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a restore3d refiner checkpoint"):
        load_checkpoint(tmp_path / "x.json")
