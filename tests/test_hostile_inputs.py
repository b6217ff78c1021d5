"""Hostile and unusual input: every case gets a clear error naming the input and the fix, or a correct result.

Table-driven where cases share a shape: each row is an input and the exact
outcome (error type and message pattern). No case may end in a deep
traceback, a hang, a silently wrong result or a lost file.
"""
import json
import logging
import os
import stat

import numpy as np
import pytest
import tifffile

import restore3d as r3
from restore3d import io
from restore3d.cli import main as cli_main
from restore3d.psf import gaussian_psf

SP = (0.3, 0.1, 0.1)


@pytest.fixture(scope="module")
def sim():
    return r3.simulate.simulate_beads((32, 64, 64), SP, n_beads=12, flux=8000.0, seed=5)


def classical():
    return r3.Pipeline([r3.SubtractBackground(), r3.RichardsonLucy(iterations=5)])


PSF = gaussian_psf(SP, fwhm_lateral=0.3, fwhm_axial=0.9)


# ----------------------------------------------------------------------------- volumes
def _vol(shape=(32, 64, 64), dtype=np.float32, fill=1.0):
    return np.full(shape, fill, dtype=dtype)


VOLUME_CASES = [
    ("nan", lambda: _vol(fill=np.nan), "NaN or Inf"),
    ("inf", lambda: _vol(fill=np.inf), "NaN or Inf"),
    ("2d", lambda: np.ones((64, 64), np.float32), r"must be 3D.*2D"),
    ("4d", lambda: np.ones((2, 8, 16, 16), np.float32), r"must be 3D.*4D"),
    ("empty", lambda: np.ones((0, 64, 64), np.float32), "empty"),
    ("bool", lambda: np.ones((8, 16, 16), bool), "expected real numbers"),
    ("strings", lambda: np.full((8, 16, 16), "a"), "expected real numbers"),
    ("complex", lambda: np.ones((8, 16, 16), np.complex64), "expected real numbers"),
    ("one plane", lambda: _vol((1, 64, 64)), r"too small to restore \(1 planes"),
    ("two planes", lambda: _vol((2, 64, 64)), r"too small to restore \(2 planes"),
    ("4 x 4 x 4", lambda: _vol((4, 4, 4)), r"too small to restore \(4 rows, 4 columns"),
    ("ragged list", lambda: [[[1.0, 2.0]], [[1.0]]], "could not be converted|inhomogeneous|expected real"),
]


@pytest.mark.parametrize("label,make,match", VOLUME_CASES, ids=[c[0] for c in VOLUME_CASES])
def test_bad_volumes_refused(label, make, match):
    """Volumes a run cannot handle are refused before any work, saying why."""
    with pytest.raises(ValueError, match=match):
        classical().run(make(), spacing=SP)


SPACING_CASES = [
    ("missing", None, "spacing is required"),
    ("scalar", 0.1, "single number"),
    ("two values", (0.3, 0.1), "3 entries"),
    ("negative", (0.3, -0.1, 0.1), "dy must be a positive"),
    ("zero", (0.0, 0.1, 0.1), "dz must be a positive"),
    ("nan", (np.nan, 0.1, 0.1), "dz must be a positive"),
    ("text", ("a", "b", "c"), "three numbers"),
    ("pixels taken as um", (100, 100, 100), r"not a light microscope's voxel size.*dz=100"),
    ("angstroms", (1e-4, 0.1, 0.1), r"not a light microscope's voxel size.*dz=0.0001"),
]


@pytest.mark.parametrize("label,spacing,match", SPACING_CASES, ids=[c[0] for c in SPACING_CASES])
def test_bad_spacings_refused(label, spacing, match):
    """A missing, malformed or implausible spacing is refused before any work (no 159 TiB allocation)."""
    with pytest.raises(ValueError, match=match):
        classical().run(_vol(), spacing=spacing)


@pytest.mark.parametrize("seed,match", [(-1, "integer >= 0"), (1.5, "integer >= 0"), ("a", "integer >= 0"),
                                        (True, "integer >= 0")])
def test_bad_seeds_refused(seed, match):
    """Seeds must be non-negative integers (or a Generator)."""
    with pytest.raises(ValueError, match=match):
        classical().run(_vol(), spacing=SP, seed=seed)


@pytest.mark.parametrize("device,match", [("tpu0", "must be 'cpu', 'cuda' or 'cuda:N'"), ("cpu:1", "must be"),
                                          ("cuda:x", "must be")])
def test_bad_devices_refused(device, match):
    """An unknown device name is refused before any work."""
    with pytest.raises(ValueError, match=match):
        classical().run(_vol(), spacing=SP, device=device)


def test_cuda_without_cuda_refused_before_work():
    """Asking for CUDA where there is none fails at once, not after the pipeline ran."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no usable CUDA GPU"):
        classical().run(_vol(), spacing=SP, device="cuda")


# ----------------------------------------------------------------------------- PSFs
def _two_beads():
    two = np.zeros((24, 64, 64), np.float32)
    z, y, x = PSF.shape
    two[2:2 + z, 5:5 + y, 5:5 + x] += PSF
    two[6:6 + z, 40:40 + y, 44:44 + x] += 0.8 * PSF
    return two


PSF_CASES = [
    ("nan", lambda: np.full((5, 5, 5), np.nan, np.float32), "NaN or Inf"),
    ("negative", lambda: -np.ones((5, 5, 5), np.float32), "negative values"),
    ("zero", lambda: np.zeros((5, 5, 5), np.float32), "sums to 0"),
    ("larger than the volume", lambda: np.ones((41, 5, 5), np.float32), r"larger than the volume"),
    ("several beads", _two_beads, "2 separate bright spots"),
    ("2d", lambda: np.ones((5, 5), np.float32), "must be 3D"),
    ("text", lambda: np.array([["a"]]), "expected real numbers|must be 3D"),
]


@pytest.mark.parametrize("label,make,match", PSF_CASES, ids=[c[0] for c in PSF_CASES])
def test_bad_psfs_refused(label, make, match):
    """A PSF that cannot be one (or is a stack of several beads) is refused with the reason."""
    with pytest.raises(ValueError, match=match):
        classical().run(_vol(), spacing=SP, psf=make())


def _centroid(v):
    from scipy import ndimage
    return np.array(ndimage.center_of_mass(np.where(v > 0.2 * v.max(), v, 0)))


@pytest.mark.parametrize("make", [lambda p: np.roll(p, (3, 2, 2), axis=(0, 1, 2)),
                                  lambda p: np.pad(p, ((0, 1), (0, 1), (0, 1)))[1:, 1:, 1:],
                                  lambda p: np.pad(p, ((1, 0), (1, 0), (0, 0)))],
                         ids=["rolled by (3, 2, 2)", "even, peak off by half a voxel", "even sizes"])
def test_off_centre_psf_does_not_shift_the_result(make):
    """A given PSF is centred on its peak, so an off-centre or even-sized PSF moves no bead."""
    vol = np.zeros((24, 64, 64), np.float32)
    vol[12, 32, 32] = 1000.0
    from scipy import ndimage
    blurred = ndimage.convolve(vol, PSF, mode="constant")
    rl = r3.Pipeline([r3.RichardsonLucy(iterations=20)])
    ref = _centroid(np.asarray(rl.run(blurred, spacing=SP, psf=PSF)))
    out = _centroid(np.asarray(rl.run(blurred, spacing=SP, psf=make(PSF))))
    assert np.abs(out - ref).max() < 0.3, (out, ref)


def test_psf_from_a_file_path(tmp_path):
    """psf= accepts a file name (a raw bead stack loses its background), not only an array."""
    stack = np.pad(PSF * 5000.0, 6) + 100.0
    path = io.save(tmp_path / "psf.tif", stack.astype(np.float32), spacing=SP)
    vol = np.zeros((32, 64, 64), np.float32)
    vol[16, 32, 32] = 1000.0
    out = r3.Pipeline([r3.RichardsonLucy(iterations=10)]).run(vol, spacing=SP, psf=str(path))
    assert out.psf.sum() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- intensities
@pytest.mark.parametrize("factor", [1e-30, 1e-6, 1e30])
def test_units_do_not_matter(sim, factor):
    """A volume in any units restores to the same result in those units (no all-zero output)."""
    pipe = r3.Pipeline([r3.SubtractBackground(), r3.RichardsonLucy(iterations=5)])
    ref = np.asarray(pipe.run(sim.raw, spacing=SP, psf=sim.psf[4:-4]))
    out = np.asarray(pipe.run(sim.raw * np.float32(factor), spacing=SP, psf=sim.psf[4:-4])) / np.float32(factor)
    assert np.isfinite(out).all() and out.max() > 0
    assert np.abs(out - ref).max() <= 2e-3 * ref.max()


# ----------------------------------------------------------------------------- pipeline descriptions
def _rl_spec(params):
    return {"steps": [{"name": "rl", "stage": "RichardsonLucy", "params": params}]}


SPEC_CASES = [
    ("iterations as text", _rl_spec({"iterations": "ten"}), r"'iterations' must be int, got 'ten'"),
    ("iterations as bool", _rl_spec({"iterations": True}), r"'iterations' must be int"),
    ("tv as text", _rl_spec({"tv": "high"}), r"'tv' must be float"),
    ("params a list", _rl_spec([1, 2]), "'params' must be a dict"),
    ("steps not a list", {"steps": {"a": 1}}, "'steps' list"),
    ("not a dict", [1, 2], "'steps' list"),
    ("unknown format", {"format": "restore3d-pipeline/9", "steps": []}, "is not 'restore3d-pipeline/1'"),
    ("unknown stage", {"steps": [{"name": "m", "stage": "Magic"}]}, "unknown stage type 'Magic'"),
    ("step not a dict", {"steps": ["rl"]}, "must be a dict with 'name', 'stage'"),
]


@pytest.mark.parametrize("label,spec,match", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_pipeline_descriptions_refused_at_load(label, spec, match):
    """A bad pipeline JSON fails when loaded, naming the step and parameter, not two stages later."""
    with pytest.raises(ValueError, match=match):
        r3.Pipeline.from_dict(spec)


def test_params_null_means_defaults():
    """``"params": null`` in a hand-written JSON gives the stage's defaults."""
    pipe = r3.Pipeline.from_dict(_rl_spec(None))
    assert pipe["rl"].iterations == r3.RichardsonLucy().iterations


def test_set_params_validates():
    """set_params checks types at once."""
    pipe = r3.default_pipeline(refiner=False)
    with pytest.raises(ValueError, match="'iterations' must be int"):
        pipe.set_params(rl__iterations="ten")


def test_newer_pipeline_file_warns(caplog):
    """A pipeline written by a newer restore3d loads with a warning that defaults may differ."""
    spec = dict(_rl_spec({}), restore3d_version="99.0.0")
    with caplog.at_level(logging.WARNING):
        r3.Pipeline.from_dict(spec)
    assert "newer than this one" in caplog.text


def test_pipeline_json_carries_its_format(tmp_path):
    """Saved pipelines carry a schema version; files without one (older) still load."""
    path = r3.default_pipeline(refiner=False).save(tmp_path / "p.json")
    spec = json.loads(path.read_text())
    assert spec["format"] == "restore3d-pipeline/1"
    del spec["format"]
    assert len(r3.Pipeline.from_dict(spec)) == 4


@pytest.mark.parametrize("target,match", [("folder", "is a folder"), ("missing.json", "no such pipeline file"),
                                          ("binary.json", "cannot read|not valid JSON")])
def test_pipeline_load_bad_paths(tmp_path, target, match):
    """Loading a folder, a missing file or a binary file as a pipeline says what it is."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match=match):
        r3.Pipeline.load(tmp_path / target)


def test_pipeline_save_into_missing_folder(tmp_path):
    """Saving into a folder that does not exist is refused clearly."""
    with pytest.raises(ValueError, match="does not exist"):
        r3.default_pipeline(refiner=False).save(tmp_path / "nope" / "p.json")


# ----------------------------------------------------------------------------- chunked runs
@pytest.mark.parametrize("chunks,match", [((0, 16, 16), ">= 1"), ((-8, 16, 16), ">= 1"), ((8, 16), ">= 1"),
                                          ((8.5, 16, 16), "whole numbers")])
def test_bad_chunks_refused(sim, chunks, match):
    """Zero, negative, fractional or two chunk sizes are refused (no ZeroDivisionError inside Dask)."""
    pytest.importorskip("dask")
    from restore3d.chunked import run_chunked
    with pytest.raises(ValueError, match=match):
        run_chunked(classical(), sim.raw, spacing=SP, chunks=chunks, psf=sim.psf[4:-4])


def test_chunks_smaller_than_the_halo_are_enlarged(sim):
    """Tiny chunks are enlarged to their halo, so the result equals the whole-volume one."""
    pytest.importorskip("dask")
    from restore3d.chunked import run_chunked
    pipe = r3.Pipeline([r3.SubtractBackground(method="percentile"), r3.RichardsonLucy(iterations=5)])
    psf = sim.psf[4:-4, 8:-8, 8:-8]
    whole = np.asarray(pipe.run(sim.raw, spacing=SP, psf=psf))
    chunked = run_chunked(pipe, sim.raw, spacing=SP, chunks=(4, 8, 8), psf=psf,
                          sample_shape=sim.raw.shape).compute()
    assert np.abs(chunked - whole).max() <= 5e-3 * whole.max()


# ----------------------------------------------------------------------------- files
def test_corrupted_tiff_header(tmp_path):
    """A TIFF whose header is damaged is 'not a readable TIFF', not an IndexError."""
    path = io.save(tmp_path / "v.tif", _vol((4, 16, 16)), spacing=SP)
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\x7f"  # first IFD offset far beyond the file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a readable TIFF"):
        io.load(path)


def test_truncated_tiff(tmp_path):
    """A TIFF cut short says it is truncated, not that it is 2D."""
    path = io.save(tmp_path / "v.tif", np.random.default_rng(0).random((12, 32, 32)).astype(np.float32),
                   spacing=SP)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated|not a readable TIFF"):
        io.load(path)


@pytest.mark.parametrize("unit,expected", [("pixel", None), ("inch", None), ("cm", (3e6, 1e6, 1e6)),
                                           ("nm", (0.3, 0.1, 0.1)), ("micron", (300.0, 100.0, 100.0)),
                                           ("\\u00B5m", (300.0, 100.0, 100.0)), ("mm", (3e5, 1e5, 1e5))])
def test_imagej_units(tmp_path, unit, expected):
    """ImageJ spacings in known length units are converted to um; pixels or unknown units give no spacing."""
    path = tmp_path / "v.tif"
    tifffile.imwrite(path, _vol((4, 16, 16)), imagej=True, resolution=(1 / 100.0, 1 / 100.0),
                     metadata={"axes": "ZYX", "spacing": 300.0, "unit": unit})
    _, spacing = io.load(path)
    if expected is None:
        assert spacing is None
    else:
        np.testing.assert_allclose(spacing, expected, rtol=1e-6)


@pytest.mark.parametrize("unit,expected", [("nm", (0.3, 0.1, 0.1)), ("µm", (300.0, 100.0, 100.0)),
                                           ("pixel", None)])
def test_ome_units(tmp_path, unit, expected):
    """OME-TIFF PhysicalSize units are honoured (nm sizes are not read as um)."""
    path = tmp_path / "v.ome.tif"
    tifffile.imwrite(path, _vol((4, 16, 16)), ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 300.0, "PhysicalSizeY": 100.0, "PhysicalSizeX": 100.0,
        "PhysicalSizeZUnit": unit, "PhysicalSizeYUnit": unit, "PhysicalSizeXUnit": unit})
    _, spacing = io.load(path)
    if expected is None:
        assert spacing is None
    else:
        np.testing.assert_allclose(spacing, expected, rtol=1e-6)


def test_depth_last_mat_without_axes(tmp_path, caplog):
    """The original project's format (256 x 256 x 32, 'voxel', no metadata) is read depth-last, with a warning."""
    from scipy.io import savemat
    vol = np.random.default_rng(0).random((8, 64, 48)).astype(np.float32)
    savemat(tmp_path / "u.mat", {"voxel": np.transpose(vol, (1, 2, 0))})
    with caplog.at_level(logging.WARNING):
        out, _ = io.load(tmp_path / "u.mat")
    np.testing.assert_array_equal(out, vol)
    assert "reading it as depth" in caplog.text
    out_zyx, _ = io.load(tmp_path / "u.mat", axes="zyx")  # the user's explicit order wins
    assert out_zyx.shape == (64, 48, 8)


def test_bad_stored_spacing_is_ignored_for_override(tmp_path, caplog):
    """A .mat with spacing [0, 0.1, 0.1] loads without spacing (warning naming the file), so --spacing can fix it."""
    from scipy.io import savemat
    savemat(tmp_path / "s.mat", {"volume": _vol((8, 16, 16)), "spacing": np.array([0.0, 0.1, 0.1])})
    with caplog.at_level(logging.WARNING):
        _, spacing = io.load(tmp_path / "s.mat")
    assert spacing is None and "s.mat" in caplog.text


def test_plain_h5py_mat(tmp_path):
    """An HDF5 .mat written by plain h5py (no MATLAB header, C order) loads as written."""
    import h5py
    vol = np.random.default_rng(0).random((6, 20, 24)).astype(np.float32)
    with h5py.File(tmp_path / "h.mat", "w") as fh:
        fh["volume"] = vol
    out, _ = io.load(tmp_path / "h.mat")
    np.testing.assert_array_equal(out, vol)


def _checkpoint(tmp_path):
    from restore3d.refiner import UNetConfig, build_model, save_checkpoint
    return save_checkpoint(tmp_path / "m", build_model(UNetConfig(base_channels=2)), {})


@pytest.mark.parametrize("damage,match", [
    ("truncate pt", "cannot be loaded|SHA-256"), ("flip pt header", "cannot be loaded|SHA-256"),
    ("truncate pt, update sha", "cannot be loaded"), ("no sha256", r"lacks \['sha256'\]"),
    ("no architecture", r"lacks \['architecture'\]"), ("json not json", "not valid JSON"),
    ("wrong format", "not a restore3d refiner checkpoint")])
def test_damaged_checkpoints(tmp_path, damage, match):
    """A damaged checkpoint is refused in one line, never with a torch unpickling traceback."""
    from restore3d.refiner.checkpoint import load_checkpoint, sha256_of
    js = _checkpoint(tmp_path)
    pt = js.with_suffix(".pt")
    meta = json.loads(js.read_text())
    if damage.startswith("truncate pt"):
        pt.write_bytes(pt.read_bytes()[:200])
        if "update" in damage:
            meta["sha256"] = sha256_of(pt)
    elif damage == "flip pt header":
        data = bytearray(pt.read_bytes())
        data[:4] = b"\x00\x00\x00\x00"
        pt.write_bytes(bytes(data))
    elif damage == "no sha256":
        del meta["sha256"]
    elif damage == "no architecture":
        del meta["architecture"]
    elif damage == "wrong format":
        meta["format"] = "other/1"
    if damage == "json not json":
        js.write_text("{oops")
    else:
        js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        load_checkpoint(js)


def test_output_permissions_follow_the_umask(tmp_path):
    """Outputs get the permissions an ordinary write gives (not the 0600 of a temporary file),
    and overwriting keeps the replaced file's mode."""
    old = os.umask(0o022)
    try:
        path = io.save(tmp_path / "v.tif", _vol((4, 16, 16)))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.chmod(path, 0o664)
        io.save(path, _vol((4, 16, 16)))
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
        table = io.write_table(tmp_path / "t.csv", np.zeros(2, [("a", "f8")]))
        assert stat.S_IMODE(table.stat().st_mode) == 0o644
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- command line
@pytest.fixture
def stack(tmp_path, sim):
    return io.save(tmp_path / "in.tif", sim.raw, spacing=SP)


def _cli(argv, capsys):
    code = cli_main(argv)
    err = capsys.readouterr().err
    return code, err


CLI_CASES = [
    ("--save-psf over the output", ["OUT", "--save-psf", "OUT"], "given both as --save-psf and as output"),
    ("--save-psf over the input", ["OUT", "--save-psf", "IN"], "refusing to overwrite the input|given both"),
    ("--psf is the output", ["OUT", "--psf", "OUT"], "given both as --psf and as output"),
    ("device tpu0", ["OUT", "--device", "tpu0"], "must be 'cpu', 'cuda' or 'cuda:N'"),
    ("chunks zero", ["OUT", "--chunks", "0", "16", "16"], ">= 1"),
    ("chunks negative", ["OUT", "--chunks", "-8", "16", "16"], ">= 1"),
    ("memory budget negative", ["OUT", "--memory-budget", "-1"], "--memory-budget must be"),
    ("spacing in pixels", ["OUT", "--spacing", "100", "100", "100"], "not a light microscope's voxel size"),
    ("missing folder", ["NOPE/out.tif"], "does not exist"),
    ("output is a folder", ["DIR/x.tif/"], "does not exist|is a folder"),
    ("config iterations text", ["OUT", "--config", "BADCFG"], "'iterations' must be int"),
    ("multi-bead psf", ["OUT", "--psf", "TWO"], "separate bright spots"),
]


@pytest.mark.parametrize("label,args,match", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_in_one_line_before_work(tmp_path, stack, capsys, label, args, match):
    """The command line refuses bad requests with one line and exit 2, before any work, writing nothing."""
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps(_rl_spec({"iterations": "ten"})))
    two = io.save(tmp_path / "two.tif", _two_beads(), spacing=SP)
    subs = {"OUT": str(tmp_path / "out.tif"), "IN": str(stack), "BADCFG": str(bad_cfg), "TWO": str(two),
            "NOPE/out.tif": str(tmp_path / "nope" / "out.tif"), "DIR/x.tif/": str(tmp_path / "x.tif" / "y.tif")}
    argv = ["run", str(stack)] + [subs.get(a, a) for a in args] + ["--quiet"]
    code, err = _cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    import re
    assert re.search(match, err), err
    assert not (tmp_path / "out.tif").exists()


def test_cli_cuda_without_cuda(tmp_path, stack, capsys):
    """--device cuda on a machine without CUDA fails before the pipeline runs."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = _cli(["run", str(stack), str(tmp_path / "o.tif"), "--device", "cuda", "--quiet"], capsys)
    assert code == 2 and "no usable CUDA GPU" in err


def test_cli_read_only_folder(tmp_path, stack, capsys):
    """An output folder that cannot be written is reported before the work, naming the folder."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = _cli(["run", str(stack), str(ro / "o.tif"), "--quiet"], capsys)
    finally:
        ro.chmod(0o755)
    assert code == 2 and "cannot write into" in err


def test_cli_pixel_unit_tiff_needs_spacing(tmp_path, capsys):
    """A TIFF in pixel units has no spacing: the command asks for --spacing instead of assuming 1 um."""
    path = tmp_path / "px.tif"
    tifffile.imwrite(path, _vol((8, 32, 32)), imagej=True, resolution=(1.0, 1.0),
                     metadata={"axes": "ZYX", "spacing": 1.0, "unit": "pixel"})
    code, err = _cli(["run", str(path), str(tmp_path / "o.tif"), "--no-refiner", "--quiet"], capsys)
    assert code == 2 and "--spacing" in err


def test_cli_corrupted_input_one_line(tmp_path, capsys):
    """A corrupted input file ends with one line, no traceback."""
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 40)
    code, err = _cli(["run", str(path), str(tmp_path / "o.tif"), "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and "not a readable TIFF" in err
