"""The default pipeline on the real stacks of ../shared/data (skipped where the folder is absent)."""
import numpy as np
import pytest

import restore3d as r3
from restore3d import assess, io


@pytest.mark.slow
def test_leica_beads_come_out_round(shared_data):
    """Confocal beads (NA 1.4 oil, 0.1 / 0.044 um): the default hybrid makes them as round as ideal beads
    at that sampling (within [0.9, 1.15] of the ideal's elongation), not flattened, and its self-check passes."""
    vol, spacing = io.load(shared_data / "leica-beads" / "beads.tif")
    res = r3.default_pipeline().run(vol, spacing=spacing, keep=("background",))
    c = assess.compare_to_raw(np.asarray(res), res.intermediates["background"], spacing)
    assert 0.9 <= c.elongation_vs_ideal <= 1.15, c
    assert c.lateral_vs_raw <= 1.1, c
    assert res.info["refiner"]["self_check"]["passed"], res.info["refiner"]["self_check"]
