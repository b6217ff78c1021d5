import json
import os
import subprocess
import sys

import numpy as np
import pytest

from restore3d import io

SP = (0.3, 0.1, 0.1)


def cli(*args, cwd=None, env_extra=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "restore3d", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory):
    """A small simulated volume as depth-last .mat (no spacing) and as .tif (with spacing)."""
    from restore3d.simulate import simulate_beads
    d = tmp_path_factory.mktemp("cli")
    sim = simulate_beads((24, 96, 96), SP, n_beads=25, flux=8000, seed=3)
    io.save(d / "stack.mat", sim.raw, axes="yxz", variable="voxel")
    io.save(d / "stack.tif", sim.raw, spacing=SP)
    return d, sim


def test_run_tif_with_beads_figure_psf(sim_files, tmp_path):
    """run writes a restored TIFF with spacing, a PSF, a bead table and a PNG figure."""
    d, sim = sim_files
    out = tmp_path / "out.tif"
    r = cli("run", d / "stack.tif", out, "--no-refiner", "--beads", tmp_path / "beads.csv",
            "--figure", tmp_path / "fig.png", "--save-psf", tmp_path / "psf.tif", "--quiet")
    assert r.returncode == 0, r.stderr
    vol, sp = io.load(out)
    assert vol.shape == (24, 96, 96) and np.allclose(sp, SP)
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = io.read_table(tmp_path / "beads.csv")
    assert {"z", "y", "x", "z_um", "intensity", "fwhm_z", "fwhm_x"} <= set(table.dtype.names)
    assert 0.6 * 25 <= len(table) <= 1.6 * 25
    psf, psp = io.load(tmp_path / "psf.tif")
    assert psf.sum() == pytest.approx(1.0, abs=1e-3)


def test_run_mat_keeps_axis_order_and_variable(sim_files, tmp_path):
    """A .mat output keeps the input's depth-last order and variable name."""
    d, _ = sim_files
    out = tmp_path / "restored.mat"
    r = cli("run", d / "stack.mat", out, "--axes", "yxz", "--spacing", *SP, "--no-refiner", "--quiet")
    assert r.returncode == 0, r.stderr
    from scipy.io import loadmat
    m = loadmat(out)
    assert m["voxel"].shape == (96, 96, 24)
    vol, sp = io.load(out, axes="yxz")
    assert vol.shape == (24, 96, 96)


def test_run_with_config_and_refiner(sim_files, tmp_path):
    """--config runs a saved pipeline; the default pipeline with the shipped refiner runs too."""
    import restore3d as r3
    d, _ = sim_files
    cfg = tmp_path / "pipe.json"
    r3.Pipeline([r3.SubtractBackground(method="percentile")]).save(cfg)
    r = cli("run", d / "stack.tif", tmp_path / "a.tif", "--config", cfg, "--quiet")
    assert r.returncode == 0, r.stderr
    a, _ = io.load(tmp_path / "a.tif")
    assert np.median(a) < 1.0
    r = cli("run", d / "stack.tif", tmp_path / "b.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    b, sp = io.load(tmp_path / "b.npz")
    assert b.shape == (24, 96, 96) and b.min() >= 0


def test_overwrite_rules(sim_files, tmp_path):
    """An existing output is kept unless --overwrite; the input is never overwritten."""
    d, _ = sim_files
    out = tmp_path / "o.tif"
    out.write_bytes(b"keep me")
    r = cli("run", d / "stack.tif", out, "--no-refiner", "--quiet")
    assert r.returncode == 2 and "exists; pass --overwrite" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = cli("run", d / "stack.tif", out, "--no-refiner", "--quiet", "--overwrite")
    assert r.returncode == 0
    r = cli("run", d / "stack.tif", d / "stack.tif", "--overwrite", "--quiet")
    assert r.returncode == 2 and "refusing to overwrite the input" in r.stderr


@pytest.mark.parametrize("setup,args,message", [
    ("missing", ["run", "{d}/nope.tif", "{t}/o.tif"], "no such file"),
    ("none", ["run", "{d}/stack.tif", "{t}/o.png"], "unknown file extension"),
    ("2d", ["run", "{t}/flat.npy", "{t}/o.tif", "--spacing", "1", "1", "1"], "2D"),
    ("none", ["run", "{d}/stack.mat", "{t}/o.tif", "--axes", "yxz"], "pass --spacing"),
    ("nan", ["run", "{t}/nan.tif", "{t}/o.tif"], "NaN or Inf"),
    ("badpsf", ["run", "{d}/stack.tif", "{t}/o.tif", "--psf", "{t}/neg.tif"], "negative values"),
    ("corrupt", ["run", "{t}/bad.mat", "{t}/o.tif", "--spacing", "1", "1", "1"], "not a readable MATLAB"),
    ("corrupt", ["run", "{t}/bad.tif", "{t}/o.tif", "--spacing", "1", "1", "1"], "not a readable TIFF"),
    ("config", ["run", "{d}/stack.tif", "{t}/o.tif", "--config", "{t}/bad.json"], "unknown parameters"),
])
def test_errors_exit_2_one_line(sim_files, tmp_path, setup, args, message):
    """Each bad input ends with exit 2 and one clear line on stderr, no traceback."""
    d, _ = sim_files
    if setup == "2d":
        np.save(tmp_path / "flat.npy", np.ones((8, 8), np.float32))
    if setup == "nan":
        v = np.ones((8, 16, 16), np.float32)
        v[0, 0, 0] = np.nan
        io.save(tmp_path / "nan.tif", v, spacing=SP)
    if setup == "badpsf":
        io.save(tmp_path / "neg.tif", -np.ones((3, 9, 9), np.float32))
    if setup == "corrupt":
        (tmp_path / "bad.mat").write_bytes(b"garbage" * 50)
        (tmp_path / "bad.tif").write_bytes(b"garbage" * 50)
    if setup == "config":
        (tmp_path / "bad.json").write_text(json.dumps(
            {"steps": [{"name": "b", "stage": "SubtractBackground", "params": {"radius": 3}}]}))
    r = cli(*[a.format(d=d, t=tmp_path) for a in args], "--no-refiner")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("restore3d: error")]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_verbose_shows_traceback(tmp_path):
    """--verbose shows the full traceback of an error."""
    r = cli("run", tmp_path / "nope.tif", tmp_path / "o.tif", "--verbose", "--spacing", "1", "1", "1")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_simulate_and_psf(tmp_path):
    """simulate writes volume, target, truth and PSF; psf estimates it back and prints the FWHM."""
    r = cli("simulate", tmp_path / "sim.tif", "--shape", 24, 128, 128, "--n-beads", 30, "--flux", 8000, "--quiet")
    assert r.returncode == 0, r.stderr
    vol, sp = io.load(tmp_path / "sim.tif")
    assert vol.shape == (24, 128, 128) and np.allclose(sp, SP)
    assert (tmp_path / "sim_target.tif").exists() and (tmp_path / "sim_psf.tif").exists()
    truth = io.read_table(tmp_path / "sim_truth.csv")
    assert truth["inside"].sum() == 30
    r = cli("psf", tmp_path / "sim.tif", tmp_path / "est.tif", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "FWHM z" in r.stdout and "beads" in r.stdout
    assert (tmp_path / "est.png").read_bytes()[:4] == b"\x89PNG"


def test_interrupted_write_leaves_destination_untouched(sim_files, tmp_path):
    """If writing fails midway, the old destination is intact and no temporary file is left."""
    d, _ = sim_files
    out = tmp_path / "o.tif"
    out.write_bytes(b"old")
    code = (
        "import restore3d.io as io, numpy as np, tifffile\n"
        "def boom(*a, **k):\n"
        "    open(a[0], 'wb').write(b'partial'); raise KeyboardInterrupt\n"
        "tifffile.imwrite = boom\n"
        "try:\n"
        f"    io.save(r'{out}', np.ones((2, 3, 4), np.float32))\n"
        "except KeyboardInterrupt:\n"
        "    pass\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]


def test_demo_runs(tmp_path):
    """The README's demo writes its input, output, figure, bead table and metrics."""
    r = cli("demo", tmp_path / "demo", "--quiet")
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert {"demo_input.mat", "demo_restored.tif", "demo_figure.png", "demo_beads.csv", "demo_metrics.md"} <= names
    assert "elongation" in r.stdout


def test_raw_psf_stack_is_cleaned_and_cropped(sim_files, tmp_path):
    """--psf accepts a raw bead stack (offset, larger than the volume): offset removed, cropped, used."""
    from restore3d.psf import gaussian_psf
    d, _ = sim_files
    true = gaussian_psf(SP, fwhm_lateral=0.25, fwhm_axial=0.8, shape=(15, 21, 21))
    stack = np.full((41, 61, 61), 120.0, np.float32)
    stack[13:28, 20:41, 20:41] += 5000 * true / true.max()
    io.save(tmp_path / "stack_psf.tif", stack)
    r = cli("run", d / "stack.tif", tmp_path / "o.tif", "--psf", tmp_path / "stack_psf.tif", "--no-refiner",
            "--save-psf", tmp_path / "used.tif")
    assert r.returncode == 0, r.stderr
    used, _ = io.load(tmp_path / "used.tif")
    assert used.shape[0] <= 24 and used.sum() == pytest.approx(1.0, abs=1e-3)


def test_run_with_the_rendering_weights_and_bad_refiner(sim_files, tmp_path):
    """--refiner picks a shipped weight set (or a checkpoint); an unknown one is one clear line."""
    d, _ = sim_files
    out = tmp_path / "out.tif"
    r = cli("run", d / "stack.tif", out, "--refiner", "pretrained-render", "--quiet")
    assert r.returncode == 0, r.stderr
    vol, _ = io.load(out)
    assert vol.shape == (24, 96, 96) and vol.max() > 0
    r = cli("run", d / "stack.tif", tmp_path / "o2.tif", "--refiner", "nonsense", "--quiet")
    assert r.returncode == 2 and "--refiner nonsense: neither shipped weights" in r.stderr
    assert "Traceback" not in r.stderr


def test_train_options_set_the_loss_and_are_refused_where_they_do_not_apply():
    """train's --false-weight / --false-reach reach the imbalanced loss; with --loss l1 they are one clear error."""
    from restore3d.cli import UserError, _train_config, build_parser
    from restore3d.refiner.training.train import TrainConfig
    args = build_parser().parse_args(["train", "out", "--false-weight", "20", "--false-reach", "4", "--weight", "20"])
    cfg = _train_config(args, TrainConfig)
    assert cfg.loss == "imbalanced"
    assert (cfg.loss_params["false_weight"], cfg.loss_params["false_reach"], cfg.loss_params["weight"]) == (20, 4, 20)
    args = build_parser().parse_args(["train", "out", "--loss", "l1", "--false-weight", "20"])
    with pytest.raises(UserError, match="--false-weight applies to the imbalanced and combined losses"):
        _train_config(args, TrainConfig)
