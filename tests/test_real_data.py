"""The default pipeline on the real stacks of ../shared/data (skipped where the folder is absent)."""
import numpy as np
import pytest

import restore3d as r3
from restore3d import assess, io


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["pretrained-render", "pretrained"])
def test_self_check_agrees_with_the_bead_by_bead_assessment_on_leica(shared_data, weights):
    """Confocal beads (NA 1.4 oil, 0.1 / 0.044 um): the refiner's self-check (from its own output and the
    data) measures the same roundness as the independent assessment against the raw beads (within 10 %),
    and fails when that assessment finds the beads flattened or stretched beyond its window (the first
    default weights, "pretrained", flatten them: 0.79 x the ideal)."""
    vol, spacing = io.load(shared_data / "leica-beads" / "beads.tif")
    res = r3.default_pipeline(refiner=weights).run(vol, spacing=spacing, keep=("background",))
    c = assess.compare_to_raw(np.asarray(res), res.intermediates["background"], spacing)
    check = res.info["refiner"]["self_check"]
    assert check["roundness"] == pytest.approx(c.elongation_vs_ideal, rel=0.1)
    from restore3d.selfcheck import LIMITS
    lo, hi = LIMITS["roundness"]
    if not lo <= c.elongation_vs_ideal <= hi:
        assert not check["passed"], (c, check)
    if weights == "pretrained":  # the case the self-check exists for: it must say so
        assert not check["passed"], (c, check)


@pytest.mark.slow
def test_default_pipeline_makes_leica_beads_round_at_their_width(shared_data):
    """leica-beads through the default pipeline (the rendering refiner, then RemoveUnsupported):
    elongation within [0.9, 1.15] x the ideal at this sampling, lateral FWHM at most 1.1 x the raw's, a
    black background, no bead invented, the raw's bead count within 5 % (beads centred beyond the faces left
    out of both: 55 of 57 measured; the two others are raw maxima 0.2-0.3 um from a brighter one, one spot
    in the restored volume) and a self-check that passes (issue 14's window; the first default weights
    flatten these beads). Per-bead light within 10 % of the raw's, each raw bead's light its flux fitted
    with the PSF the pipeline used (0.96; the +-2 FWHM window, which misses the raw beads' wings, reads
    1.13)."""
    vol, spacing = io.load(shared_data / "leica-beads" / "beads.tif")
    res = r3.default_pipeline().run(vol, spacing=spacing, keep=("background",))
    c = assess.compare_to_raw(np.asarray(res), res.intermediates["background"], spacing, psf=res.psf)
    assert 0.9 <= c.elongation_vs_ideal <= 1.15, c
    assert c.lateral_vs_raw <= 1.1 and c.lateral_vs_raw_smoothed <= 1.1, c
    assert c.flux_method == "psf fit" and abs(c.flux_ratio - 1) <= 0.1, c
    assert c.background <= 0.002 and c.invented == 0, c
    assert abs(c.count_ratio - 1) <= 0.05, c
    assert res.info["refiner"]["self_check"]["passed"]
