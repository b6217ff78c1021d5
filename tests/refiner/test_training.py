"""Training pairs, the training loop, adaptation (restore3d.refiner.training)."""
import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from restore3d.refiner import UNetConfig  # noqa: E402
from restore3d.refiner.checkpoint import load_checkpoint  # noqa: E402
from restore3d.refiner.normalize import Normalizer  # noqa: E402

SP = (0.3, 0.1, 0.1)


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


def test_a_volume_the_stages_refuse_is_drawn_again(monkeypatch):
    """A simulation the stages run on with neither an estimated nor its own PSF (an aberrated PSF split in two
    lobes is refused as a given PSF) is replaced by a draw from a far seed; the others keep their seeds."""
    from restore3d.pipeline import Pipeline
    from restore3d.refiner.training import data
    from restore3d.stages import SubtractBackground
    ranges = data.SimulationRanges(shape=(16, 48, 48), density=(0.03, 0.05), flux=(20000, 40000))

    class Refusing(Pipeline):
        def run(self, volume, **kw):
            raise ValueError("psf holds 2 separate bright spots")

    with pytest.raises(data.UnusableSimulation, match="seed 4: the stages took neither"):
        data.make_pair(ranges, Refusing([SubtractBackground()]), Normalizer(offset="median"), 4)
    real = data.make_pair
    seeds = []

    def flaky(ranges, prefix, normalizer, seed, *args):
        seeds.append(seed)
        if seed == 1:
            raise data.UnusableSimulation("seed 1: refused")
        return real(ranges, prefix, normalizer, seed, *args)

    monkeypatch.setattr(data, "make_pair", flaky)
    pairs = data.make_pairs(3, ranges, Pipeline([]), Normalizer(offset="median"), seed=0)
    assert len(pairs) == 3 and seeds == [0, 1, 1 + 2 ** 40, 2]


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


def _ramp_pair(shape=(40, 20, 20)):
    """A pair whose input holds each voxel's plane index and whose target its row index (crops readable)."""
    from restore3d.refiner.training.data import Pair
    z = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()
    y = np.broadcast_to(np.arange(shape[1], dtype=np.float32)[None, :, None], shape).copy()
    return Pair(input=z, target=y, spacing=(0.2, 0.1, 0.1), scale=1.0, truth=None)


def test_face_crops_put_patches_flush_with_the_stack_faces():
    """faces=1: every crop starts at the first plane or ends at the last, both alike; faces=0: uniform starts."""
    from restore3d.refiner.training.data import random_patch
    pair, patch = _ramp_pair(), (16, 8, 8)
    rng = np.random.default_rng(0)
    starts, rows = [], set()
    for _ in range(400):
        x, y = random_patch(pair, patch, rng, faces=1.0)
        starts.append(int(x.min()))
        rows.add(int(y.min()))
    starts = np.asarray(starts)
    assert set(starts) == {0, 24}  # 40 - 16: flush with the last plane
    assert 0.4 < np.mean(starts == 0) < 0.6
    assert len(rows) > 8  # the lateral crops still move
    for faces, flush in ((0.0, 2 / 25), (0.5, 0.5 + 0.5 * 2 / 25)):
        got = np.mean([int(random_patch(pair, patch, rng, faces=faces)[0].min()) in (0, 24) for _ in range(2000)])
        assert abs(got - flush) < 0.04, (faces, got)


def test_face_crops_outside_0_1_are_refused_before_any_work():
    from restore3d.refiner.training.data import random_patch
    from restore3d.refiner.training.train import TrainConfig
    with pytest.raises(ValueError, match="face_crops is a share of patches in"):
        TrainConfig(face_crops=1.5)
    with pytest.raises(ValueError, match="faces is a probability"):
        random_patch(_ramp_pair(), (16, 8, 8), np.random.default_rng(0), faces=-0.1)
