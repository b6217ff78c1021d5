import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("dask")
pytest.importorskip("distributed")
pytest.importorskip("zarr")

import restore3d as r3  # noqa: E402
from restore3d import io  # noqa: E402
from restore3d.chunked import run_chunked  # noqa: E402

SP = (0.3, 0.1, 0.1)


@pytest.fixture(scope="module")
def sim():
    return r3.simulate.simulate_beads((24, 160, 160), SP, n_beads=40, flux=6000, seed=8)


def test_chunked_equals_whole(sim):
    """Away from the outer border, chunk-wise restoration differs from whole-volume by < 1 % of the maximum."""
    pipe = r3.default_pipeline(refiner=False)
    whole = np.asarray(pipe.run(sim.raw, spacing=SP))
    out = run_chunked(pipe, sim.raw, spacing=SP, chunks=(24, 64, 64), sample_shape=(24, 160, 160))
    chunked = out.compute(scheduler="threads", num_workers=1)
    assert chunked.shape == whole.shape and chunked.dtype == np.float32
    diff = np.abs(chunked - whole)[:, 8:-8, 8:-8]
    assert diff.max() < 0.01 * whole.max()


def test_chunked_with_refiner_and_global_values(sim):
    """The refiner and the percentile background run chunk-wise with values measured once."""
    pipe = r3.Pipeline([r3.SubtractBackground(method="percentile"), r3.EstimatePSF(),
                        r3.RichardsonLucy(iterations=5), r3.Refiner.pretrained(precision="fp32")])
    whole_frozen = run_chunked(pipe, sim.raw, spacing=SP, chunks=(24, 160, 160),
                               sample_shape=(24, 160, 160)).compute(scheduler="threads")
    chunked = run_chunked(pipe, sim.raw, spacing=SP, chunks=(24, 64, 64),
                          sample_shape=(24, 160, 160)).compute(scheduler="threads", num_workers=1)
    diff = np.abs(chunked - whole_frozen)[:, 8:-8, 8:-8]
    assert diff.max() < 0.01 * whole_frozen.max()


def test_fit_beads_refuses_chunks(sim):
    """FitBeads says it cannot run chunk-wise."""
    pipe = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()])
    with pytest.raises(ValueError, match="FitBeads does not run chunk-wise"):
        run_chunked(pipe, sim.raw, spacing=SP, chunks=(24, 64, 64))


def test_ome_zarr_round_trip(tmp_path, sim):
    """Zarr output carries OME-NGFF scale metadata in micrometres and reads back lazily."""
    io.write_zarr(tmp_path / "v.zarr", sim.raw, spacing=SP, chunks=(24, 64, 64))
    meta = json.loads((tmp_path / "v.zarr" / ".zattrs").read_text())
    ds = meta["multiscales"][0]["datasets"][0]
    assert ds["coordinateTransformations"][0]["scale"] == list(SP)
    assert meta["multiscales"][0]["axes"][0]["unit"] == "micrometer"
    arr, sp = io.open_zarr(tmp_path / "v.zarr")
    assert sp == SP and arr.chunksize == (24, 64, 64)
    np.testing.assert_array_equal(arr.compute(), sim.raw)


def _cli(*args):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "restore3d", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


def test_cli_zarr_to_zarr(tmp_path, sim):
    """restore3d run big.zarr out.zarr processes chunk-wise and keeps the spacing."""
    io.write_zarr(tmp_path / "in.zarr", sim.raw, spacing=SP, chunks=(24, 64, 64))
    r = _cli("run", tmp_path / "in.zarr", tmp_path / "out.zarr", "--no-refiner", "--chunks", 24, 64, 64, "--quiet")
    assert r.returncode == 0, r.stderr
    arr, sp = io.open_zarr(tmp_path / "out.zarr")
    assert arr.shape == sim.raw.shape and sp == SP


def test_batch_on_local_cluster_with_a_corrupt_file(tmp_path):
    """Two workers: good files are written, the corrupt one is reported, exit 3; a rerun skips done files."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        s = r3.simulate.simulate_beads((12, 48, 48), SP, n_beads=5, seed=i)
        io.save(src / f"v{i}.tif", s.raw, spacing=SP)
    (src / "v9.tif").write_bytes(b"not a tiff" * 100)
    cfg = tmp_path / "pipe.json"
    r3.Pipeline([r3.SubtractBackground(method="percentile")]).save(cfg)
    out = tmp_path / "out"
    r = _cli("run", f"{src}/*.tif", out, "--config", cfg, "--workers", 2, "--quiet")
    assert r.returncode == 3, r.stderr
    assert "3 restored, 0 skipped (output exists), 1 failed" in r.stdout
    assert "v9.tif" in r.stdout and "not a readable TIFF" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["v0.tif", "v1.tif", "v2.tif"]
    vol, sp = io.load(out / "v1.tif")
    assert vol.shape == (12, 48, 48) and np.allclose(sp, SP)
    r = _cli("run", f"{src}/*.tif", out, "--config", cfg, "--workers", 1, "--quiet")
    assert r.returncode == 3 and "0 restored, 3 skipped" in r.stdout


def test_memory_budget_runs_chunked_with_the_same_result(sim, caplog):
    """Above its memory budget a run goes chunk-wise by itself, says so once, and matches the whole run."""
    pipe = r3.default_pipeline(refiner=False)
    whole = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=None)
    need = pipe.memory_estimate(sim.raw.shape, sim.spacing)
    with caplog.at_level("INFO", logger="restore3d.pipeline"):
        res = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=0.6 * need / 1e9)
    plan = res.info["chunked"]
    assert plan["n_chunks"] > 1
    assert sum("restoring it in chunks" in r.message for r in caplog.records) == 1
    assert res.psf is not None and res.volume.shape == sim.raw.shape
    top = float(whole.volume.max())
    inner = (slice(2, -2), slice(16, -16), slice(16, -16))
    assert float(np.abs(res.volume - whole.volume)[inner].max()) < 0.02 * top
    # within its budget (the default, a few GB) the same run stays whole
    assert "chunked" not in pipe.run(sim.raw, spacing=sim.spacing).info


def test_stage_by_stage_run_keeps_the_history_the_refiner_checks(sim, caplog):
    """Run stage by stage in chunks, the refiner sees the stages a whole run has before it (EstimatePSF,
    done on the central block, included): no warning that it was trained after other stages."""
    pipe = r3.default_pipeline()
    need = pipe.memory_estimate(sim.raw.shape, sim.spacing, sim.psf)
    with caplog.at_level("INFO", logger="restore3d"):
        res = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=0.4 * need / 1e9)
    assert res.info["chunked"]["stagewise"]["refiner"]["n_chunks"] > 1
    assert res.info["history"] == [type(s).__name__ for _, s in pipe.steps]
    assert not any("was trained after" in r.message for r in caplog.records)


def test_memory_budget_cannot_chunk_fit_beads(sim, caplog):
    """FitBeads cannot run chunk-wise: over budget the run stays whole and warns."""
    pipe = r3.Pipeline([r3.SubtractBackground(), r3.EstimatePSF(), r3.FitBeads()])
    with caplog.at_level("WARNING", logger="restore3d.pipeline"):
        res = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=0.01)
    assert "chunked" not in res.info and res.beads is not None
    assert any("cannot run chunk-wise" in r.message for r in caplog.records)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "lots", True])
def test_memory_budget_rejects_bad_values(sim, bad):
    with pytest.raises(ValueError, match="memory_budget must be"):
        r3.default_pipeline(refiner=False).run(sim.raw, spacing=sim.spacing, memory_budget=bad)


def test_plan_chunks_fits_the_budget(sim):
    """Planned chunks fit the budget when a chunk of one halo can; smaller budgets give smaller chunks."""
    from restore3d.chunked import plan_chunks
    pipe = r3.default_pipeline(refiner=False)
    shape, halo, grid = (64, 1024, 1024), (10, 32, 32), (1, 16, 16)
    sizes = []
    for gb in (4.0, 1.0, 0.3):
        c = plan_chunks(pipe, shape, sim.spacing, sim.psf, halo, grid, gb * 1e9)
        ext = [min(n, a + 2 * h) for n, a, h in zip(shape, c, halo)]
        assert pipe.memory_estimate(ext, sim.spacing, sim.psf) + 8.0 * np.prod(ext) <= gb * 1e9
        assert all(a % g == 0 or a == n for a, g, n in zip(c, grid, shape))
        sizes.append(np.prod(c))
    assert sizes[0] > sizes[1] > sizes[2]


def test_a_budget_no_chunk_fits_still_runs_one_level_of_chunks(sim, caplog, monkeypatch):
    """Below what any chunk needs, the run takes the smallest chunks once (a chunk never re-chunks itself)."""
    pipe = r3.default_pipeline(refiner=False)
    whole = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=None)
    monkeypatch.setattr("restore3d.memory.DEFAULT_MEMORY_BUDGET_GB", 0.001)  # "auto", in every chunk too
    inner = (slice(2, -2), slice(16, -16), slice(16, -16))
    with caplog.at_level("WARNING", logger="restore3d"):
        lazy = run_chunked(pipe, sim.raw, spacing=sim.spacing, chunks="auto", memory_budget=1e6)
        out = lazy.compute(scheduler="synchronous")
    assert sum("no chunk fits the memory budget" in r.message for r in caplog.records) == 1
    assert float(np.abs(out - whole.volume)[inner].max()) < 0.02 * float(whole.volume.max())
    # in memory the run goes stage by stage: once per stage at most
    caplog.clear()
    with caplog.at_level("WARNING", logger="restore3d"):
        res = pipe.run(sim.raw, spacing=sim.spacing, memory_budget="auto")
    assert sum("no chunk fits the memory budget" in r.message for r in caplog.records) <= len(pipe.steps)
    assert res.info["chunked"]["n_chunks"] > 1
    assert float(np.abs(res.volume - whole.volume)[inner].max()) < 0.02 * float(whole.volume.max())


@pytest.mark.parametrize("bad", [((0, 0), (24, 160, 160)), ((0, -1, 0), (24, 200, 200)),
                                 ((0, 1.5, 0), (24, 200, 200)), ((0, 50, 0), (24, 200, 160)), "abc"])
def test_run_rejects_a_bad_part_of(sim, bad):
    with pytest.raises(ValueError, match="part_of must be"):
        r3.Pipeline([r3.SubtractBackground(method="percentile")]).run(sim.raw, spacing=sim.spacing, part_of=bad)


def test_memory_estimate_counts_the_refiner_with_the_psf_measured_on_a_block(sim, caplog):
    """Without a PSF the refiner's working grid counts its worst case; the run measures the PSF on a
    central block first and stays whole when the volume fits with it."""
    pipe = r3.default_pipeline()
    worst = pipe.memory_estimate(sim.raw.shape, sim.spacing)
    known = pipe.memory_estimate(sim.raw.shape, sim.spacing, sim.psf)
    assert known < 0.8 * worst  # the two estimates differ (so the test can fail)
    with caplog.at_level("INFO", logger="restore3d.pipeline"):
        res = pipe.run(sim.raw, spacing=sim.spacing, memory_budget=0.5 * (known + worst) / 1e9)
    assert "chunked" not in res.info
    assert not any("restoring it in chunks" in r.message for r in caplog.records)
