"""Scaling: chunked vs whole-volume (seams, time, memory), peak memory vs volume size, batch throughput.

Usage::

    python benchmarks/bench_scale.py all [--work /tmp/r3-scale]
    python benchmarks/bench_scale.py memory --shape 64 1024 1024   # one measurement (run in a fresh process)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("all", "seams", "memory", "throughput"))
    ap.add_argument("--shape", nargs=3, type=int, default=None)
    ap.add_argument("--chunks", nargs=3, type=int, default=(32, 256, 256))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default="/tmp/r3-scale")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.what == "memory" and args.shape:
        memory_one(tuple(args.shape), args.work, tuple(args.chunks), args.workers)
        return
    print(f"machine: {machine()}\n")
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
