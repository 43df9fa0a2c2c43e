"""``predict`` verb: infer (omega_m, sigma8) or a dataset's labels from maps with a trained
network or the P(k) likelihood, class probabilities from a classifier, delensed skies from a
delenser. Registered by :func:`engine.cli.evaluate.add_parsers`.

See the ``engine.cli`` module docstring for examples and ``engine.evaluation`` for the methods.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError


def add_parser(sub) -> None:
    """The ``predict`` verb's subparser (see :func:`cmd_predict`)."""
    from engine.evaluation.theory import DEFAULT_PRIOR

    prior = ",".join(f"{v:g}" for pair in DEFAULT_PRIOR for v in pair)
    p = sub.add_parser(
        "predict",
        help="Infer (omega_m, sigma8) for every map of a file; one CSV row per map.",
        description="Infer (omega_m, sigma8) for every map of a .zarr/.nc file written by "
        "'fields' (or of a dataset spec such as folder:DIR), with the binned P(k) likelihood, "
        "the simulation-calibrated P(k) likelihood or a trained network, and write one CSV "
        "row per map: sample, true values (when the maps carry them), posterior mean and std. "
        "A classifier checkpoint (task classification) writes sample, the true class (when "
        "known) and p_<class> per class instead.",
    )
    p.add_argument(
        "--method",
        default=None,
        choices=["pk-likelihood", "pk-calibrated", "network"],
        help="pk-likelihood: Gaussian likelihood of the binned P(k) with the maps' theory "
        "(engine.evaluation.likelihood; maps of this project's generators); pk-calibrated: "
        "the P(k) likelihood calibrated on labelled simulations (--calibration; "
        "engine.evaluation.calibrated; any maps); network: a trained checkpoint (--checkpoint). "
        "Default: network with --checkpoint, pk-calibrated with --calibration, else "
        "pk-likelihood.",
    )
    p.add_argument(
        "--maps",
        required=True,
        metavar="PATH",
        help="Maps file (.zarr or .nc), or a dataset spec of a reader (folder:DIR?box_size=100, "
        "camels:FILE, quijote:DIR).",
    )
    p.add_argument("--out", required=True, metavar="PATH", help="Output CSV file.")
    add_overwrite_argument(p)
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="Network checkpoint .pt or run directory (implies --method network).",
    )
    p.add_argument(
        "--calibration",
        metavar="DATASET_OR_FILE",
        help="pk-calibrated: a calibration .json file, or the dataset spec of labelled training "
        "maps of the same geometry to calibrate on (its train split; fitted once, then cached: "
        "engine.evaluation.calibrated_use.cache_dir).",
    )
    p.add_argument(
        "--save-calibration",
        metavar="FILE.json",
        help="pk-calibrated: also write the calibration used to this JSON file (reuse it with "
        "--calibration FILE.json).",
    )
    p.add_argument(
        "--prior",
        default=prior,
        metavar="OM_MIN,OM_MAX,S8_MIN,S8_MAX",
        help="Flat prior box of the likelihood (default %(default)s).",
    )
    p.add_argument(
        "--grid", type=int, default=64, help="Posterior grid points per parameter (default 64)."
    )
    p.add_argument(
        "--k-max",
        type=float,
        default=None,
        help="Highest bin centre used, h/Mpc (ell for kappa maps); default Nyquist (for "
        "pk-calibrated: of the calibration fitted from a dataset spec).",
    )
    p.add_argument(
        "--device", default="cpu", help="Torch device of the network: cpu (default), cuda[:i]."
    )
    scale = p.add_mutually_exclusive_group()
    scale.add_argument(
        "--box-size",
        type=float,
        metavar="MPC_H",
        help="Side of every map in Mpc/h, for maps without a box_size attr (network and "
        "pk-calibrated).",
    )
    scale.add_argument(
        "--fov",
        type=float,
        metavar="DEG",
        help="Side of every kappa map in degrees, for maps without a fov attr (network and "
        "pk-calibrated).",
    )
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """``predict`` verb: posterior mean/std per map to a CSV file; prints a summary line.

    The method defaults to ``network`` when ``--checkpoint`` is given (the checkpoint's task
    must be one that evaluation knows, :func:`engine.evaluation.evaluate.evaluator_for`), to
    ``pk-calibrated`` with ``--calibration``, else to ``pk-likelihood``.

    Raises
    ------
    ConfigError
        Missing maps file, unsupported kind, bad prior, missing checkpoint or one of an unknown
        task, ``--checkpoint`` with a likelihood method, ``--calibration`` missing for (or given
        without) ``pk-calibrated``, maps of another geometry than the calibration's, output not
        .csv, in a missing or unwritable directory, or existing without ``--overwrite``; all
        before anything is written.
    """
    import numpy as np

    from engine.evaluation.likelihood import pk_likelihood_predict
    from engine.evaluation.predict import FLAG, load_maps, reader_spec, write_predictions
    from engine.evaluation.schema import PARAMS

    method = _predict_method(args)
    out = Path(args.out)
    if method == "network" and _is_delenser(args.checkpoint):
        return _predict_delenser(args)
    if out.suffix != ".csv":
        raise ConfigError(f"--out {str(out)!r} must end in .csv")
    prior = _parse_prior(args.prior)
    if args.k_max is not None and not (math.isfinite(args.k_max) and args.k_max > 0):
        raise ConfigError(f"--k-max {args.k_max:g} must be a positive number (h/Mpc, or ell)")
    try:  # the inputs' errors before the output's
        maps_exist = reader_spec(args.maps) or Path(args.maps).exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ConfigError(f"maps file {str(args.maps)[:80]!r}: {exc.strerror}") from None
    if not maps_exist:
        raise ConfigError(f"maps file {str(args.maps)!r} does not exist")
    save = _check_save_calibration(args, method)
    check_output(out, overwrite=args.overwrite)
    t0 = time.perf_counter()
    if method == "network":
        from engine.evaluation.evaluate import evaluator_for

        predict = evaluator_for(args.checkpoint, "predict").predict
        scale = {"box_size": args.box_size, "fov": args.fov}
        result = predict(load_maps(args.maps), args.checkpoint, device=args.device, scale=scale)
        if "probs" in result:  # a classifier: class probabilities per image
            return _write_class_predictions(out, result, t0)
    elif method == "pk-calibrated":
        from engine.evaluation.calibrated_use import pk_calibrated_predict, resolve_calibration

        maps = load_maps(args.maps)  # the maps' errors before a (long) fit
        cal = resolve_calibration(args.calibration, k_max=args.k_max)
        scale = {"box_size": args.box_size, "fov": args.fov}
        result = pk_calibrated_predict(maps, cal, prior=prior, grid=args.grid, scale=scale)
        if save is not None:  # once the maps are known to suit it
            cal.save(save)
    else:
        if args.box_size is not None or args.fov is not None:
            raise ConfigError("--box-size and --fov are for --method network or pk-calibrated")
        result = pk_likelihood_predict(
            load_maps(args.maps), prior=prior, grid=args.grid, k_max=args.k_max
        )
    write_predictions(out, result)
    flagged = int(np.count_nonzero(result.get(FLAG, [])))
    if flagged:
        print(
            f"warning: {flagged} of {len(result['mean'])} predictions lie outside the network's "
            f"prior box (column {FLAG} of {out})",
            file=sys.stderr,
        )
    summary = ""
    if "truth" in result:
        rmse = np.sqrt(np.mean((result["mean"] - result["truth"]) ** 2, axis=0))
        summary = "; rmse " + ", ".join(f"{n}={r:.4g}" for n, r in zip(PARAMS, rmse, strict=True))
    print(
        f"wrote {len(result['mean'])} predictions ({method}{summary}) to {out} "
        f"in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def _is_delenser(checkpoint) -> bool:
    """Whether ``checkpoint`` is of the delensing task (its output is FITS maps)."""
    from engine.evaluation.predict import checkpoint_task

    return bool(checkpoint) and checkpoint_task(checkpoint) == "delensing"


def _predict_delenser(args: argparse.Namespace) -> int:
    """``predict`` with a delensing checkpoint: delensed Q/U as HEALPix FITS maps."""
    from engine.evaluation.delensing_eval import predict_delenser

    t0 = time.perf_counter()
    if not (
        str(args.maps).startswith(("folder:",)) or Path(str(args.maps).partition("?")[0]).exists()
    ):
        raise ConfigError(f"maps file {str(args.maps)!r} does not exist")
    files = predict_delenser(
        args.maps, args.checkpoint, args.out, device=args.device, overwrite=args.overwrite
    )
    where = str(files[0]) if len(files) == 1 else f"{files[0]} … {files[-1].name}"
    print(f"wrote {len(files)} delensed sky(ies) to {where} in {time.perf_counter() - t0:.2f} s")
    return 0


def _write_class_predictions(out: Path, result: dict, t0: float) -> int:
    """Write a classifier's predictions (:func:`engine.evaluation.classification_eval.
    write_class_predictions`) and print a summary line (the accuracy when the true classes are
    known)."""
    import numpy as np

    from engine.evaluation.classification_eval import write_class_predictions

    write_class_predictions(out, result)
    for note in result.get("notes") or []:
        print(f"note: {note}")
    summary = ""
    if "truth" in result:
        predicted = np.asarray(result["classes"])[np.argmax(result["probs"], axis=1)]
        summary = f"; accuracy {float(np.mean(predicted == np.asarray(result['truth']))):.4g}"
    print(
        f"wrote {len(result['probs'])} class probabilities ({', '.join(result['classes'])}"
        f"{summary}) to {out} in {time.perf_counter() - t0:.2f} s"
    )
    return 0


def _predict_method(args: argparse.Namespace) -> str:
    """The ``predict`` method: ``--method``, else network with ``--checkpoint``, else
    pk-calibrated with ``--calibration``, else pk-likelihood; refuses a checkpoint or a
    calibration the method would ignore."""
    calibration = getattr(args, "calibration", None)
    method = args.method or (
        "network" if args.checkpoint else "pk-calibrated" if calibration else "pk-likelihood"
    )
    if method == "network" and not args.checkpoint:
        raise ConfigError("--method network needs --checkpoint PATH")
    if method != "network" and args.checkpoint:
        raise ConfigError(
            f"--method {method} uses no checkpoint: drop --checkpoint, or use --method network"
        )
    if method == "pk-calibrated" and not calibration:
        raise ConfigError(
            "--method pk-calibrated needs --calibration DATASET_OR_FILE (labelled training maps "
            "of the same geometry, or a calibration .json file)"
        )
    if method != "pk-calibrated" and (calibration or getattr(args, "save_calibration", None)):
        raise ConfigError(
            f"--calibration and --save-calibration are for --method pk-calibrated, not {method}"
        )
    return method


def _check_save_calibration(args: argparse.Namespace, method: str) -> Path | None:
    """The checked ``--save-calibration`` path (refused as an existing file without
    ``--overwrite``, not .json, or in a missing directory), or None."""
    if method != "pk-calibrated" or not getattr(args, "save_calibration", None):
        return None
    path = Path(args.save_calibration)
    if path.suffix != ".json":
        raise ConfigError(f"--save-calibration {str(path)!r} must end in .json")
    check_output(path, overwrite=args.overwrite, flag="--save-calibration")
    return path


def _parse_prior(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``OM_MIN,OM_MAX,S8_MIN,S8_MAX`` → ((Ω_m min, max), (σ8 min, max))."""
    try:
        values = [float(v) for v in text.split(",")]
        if len(values) != 4 or not all(math.isfinite(v) for v in values):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--prior {text!r} must look like OM_MIN,OM_MAX,S8_MIN,S8_MAX") from None
    return (values[0], values[1]), (values[2], values[3])
