import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from restore3d.refiner import UNetConfig, build_model  # noqa: E402
from restore3d.refiner.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from restore3d.refiner.inference import predict  # noqa: E402
from restore3d.refiner.training.losses import combined_loss, imbalanced_loss, l1_loss, make_loss, mse_loss  # noqa: E402
from restore3d.refiner.normalize import Normalizer  # noqa: E402
from restore3d.refiner.tiling import blend_weight, tile_starts, tiles  # noqa: E402

SP = (0.3, 0.1, 0.1)


def _random_model(seed=0, **cfg):
    torch.manual_seed(seed)
    model = build_model(UNetConfig(base_channels=4, **cfg))
    with torch.no_grad():  # the head starts at zero (identity): give it weights so the test sees the network
        model.head.weight.normal_(0, 0.5)
        model.head.bias.fill_(0.1)
    return model.eval()


# ------------------------------------------------------------------ losses
def test_losses_hand_computed():
    """Each loss equals its formula on a small hand-checked example."""
    t = torch.tensor([0.0, 0.05, 0.5, 1.0]).view(1, 1, 1, 1, 4)
    p = torch.tensor([0.1, 0.0, 0.7, 0.6]).view(1, 1, 1, 1, 4)
    # |t - p| = 0.1, 0.05, 0.2, 0.4 ; tau 0.1 of max 1 -> weights 1, 1, M, M
    assert float(l1_loss(p, t)) == pytest.approx((0.1 + 0.05 + 0.2 + 0.4) / 4)
    assert float(mse_loss(p, t)) == pytest.approx((0.01 + 0.0025 + 0.04 + 0.16) / 4)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=1000)) == pytest.approx((0.1 + 0.05 + 200 + 400) / 4)
    assert float(imbalanced_loss(p, t, tau=0.6, weight=10)) == pytest.approx((0.1 + 0.05 + 0.2 + 4.0) / 4)
    assert float(combined_loss(p, t, tau=0.1, weight=10, mse_weight=2.0)) == pytest.approx(
        (0.1 + 0.05 + 2 + 4) / 4 + 2 * (0.01 + 0.0025 + 0.04 + 0.16) / 4)
    # the default threshold tau = 0.01 also weights the 0.05 voxel
    assert float(imbalanced_loss(p, t, weight=10)) == pytest.approx((0.1 + 0.5 + 2 + 4) / 4)
    with pytest.raises(ValueError, match="unknown loss 'l3'"):
        make_loss("l3")


def test_imbalanced_threshold_per_sample():
    """The threshold is relative to each sample's own maximum."""
    t = torch.zeros(2, 1, 1, 1, 2)
    t[0, ..., 0] = 1.0
    t[1, ..., 0] = 100.0
    p = torch.zeros_like(t)
    # both samples: the peak voxel is foreground (weight 5), the other is background
    assert float(imbalanced_loss(p, t, weight=5)) == pytest.approx((5 * 1 + 5 * 100) / 4)


def test_imbalanced_dilation_weights_the_neighbours():
    """dilate=1 gives the voxels next to a bead core the bead weight; farther ones keep weight 1 (tau = 0.1)."""
    t = torch.zeros(1, 1, 5, 1, 1)
    t[0, 0, 2] = 1.0       # bead core
    t[0, 0, 1] = 0.02      # plane above: below tau, next to the core
    p = torch.zeros_like(t)
    p[0, 0, 3] = 0.1       # plane below: an error next to the core
    p[0, 0, 0] = 0.3       # two planes away: not a neighbour
    # errors: 0.3 (w 1), 0.02 (w M), 1.0 (w M), 0.1 (w M), 0 -> mean over 5 voxels
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10)) == pytest.approx((0.3 + 0.02 + 10 * 1.0 + 0.1) / 5)
    assert float(imbalanced_loss(p, t, tau=0.1, weight=10, dilate=1)) == pytest.approx(
        (0.3 + 10 * 0.02 + 10 * 1.0 + 10 * 0.1) / 5)
    with pytest.raises(ValueError, match="dilate must be a whole number"):
        imbalanced_loss(p, t, dilate=-1)


# ------------------------------------------------------------------ model
@pytest.mark.parametrize("shape", [(13, 37, 29), (32, 64, 64), (5, 9, 11), (1, 8, 8)])
def test_any_shape_in_same_shape_out(shape):
    """Odd sizes are padded and cropped: output has the input's shape, non-negative."""
    model = _random_model()
    vol = np.random.default_rng(0).random(shape).astype(np.float32)
    out = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    assert out.shape == shape and out.dtype == np.float32 and out.min() >= 0


def test_config_validation():
    """Bad architectures are rejected at the door."""
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        UNetConfig(kernel_size=4)
    with pytest.raises(ValueError, match="pools must list 2"):
        UNetConfig(pools=((1, 2, 2),))
    with pytest.raises(ValueError, match="norm must be one of"):
        UNetConfig(norm="layer")
    with pytest.raises(ValueError, match="unknown U-Net settings"):
        UNetConfig.from_dict({"depht": 2})
    assert UNetConfig().multiple == (2, 4, 4)


def test_residual_model_starts_as_identity():
    """A fresh residual network returns its (non-negative) input: training starts from the classical result."""
    model = build_model(UNetConfig(base_channels=4)).eval()
    x = torch.rand(1, 1, 8, 16, 16)
    assert torch.allclose(model(x), x)


# ------------------------------------------------------------------ tiling
def test_tiling_geometry_stitches_arange_exactly():
    """Cutting np.arange data into blended tiles and stitching them back is the identity."""
    shape = (10, 70, 53)
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    acc = np.zeros(shape)
    wsum = np.zeros(shape)
    for t in tiles(shape, (10, 32, 32), (0, 14, 14), (2, 4, 4)):
        w = blend_weight(t, shape, (0, 4, 4), (0, 6, 6))
        acc[t] += data[t] * w
        wsum[t] += w
    assert wsum.min() > 0
    np.testing.assert_allclose(acc / wsum, data, rtol=1e-12)
    for s in tile_starts(250, 64, 20, 4):
        assert s % 4 == 0


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_tiled_equals_whole(norm):
    """Tiled inference equals whole-volume inference (float tolerance), for any tile layout."""
    model = _random_model(norm=norm)
    vol = np.random.default_rng(1).random((12, 150, 130)).astype(np.float32)
    whole = predict(model, vol, SP, normalizer=Normalizer(), device="cpu")
    tiled = predict(model, vol, SP, normalizer=Normalizer(), device="cpu", max_voxels=0,
                    tile_shape=(0, 96, 64))
    np.testing.assert_allclose(tiled, whole, atol=1e-5 * float(whole.max()))


def test_out_of_range_spacing_is_resampled():
    """A spacing outside the training range is resampled in and out; flux is kept."""
    model = build_model(UNetConfig(base_channels=4)).eval()  # identity network
    vol = np.zeros((16, 40, 40), np.float32)
    vol[8, 20, 20] = 10.0
    rng = {"dz": [0.2, 0.4], "dxy": [0.08, 0.13]}
    out = predict(model, vol, (0.6, 0.2, 0.2), normalizer=Normalizer(), spacing_range=rng, device="cpu")
    assert out.shape == vol.shape
    assert out.sum() == pytest.approx(vol.sum(), rel=1e-3)


# ------------------------------------------------------------------ normalisation
def test_peaks_normaliser_ignores_density():
    """Peak scaling gives the same scale for sparse and dense volumes of the same beads; percentile does not."""
    from restore3d.simulate import AmbientLight, simulate_beads
    kw = dict(flux=5000, flux_spread=0.0, ambient=AmbientLight(0, 0), poisson=False, read_noise=0)
    sparse = simulate_beads((16, 96, 96), SP, n_beads=3, seed=1, **kw).clean
    dense = simulate_beads((16, 96, 96), SP, n_beads=60, seed=2, **kw).clean
    peaks = Normalizer()
    perc = Normalizer(method="percentile")
    r_peaks = peaks.stats(dense)[1] / peaks.stats(sparse)[1]
    r_perc = perc.stats(dense)[1] / perc.stats(sparse)[1]
    assert abs(np.log(r_peaks)) < 0.3
    assert abs(np.log(r_perc)) > 1.0


# ------------------------------------------------------------------ checkpoints and training
def test_checkpoint_round_trip_bit_identical(tmp_path):
    """Saving and loading a checkpoint gives bit-identical predictions; a tampered file is refused."""
    model = _random_model()
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


@pytest.fixture(scope="module")
def tiny_pairs():
    from restore3d.pipeline import Pipeline
    from restore3d.refiner.training.data import SimulationRanges, make_pairs
    ranges = SimulationRanges(shape=(16, 48, 48), density=(0.03, 0.05), flux=(20000, 40000))
    return make_pairs(4, ranges, Pipeline([]), Normalizer(offset="median"), seed=0)


def test_given_psf_probability_gives_the_stages_the_simulated_psf():
    """Probability 1: the preceding stages run with the simulation's PSF; a draw that misses changes nothing."""
    from restore3d.pipeline import Pipeline
    from restore3d.psf import crop_psf
    from restore3d.refiner.training.data import SimulationRanges, make_pair
    from restore3d.simulate import simulate_beads
    from restore3d.stages import EstimatePSF, RichardsonLucy, SubtractBackground
    prefix = Pipeline([SubtractBackground(), EstimatePSF(), RichardsonLucy(iterations=3)])
    ranges = SimulationRanges(shape=(16, 64, 64), density=(0.02, 0.02), flux=(20000, 20000),
                              models=(("widefield", 1.0),), media=("water",), mismatch_probability=0.0,
                              eight_bit_probability=0.0)
    norm = Normalizer(offset="median")
    plain = make_pair(ranges, prefix, norm, seed=1)
    # the draw happens (probability > 0) but misses: simulation and estimate as without the option
    missed = make_pair(dataclasses.replace(ranges, given_psf_probability=1e-12), prefix, norm, seed=1)
    given = make_pair(dataclasses.replace(ranges, given_psf_probability=1.0), prefix, norm, seed=1)
    np.testing.assert_array_equal(missed.input, plain.input)
    np.testing.assert_array_equal(missed.target, plain.target)
    np.testing.assert_allclose(given.target * given.scale, plain.target * plain.scale, rtol=1e-6, atol=1e-9)
    assert np.abs(given.input - plain.input).max() > 1e-3  # the estimate differs from the true PSF
    # the same as running the stages with the simulation's PSF by hand
    rng = np.random.default_rng(1)
    sim = simulate_beads(**ranges.sample(rng), seed=rng)
    res = prefix.run(sim.raw, spacing=sim.spacing, psf=crop_psf(sim.psf, sim.raw.shape), seed=1)
    off, scale = norm.stats(np.asarray(res))
    np.testing.assert_allclose(given.input, (np.asarray(res) - off) / scale, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="given_psf_probability must lie in"):
        SimulationRanges(given_psf_probability=-0.1)


def test_training_reduces_loss_and_output_not_constant(tmp_path, tiny_pairs):
    """A few steps on a tiny model lower the validation loss and do not collapse to a constant output."""
    from restore3d.pipeline import Pipeline
    from restore3d.refiner.training.data import SimulationRanges
    from restore3d.refiner.training.train import TrainConfig, train
    cfg = TrainConfig(steps=30, batch=2, patch=(16, 32, 32), warmup=5, epoch_steps=10, validation=2,
                      patience=100, lr=3e-3, seed=0)
    res = train(tmp_path / "tiny", config=cfg, model_config=UNetConfig(base_channels=4), prefix=Pipeline([]),
                normalizer=Normalizer(offset="median"), pairs=tiny_pairs,
                ranges=SimulationRanges(shape=(16, 48, 48)), progress=False)
    losses = [r["val_loss"] for r in res.log]
    assert losses[-1] < losses[0]
    assert min(r["val_output_std"] for r in res.log) > 1e-4
    model, meta = load_checkpoint(res.checkpoint)
    assert meta["loss"]["name"] == "imbalanced" and meta["training"]["total_steps"] == 30
    assert (tmp_path / "tiny.log.jsonl").read_text().count("\n") == 3


def test_training_is_deterministic_and_resumes(tmp_path, tiny_pairs):
    """The same seed gives the same weights; stopping and resuming gives the same result as one run."""
    from restore3d.pipeline import Pipeline
    from restore3d.refiner.training.train import TrainConfig, train
    from restore3d.refiner.training.data import SimulationRanges
    kw = dict(model_config=UNetConfig(base_channels=4), prefix=Pipeline([]), normalizer=Normalizer(offset="median"),
              pairs=tiny_pairs, ranges=SimulationRanges(shape=(16, 48, 48)), progress=False)
    # warm-up longer than the run: the learning rate does not depend on the total steps,
    # so a 4-step run resumed to 8 steps must retrace the 8-step run exactly
    cfg = TrainConfig(steps=8, batch=2, patch=(16, 32, 32), warmup=10, epoch_steps=4, validation=1, patience=100)
    a = train(tmp_path / "a", config=cfg, **kw)
    b = train(tmp_path / "b", config=cfg, **kw)
    ma, _ = load_checkpoint(a.checkpoint)
    mb, _ = load_checkpoint(b.checkpoint)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    import dataclasses
    half = dataclasses.replace(cfg, steps=4)
    train(tmp_path / "c", config=half, **kw)
    c = train(tmp_path / "c", config=cfg, resume=True, **kw)
    assert c.steps == 8
    mc, _ = load_checkpoint(c.checkpoint)
    assert [r["val_loss"] for r in c.log] == [r["val_loss"] for r in a.log]
    for va, vc in zip(ma.state_dict().values(), mc.state_dict().values()):
        assert torch.equal(va, vc)
    # the resumed run's log continues the first half's; a fresh run over an old one starts a new log
    assert (tmp_path / "c.log.jsonl").read_text().count("\n") == 2
    train(tmp_path / "b", config=half, **kw)
    assert (tmp_path / "b.log.jsonl").read_text().count("\n") == 1


def test_measure_microscope_reads_light_and_beads():
    """Offset, glow, bead density and brightness measured on a raw volume are close to the simulated ones."""
    from restore3d.refiner.training.adapt import measure_microscope
    from restore3d.simulate import AmbientLight, simulate_beads
    sim = simulate_beads((32, 128, 128), SP, flux=8000, density=0.02, ambient=AmbientLight(offset=100, level=30),
                         read_noise=2, seed=2)
    m = measure_microscope(sim.raw, SP)
    assert m["offset"] == pytest.approx(100, abs=5)
    assert m["ambient_level"] == pytest.approx(30, rel=0.15)
    true_density = len(sim.inside) / float(np.prod(np.asarray(sim.raw.shape) * np.asarray(SP)))
    assert m["density"] == pytest.approx(true_density, rel=0.4)
    assert m["flux"] == pytest.approx(np.median(sim.inside["flux"]), rel=0.3)
    assert m["psf"].sum() == pytest.approx(1.0, abs=1e-3)


def test_adapt_fine_tunes_a_checkpoint(tmp_path, tiny_pairs):
    """adapt() simulates with the measured microscope and writes a new checkpoint that records its origin."""
    from restore3d.pipeline import Pipeline
    from restore3d.refiner import Refiner
    from restore3d.refiner.training.data import SimulationRanges
    from restore3d.refiner.training.train import TrainConfig, train
    from restore3d.simulate import simulate_beads
    cfg = TrainConfig(steps=4, batch=2, patch=(16, 32, 32), warmup=2, epoch_steps=4, validation=1, patience=100)
    base = train(tmp_path / "base", config=cfg, model_config=UNetConfig(base_channels=4), prefix=Pipeline([]),
                 normalizer=Normalizer(offset="median"), pairs=tiny_pairs,
                 ranges=SimulationRanges(shape=(16, 48, 48)), progress=False)
    user = simulate_beads((16, 48, 48), SP, n_beads=15, flux=20000, seed=5)
    adapted = Refiner.load(base.checkpoint).adapt(user.raw, SP, steps=4, pool=2, out=tmp_path / "adapted")
    meta = adapted.meta
    assert meta["training"]["init_sha256"] == json.loads(base.checkpoint.read_text())["sha256"]
    assert meta["sha256"] != meta["training"]["init_sha256"]
    out = adapted.restore(user.raw, SP)
    assert out.shape == user.raw.shape and np.isfinite(out).all()


def test_cli_train_writes_checkpoint(tmp_path):
    """restore3d train runs a (tiny) training and refuses to overwrite without --overwrite."""
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "restore3d", "train", str(tmp_path / "m"), "--steps", "2", "--pool", "2",
           "--validation", "1", "--batch", "1", "--raw", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["training"]["command"].startswith("restore3d train")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--overwrite" in r.stderr


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


def test_target_blur_input_transform():
    """The refiner's input rendering blurs a point to the target's isotropic FWHM; without a PSF it refuses."""
    from restore3d.psf import fwhm, gaussian_psf
    from restore3d.refiner.transforms import apply_input_transform
    psf = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)
    vol = np.zeros((24, 48, 48), np.float32)
    vol[12, 24, 24] = 100.0
    out = apply_input_transform(vol, SP, "target_blur", psf)
    assert out.sum() == pytest.approx(100.0, rel=1e-3)
    w = fwhm(out, SP)
    np.testing.assert_allclose(w[1:], 0.3, rtol=0.05)
    assert w[0] == pytest.approx(0.3, rel=0.35)  # one plane of 0.3 um: coarse but isotropic in um
    assert apply_input_transform(vol, SP, None, None) is vol
    with pytest.raises(ValueError, match="needs the PSF of the preceding stages"):
        apply_input_transform(vol, SP, "target_blur", None)


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
