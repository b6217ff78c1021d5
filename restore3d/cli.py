"""Command line: ``restore3d run | simulate | psf | train | demo``.

Bad input ends with one line on stderr and exit status 2 (a traceback only
with ``--verbose``). Outputs are written to a temporary file in the same
folder and renamed; an existing output is kept unless ``--overwrite``, and
the input is never overwritten.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("restore3d")

EXIT_USAGE = 2
EXIT_PARTIAL = 3


class UserError(ValueError):
    """An error caused by the command's input: reported in one line, exit 2."""


# ----------------------------------------------------------------------------- helpers
def _setup_logging(args):
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("restore3d: %(message)s"))
    root = logging.getLogger("restore3d")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _check_output(path: Path, inputs, overwrite: bool, *, suffix: str | None = None):
    """Refuse to write over an input, over an existing file (without --overwrite) or into a missing folder.

    ``suffix``: the required extension (".csv", ".png"); default a volume format.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and path.resolve() == Path(src).resolve():
            raise UserError(f"{path}: refusing to overwrite the input; choose another output name")
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name")
    from ._files import check_writable
    check_writable(path)
    if suffix is not None:
        if path.suffix.lower() != suffix:
            raise UserError(f"{path}: expected a {suffix} file")
    else:
        from . import io
        io.format_of(path)


def _check_distinct(named, in_path):
    """Every file one command writes or reads must be its own: refuse two roles for one path, before work."""
    seen = {Path(in_path).resolve(): "the input"}
    for role, path in named:
        if not path:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{path}: given both as {role} and as {seen[key]}; every output needs its own file")
        seen[key] = role


def _load(path, args):
    """The input volume and its spacing (the file's, or --spacing)."""
    from .files import load_input
    loaded = load_input(path, axes=args.axes, variable=getattr(args, "variable", None),
                        spacing=getattr(args, "spacing", None))
    return loaded.volume, loaded.spacing


def _measured_psf(path):
    """A PSF file, checked and centred (:func:`restore3d.psf.given_psf`; a raw bead stack loses its offset)."""
    from .psf import given_psf
    if not Path(path).exists():
        raise UserError(f"--psf {path}: no such file")
    return given_psf(Path(path), name=f"--psf {path}")


def _pipeline(args):
    import restore3d as r3

    from .refiner import SHIPPED
    if args.config:
        pipe = r3.Pipeline.load(args.config)
    elif getattr(args, "refiner", None) in SHIPPED and not args.no_refiner:
        return r3.default_pipeline(refiner=args.refiner)
    else:
        pipe = r3.default_pipeline(refiner=not args.no_refiner)
    if args.no_refiner and "refiner" in pipe.named_steps:
        pipe["refiner"] = "passthrough"
    elif getattr(args, "refiner", None):
        if "refiner" not in pipe.named_steps:
            raise UserError(f"--refiner {args.refiner}: the pipeline of --config has no step named 'refiner'")
        pipe["refiner"] = _refiner(args.refiner)
    return pipe


def _refiner(spec):
    """``--refiner``: a shipped weight set's name or a checkpoint file."""
    from .refiner import SHIPPED, Refiner
    if spec in SHIPPED:
        return Refiner(spec)
    if not Path(spec).exists():
        raise UserError(f"--refiner {spec}: neither shipped weights ({', '.join(SHIPPED)}) nor a checkpoint file")
    try:
        return Refiner.load(spec)
    except ValueError as exc:
        raise UserError(f"--refiner {spec}: {exc}") from None


# ----------------------------------------------------------------------------- run
def _restore_one(in_path, out_path, args, pipe, psf=None):
    from .files import cli_memory_budget, restore_file
    loaded, result = restore_file(in_path, out_path, pipe, axes=args.axes, variable=args.variable,
                                  spacing=args.spacing, psf=psf, device=args.device, progress=not args.quiet,
                                  out_axes=args.out_axes, out_variable=args.out_variable,
                                  memory_budget=cli_memory_budget(args.memory_budget))
    return loaded.volume, loaded.spacing, result


def cmd_run(args):
    from . import io
    from .detect import detect_beads
    inputs = sorted(glob.glob(args.input)) if any(ch in args.input for ch in "*?[") else [args.input]
    if len(inputs) != 1 or Path(args.output).is_dir() or args.scheduler or args.workers:
        from .batch import run_batch
        return run_batch(inputs, args, pipeline_spec=_pipeline(args).to_dict())
    in_path, out_path = Path(inputs[0]), Path(args.output)
    _check_output(out_path, [in_path], args.overwrite)
    _check_distinct([("output", out_path), ("--save-psf", args.save_psf), ("--beads", args.beads),
                     ("--figure", args.figure), ("--psf", args.psf), ("--config", args.config)], in_path)
    from ._checks import as_device
    as_device(args.device)
    if args.memory_budget is not None and not (np.isfinite(args.memory_budget) and args.memory_budget >= 0):
        raise UserError(f"--memory-budget must be a number of GB >= 0 (0: never chunk), got {args.memory_budget}")
    if io.format_of(in_path) == "zarr" or args.chunks:
        return _run_chunked(in_path, out_path, args)
    for extra, suffix in ((args.save_psf, None), (args.beads, ".csv"), (args.figure, ".png")):
        if extra:
            _check_output(Path(extra), [in_path], args.overwrite, suffix=suffix)
    pipe = _pipeline(args)
    psf = _measured_psf(args.psf) if args.psf else None
    volume, spacing, result = _restore_one(in_path, out_path, args, pipe, psf=psf)
    restored = np.asarray(result)
    if args.save_psf:
        if result.psf is None:
            raise UserError("--save-psf: this pipeline produced no PSF (add EstimatePSF or pass --psf)")
        io.save(args.save_psf, result.psf, spacing=spacing)
        log.info("PSF written to %s", args.save_psf)
    if args.beads:
        table = result.beads if result.beads is not None else detect_beads(restored, spacing)
        io.write_table(args.beads, table)
        log.info("%d beads written to %s", len(table), args.beads)
    if args.figure:
        from .figures import projections_figure
        projections_figure(args.figure, {"input": volume, "restored": restored}, spacing,
                           title=f"{in_path.name}: {', '.join(n for n, s in pipe.steps if s != 'passthrough')}")
        log.info("figure written to %s", args.figure)
    return 0


def _run_chunked(in_path, out_path, args):
    """A volume larger than memory: chunk-wise with Dask, from and to Zarr."""
    import dask
    from . import io
    from .chunked import run_chunked
    if not in_path.exists():
        raise UserError(f"{in_path}: no such file")
    if io.format_of(in_path) == "zarr":
        arr, spacing = io.open_zarr(in_path)
    else:
        vol, spacing = io.load(in_path, axes=args.axes, variable=args.variable)
        arr = vol
    if args.spacing is not None:
        spacing = tuple(args.spacing)
    if spacing is None:
        from .files import NO_SPACING
        raise UserError(f"{in_path}: {NO_SPACING}")
    psf = _measured_psf(args.psf) if args.psf else None
    chunks = tuple(args.chunks) if args.chunks else (64, 256, 256)
    out = run_chunked(_pipeline(args), arr, spacing=spacing, chunks=chunks, psf=psf, device=args.device)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=args.workers or 1):
        if io.format_of(out_path) == "zarr":
            io.write_zarr(out_path, out, spacing=spacing)
        else:
            io.save(out_path, out.compute(), spacing=spacing)
    log.info("%s -> %s chunk-wise (chunks %s) in %.1f s", in_path, out_path, chunks, time.perf_counter() - t0)
    return 0


# ----------------------------------------------------------------------------- simulate
def cmd_simulate(args):
    from . import io
    from .simulate import AmbientLight, simulate_beads
    out = Path(args.output)
    stem = out.name[: -len("".join(out.suffixes))] if out.suffixes else out.name
    target_path = out.with_name(stem + "_target" + "".join(out.suffixes))
    truth_path = out.with_name(stem + "_truth.csv")
    psf_path = out.with_name(stem + "_psf.tif")
    for p, suffix in ((out, None), (target_path, None), (truth_path, ".csv"), (psf_path, None)):
        _check_output(p, [], args.overwrite, suffix=suffix)
    spacing = tuple(args.spacing) if args.spacing else (0.3, 0.1, 0.1)
    psf = {"model": "widefield", "na": args.na, "wavelength": args.wavelength, "n_immersion": args.immersion}
    sim = simulate_beads(tuple(args.shape), spacing, n_beads=args.n_beads, density=args.density,
                         flux=args.flux, psf=psf, ambient=AmbientLight(offset=args.offset, level=args.ambient),
                         read_noise=args.read_noise, seed=args.seed)
    axes = args.axes
    variable = args.variable or "volume"
    io.save(out, sim.raw, spacing=spacing, axes=axes if io.format_of(out) != "tiff" else None, variable=variable)
    io.save(target_path, sim.target, spacing=spacing, axes=axes if io.format_of(out) != "tiff" else None,
            variable=variable)
    io.write_table(truth_path, sim.truth)
    io.save(psf_path, sim.psf, spacing=spacing)
    log.info("simulated %d beads (%d inside the stack) -> %s, %s, %s, %s", len(sim.truth), len(sim.inside),
             out, target_path, truth_path, psf_path)
    return 0


# ----------------------------------------------------------------------------- psf
def cmd_psf(args):
    from . import io
    from .background import subtract_background
    from .psf_estimation import estimate_psf
    out = Path(args.output)
    _check_output(out, [args.input], args.overwrite)
    figure = Path(args.figure) if args.figure else out.with_suffix(".png")
    _check_output(figure, [args.input], args.overwrite, suffix=".png")
    volume, spacing = _load(args.input, args)
    clean = subtract_background(volume, spacing)
    params = {"wavelength": args.wavelength, "n_immersion": args.immersion} if args.model == "widefield" else None
    est = estimate_psf(clean, spacing, model=args.model, model_params=params, return_info=True)
    io.save(out, est.psf, spacing=spacing)
    from .figures import psf_figure
    psf_figure(figure, est.psf, spacing, fwhm_um=est.fwhm_um,
               title=f"PSF from {est.n_beads} beads of {Path(args.input).name}")
    z, y, x = est.fwhm_um
    print(f"FWHM z {z:.3f} um, y {y:.3f} um, x {x:.3f} um from {est.n_beads} beads "
          f"({est.n_candidates} candidates); written to {out} and {figure}")
    return 0


# ----------------------------------------------------------------------------- train
def _train_config(args, config_type):
    """The training recipe: :class:`TrainConfig`'s defaults, with what the command line gives."""
    import dataclasses
    base = config_type()
    given = {k: getattr(args, k) for k in ("steps", "batch", "pool", "validation", "loss", "lr")
             if getattr(args, k) is not None}
    given["seed"] = args.seed
    loss = given.get("loss", base.loss)
    params = dict(base.loss_params) if loss in ("imbalanced", "combined") else {}
    for k in ("weight", "tau", "dilate", "false_weight", "false_reach"):
        if getattr(args, k) is not None:
            if loss not in ("imbalanced", "combined"):
                raise UserError(f"--{k.replace('_', '-')} applies to the imbalanced and combined losses, not {loss!r}")
            params[k] = getattr(args, k)
    if args.minutes is not None:
        given["time_limit"] = 60.0 * args.minutes
    return dataclasses.replace(base, loss_params=params, **given)


def cmd_train(args):
    from .refiner.training.data import SimulationRanges
    from .refiner.training.train import TrainConfig, train
    from .pipeline import Pipeline
    out = Path(args.output)
    command = "restore3d " + " ".join(sys.argv[1:]) if sys.argv else None
    if args.adapt_to:
        from .refiner import Refiner
        volume, spacing = _load(args.adapt_to, args)
        base = Refiner.load(args.init) if args.init else Refiner.pretrained()
        if out.with_suffix(".json").exists() and not args.overwrite:
            raise UserError(f"{out.with_suffix('.json')} exists; pass --overwrite to replace it")
        adapted = base.adapt(volume, spacing, minutes=args.minutes, steps=args.steps, out=out, seed=args.seed,
                             device=args.device, progress=not args.quiet)
        print(f"adapted refiner written to {adapted.weights}")
        return 0
    if out.with_suffix(".json").exists() and not (args.overwrite or args.resume):
        raise UserError(f"{out.with_suffix('.json')} exists; pass --overwrite to replace it or --resume")
    cfg = _train_config(args, TrainConfig)
    prefix = Pipeline([]) if args.raw else None
    res = train(out, config=cfg, prefix=prefix, ranges=SimulationRanges(), init=args.init, resume=args.resume,
                device=args.device, threads=args.threads, progress=not args.quiet, command=command)
    print(f"trained {res.steps} steps in {res.seconds:.0f} s (+{res.pool_seconds:.0f} s simulation); "
          f"best validation: {json.dumps({k: round(v, 4) for k, v in res.best.items() if isinstance(v, float)})}; "
          f"checkpoint {res.checkpoint}")
    return 0


# ----------------------------------------------------------------------------- demo
def cmd_demo(args):
    import restore3d as r3
    from . import io, metrics
    from .detect import detect_beads
    from .figures import projections_figure
    from .simulate import simulate_beads
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    spacing = (0.3, 0.1, 0.1)
    t0 = time.perf_counter()
    sim = simulate_beads((32, 256, 256), spacing, seed=args.seed)
    names = {"input": folder / "demo_input.mat", "input_tif": folder / "demo_input.tif",
             "output": folder / "demo_restored.tif", "figure": folder / "demo_figure.png",
             "beads": folder / "demo_beads.csv", "metrics": folder / "demo_metrics.md"}
    # stored as our first users store theirs: MATLAB, depth last, variable "voxel"
    io.save(names["input"], sim.raw, axes="yxz", variable="voxel")
    io.save(names["input_tif"], sim.raw, spacing=spacing)
    volume, _ = io.load(names["input"], axes="yxz")
    pipe = r3.default_pipeline(refiner=not args.no_refiner)
    result = pipe.run(volume, spacing=spacing, device=args.device, progress=not args.quiet, keep=["rl"])
    restored = np.asarray(result)
    io.save(names["output"], restored, spacing=spacing)
    beads = detect_beads(restored, spacing)
    io.write_table(names["beads"], beads)
    rows = [("raw", volume), ("background + RL", result.intermediates["rl"])]
    if not args.no_refiner:
        rows.append(("hybrid (default pipeline)", restored))
    rows.append(("target", sim.target))
    keys = ("elongation", "background_residual", "nrmse_si", "ap", "f1")
    lines = ["| volume | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, vol in rows:
        m = metrics.evaluate(vol, target=sim.target, truth=sim.truth, spacing=spacing)
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in keys) + " |")
    table = "\n".join(lines)
    names["metrics"].write_text(f"# restore3d demo (seed {args.seed})\n\n{table}\n\n"
                                f"stage timings (s): {json.dumps({k: round(v, 2) for k, v in result.timings.items()})}\n")
    projections_figure(names["figure"], {"input": volume, "restored": restored, "target": sim.target}, spacing,
                       title="restore3d demo: simulated beads, default pipeline", table=table)
    print(table)
    print(f"\nwrote {', '.join(str(p) for p in names.values())} in {time.perf_counter() - t0:.1f} s "
          f"(pipeline {result.timings['total']:.1f} s)")
    return 0


# ----------------------------------------------------------------------------- parser
def _common(p):
    p.add_argument("--quiet", action="store_true", help="no progress bars or info messages")
    p.add_argument("--verbose", action="store_true", help="debug messages and full tracebacks")


def _volume_opts(p):
    p.add_argument("--spacing", nargs=3, type=float, metavar=("DZ", "DY", "DX"),
                   help="voxel size in micrometres (read from the file when stored there)")
    p.add_argument("--axes", default=None, help="axis order in the file, e.g. yxz for depth-last MATLAB stacks")
    p.add_argument("--variable", default=None, help="variable holding the volume in a .mat/.npz file")


def _add_run(sub, optics):
    """The ``run`` command: restore a volume or a batch."""
    p = sub.add_parser("run", help="restore a volume (or a batch: quote a glob and give an output folder)")
    p.add_argument("input", help="input file (.mat, .tif, .npy, .npz, .zarr) or a quoted glob 'in/*.mat'")
    p.add_argument("output", help="output file, or a folder for a batch")
    _volume_opts(p)
    p.add_argument("--config", help="pipeline JSON (Pipeline.save) instead of the default pipeline")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    p.add_argument("--no-refiner", action="store_true", help="stop after the classical stages")
    p.add_argument("--refiner", default=None, metavar="WEIGHTS",
                   help="refiner weights: pretrained-render (default), pretrained (the first default: rounder beads "
                        "on simulated widefield volumes, flattened real confocal ones) or a checkpoint (.json / .pt)")
    p.add_argument("--psf", help="a measured PSF file on the same spacing (skips estimation)")
    p.add_argument("--save-psf", help="write the PSF used (.tif)")
    p.add_argument("--beads", help="write the bead table of the restored volume (.csv)")
    p.add_argument("--figure", help="write projections before/after (.png)")
    p.add_argument("--out-axes", default=None, help="axis order of a .mat/.npy output")
    p.add_argument("--out-variable", default=None, help="variable name of a .mat output")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--scheduler", default=None, help="dask.distributed scheduler address for a batch")
    p.add_argument("--workers", type=int, default=None, help="local worker processes for a batch")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GB",
                   help="working memory a run may use; above it the volume is restored chunk-wise "
                        "(default: 3 GB, at most a third of this machine's memory; 0: never chunk)")
    p.add_argument("--chunks", nargs=3, type=int, default=None, metavar=("Z", "Y", "X"),
                   help="process a large (e.g. .zarr) volume chunk-wise with this chunk shape")
    _common(p)
    p.set_defaults(func=cmd_run)


def _add_simulate(sub, optics):
    """The ``simulate`` command: write a synthetic bead volume."""
    p = sub.add_parser("simulate", help="write a synthetic bead volume, its target, truth table and PSF")
    p.add_argument("output")
    p.add_argument("--shape", nargs=3, type=int, default=(32, 256, 256), metavar=("Z", "Y", "X"))
    p.add_argument("--spacing", nargs=3, type=float, metavar=("DZ", "DY", "DX"))
    p.add_argument("--n-beads", type=int, default=None, help="beads inside the stack (default: from --density)")
    p.add_argument("--density", type=float, default=0.02, help="beads per cubic micrometre")
    p.add_argument("--flux", type=float, default=3000.0, help="median photons per bead")
    p.add_argument("--na", type=float, default=optics["na"])
    p.add_argument("--wavelength", type=float, default=optics["wavelength"],
                   help="emission wavelength in micrometres")
    p.add_argument("--immersion", type=float, default=optics["n_immersion"],
                   help="immersion refractive index")
    p.add_argument("--ambient", type=float, default=20.0, help="mean ambient glow (photons per voxel)")
    p.add_argument("--offset", type=float, default=100.0, help="camera offset (counts)")
    p.add_argument("--read-noise", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--axes", default=None, help="axis order to write, e.g. yxz (not for TIFF)")
    p.add_argument("--variable", default=None)
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_simulate)


def _add_psf(sub, optics):
    """The ``psf`` command: estimate a PSF."""
    p = sub.add_parser("psf", help="estimate the PSF from the beads of a volume")
    p.add_argument("input")
    p.add_argument("output", help="PSF file (.tif)")
    _volume_opts(p)
    p.add_argument("--model", choices=("gaussian", "widefield"), default=None,
                   help="fit a model to the measured average")
    p.add_argument("--wavelength", type=float, default=optics["wavelength"])
    p.add_argument("--immersion", type=float, default=optics["n_immersion"])
    p.add_argument("--figure", help="PSF figure (.png; default next to the output)")
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_psf)


def _add_train(sub, optics):
    """The ``train`` command: train or adapt the refiner."""
    p = sub.add_parser("train", help="train the refiner on simulated beads, or adapt it to a microscope")
    p.add_argument("output", help="checkpoint path stem (writes OUTPUT.pt and OUTPUT.json)")
    # unset options take restore3d.refiner.training.train.TrainConfig's defaults (the shipped recipe)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--minutes", type=float, default=None, help="time budget (default 3 with --adapt-to)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--pool", type=int, default=None, help="simulated training volumes")
    p.add_argument("--validation", type=int, default=None, help="fixed validation volumes")
    p.add_argument("--loss", choices=("imbalanced", "l1", "mse", "combined"), default=None)
    p.add_argument("--weight", type=float, default=None, help="imbalanced loss weight M")
    p.add_argument("--tau", type=float, default=None, help="imbalanced loss threshold (fraction of the maximum)")
    p.add_argument("--dilate", type=int, default=None, help="imbalanced loss: grow the weighted bead voxels by N voxels")
    p.add_argument("--false-weight", type=float, default=None,
                   help="imbalanced loss: weight of voxels lit where the target has no bead (1: not weighted)")
    p.add_argument("--false-reach", type=int, default=None,
                   help="imbalanced loss: --false-weight only within N voxels of a bead voxel")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--raw", action="store_true", help="train on raw volumes (no classical stages)")
    p.add_argument("--init", default=None, help="checkpoint to start from")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--adapt-to", default=None, metavar="IN", help="fine-tune to the microscope of this raw volume")
    _volume_opts(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_train)


def _add_demo(sub, optics):
    """The ``demo`` command: the built-in demo."""
    p = sub.add_parser("demo", help="simulate a typical volume, restore it, write results and a figure "
                                    "(the demo's own files in FOLDER are replaced)")
    p.add_argument("folder", nargs="?", default="restore3d-demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refiner", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    _common(p)
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``restore3d`` command line: one sub-command per job."""
    from ._version import __version__
    from .optics import DEFAULT_OPTICS
    parser = argparse.ArgumentParser(prog="restore3d", description=(
        "Restore 3D bead volumes: remove ambient light and axial stretching."))
    parser.add_argument("--version", action="version", version=f"restore3d {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_simulate, _add_psf, _add_train, _add_demo):
        add(sub, DEFAULT_OPTICS)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    if getattr(args, "command", None) == "train" and args.adapt_to and args.minutes is None:
        args.minutes = 3.0
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, KeyError, OSError) as exc:
        if args.verbose:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"restore3d: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("restore3d: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
