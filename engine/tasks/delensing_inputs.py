r"""Inputs of the QE-assisted delensing network (``qe_input`` of :mod:`engine.tasks.delensing`):
the lensing-B template of a quadratic estimator run on the observed sky itself, and the
calibration of the iterated QE that ``qe_template="qe_it"`` needs.

The network's input is ``(Q − T_Q, U − T_U, T_Q, T_U)`` (:data:`QE_INPUTS`, :func:`with_template`),
T the template of :func:`qe_template`: the plain QE's (:func:`engine.physics.cmb_qe.qe_delens`)
or the calibrated iterated QE's (:func:`engine.physics.cmb_qe_iter.qe_delens_iterated`). Units:
µK (Q, U, RING), noise µK-arcmin, beam arcmin FWHM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.params import ConfigError

#: Input channels of the QE-assisted network (``qe_input``): the QE-delensed sky and T.
QE_INPUTS = ("Q - T_Q", "U - T_U", "T_Q", "T_U")


def with_template(obs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(2, npix)`` observed Q/U and ``(2, npix)`` template → ``(4, npix)`` network input
    (:data:`QE_INPUTS`), same dtype and units (µK)."""
    return np.concatenate([obs - t, t])


def qe_template(q, u, attrs: Mapping[str, Any], calibration: Mapping | None = None) -> np.ndarray:
    """Lensing-B template of one observed sky, observed − QE-delensed.

    Parameters
    ----------
    q, u : array_like ``(npix,)`` float, µK
        Observed Q, U (RING, full sky).
    attrs : mapping
        Sky settings (noise, beam, cosmology) as :func:`engine.physics.cmb_qe.qe_phi` takes them.
    calibration : mapping, optional
        Weights of the iterated QE (:func:`engine.physics.cmb_qe_iter.calibrate_iteration`):
        its template (:func:`~engine.physics.cmb_qe_iter.qe_delens_iterated`); None: the plain
        QE's (:func:`engine.physics.cmb_qe.qe_delens`).

    Returns
    -------
    ``(2, npix) float64``: T_Q, T_U, µK.

    Raises
    ------
    ConfigError
        Bad maps or attrs, a calibration of other settings.
    """
    from engine.physics.cmb_qe import qe_delens  # spherical-transform stack: only when used
    from engine.physics.cmb_qe_iter import qe_delens_iterated

    if calibration is not None:
        qd, ud = qe_delens_iterated(q, u, attrs, calibration)
    else:
        qd, ud = qe_delens(q, u, attrs)
    return np.stack([np.asarray(q, np.float64) - qd, np.asarray(u, np.float64) - ud])


def find_calibration(path: str, attrs: Mapping[str, Any], nside: int) -> dict[str, Any]:
    """The iterated-QE calibration of ``qe_template="qe_it"``: the JSON file ``path``, or (empty)
    the one in ``assets/qe`` measured at the skies' nside, noise (µK-arcmin) and beam (arcmin)
    (:func:`engine.physics.cmb_qe_iter.qe_calibration_for`), with its ``path``.

    Raises
    ------
    ConfigError
        No such calibration, an unreadable file, or one measured at other settings.
    """
    from engine.physics.cmb_maps import _attr, _lmax
    from engine.physics.cmb_qe_iter import check_calibration, qe_calibration_for

    lmax = _lmax(12 * nside**2, int(attrs.get("lmax") or 3 * nside - 1))
    if not path:
        cal = qe_calibration_for({**attrs, "nside": nside}, lmax)
        if cal is None:
            raise ConfigError(
                f"qe_template='qe_it': no calibration of the iterated QE at nside {nside}, "
                f"noise {attrs.get('noise')} uK-arcmin, beam {attrs.get('beam')} arcmin in "
                "assets/qe; make one with python -m engine qe-calibrate --dataset SKIES --out "
                "FILE.json and set qe_calibration=FILE.json"
            )
        return cal
    try:
        cal = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"qe_calibration={path!r}: cannot read it ({exc})") from None
    check_calibration(cal, nside, _attr(attrs, "noise"), _attr(attrs, "beam"), lmax)
    return cal | {"path": str(path)}
