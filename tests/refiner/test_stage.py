"""The Refiner stage and the shipped weights."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")


SP = (0.3, 0.1, 0.1)


def test_shipped_model_loads_and_rounds_beads():
    """The shipped weights load (checksum verified) and make beads rounder than RL alone on a fixed-seed volume."""
    import restore3d as r3
    from restore3d.refiner import PRETRAINED, Refiner
    assert PRETRAINED.exists() and PRETRAINED.with_suffix(".pt").stat().st_size < 5 * 2 ** 20
    sim = r3.simulate.simulate_beads((32, 128, 128), SP, flux=6000, seed=12)
    res = r3.default_pipeline().run(sim.raw, spacing=SP, keep=["rl"])
    before = r3.metrics.evaluate(res.intermediates["rl"], target=sim.target, truth=sim.truth, spacing=SP)
    after = r3.metrics.evaluate(np.asarray(res), target=sim.target, truth=sim.truth, spacing=SP)
    assert after["elongation"] < 0.85 * before["elongation"]
    assert after["nrmse"] < before["nrmse"]
    assert after["background_residual"] < 0.02
    assert Refiner.pretrained().meta["loss"]["name"] == "imbalanced"


def test_refiner_warns_when_its_preceding_stages_differ(caplog):
    """A given PSF stands in for EstimatePSF; a missing RL stage is reported."""
    import restore3d as r3
    from restore3d.psf import widefield_psf
    psf = widefield_psf(SP, shape=(9, 17, 17))
    vol = np.random.default_rng(0).poisson(5.0, (16, 48, 48)).astype(np.float32)
    ok = r3.Pipeline([r3.SubtractBackground(), r3.RichardsonLucy(iterations=2), r3.Refiner.pretrained()])
    caplog.clear()
    ok.run(vol, spacing=SP, psf=psf)
    assert "trained after" not in caplog.text
    bad = r3.Pipeline([r3.SubtractBackground(), r3.Refiner.pretrained()])
    bad.run(vol, spacing=SP, psf=psf)
    assert "trained after" in caplog.text
