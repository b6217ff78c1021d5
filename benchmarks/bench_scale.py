"""Scaling: stage times and memory at real sizes, chunked vs whole volume, peak memory, batch throughput.

Usage::

    python benchmarks/bench_scale.py stages [--work /tmp/r3-scale]   # stage table at 256^2, 512^2, 1024^2
    python benchmarks/bench_scale.py big                             # 71 x 1024 x 1024 uint8, default budget
    python benchmarks/bench_scale.py all [--work /tmp/r3-scale]
    python benchmarks/bench_scale.py memory --shape 64 1024 1024   # one measurement (run in a fresh process)
    python benchmarks/bench_scale.py network                       # the refiner's network: slabs vs whole levels

Every size runs in a fresh process, so peak memory is that size's own.
Peak RSS per stage is the process's high-water mark during the stage
(Linux: reset through /proc/self/clear_refs before each stage).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import machine, table

SP = (0.3, 0.1, 0.1)


def seams():
    import restore3d as r3
    from restore3d.chunked import run_chunked
    sim = r3.simulate.simulate_beads((32, 256, 256), SP, seed=3)
    rows = []
    for name, pipe in (("background -> PSF -> RL (10 it)", r3.default_pipeline(refiner=False)),
                       ("default (+ refiner)", r3.default_pipeline())):
        t0 = time.perf_counter()
        whole = run_chunked(pipe, sim.raw, spacing=SP, chunks=(32, 256, 256)).compute(scheduler="threads")
        t_whole = time.perf_counter() - t0
        for halo in ((0, 16, 16), (0, 32, 32), None):
            t0 = time.perf_counter()
            out = run_chunked(pipe, sim.raw, spacing=SP, chunks=(32, 128, 128), halo=halo).compute(
                scheduler="threads", num_workers=1)
            dt = time.perf_counter() - t0
            d = np.abs(out - whole)[2:-2, 8:-8, 8:-8]
            rows.append({"pipeline": name, "halo (z, y, x)": str(halo or "auto"),
                         "max |chunked - whole| / max": float(d.max() / whole.max()),
                         "chunked s (4 chunks)": dt, "whole s": t_whole})
    return rows


def render_seams():
    """The rendering refiner chunk-wise (128 x 128 chunks, automatic halo) against the whole volume."""
    import restore3d as r3
    from restore3d import metrics
    from restore3d.chunked import run_chunked
    sim = r3.simulate.simulate_beads((24, 384, 384), SP, n_beads=150, flux=6000, seed=8)
    pipe = r3.Pipeline([r3.SubtractBackground(method="percentile"), r3.EstimatePSF(),
                        r3.RichardsonLucy(iterations=5), r3.Refiner.pretrained("pretrained-render", precision="fp32")])
    rows = []
    whole = None
    for label, chunks in (("whole", (24, 384, 384)), ("chunks of 128 x 128", (24, 128, 128))):
        out = run_chunked(pipe, sim.raw, spacing=SP, chunks=chunks, sample_shape=(24, 256, 256)).compute(
            scheduler="threads", num_workers=1)
        whole = out if whole is None else whole
        d = np.abs(out - whole)[:, 8:-8, 8:-8] / whole.max()
        m = metrics.evaluate(out, target=sim.target, truth=sim.truth, spacing=SP)
        rows.append({"run": label, "max abs diff / max": f"{float(d.max()):.1e}",
                     "99.99th pct abs diff / max": f"{float(np.quantile(d, 0.9999)):.1e}",
                     "elongation": m["elongation"], "nrmse_si": m["nrmse_si"], "ap": m["ap"]})
    return rows


def make_input(path, shape, chunks=(32, 256, 256)):
    """A large bead volume written block by block (never whole in memory)."""
    import dask.array as da
    import restore3d as r3

    def block(block_id=None):
        seed = hash(block_id) % (2 ** 31)
        size = tuple(min(c, n - i * c) for c, n, i in zip(chunks, shape, block_id))
        return r3.simulate.simulate_beads(size, SP, seed=seed).raw

    arr = da.map_blocks(block, dtype=np.float32, chunks=tuple(
        tuple(min(c, n - i) for i in range(0, n, c)) for c, n in zip(chunks, shape)))
    r3.io.write_zarr(path, arr, spacing=SP)


def memory_one(shape, work, chunks, workers):
    """Run in a fresh process: chunked default pipeline (no refiner) zarr -> zarr; print peak RSS."""
    import dask
    import restore3d as r3
    from restore3d.chunked import run_chunked
    work = Path(work)
    src = work / f"in_{'x'.join(map(str, shape))}.zarr"
    if not src.exists():
        with dask.config.set(scheduler="threads", num_workers=1):
            make_input(src, shape)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    arr, sp = r3.io.open_zarr(src)
    t0 = time.perf_counter()
    out = run_chunked(r3.default_pipeline(refiner=False), arr, spacing=sp, chunks=chunks)
    with dask.config.set(scheduler="threads", num_workers=workers):
        r3.io.write_zarr(work / "out.zarr", out, spacing=sp)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"shape": shape, "chunks": chunks, "workers": workers, "seconds": dt,
                      "peak_rss_mb": peak / 1024, "rss_before_run_mb": base / 1024,
                      "volume_mb": int(np.prod(shape)) * 4 / 2 ** 20}))


def memory(work):
    rows = []
    for shape in ((64, 1024, 1024), (128, 1024, 1024)):
        r = subprocess.run([sys.executable, __file__, "memory", "--shape", *map(str, shape), "--work", work],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append({"volume": "x".join(map(str, shape)), "volume MB": res["volume_mb"],
                     "chunks": "x".join(map(str, res["chunks"])), "dask threads": res["workers"],
                     "seconds": res["seconds"], "peak RSS MB": res["peak_rss_mb"]})
    return rows


def throughput(work, n_files=8):
    import restore3d as r3
    from restore3d.batch import restore_files
    work = Path(work)
    src = work / "batch_in"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        p = src / f"v{i}.tif"
        if not p.exists():
            r3.io.save(p, r3.simulate.simulate_beads((32, 256, 256), SP, seed=50 + i).raw, spacing=SP)
    files = sorted(str(p) for p in src.glob("*.tif"))
    rows = []
    for label, spec in (("background -> PSF -> RL", r3.default_pipeline(refiner=False).to_dict()),
                        ("default (+ refiner)", r3.default_pipeline().to_dict())):
        for workers in (1, 2):
            out = work / f"batch_out_{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            res = restore_files(files, out, spec, workers=workers, threads_per_worker=2 // workers, progress=False)
            dt = time.perf_counter() - t0
            ok = sum(r["status"] == "ok" for r in res)
            rows.append({"pipeline": label, "workers x threads": f"{workers} x {2 // workers}", "files": ok,
                         "seconds (incl. cluster start)": dt, "volumes per minute": 60 * ok / dt})
    return rows


#: The stage table's volume: widefield NA 0.95 air, 8-bit, 40 beads per 512 x 512 field (a user's typical stack).
FIELD = dict(spacing=(0.3, 0.108, 0.108), bead_diameter=0.2, flux=40000.0,
             psf={"model": "widefield", "na": 0.95, "wavelength": 0.6, "n_immersion": 1.0},
             ambient=dict(offset=2.0, level=8.0, strength=0.5), read_noise=1.0,
             detector=dict(bits=8, gain=0.5, floor=0.0))


def field(work, shape=(34, 1024, 1024), beads_per_512=40):
    """The full field (cached as .npy); smaller sizes are central crops of it."""
    import restore3d as r3
    path = Path(work) / f"field_{'x'.join(map(str, shape))}.npy"
    if not path.exists():
        n = int(round(beads_per_512 * shape[1] * shape[2] / 512 ** 2))
        sim = r3.simulate.simulate_beads(shape, n_beads=n, seed=11, **FIELD)
        np.save(path, sim.raw.astype(np.uint8))
    return path


def _reset_peak():
    """Reset the process's peak RSS (Linux); False where it cannot be."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stages_one(work, size, peers=True, refiner=True):
    """Run in a fresh process: the default pipeline stage by stage on a central size x size crop."""
    import gc
    import restore3d as r3
    from restore3d import RunContext
    from restore3d.memory import release_free_memory
    full = np.load(field(work), mmap_mode="r")
    y0 = (full.shape[1] - size) // 2
    vol = np.ascontiguousarray(full[:, y0:y0 + size, y0:y0 + size]).astype(np.float32)
    spacing = FIELD["spacing"]
    pipe = r3.default_pipeline(refiner=refiner)
    ctx = RunContext(spacing=spacing, rng=np.random.default_rng(0))
    rows = []
    gc.collect()
    base = _peak_mb() if _reset_peak() else None
    total = 0.0
    x = vol
    for name, stage in pipe.steps:
        _reset_peak()
        t0 = time.perf_counter()
        ctx.step = name
        x = np.ascontiguousarray(stage(x, ctx), dtype=np.float32)
        release_free_memory()  # as Pipeline.run does after each stage
        dt = time.perf_counter() - t0
        ctx.history.append(type(stage).__name__)
        total += dt
        rows.append({"stage": name, "seconds": dt, "peak_rss_mb": _peak_mb()})
    rows.append({"stage": "total", "seconds": total, "peak_rss_mb": max(r["peak_rss_mb"] for r in rows)})
    psf = ctx.psf
    bg = r3.background.subtract_background(vol, spacing)
    if peers:
        from skimage.restoration import richardson_lucy as sk_rl
        _reset_peak()
        t0 = time.perf_counter()
        sk_rl(bg, psf, num_iter=10, clip=False)
        rows.append({"stage": "peer: skimage richardson_lucy (10 it)", "seconds": time.perf_counter() - t0,
                     "peak_rss_mb": _peak_mb()})
        try:
            import RedLionfishDeconv as rlf
            _reset_peak()
            t0 = time.perf_counter()
            rlf.doRLDeconvolutionFromNpArrays(bg, psf, niter=10, method="cpu")
            rows.append({"stage": "peer: RedLionfish cpu (10 it)", "seconds": time.perf_counter() - t0,
                         "peak_rss_mb": _peak_mb()})
        except ImportError:
            rows.append({"stage": "peer: RedLionfish (not installed)", "seconds": float("nan"),
                         "peak_rss_mb": float("nan")})
    print(json.dumps({"size": size, "shape": list(vol.shape), "voxels": int(vol.size),
                      "volume_mb": vol.nbytes / 2 ** 20, "base_mb": base,
                      "n_beads_psf": ctx.info.get("psf", {}).get("n_beads"), "rows": rows}))


def stage_table(work, sizes=(256, 512, 1024), refiner=None):
    field(work)
    runs = {}
    for size in sizes:
        extra = ["--refiner", refiner] if refiner else []
        r = subprocess.run([sys.executable, __file__, "stages", "--size", str(size), "--work", work] + extra,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        runs[size] = json.loads(r.stdout.strip().splitlines()[-1])
    ref = runs[sizes[0]]
    rows = []
    for i, row in enumerate(ref["rows"]):
        out = {"stage": row["stage"]}
        for size in sizes:
            run = runs[size]
            r = run["rows"][i]
            out[f"{size}^2 s"] = r["seconds"]
            out[f"{size}^2 peak MB"] = r["peak_rss_mb"]
            if size != sizes[0]:
                out[f"{size}^2 s/voxel vs {sizes[0]}^2"] = (r["seconds"] / run["voxels"]) / (
                    row["seconds"] / ref["voxels"])
        rows.append(out)
    info = {s: (runs[s]["shape"], round(runs[s]["volume_mb"], 1), runs[s]["n_beads_psf"]) for s in sizes}
    return rows, info


def big_one(work, shape=(71, 1024, 1024), budget=None, refiner=True):
    """Run in a fresh process: the default pipeline on a uint8 volume of ``shape`` (chunked when over budget).

    ``refiner``: as ``default_pipeline(refiner=...)`` (True: the default weights).
    """
    import restore3d as r3
    path = Path(work) / f"big_{'x'.join(map(str, shape))}.npy"
    if not path.exists():
        spacing = (0.1, 0.0443, 0.0443)
        blocks = []
        for i, y in enumerate(range(0, shape[1], 512)):
            row = []
            for j, x in enumerate(range(0, shape[2], 512)):
                sim = r3.simulate.simulate_beads((shape[0], min(512, shape[1] - y), min(512, shape[2] - x)),
                                                 spacing, n_beads=60, seed=100 + 10 * i + j,
                                                 **{k: v for k, v in BIG.items() if k != "spacing"})
                row.append(sim.raw.astype(np.uint8))
            blocks.append(np.concatenate(row, axis=2))
        np.save(path, np.concatenate(blocks, axis=1))
    vol = np.load(path)
    _reset_peak()  # the peak of this run, not of making the volume
    base = _peak_mb()
    t0 = time.perf_counter()
    kw = {} if budget is None else {"memory_budget": budget}
    res = r3.default_pipeline(refiner=refiner).run(vol, spacing=BIG["spacing"], **kw)
    dt = time.perf_counter() - t0
    print(json.dumps({"shape": list(shape), "seconds": dt, "peak_rss_mb": _peak_mb(), "rss_after_load_mb": base,
                      "uint8_mb": vol.nbytes / 2 ** 20, "chunked": res.info.get("chunked"),
                      "output_max": float(res.volume.max())}))


#: The big volume: leica-like confocal, 8-bit, NA 1.4 oil, 0.1 / 0.044 um.
BIG = dict(spacing=(0.1, 0.0443, 0.0443), bead_diameter=0.17, flux=60000.0,
           psf={"model": "confocal", "na": 1.4, "wavelength": 0.62, "excitation": 0.514, "n_immersion": 1.518,
                "n_sample": 1.40, "depth": 3.0},
           ambient=dict(offset=0.5, level=1.0, strength=0.3), read_noise=0.5,
           detector=dict(bits=8, gain=1.0, floor=1.0))


#: The refiner's network alone on the working grid of a 34 x 512 x 512 field (64 x 336 x 336), and its stage on
#: that field's RL output with two tile sizes, each in a fresh process.
NETWORK_RUNS = {
    "network, each level whole (one slab per level, finest skip kept: the pass before slabs)": ("net", "whole"),
    "network, levels in slabs, output over the input (default, as inference runs it)": ("net", "slabs"),
    "refiner stage, 512^2 field, tiles of <= 4 M voxels": ("stage", (512, 4_000_000, False)),
    "refiner stage, 512^2 field, tiles of <= 8 M voxels (default: one tile)": ("stage", (512, 8_000_000, False)),
    "refiner stage frozen as in chunk-wise runs (no self-check, kernel fixed), 1024^2 field, 8 M tiles":
        ("stage", (1024, 8_000_000, True)),
}


def network_one(work, name):
    """Run in a fresh process: one row of :data:`NETWORK_RUNS` (seconds, peak RSS above the start)."""
    import torch

    import restore3d as r3
    from restore3d import RunContext
    from restore3d.refiner import Refiner
    from restore3d.refiner.model import fold_batchnorm
    from restore3d.refiner.streaming import forward_by_slabs
    kind, arg = NETWORK_RUNS[name]
    if kind == "net":
        model = fold_batchnorm(Refiner().network()[0]).to(memory_format=torch.channels_last_3d)
        shape = (64, 336, 336)
        x = torch.rand((1, 1) + shape, generator=torch.Generator().manual_seed(0))
        x = x.contiguous(memory_format=torch.channels_last_3d)
        huge = {"overwrite_input": True} if arg == "slabs" else {"slab_values": 1 << 60, "least_width": 1 << 20,
                                                                 "keep_finest": True}
        with torch.no_grad():
            warm = {k: v for k, v in huge.items() if k != "overwrite_input"}  # (x's corner is a view)
            forward_by_slabs(model, x[:, :, :8, :32, :32], channels_last=True, **warm)  # oneDNN's first call
            _reset_peak()
            base = _peak_mb()
            t0 = time.perf_counter()
            forward_by_slabs(model, x, channels_last=True, **huge)
        voxels = float(np.prod(shape))
        estimate = float("nan")
    else:
        size, max_voxels, frozen = arg
        cache = Path(work) / f"rl_{size}.npz"
        if not cache.exists():
            full = np.load(field(work), mmap_mode="r")
            y0 = (full.shape[1] - size) // 2
            vol = np.ascontiguousarray(full[:, y0:y0 + size, y0:y0 + size]).astype(np.float32)
            res = r3.classical_stages().run(vol, spacing=FIELD["spacing"], keep=("background",))
            np.savez(cache, rl=np.asarray(res), bg=res.intermediates["background"], psf=res.psf)
        d = np.load(cache)
        ctx = RunContext(spacing=FIELD["spacing"], psf=d["psf"], background_free=d["bg"],
                         history=["SubtractBackground", "EstimatePSF", "RichardsonLucy"])
        stage = Refiner(max_voxels=max_voxels)
        rl = d["rl"]
        if frozen:  # as chunk-wise runs use it: the values measured once on a central sample
            c = [(n - m) // 2 for n, m in zip(rl.shape, (rl.shape[0], 256, 256))]
            stage = stage.freeze(rl[:, c[1]:c[1] + 256, c[2]:c[2] + 256], ctx)
        stage.network()
        estimate = stage.memory_bytes(rl.shape, FIELD["spacing"], d["psf"]) / 2 ** 20
        _reset_peak()
        base = _peak_mb()
        t0 = time.perf_counter()
        stage(rl, ctx)
        voxels = float("nan")
    dt = time.perf_counter() - t0
    above = _peak_mb() - base
    print(json.dumps({"run": name, "seconds": dt, "peak_above_start_mb": above, "estimate_mb": estimate,
                      "bytes_per_voxel": above * 2 ** 20 / voxels}))


def network_table(work):
    rows = []
    for name in NETWORK_RUNS:
        r = subprocess.run([sys.executable, __file__, "network", "--run", name, "--work", work],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("all", "stages", "big", "seams", "render-seams", "memory",
                                           "throughput", "network"))
    ap.add_argument("--run", default=None, help="network: one run (in a fresh process)")
    ap.add_argument("--size", type=int, default=None, help="stages: one size (run in a fresh process)")
    ap.add_argument("--budget", type=float, default=None, help="big: memory budget in GB")
    ap.add_argument("--shape", nargs=3, type=int, default=None)
    ap.add_argument("--chunks", nargs=3, type=int, default=(32, 256, 256))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="/tmp/r3-scale")
    ap.add_argument("--refiner", default=None, help="stages, big: a shipped refiner other than the default's")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.what == "memory" and args.shape:
        memory_one(tuple(args.shape), args.work, tuple(args.chunks), args.workers)
        return
    if args.what == "stages" and args.size:
        stages_one(args.work, args.size, refiner=args.refiner or True)
        return
    if args.what == "network" and args.run:
        network_one(args.work, args.run)
        return
    if args.what == "big" and args.shape:
        big_one(args.work, tuple(args.shape), args.budget, refiner=args.refiner or True)
        return
    print(f"machine: {machine()}\n")
    if args.what in ("all", "stages"):
        rows, info = stage_table(args.work, refiner=args.refiner)
        print("## Stage times and peak RSS (default pipeline; crops of one 34 x 1024 x 1024 8-bit widefield field, "
              "40 beads per 512^2; each size in a fresh process)\n")
        print("sizes: " + "; ".join(f"{s}^2: shape {v[0]}, {v[1]} MB float32, PSF from {v[2]} beads"
                                    for s, v in info.items()) + "\n")
        print(table(rows, list(rows[0])))
    if args.what == "big":
        shape = (71, 1024, 1024)
        cmd = [sys.executable, __file__, "big", "--shape", *map(str, shape), "--work", args.work]
        if args.budget is not None:
            cmd += ["--budget", str(args.budget)]
        if args.refiner:
            cmd += ["--refiner", args.refiner]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        print("## The default pipeline on 71 x 1024 x 1024 uint8 (leica-like confocal)\n")
        print(r.stdout.strip().splitlines()[-1])
    if args.what == "network":
        print("## The refiner's network (float32, 2 threads) and its stage at 512^2\n")
        print(table(network_table(args.work), ["run", "seconds", "peak_above_start_mb", "estimate_mb",
                                               "bytes_per_voxel"]))
        return
    if args.what == "render-seams":
        rows = render_seams()
        print(table(rows, list(rows[0])))
        return
    if args.what in ("all", "seams"):
        print("## Chunked vs whole volume (32 x 256 x 256, chunks 32 x 128 x 128)\n")
        print(table(seams(), ["pipeline", "halo (z, y, x)", "max |chunked - whole| / max", "chunked s (4 chunks)",
                              "whole s"]))
    if args.what in ("all", "memory"):
        print("\n## Peak memory, chunked zarr -> zarr, background -> PSF -> RL (each in a fresh process)\n")
        print(table(memory(args.work), ["volume", "volume MB", "chunks", "dask threads", "seconds", "peak RSS MB"]))
    if args.what in ("all", "throughput"):
        print("\n## Batch throughput on a LocalCluster (8 files of 32 x 256 x 256, 2 cores)\n")
        print(table(throughput(args.work), ["pipeline", "workers x threads", "files",
                                            "seconds (incl. cluster start)", "volumes per minute"]))


if __name__ == "__main__":
    main()
