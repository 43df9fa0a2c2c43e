"""Lensed CMB sky generation speed (:mod:`engine.physics.cmb`): ``python -m benchmarks.cmb_sims``.

Times :func:`engine.physics.cmb_io.generate` (everything a sky needs: the draws, lenspyx lensing on
the Gauss–Legendre grid, beam, three HEALPix syntheses, noise; CAMB is run once before timing
and cached) in skies per second, for

* nside 128 with the automatic ℓ_unl (2383), in this process with all threads (``workers=1``),
  against the same skies made by two worker processes of one thread each (``workers=2``),
  measured alternately in this run;
* nside 512 with ℓ_unl = 3000, in this process, against the lensing step of lenspyx's
  ``alm2lenmap_spin`` straight onto the HEALPix grid (the quick route, which the engine does not
  take because the HEALPix analysis of that non-band-limited map aliases E into B; see the
  module docstring) as the peer: ``ratio`` = peer time / our time for a whole sky, so < 1 means
  the full sky costs more than that one lensing call.

* delensing time per nside-512 sky: the shipped delenser (``assets/models/delens512``, or an
  untrained network of the same architecture when it is absent: the same cost) on one sky,
  against the true-φ template baseline (:func:`engine.evaluation.delensing.template_delens`:
  Wiener filter, lenspyx lensing of E, B extraction) on the same sky as the peer; and the measured
  quadratic-estimator delensing (:func:`engine.physics.cmb_qe.qe_delens`: φ̂ from Q/U,
  then the same template) and, where ``assets/qe`` holds a calibration of the setting, the
  iterated QE (:func:`engine.physics.cmb_qe_iter.qe_delens_iterated`), against the same peer.

Prints a table and writes ``benchmarks/results/cmb_sims.json`` (rows with name, value, unit and,
where a peer exists, peer, peer_value, ratio; meta with the machine), as :mod:`benchmarks`.
Part of ``make bench``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from engine.physics import cmb, cmb_io

RESULTS = Path(__file__).resolve().parent / "results" / "cmb_sims.json"


def _rate(settings: cmb.CMBParams, repeat: int = 1) -> float:
    """Skies per second of ``cmb_io.generate(settings)`` (median of ``repeat`` runs)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        cmb_io.generate(settings, progress=False)
        times.append(time.perf_counter() - t)
    return settings.count / statistics.median(times)


def bench_nside128(count: int = 4) -> list[dict]:
    """nside 128, automatic ℓ_unl: one process with all threads vs two single-thread workers."""
    one = cmb.CMBParams(nside=128, count=count, seed=0, workers=1)
    two = cmb.CMBParams(nside=128, count=count, seed=0, workers=2)
    cmb_io.generate(cmb.CMBParams(nside=128, count=1, seed=0), progress=False)  # CAMB, imports
    rates = {"one": [], "two": []}
    for _ in range(2):  # alternate, so that load from other processes hits both alike
        rates["one"].append(_rate(one))
        rates["two"].append(_rate(two))
    r1, r2 = statistics.median(rates["one"]), statistics.median(rates["two"])
    return [
        dict(
            name="cmb_nside128_skies_per_s",
            value=r1,
            unit="skies/s",
            peer="same skies, workers=2 (1 thread each)",
            peer_value=r2,
            ratio=r1 / r2,
            meta={
                "lmax_unlensed": cmb.unlensed_lmax(one),
                "threads": cmb._threads(1),
                "skies": count,
            },
        )
    ]


def _healpix_lensing(settings: cmb.CMBParams) -> float:
    """Seconds of lenspyx's ``alm2lenmap_spin`` of sky 0's E, B onto the HEALPix grid."""
    import lenspyx
    from lenspyx.utils_hp import almxfl

    spectra = cmb._input_spectra(settings)
    elm, blm, plm = cmb._draw(spectra, int(settings.seed), 0)
    ell = np.arange(len(spectra["EE"]), dtype=np.float64)
    dlm = almxfl(plm, np.sqrt(ell * (ell + 1.0)), None, False)
    eb = np.array([elm, blm]).astype(np.complex64)
    t = time.perf_counter()
    lenspyx.alm2lenmap_spin(
        eb,
        dlm,
        2,
        geometry=("healpix", {"nside": int(settings.nside)}),
        epsilon=cmb.EPSILON,
        nthreads=cmb._threads(1),
    )
    return time.perf_counter() - t


def bench_nside512(count: int = 2) -> list[dict]:
    """nside 512 with ℓ_unl = 3000 (one process, all threads) against lenspyx's HEALPix-grid
    lensing call alone."""
    s = cmb.CMBParams(nside=512, lmax_unlensed=3000, count=count, seed=0, workers=1)
    cmb.theory(s)  # CAMB once, cached
    rate = _rate(s)
    peer = _healpix_lensing(s)
    return [
        dict(
            name="cmb_nside512_skies_per_s",
            value=rate,
            unit="skies/s",
            peer="lenspyx.alm2lenmap_spin to HEALPix (lensing only)",
            peer_value=1.0 / peer,
            ratio=peer * rate,
            meta={"lmax_unlensed": 3000, "threads": cmb._threads(1), "skies": count},
        )
    ]


def bench_delensing(model_dir: str = "assets/models/delens512") -> list[dict]:
    """Seconds per nside-512 sky: the delenser's forward pass (CPU), the shipped network fed the
    iterated QE's template (``delens512_qeit``: template + network) where present, and the
    measured QE and iterated-QE delensing, each against the true-φ template."""
    import torch

    from engine.evaluation.delensing import template_delens
    from engine.nn.healpix_unet import HealpixUNet
    from engine.physics.cmb_qe import qe_delens
    from engine.physics.cmb_qe_iter import qe_calibration_for, qe_delens_iterated

    s = cmb.CMBParams(nside=512, count=1, seed=0, workers=1)
    sky = cmb.simulate(s, 0)
    attrs = dict(noise=s.noise, beam=s.beam, nside=s.nside, lmax=3 * s.nside - 1)
    path = Path(model_dir)
    if (path / "checkpoints" / "best.pt").exists():
        from engine.evaluation.predict import load_task_network

        model, task, _ = load_task_network(path, "cpu", "delensing")
        label = str(path)

        def net():
            task.predict(model, sky["Q"], sky["U"])
    else:
        model = HealpixUNet(2, 2, width=8, levels=4).eval()
        label = "untrained HealpixUNet(width 8, levels 4)"
        x = torch.from_numpy(np.stack([sky["Q"], sky["U"]]))[None]

        def net():
            with torch.no_grad():
                model(x)

    t_net = statistics.median(_times(net, 2))
    t_tpl = statistics.median(
        _times(lambda: template_delens(sky["Q"], sky["U"], sky["phi"], attrs), 2)
    )
    t_qe = statistics.median(_times(lambda: qe_delens(sky["Q"], sky["U"], attrs), 2))
    peer = "true-phi template baseline (lenspyx)"
    threads = torch.get_num_threads()
    rows = [
        _seconds_row("delensing_nside512_s_per_sky", t_net, peer, t_tpl, model=label, threads=threads),
        _seconds_row(
            "qe_delensing_nside512_s_per_sky", t_qe, peer, t_tpl,
            estimator="pol (EB + EE), B ell >= 201", threads=threads,
        ),
    ]  # fmt: skip
    fed = Path("assets/models/delens512_qeit")  # the network fed the iterated QE's template
    if (fed / "checkpoints" / "best.pt").exists():
        from engine.evaluation.predict import load_task_network

        model2, task2, _ = load_task_network(fed, "cpu", "delensing")
        t_fed = statistics.median(_times(lambda: task2.predict(model2, sky["Q"], sky["U"]), 2))
        rows.append(
            _seconds_row("delensing_qeit_nside512_s_per_sky", t_fed, peer, t_tpl, model=str(fed),
                         includes="iterated-QE template + network", threads=threads)
        )  # fmt: skip
    cal = qe_calibration_for(attrs, attrs["lmax"])
    if cal is not None:
        t_it = statistics.median(
            _times(lambda: qe_delens_iterated(sky["Q"], sky["U"], attrs, cal), 2)
        )
        rows.append(
            _seconds_row(
                "qe_iterated_nside512_s_per_sky",
                t_it,
                peer,
                t_tpl,
                estimator="pol QE + one calibrated Newton step (EB)",
                calibration=cal["path"],
                threads=threads,
            )  # fmt: skip
        )
    return rows


def _seconds_row(name: str, value: float, peer: str, peer_value: float, **meta) -> dict:
    """A seconds-per-sky row against a peer (ratio = peer / ours: > 1 means ours is faster)."""
    return dict(
        name=name, value=value, unit="s/sky", peer=peer, peer_value=peer_value,
        ratio=peer_value / value, meta=meta,
    )  # fmt: skip


def _times(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    results = bench_nside128() + bench_nside512() + bench_delensing()
    header = f"{'benchmark':<32}{'value':>10} {'unit':<9}{'peer':<52}{'peer value':>11}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['name']:<32}{r['value']:>10.3g} {r['unit']:<9}{r['peer']:<52}"
            f"{r['peer_value']:>11.3g}{r['ratio']:>7.2g}x"
        )
    meta = dict(
        machine=platform.machine(),
        cpus=os.cpu_count(),
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    rows = [{**r, "meta": {**meta, **r.get("meta", {})}} for r in results]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
