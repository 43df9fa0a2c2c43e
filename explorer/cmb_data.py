r"""CMB page, what it loads and keeps: the delensers (runs of the delensing task: where they
are, what they were trained on, their networks) and the per-process caches of skies and of stage
timings that :mod:`explorer.cmb_compute` fills and the page reads.

* Delensers: :func:`list_delensers` finds delensing runs with a checkpoint, :class:`DelenserInfo`
  says their nside, training skies and report numbers, :func:`load_delenser` loads one network
  per server process and :func:`trained_notes` says where the page's settings leave its training.
* Skies: :func:`simulated_sky` keeps the last :data:`SKY_CACHE_SIZE` skies of
  :func:`engine.physics.cmb.simulate` per process (key :func:`sky_key`); :func:`result_key` is
  the key of a result (the sky and the delenser's checkpoint).
* Timings: :func:`record_seconds` keeps the last measured seconds of each stage per nside;
  :func:`expected_seconds` and :func:`expected_wait` give the page its expected waits
  (:data:`REFERENCE_SECONDS` before a stage has run here).

No Panel here, and no import of :mod:`explorer.cmb_compute` (which re-exports these names).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from engine.lru import LRUCache
from engine.params import ConfigError
from engine.physics.cmb import CMBParams, simulate
from engine.physics.cmb_qe_iter import qe_calibration_for
from engine.runs import list_runs, read_json

#: Run directory name of the shipped delenser in ``assets/models/``.
SHIPPED = "delens512"
#: The command that trains the shipped delenser (its skies: :data:`SKIES_COMMAND`).
TRAIN_COMMAND = f"python -m engine train --preset {SHIPPED} --run-dir assets/models/{SHIPPED}"
#: The command that makes the skies the shipped delenser trains on.
SKIES_COMMAND = (
    "python -m engine sky --kind cmb --nside 512 --noise 2 --beam 5 --r 0.01 --count 40 "
    "--workers 2 --seed 1 --out data/cmb512.zarr"
)
#: Skies (all maps of :func:`engine.physics.cmb.simulate`) kept per server process.
SKY_CACHE_SIZE = 2
#: Seconds of each stage measured on the 2-core development machine (with a training job
#: running beside it; CAMB spectra already cached) at nside 128 and 512: the expected wait
#: until a stage has run, before this server has measured one. ``network``, ``template`` and ``qe``
#: are per observation; the network is the delens512 U-Net (width 16, 4 levels). A new r adds
#: a CAMB run (≈ 4 s at nside 128, ≈ 18 s at 512).
REFERENCE_SECONDS = {
    "sky": {128: 7.0, 512: 42.0},
    "network": {128: 1.4, 512: 22.0},
    "template": {128: 1.4, 512: 54.0},
    "qe": {128: 0.5, 512: 16.0},  # python -m benchmarks.cmb_sims (512) and one sky (128), idle
    "qe_it": {128: 1.0, 512: 27.5},  # the same benchmark (512); 128: no calibration shipped
}
#: Stages run on two observations (their expected seconds are per observation).
TWO_OBSERVATIONS = ("template", "qe", "qe_it")


# ---------------------------------------------------------------------------------------------
# Delensers (runs of the delensing task)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelenserInfo:
    """A delensing run: where it is, its nside and the skies it was trained on.

    Attributes
    ----------
    path : str
        Run directory.
    name : str
        Its folder name.
    nside : int
        HEALPix nside of its training skies (the only nside it takes).
    sky : dict
        Settings of its training skies (``noise`` µK-arcmin, ``beam`` arcmin, ``r``, …).
    report : dict
        Numbers of its ``report.json`` (``python -m engine evaluate``): ``a_res`` {method: mean},
        ``n_skies``, ``noise``, ``beam`` (empty without a report).
    """

    path: str
    name: str
    nside: int
    sky: dict
    report: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Its name on the page."""
        return f"{self.name} (nside {self.nside})"


def checkpoint_file(path: Path) -> Path | None:
    """The non-empty ``checkpoints/best.pt`` (else ``last.pt``) of run directory ``path``."""
    for n in ("best.pt", "last.pt"):
        f = path / "checkpoints" / n
        if f.is_file() and f.stat().st_size > 0:
            return f
    return None


def _report_numbers(path: Path) -> dict:
    report = read_json(path / "report.json") or {}
    a_res = report.get("a_res")
    if not isinstance(a_res, Mapping):
        return {}
    means = {
        str(m): float(v["mean"])
        for m, v in a_res.items()
        if isinstance(v, Mapping) and isinstance(v.get("mean"), int | float)
    }
    n = report.get("n_skies")
    skies = sum(int(v) for v in n.values()) if isinstance(n, Mapping) else None
    return {"a_res": means, "n_skies": skies, "noise": report.get("noise"),
            "beam": report.get("beam")}  # fmt: skip


def delenser_info(path: str | Path) -> DelenserInfo | None:
    """The :class:`DelenserInfo` of run directory ``path`` if it is a delensing run with a
    checkpoint (nside and sky settings from its ``config.json`` ``data``, else from the
    checkpoint's task state), else None."""
    path = Path(path)
    config = read_json(path / "config.json") or {}
    task = config.get("task") or (config.get("settings") or {}).get("task")
    if task != "delensing" or checkpoint_file(path) is None:
        return None
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    if "nside" not in data:
        from engine.train.checkpoint import load_checkpoint

        try:
            state = load_checkpoint(path).get("task_state") or {}
        except ConfigError:
            return None
        data = {"nside": state.get("nside"), "sky": state.get("sky_attrs") or {}}
    try:
        nside = int(data["nside"])
    except (KeyError, TypeError, ValueError):
        return None
    sky = dict(data.get("sky") or {})
    return DelenserInfo(str(path), path.name, nside, sky, _report_numbers(path))


def list_delensers(*roots) -> list[DelenserInfo]:
    """Delensing runs directly under the folders ``roots``, in their order (the shipped
    :data:`SHIPPED` first, then each folder's runs newest first); missing folders are skipped."""
    out = []
    for root in roots:
        if root:
            found = [d for run in list_runs(root) if (d := delenser_info(run.path))]
            out += sorted(found, key=lambda d: d.name != SHIPPED)
    return out


def load_delenser(path: str | Path) -> tuple:
    """(network, delensing task) of a delensing run on the CPU, loaded once per server process
    (again when its checkpoint changes; :func:`engine.evaluation.predict.load_task_network`).

    Raises
    ------
    ConfigError
        Missing or unusable checkpoint, or one of another task.
    """
    from explorer.checkpoints import load_network

    return load_network(path, "delensing")


def trained_notes(settings: CMBParams, info: DelenserInfo) -> list[str]:
    """Lines saying where the page's noise, beam or r differ from the delenser's training
    skies (the network then works outside what it learned)."""
    out = []
    units = {"noise": "µK-arcmin", "beam": "arcmin", "r": ""}
    for key, unit in units.items():
        trained = info.sky.get(key)
        if trained is None:
            continue
        now = float(getattr(settings, key))
        if not math.isclose(now, float(trained), rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{key} = {now:g} {unit}; the network was trained at {float(trained):g}")
    return out


# ---------------------------------------------------------------------------------------------
# Caches: skies and stage timings
# ---------------------------------------------------------------------------------------------

_skies: LRUCache[dict] = LRUCache(SKY_CACHE_SIZE)
#: Last measured seconds of a stage at an nside, per observation (``_measured[(stage, nside)]``).
_measured: dict[tuple[str, int], float] = {}


def sky_key(settings: CMBParams) -> tuple:
    """Cache key of a sky: every setting that changes its maps."""
    names = ("omega_m", "sigma8", "omega_b", "h", "n_s", "r", "noise", "beam", "nside",
             "lmax_unlensed", "seed")  # fmt: skip
    return tuple((n, getattr(settings, n)) for n in names)


def result_key(settings: CMBParams, info: DelenserInfo | None) -> tuple:
    """Cache key of a result: the sky's settings and the delenser's checkpoint (path, mtime)."""
    if info is None:
        return (sky_key(settings), None)
    ckpt = checkpoint_file(Path(info.path))
    stamp = ckpt.stat().st_mtime_ns if ckpt is not None else 0
    return (sky_key(settings), (info.path, stamp))


def simulated_sky(settings: CMBParams) -> dict:
    """Sky 0 of ``settings`` (:func:`engine.physics.cmb.simulate`: ``(npix,) float32`` RING
    maps Q, U, Q_lensed, U_lensed, Q_unlensed, U_unlensed in µK and phi), cached per process.

    Raises
    ------
    ConfigError
        Bad settings.
    """
    key = sky_key(settings)
    return _skies.get_or_make(key, lambda: simulate(settings, 0))


def record_seconds(stage: str, nside: int, seconds: float) -> None:
    """Keep ``seconds`` (per observation) as the last measured time of ``stage`` at ``nside``
    (``network2`` counts as ``network``) for :func:`expected_seconds`."""
    _measured[("network" if stage == "network2" else stage, int(nside))] = seconds


def expected_seconds(stage: str, nside: int) -> float:
    """Expected seconds of ``stage`` at ``nside`` (per observation for the network and the
    template): the last measured in this process, else :data:`REFERENCE_SECONDS` scaled as
    nside (sky) or nside² (network, template)."""
    key = ("network" if stage == "network2" else stage, int(nside))
    if key in _measured:
        return _measured[key]
    ref = REFERENCE_SECONDS[key[0]]
    base = 128 if nside <= 256 else 512
    power = 1.0 if key[0] == "sky" else 2.0
    return max(0.5, ref[base] * (nside / base) ** power)


def expected_wait(nside: int, network: bool, qe_it: bool = False) -> dict[str, float]:
    """Expected seconds until each stage of an update at ``nside`` has run (cumulative:
    ``{stage: seconds from the start}``), with the network's stages if ``network`` and the
    iterated QE's if ``qe_it``; the template and the QEs run on two observations."""
    stages = ["sky", *(["network", "network2"] if network else []), "template", "qe"]
    stages += ["qe_it"] if qe_it else []
    out, total = {}, 0.0
    for s in stages:
        total += expected_seconds(s, nside) * (2 if s in TWO_OBSERVATIONS else 1)
        out[s] = total
    return out


def iterated_calibration(nside: int, noise: float, beam: float) -> dict | None:
    """The shipped calibration of the iterated QE (``assets/qe``,
    :func:`engine.physics.cmb_qe_iter.qe_calibration_for`) at this nside, noise (µK-arcmin) and
    beam (arcmin FWHM) with the page's band limit 3·nside − 1, or None (cached per process)."""
    key = (int(nside), float(noise), float(beam))
    if key not in _calibrations:
        attrs = {"nside": key[0], "noise": key[1], "beam": key[2]}
        _calibrations[key] = qe_calibration_for(attrs, 3 * key[0] - 1)
    return _calibrations[key]


_calibrations: dict[tuple, dict | None] = {}
