"""Many volumes on a ``dask.distributed`` cluster: one task per file, failures reported, resumable.

The pipeline description is scattered once to every worker; each task
loads its file, restores it and writes the result atomically (temporary
file + rename), so an existing output is always complete and a rerun skips
it. A file that fails is reported with its error without stopping the others.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["restore_file", "restore_files", "output_path"]


def output_path(in_path, out_dir) -> Path:
    """Where the result of ``in_path`` goes in ``out_dir`` (same name and format)."""
    return Path(out_dir) / Path(in_path).name


def restore_file(in_path, out_path, pipeline_spec: dict, options: dict) -> dict:
    """Restore one file (runs on a worker); returns a status dict, never raises."""
    t0 = time.perf_counter()
    try:
        from .files import restore_file as restore
        from .pipeline import Pipeline
        threads = options.get("threads")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        restore(in_path, out_path, Pipeline.from_dict(pipeline_spec), axes=options.get("axes"),
                variable=options.get("variable"), spacing=options.get("spacing"), device=options.get("device"),
                seed=options.get("seed", 0), memory_budget=options.get("memory_budget", "auto"))
        return {"file": str(in_path), "output": str(out_path), "status": "ok",
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # reported, the batch goes on
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return {"file": str(in_path), "output": str(out_path), "status": "failed",
                "error": f"{type(exc).__name__}: {msg}", "seconds": time.perf_counter() - t0}


def restore_files(inputs, out_dir, pipeline_spec: dict, *, scheduler: str | None = None,
                  workers: int | None = None, threads_per_worker: int = 1, overwrite: bool = False,
                  options: dict | None = None, progress: bool = True) -> list[dict]:
    """Restore many files on a Dask cluster.

    Parameters
    ----------
    inputs : list of paths
    out_dir : path
        Created if missing; each result keeps its input's name and format.
    pipeline_spec : dict
        :meth:`restore3d.Pipeline.to_dict` of the pipeline to run.
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler; default a
        ``LocalCluster`` on this machine (loopback only).
    workers : int, optional
        Worker processes of the local cluster (default 1).
    threads_per_worker : int
        Torch threads per worker.
    overwrite : bool
        Redo files whose output exists (default: skip them; outputs are
        written atomically, so an existing one is complete).
    options : dict
        ``axes``, ``variable``, ``spacing``, ``device``, ``seed`` for every file.

    Returns
    -------
    list of dict
        One status per input: ``status`` is ``"ok"``, ``"skipped"`` or ``"failed"`` (with ``error``).
    """
    from dask.distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = dict(options or {}, threads=threads_per_worker)
    results, todo = [], []
    for p in inputs:
        out = output_path(p, out_dir)
        if Path(p).resolve() == out.resolve():
            results.append({"file": str(p), "output": str(out), "status": "failed",
                            "error": "output would overwrite the input; choose another folder"})
        elif out.exists() and not overwrite:
            results.append({"file": str(p), "output": str(out), "status": "skipped"})
        else:
            todo.append((p, out))
    if not todo:
        return results
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    try:
        spec = client.scatter(pipeline_spec, broadcast=True)
        futures = [client.submit(restore_file, str(p), str(o), spec, opts, pure=False) for p, o in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="volumes", disable=not progress):
            res = fut.result()
            results.append(res)
            if res["status"] == "failed":
                log.warning("%s failed: %s", res["file"], res["error"])
            else:
                log.info("%s -> %s (%.1f s)", res["file"], res["output"], res["seconds"])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def run_batch(inputs, args, pipeline_spec) -> int:
    """The CLI's batch mode: prints a summary, returns 0 (all done), 3 (some failed) or 2 (nothing to do)."""
    import sys
    if not inputs:
        print(f"restore3d: error: no input matches {args.input!r}", file=sys.stderr)
        return 2
    out_dir = Path(args.output)
    if out_dir.suffix and not out_dir.is_dir():
        print(f"restore3d: error: {out_dir}: for several inputs the output must be a folder", file=sys.stderr)
        return 2
    from .files import cli_memory_budget
    options = {"axes": args.axes, "variable": args.variable, "spacing": args.spacing, "device": args.device,
               "memory_budget": cli_memory_budget(getattr(args, "memory_budget", None))}
    results = restore_files(inputs, out_dir, pipeline_spec, scheduler=args.scheduler, workers=args.workers,
                            overwrite=args.overwrite, options=options, progress=not args.quiet)
    ok = sum(r["status"] == "ok" for r in results)
    skipped = sum(r["status"] == "skipped" for r in results)
    failed = [r for r in results if r["status"] == "failed"]
    print(f"{ok} restored, {skipped} skipped (output exists), {len(failed)} failed")
    for r in failed:
        print(f"  {r['file']}: {r['error']}")
    return 3 if failed else 0
