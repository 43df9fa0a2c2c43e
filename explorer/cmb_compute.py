r"""CMB page, the pure compute: one lensed CMB sky from the page's settings, delensed by a shipped
network, by the true-φ template and by the quadratic estimator, its B-mode maps, BB spectra,
A_res and fitted r.

No Panel here: :func:`updates` is a generator of ever more complete :class:`CMBResult` s, one per
*stage*, so that the page (:mod:`explorer.cmb`) shows the sky while the slow delensers still run,
each stage a job of its own on a worker thread. The delensers (finding, describing and loading
them) and the caches of skies and stage timings are :mod:`explorer.cmb_data`'s (re-exported here).

1. ``sky``: sky 0 of :func:`engine.physics.cmb.simulate` (CAMB spectra, lenspyx lensing, beam,
   white noise; cached per settings, :data:`~explorer.cmb_data.SKY_CACHE_SIZE` skies), a second
   observation of the same lensed sky with independent noise (:func:`engine.evaluation.delensing.
   second_observation`, seed = the page's seed), the B-mode maps, the spectra of the lensed and
   unlensed skies, CAMB's lensing BB × b_ℓ², the primordial r·T_b, the quadratic-estimator
   forecast (:func:`engine.evaluation.delensing.qe_forecast`, MV, perfect E) and the baseline
   *none* (no delensing);
2. ``network``: the delensing network on the observed sky
   (:meth:`engine.tasks.delensing.Delensing.predict`), only with a delenser — the delensed map;
3. ``network2``: the network on the second observation — its A_res and fitted r;
4. ``template``: both observations delensed by :func:`engine.evaluation.delensing.
   template_delens` (Wiener-filtered observed E lensed by the *true* φ: the best a φ-based
   method can do with this E) — its map, A_res and fitted r;
5. ``qe``: both observations delensed by :func:`engine.physics.cmb_qe.qe_delens` (φ̂
   reconstructed from the observed Q/U by the quadratic estimator, then the same template) — the
   measured baseline beside the QE forecast;
6. ``qe_it``: only where ``assets/qe`` holds a calibration of the page's nside, noise and beam
   (:func:`explorer.cmb_data.iterated_calibration`; shipped: nside 512, 5′, 1, 2 and 5
   µK-arcmin): both observations delensed by the calibrated iterated QE
   (:func:`engine.physics.cmb_qe_iter.qe_delens_iterated`).

Definitions (those of :mod:`engine.evaluation.delensing`, on the full sky)
----------------------------------------------------------------------------
* B modes: ``healpy.map2alm_spin([Q, U], 2)`` (healpy's E/B convention, which lenspyx and the
  engine share), the true unlensed sky with 3 Jacobi iterations and every other map as the
  unlensed B plus the B of its difference from the unlensed sky (:class:`BModes`: no E→B
  leakage from the large E modes, for one iterated analysis per update). The B *map* is
  ``healpy.alm2map`` of the B a_ℓm as a scalar field (µK; a display quantity: B is not a Stokes
  parameter).
* Spectra C_ℓ = ``healpy.alm2cl`` (full sky, µK², beamed maps), flat band powers over Δℓ = 20
  from ℓ = 20 (:func:`engine.evaluation.delensing.ell_bins`, :func:`~engine.evaluation.
  delensing.bin_cl`) up to ℓ = min(3·nside − 1, max(2·nside, 200)) (HEALPix analysis is
  accurate to ≈ 2·nside); plotted as D_ℓ = ℓ(ℓ+1)C_ℓ/2π at the bin centres. The lensed and
  delensed spectra are cross spectra of the two observations (no noise bias), as in the
  engine's report.
* A_res = Σ_ℓ C_ℓ^BB[(d1 − u), (d2 − u)] / Σ_ℓ C_ℓ^BB[lensed − u] over 20 ≤ ℓ ≤ min(200,
  3·nside − 1), u the true (beamed) unlensed sky, d1 and d2 the method's output on the two
  observations (:func:`engine.evaluation.delensing.residual_fraction`, computed here from the
  B a_ℓm that the maps and spectra already need): 1 for no delensing, 0 for perfect delensing.
  The differences d − u are analysed without iterations (the engine iterates 3 times): the
  mean A_res agrees with the engine's to 0.03 % (none) and 0.5 % (template) at nside 64, whose
  range reaches ℓ = 191 where a single HEALPix pass is least accurate.
* r̂ ± σ(r): :func:`engine.evaluation.delensing.fit_r` on the cross spectrum of the two delensed
  observations, C_b = r T_b + R_b with T_b the CAMB tensor BB at r = 1 × b_ℓ²
  (:func:`~engine.evaluation.delensing.tensor_template`), the noise N_b = mean auto − cross
  spectrum and f_sky = 1. The residual model R_b: for *none* CAMB's lensing BB × b_ℓ²; for a
  delenser this sky's A_res per bin × CAMB's lensing BB × b_ℓ² (calibrated on the true sky of the
  page — the engine's evaluation takes instead the mean delensed spectrum of independent r = 0
  skies, which one sky cannot provide).

Units: Q, U and B maps in µK (beamed), C_ℓ in µK², noise in µK-arcmin, beam FWHM in arcmin,
times in seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from engine.evaluation.delensing import (
    ELL_RANGE,
    bin_cl,
    ell_bins,
    fit_r,
    qe_forecast,
    second_observation,
    template_delens,
    tensor_template,
)
from engine.lru import LRUCache
from engine.params import ConfigError
from engine.physics.cmb import CMBParams, check_settings
from engine.physics.cmb_qe import qe_delens
from engine.physics.cmb_qe_iter import qe_delens_iterated
from engine.physics.cmb_theory import cmb_spectra

# The delensers and the caches of skies and stage timings (explorer.cmb_data), re-exported
# here under their old import path.
from explorer.cmb_data import (
    REFERENCE_SECONDS,  # noqa: F401 - re-exported
    SHIPPED,  # noqa: F401 - re-exported
    SKIES_COMMAND,  # noqa: F401 - re-exported
    SKY_CACHE_SIZE,  # noqa: F401 - re-exported
    TRAIN_COMMAND,  # noqa: F401 - re-exported
    TWO_OBSERVATIONS,
    DelenserInfo,
    checkpoint_file,  # noqa: F401 - re-exported
    delenser_info,  # noqa: F401 - re-exported
    expected_seconds,  # noqa: F401 - re-exported
    expected_wait,  # noqa: F401 - re-exported
    iterated_calibration,
    list_delensers,  # noqa: F401 - re-exported
    load_delenser,
    record_seconds,
    result_key,
    simulated_sky,
    sky_key,  # noqa: F401 - re-exported
    trained_notes,
)

#: nside of the page without a delenser (a sky in ≈ 7 s here); with one, the delenser's.
DEFAULT_NSIDE = 128
#: Settings of :class:`engine.physics.cmb.CMBParams` shown as widgets on the page.
PAGE_SETTINGS = ("r", "noise", "beam", "seed")
#: Slider ranges of the page (soft bounds; the hard bounds stay CMBParams').
PAGE_RANGES = {"r": (0.0, 0.1), "noise": (0.0, 20.0), "beam": (0.0, 60.0)}
#: Width of the ℓ bins and the lowest ℓ.
DELTA_ELL = 20
#: The stages of an update, with what the page says while each one runs.
STAGES = {
    "sky": "simulating the lensed sky (CAMB, lenspyx) and its spectra",
    "network": "delensing the observed sky with the network",
    "network2": "delensing the second noise realisation with the network (A_res, r)",
    "template": "template baseline: both observations delensed with the true φ",
    "qe": "QE baseline: both observations delensed with φ̂ reconstructed from the maps",
    "qe_it": "iterated-QE baseline: both observations delensed with the calibrated iterated QE",
}
#: Jacobi iterations of the analysis of the unlensed sky (:class:`BModes`; the engine's 3).
ITERATIONS = 3
#: Results kept per server process, at most this many and this many bytes of maps.
RESULT_CACHE_SIZE = 16
RESULT_CACHE_BYTES = 400 * 2**20


def page_settings(nside: int = DEFAULT_NSIDE, **values) -> CMBParams:
    """The page's sky settings: one sky (``count`` 1, one process, no mask) at ``nside``, with
    the slider ranges of :data:`PAGE_RANGES` as soft bounds of this instance."""
    s = CMBParams(nside=int(nside), count=1, workers=1, mask="none", **values)
    for name, rng in PAGE_RANGES.items():
        s.param[name].softbounds = rng
    return s


def snapshot(settings: CMBParams) -> CMBParams:
    """A copy of ``settings`` for a worker thread (the widgets may change the original)."""
    return CMBParams(**{n: v for n, v in settings.param.values().items() if n != "name"})


def lmax_of(nside: int) -> int:
    """Band limit 3·nside − 1 of the maps."""
    return 3 * int(nside) - 1


def ell_range_of(nside: int) -> tuple[int, int]:
    """Multipoles of the mean A_res and of the r fit: 20 ≤ ℓ ≤ min(200, 3·nside − 1)."""
    return ELL_RANGE[0], min(ELL_RANGE[1], lmax_of(nside))


def plot_lmax(nside: int) -> int:
    """Highest ℓ of the spectra shown: min(3·nside − 1, max(2·nside, 200))."""
    return min(lmax_of(nside), max(2 * int(nside), ELL_RANGE[1]))


# ---------------------------------------------------------------------------------------------
# B modes and spectra
# ---------------------------------------------------------------------------------------------


def qu_alm(q, u, lmax: int, iterations: int = 0) -> np.ndarray:
    """E and B a_ℓm ``(2, nalm) complex128`` (healpy layout, ℓ ≤ ``lmax``) of RING Q, U maps
    ``(npix,)`` in µK: ``healpy.map2alm_spin`` (spin 2, healpy's E/B convention), refined by
    ``iterations`` Jacobi steps (alm += analysis(map − synthesis(alm)), as ``healpy.map2alm``'s
    ``iter``)."""
    h = hp()
    nside = h.npix2nside(np.size(q))
    maps = [np.asarray(q, dtype=np.float64), np.asarray(u, dtype=np.float64)]
    alm = np.array(h.map2alm_spin(maps, 2, lmax=int(lmax)))
    for _ in range(int(iterations)):
        back = h.alm2map_spin(alm, nside, 2, int(lmax))
        alm += h.map2alm_spin([maps[0] - back[0], maps[1] - back[1]], 2, lmax=int(lmax))
    return alm


def b_alm(q, u, lmax: int, iterations: int = 0) -> np.ndarray:
    """B-mode a_ℓm ``(nalm,) complex128`` of RING Q, U maps in µK (:func:`qu_alm`)."""
    return qu_alm(q, u, lmax, iterations)[1]


def b_map(alm: np.ndarray, nside: int) -> np.ndarray:
    """The B field of B a_ℓm as a scalar map ``(12·nside²,) float32`` RING, µK."""
    lmax = hp().Alm.getlmax(len(alm))
    return np.asarray(hp().alm2map(alm, int(nside), lmax=lmax), dtype=np.float32)


def b_map_of(q, u, nside: int, iterations: int = 3) -> np.ndarray:
    """The B-mode map ``(npix,) float32`` (µK) of one Q, U pair: :func:`b_alm` with
    ``iterations`` Jacobi steps, then :func:`b_map`."""
    return b_map(b_alm(q, u, lmax_of(nside), iterations), nside)


class BModes:
    """B a_ℓm of maps that share the E modes of a reference (unlensed) sky, without its E→B
    leakage.

    A plain HEALPix analysis leaks E into B: for a pure-E beamed CMB sky at nside 64–128 the
    leaked power is 0.05 % of the lensing BB at ℓ < nside, 0.5–0.8 % at nside ≤ ℓ < 2·nside and
    1.4–7 × it at 2·nside ≤ ℓ < 3·nside (measured on skies synthesised from known a_ℓm), which
    would paint a B map on an r = 0 unlensed sky. So the reference ``u`` is analysed with
    :data:`ITERATIONS` Jacobi steps (leakage 7 × 10⁻⁶, 4 × 10⁻⁴, 3–4 %) and every other map X as
    B(X) = B(u) + B(X − u), the difference (lensing, noise, delensing residual: E and B of the same
    small size) analysed plainly: the same accuracy as iterating on X (measured 1.5 × 10⁻⁵,
    5 × 10⁻⁴, 6–8 % of the lensing BB in the three bands) for one iterated analysis in all.

    Parameters
    ----------
    q, u : ndarray ``(npix,)``
        The reference sky's Q, U (µK, RING).
    lmax : int
    """

    def __init__(self, q, u, lmax: int):
        self.q, self.u = np.asarray(q, np.float64), np.asarray(u, np.float64)
        self.lmax = int(lmax)
        self.reference = b_alm(self.q, self.u, self.lmax, ITERATIONS)

    def __call__(self, q, u) -> np.ndarray:
        """B a_ℓm ``(nalm,) complex128`` of maps ``q``, ``u`` (µK)."""
        return self.reference + b_alm(np.asarray(q) - self.q, np.asarray(u) - self.u, self.lmax)


def hp():
    """healpy (imported on first use)."""
    import healpy

    return healpy


def cl(a1: np.ndarray, a2: np.ndarray | None = None) -> np.ndarray:
    """Full-sky (cross) spectrum ``(lmax + 1,) float64`` of two a_ℓm arrays, µK²."""
    return np.asarray(hp().alm2cl(a1, a1 if a2 is None else a2), dtype=np.float64)


def range_ratio(num: np.ndarray, den: np.ndarray, ell_range: tuple[int, int]) -> float:
    """Σ_ℓ num / Σ_ℓ den over ``ell_range`` (inclusive): the mean A_res."""
    lo, hi = ell_range
    d = float(np.sum(den[lo : hi + 1]))
    return float(np.sum(num[lo : hi + 1])) / d if d > 0 else float("nan")


# ---------------------------------------------------------------------------------------------
# Caches: results and QE forecasts
# ---------------------------------------------------------------------------------------------

_results: LRUCache[CMBResult] = LRUCache(
    RESULT_CACHE_SIZE, max_bytes=RESULT_CACHE_BYTES, nbytes=lambda r: r.nbytes
)
_qe: LRUCache[dict] = LRUCache(8)


def cached_result(key: tuple) -> CMBResult | None:
    """The last result computed for ``key`` in this process (complete or not), or None."""
    return _results.get(key)


def _store(key: tuple, result: CMBResult) -> None:
    _results.put(key, result)


def spectra_of(settings: CMBParams):
    """CAMB spectra at r = 0 and the settings' cosmology to ℓ = max(3·nside − 1, 200) (cached by
    :func:`engine.physics.cmb_theory.cmb_spectra`): C^EE of the template, the lensing BB, the
    tensor template and the QE forecast."""
    cosmo = {n: float(getattr(settings, n)) for n in ("omega_m", "sigma8", "omega_b", "h", "n_s")}
    return cmb_spectra(max(lmax_of(settings.nside), ELL_RANGE[1]), r=0.0, **cosmo)


def qe_mv(settings: CMBParams, spectra) -> dict:
    """The MV quadratic-estimator forecast at the settings' noise, beam and lmax
    (:func:`engine.evaluation.delensing.qe_forecast`), cached per process."""
    ell_range = ell_range_of(settings.nside)
    key = (float(settings.noise), float(settings.beam), lmax_of(settings.nside), ell_range,
           tuple(sorted(spectra.params.items())))  # fmt: skip
    return _qe.get_or_make(key, lambda: qe_forecast(
        float(settings.noise), float(settings.beam), lmax_of(settings.nside), "mv",
        spectra=spectra, ell_range=ell_range,
    ))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# One update, stage by stage
# ---------------------------------------------------------------------------------------------

#: Methods of the readout, in order: no delensing, the network, the template, the measured QE,
#: the iterated QE (where calibrated).
METHODS = ("none", "network", "template", "qe", "qe_it")


@dataclass
class CMBResult:
    """What the page shows after a stage of an update (:func:`updates`).

    Attributes
    ----------
    settings : dict
        r, noise (µK-arcmin), beam (arcmin), seed, nside of the sky.
    delenser : str
        Name of the delensing network ('' without one).
    stages : tuple of str
        The stages of this update (:data:`STAGES`); ``done`` those that have run.
    done : tuple of str
    maps : dict of str → ndarray ``(12·nside²,) float32``
        B-mode maps (µK, RING): ``lensed`` (observed: lensed + beam + noise), ``unlensed``
        (true, beamed), ``network``, ``template``, ``qe``, ``qe_it`` (delensed; once their stage
        has run).
    b_max : float
        99.5 % quantile of |B| of the observed map, µK (the views' colour range).
    ell : ndarray ``(n_bins,)``
        Bin centres.
    bb : dict of str → ndarray ``(n_bins,)``
        Binned C_ℓ^BB (µK², beamed): ``lensed`` (cross of the two observations), ``unlensed``,
        ``network``, ``template``, ``qe``, ``qe_it`` (cross of the two delensed observations),
        ``theory_lensing``
        (CAMB lensing BB × b_ℓ²), ``qe_residual`` (MV forecast × b_ℓ²), ``primordial`` (r·T_b).
    a_res : dict of str → float
        Mean A_res over ``ell_range`` of :data:`METHODS` (as they come) and
        ``qe_mv`` (the forecast).
    a_res_bins : dict of str → ndarray ``(n_bins,)``
        A_res per bin (NaN outside the bins' data).
    a_res_own : dict of str → float
        Mean A_res over ``ell_range`` with each copy's own noise counted (the auto spectrum of
        d − n − u; :mod:`engine.evaluation.delensing`): what a forecast predicts for the
        template methods.
    fits : dict of str → dict
        ``r_hat``, ``sigma_r`` (floats) per method.
    ell_range : (int, int)
    notes : list of str
        Lines about the network (trained at other settings, failures).
    seconds : dict of str → float
        Measured seconds of each stage that has run (``total``: their sum).
    """

    settings: dict
    delenser: str
    stages: tuple
    done: tuple
    maps: dict
    b_max: float
    ell: np.ndarray
    bb: dict
    a_res: dict
    a_res_bins: dict
    fits: dict
    ell_range: tuple
    notes: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    a_res_own: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every stage has run."""
        return len(self.done) == len(self.stages)

    @property
    def next_stage(self) -> str | None:
        """The stage that runs next (None when complete)."""
        return None if self.complete else self.stages[len(self.done)]

    @property
    def nbytes(self) -> int:
        """Bytes of its maps."""
        return int(sum(m.nbytes for m in self.maps.values()))


class _Update:
    """The state of one update between its stages (held by the generator of :func:`updates`)."""

    def __init__(self, settings: CMBParams, info: DelenserInfo | None):
        check_settings(settings)
        self.s, self.info = settings, info
        self.nside = int(settings.nside)
        self.lmax = lmax_of(self.nside)
        self.ell_range = ell_range_of(self.nside)
        self.calibration = iterated_calibration(self.nside, settings.noise, settings.beam)
        self.stages = ("sky", *(("network", "network2") if info else ()), "template", "qe")
        self.stages += ("qe_it",) if self.calibration is not None else ()
        self.done: list[str] = []
        self.seconds: dict[str, float] = {}
        self.alm: dict[str, np.ndarray] = {}
        self.maps: dict[str, np.ndarray] = {}
        self.bb: dict[str, np.ndarray] = {}
        self.a_res: dict[str, float] = {}
        self.a_res_bins: dict[str, np.ndarray] = {}
        self.a_res_own: dict[str, float] = {}
        self.fits: dict[str, dict] = {}
        self.notes: list[str] = trained_notes(settings, info) if info else []
        self.b_max = 1.0

    # -- stages ------------------------------------------------------------------------------

    def run(self, stage: str) -> None:
        t0 = time.perf_counter()
        getattr(self, f"_{stage}")()
        dt = time.perf_counter() - t0
        self.seconds[stage] = dt
        per_obs = dt / 2 if stage in TWO_OBSERVATIONS else dt
        record_seconds(stage, self.nside, per_obs)
        self.done.append(stage)

    def _sky(self) -> None:
        s = self.s
        sky = simulated_sky(s)
        self.sky = sky
        self.attrs = {"noise": float(s.noise), "beam": float(s.beam), "nside": self.nside,
                      "lmax": self.lmax}  # fmt: skip
        q2, u2 = second_observation(
            {"Q_lensed": sky["Q_lensed"], "U_lensed": sky["U_lensed"], "attrs": self.attrs},
            int(s.seed),
        )
        self.obs = {1: (sky["Q"], sky["U"]), 2: (q2[0], u2[0])}
        a = self.alm
        self.b = BModes(sky["Q_unlensed"], sky["U_unlensed"], self.lmax)
        a["unlensed"] = self.b.reference
        a["obs1"], a["obs2"] = self.b(*self.obs[1]), self.b(*self.obs[2])
        a["lensed"] = self.b(sky["Q_lensed"], sky["U_lensed"])
        self.maps["lensed"] = b_map(a["obs1"], self.nside)
        self.maps["unlensed"] = b_map(a["unlensed"], self.nside)
        self.b_max = float(np.percentile(np.abs(self.maps["lensed"]), 99.5))
        self.spectra = spectra_of(s)
        self.bins = ell_bins(DELTA_ELL, plot_lmax(self.nside), DELTA_ELL)
        ell = np.arange(self.spectra.lmax + 1)
        beam2 = hp().gauss_beam(math.radians(float(s.beam) / 60.0), lmax=int(ell[-1])) ** 2
        self.lensing_cl = np.asarray(self.spectra.lensing_bb) * beam2
        self.bb["theory_lensing"] = bin_cl(self.lensing_cl, self.bins)
        self.tensor = tensor_template(self.bins, float(s.beam), self.spectra)
        self.bb["primordial"] = float(s.r) * self.tensor
        qe = qe_mv(s, self.spectra)
        self.bb["qe_residual"] = bin_cl(np.asarray(qe["residual_bb"]) * beam2, self.bins)
        self.a_res["qe_mv"] = float(qe["a_res_mean"])
        self.bb["lensed"] = bin_cl(cl(a["obs1"], a["obs2"]), self.bins)
        self.bb["unlensed"] = bin_cl(cl(a["unlensed"]), self.bins)
        self.lensing_residual = cl(a["lensed"] - a["unlensed"])
        self._method("none", a["obs1"], a["obs2"])

    def _network(self) -> None:
        self.network = None
        try:
            model, task = load_delenser(self.info.path)
            q, u = task.predict(model, *self.obs[1])
            self.alm["network1"] = self.b(q, u)
            self.maps["network"] = b_map(self.alm["network1"], self.nside)
            self.network = (model, task)
        except Exception as exc:  # noqa: BLE001 - a broken checkpoint: one line on the page
            self.notes.append(f"network {self.info.name}: {one_line(exc)}")

    def _network2(self) -> None:
        if self.network is None:
            return
        model, task = self.network
        q, u = task.predict(model, *self.obs[2])
        self.alm["network2"] = self.b(q, u)
        self._method("network", self.alm["network1"], self.alm["network2"])

    def _template(self) -> None:
        out = []
        for i in (1, 2):
            q, u = template_delens(*self.obs[i], self.sky["phi"], self.attrs, spectra=self.spectra)
            out.append(self.b(q, u))
        self.alm["template1"], self.alm["template2"] = out
        self.maps["template"] = b_map(out[0], self.nside)
        self._method("template", *out)

    def _qe(self) -> None:
        out = [self.b(*qe_delens(*self.obs[i], self.attrs, spectra=self.spectra)) for i in (1, 2)]
        self.alm["qe1"], self.alm["qe2"] = out
        self.maps["qe"] = b_map(out[0], self.nside)
        self._method("qe", *out)

    def _qe_it(self) -> None:
        out = [
            self.b(*qe_delens_iterated(*self.obs[i], self.attrs, self.calibration,
                                       spectra=self.spectra))
            for i in (1, 2)
        ]  # fmt: skip
        self.alm["qe_it1"], self.alm["qe_it2"] = out
        self.maps["qe_it"] = b_map(out[0], self.nside)
        self._method("qe_it", *out)

    def _method(self, name: str, a1: np.ndarray, a2: np.ndarray) -> None:
        """A_res, the delensed cross spectrum and the r fit of a method (module docstring)."""
        au = self.alm["unlensed"]
        num = cl(a1 - au, a2 - au)
        den = self.lensing_residual
        bins = self.bins
        with np.errstate(divide="ignore", invalid="ignore"):
            self.a_res_bins[name] = bin_cl(num, bins) / bin_cl(den, bins)
        self.a_res[name] = range_ratio(num, den, self.ell_range)
        al, ao = self.alm["lensed"], (self.alm["obs1"], self.alm["obs2"])
        own = 0.5 * sum(cl(a - o + al - au) for a, o in zip((a1, a2), ao, strict=True))
        self.a_res_own[name] = range_ratio(own, den, self.ell_range)
        cross = cl(a1, a2)
        noise = np.clip(bin_cl(0.5 * (cl(a1) + cl(a2)) - cross, bins), 0.0, None)
        cross_b = bin_cl(cross, bins)
        if name != "none":
            self.bb[name] = cross_b
        lensing = self.bb["theory_lensing"]
        model = lensing if name == "none" else np.nan_to_num(self.a_res_bins[name]) * lensing
        try:
            fit = fit_r(cross_b, self.tensor, model, noise, bins, 1.0, self.ell_range)
            self.fits[name] = {"r_hat": float(fit["r_hat"]), "sigma_r": float(fit["sigma_r"])}
        except ConfigError as exc:  # no bin with tensor power in range (e.g. tiny nside)
            self.notes.append(f"r fit ({name}): {exc}")

    # -- result ------------------------------------------------------------------------------

    def result(self) -> CMBResult:
        s = self.s
        seconds = dict(self.seconds)
        seconds["total"] = sum(self.seconds.values())
        return CMBResult(
            settings={"r": float(s.r), "noise": float(s.noise), "beam": float(s.beam),
                      "seed": int(s.seed), "nside": self.nside},
            delenser=self.info.name if self.info else "", stages=self.stages,
            done=tuple(self.done), maps=dict(self.maps), b_max=self.b_max,
            ell=self.bins.centres, bb=dict(self.bb), a_res=dict(self.a_res),
            a_res_bins=dict(self.a_res_bins), fits=dict(self.fits), ell_range=self.ell_range,
            notes=list(self.notes), seconds=seconds, a_res_own=dict(self.a_res_own),
        )  # fmt: skip


def updates(settings: CMBParams, info: DelenserInfo | None = None) -> Iterator[CMBResult]:
    """The update of ``settings``, stage by stage (module docstring): one :class:`CMBResult`
    after each stage, the last one complete; each is also cached for :func:`cached_result`.

    Pure (no page state): safe in a worker thread on a :func:`snapshot`; the generator must be
    advanced by one thread at a time.

    Parameters
    ----------
    settings : CMBParams
        The sky (sky 0 of its seed; ``count``, ``workers`` and ``mask`` are not used).
    info : DelenserInfo, optional
        The delensing network; its nside must be the settings' (else its stages only add a
        note).

    Raises
    ------
    ConfigError
        Settings the engine refuses (:func:`engine.physics.cmb.check_settings`), raised by the
        first ``next``.
    """
    key = result_key(settings, info)
    work = _Update(settings, info)
    for stage in work.stages:
        work.run(stage)
        result = work.result()
        _store(key, result)
        yield result


def compute(settings: CMBParams, info: DelenserInfo | None = None) -> CMBResult:
    """The complete result of ``settings`` (every stage of :func:`updates`)."""
    results = list(updates(settings, info))
    return results[-1]


def one_line(exc: BaseException) -> str:
    """One line about an exception: the message of a ConfigError, else ``Type: message``."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else ""
    if isinstance(exc, ConfigError):
        return msg or "bad settings"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
