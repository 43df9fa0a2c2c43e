r"""CMB delensing on the sphere: a HEALPix U-Net maps lensed, beamed, noisy Q/U to the unlensed Q/U
at the same beam (issue 14 §2).

Data
----
The training skies are a file of ``python -m engine sky --kind cmb`` (:class:`engine.data.cmb.
CMBSkies`; setting ``dataset``), split by sky (80/10/10 %). Input: the observed Q, U (µK);
target: ``Q_unlensed``, ``U_unlensed`` (µK, same beam, no noise; with ``keep_noise`` plus the
input's own noise realisation, so that only the lensing is removed). Both are divided by one fixed
scale, the RMS of the observed Q of the first training sky (saved in the checkpoint), so the
network works with numbers of order one. Masks are ignored in training (the files hold every
pixel); evaluation applies them.

Network
-------
:class:`engine.nn.healpix_unet.HealpixUNet`: a 2-D U-Net on the 12 NESTED base faces, each padded
with a margin ``m`` from its neighbouring faces (no interpolation, no seams), residual (output =
input + correction, so the untrained network is "no delensing"). Training runs on random
``crop`` × ``crop`` windows of the padded faces (with their margin: what the network sees at the
edges is the true neighbouring sky, as in full-face inference); the loss is the mean squared
error on the window's centre in scaled units, plus, with ``b_weight`` > 0, that weight times the
mean B-mode power of the error on the window (flat-sky E/B on the face grid,
:mod:`engine.nn.healpix_pol`): the plain Q/U error is dominated by E-mode lensing and noise,
while the lensing B power is what delensing must remove.

QE-assisted network (``qe_input``; its inputs: :mod:`engine.tasks.delensing_inputs`)
---------------------------------------------------------------------------------------
The inputs become Q − T_Q, U − T_U, T_Q, T_U: T is the lensing-B template of the quadratic
estimator on the observed sky itself (:func:`engine.physics.cmb_qe.qe_delens`: φ̂ from the
observed Q/U with the B modes of ℓ ≤ 200 left out, Wiener-filtered E lensed by it), so that the
residual network's base is QE delensing (the untrained network *is* QE delensing) and training
learns a correction from the QE-delensed sky and the template. The design follows the QE: the
lensing information is in the products of E and B over ℓ ~ 500–2000 that a network on 128²
windows of 7′ pixels would have to learn to form; T hands it the estimator's answer. Each stored
sky's T is computed once per process (~16 s at nside 512); a rotated pool sky rotates the stored
observed sky, its lensed and unlensed skies and T by the same rotation (the QE on the full sky
with isotropic filters commutes with rotations), with no fresh noise, so that T is exactly the
template of the network's input. Inference (:meth:`Delensing.predict`) computes T of the sky
given, at the training skies' noise, beam and cosmology. With ``qe_template="qe_it"`` T is the
template of the calibrated iterated QE (:func:`engine.physics.cmb_qe_iter.qe_delens_iterated`,
~28 s per sky at nside 512), whose calibration (``qe_calibration``, or the one of ``assets/qe`` at
the training skies' nside, noise and beam) is stored in the checkpoint, so that inference uses the
same weights as training.

Augmentation that respects spin 2
---------------------------------
A pool of ``pool`` skies is held in memory as padded faces. Every ``rotate_every`` steps one slot
is replaced by a training sky rotated by a uniformly random rotation of the sphere on its E/B
harmonic coefficients (:func:`engine.data.cmb.rotate_qu`: lensed and unlensed skies get the same
rotation; Q/U pixel values are never moved), with a fresh white-noise realisation added to the
rotated lensed sky at the file's noise level. Slot contents are a function of the step only
(content ``c`` comes from ``derive_seed(seed, STREAM_DATA, c)``), so a resumed run rebuilds the
same pool. The first ``pool`` contents are the first training skies as stored.

Validation: fixed windows of the val skies (as stored): ``loss`` (MSE) beside ``loss_identity``
(the MSE of the input itself, i.e. no delensing) and their ratio ``loss_ratio``; ``best.pt`` by
``loss``. The physics metrics (residual lensing B power A_res, r) are computed on full skies by
``python -m engine evaluate`` (:mod:`engine.evaluation.delensing_eval`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import param
import torch
from torch import nn

from engine.data.cmb import CMBSkies, random_euler, rotate_qu, white_noise
from engine.data.sources import STREAM_DATA, STREAM_TRAIN, STREAM_VAL, derive_seed
from engine.nn.healpix import crop_padded, nest_to_faces, nest_to_ring, pad_faces, ring_to_nest
from engine.nn.healpix_pol import b_power, face_pol_basis
from engine.nn.registry import build_model
from engine.params import ConfigError
from engine.tasks.base import Stepper, Task
from engine.tasks.delensing_inputs import QE_INPUTS, find_calibration, qe_template, with_template

#: Input and target channels.
INPUTS = ("Q", "U")
TARGETS = ("Q_unlensed", "U_unlensed")
#: The observed sky without its noise (beamed): observed − lensed is the noise realisation.
LENSED = ("Q_lensed", "U_lensed")


class DelensingParams(param.Parameterized):
    """Settings of the delensing task (module docstring)."""

    crop = param.Integer(
        128,
        bounds=(16, 2048),
        doc="Side of the training windows cut from the HEALPix faces, pixels (a multiple of "
        "2**levels, at most nside); the window's margin comes from the neighbouring sky.",
    )
    pool = param.Integer(
        8,
        bounds=(1, 256),
        doc="Skies held in memory as padded faces; windows are drawn from them.",
    )
    rotate_every = param.Integer(
        4,
        bounds=(0, 100_000),
        doc="Every this many steps one pool sky is replaced by a randomly rotated training sky "
        "(rotation of its E/B harmonic coefficients) with fresh noise; 0: no augmentation.",
    )
    val_crops = param.Integer(
        48,
        bounds=(1, 100_000),
        doc="Windows of the val skies in the fixed validation set.",
    )
    b_weight = param.Number(
        0.0,
        bounds=(0.0, 10_000.0),
        doc="Weight of the B-mode term of the loss: the mean B power of the window's error "
        "against the unlensed sky plus the input's own noise (flat-sky E/B on the face grid, "
        "engine.nn.healpix_pol), added to the Q/U mean squared error; 0: plain MSE.",
    )

    keep_noise = param.Boolean(
        False,
        doc="Train towards the unlensed sky plus the input's own noise (remove the lensing "
        "only, as a template does) instead of the noiseless unlensed sky (remove lensing and "
        "noise: the network then also learns to filter B where the noise dominates, which "
        "suppresses primordial B, see its transfer function in the evaluation report).",
    )

    qe_input = param.Boolean(
        False,
        doc="QE-assisted network: its inputs are the observed Q/U minus T and T, T the lensing-B "
        "template of the quadratic estimator on the observed sky (engine.physics.cmb_qe; ~16 s "
        "per sky at nside 512, once per stored sky), so that the untrained network is QE "
        "delensing and training learns a correction; rotated pool skies then rotate the stored "
        "observed sky (its noise with it) instead of drawing fresh noise, so T stays exact.",
    )
    qe_template = param.Selector(
        default="qe",
        objects=["qe", "qe_it"],
        doc="The template given to the QE-assisted network (qe_input): qe, the quadratic "
        "estimator's (engine.physics.cmb_qe); qe_it, the calibrated iterated QE's "
        "(engine.physics.cmb_qe_iter, ~28 s per sky at nside 512; needs a calibration of the "
        "training skies' nside, noise and beam: qe_calibration, or one in assets/qe).",
    )
    qe_calibration = param.String(
        "",
        doc="JSON file of python -m engine qe-calibrate used by qe_template=qe_it; empty: the "
        "one in assets/qe measured at the training skies' nside, noise and beam. Stored in "
        "the checkpoint.",
    )

    def check(self) -> None:
        """Nothing to check alone (the crop is checked against nside and levels when the task
        is built)."""


class DelenserModelParams(param.Parameterized):
    """The delensing network: :class:`engine.nn.healpix_unet.HealpixUNet`."""

    model = param.Selector(
        default="healpix_unet",
        objects=["healpix_unet"],
        doc="Network: healpix_unet, a U-Net on the 12 HEALPix base faces padded from their "
        "neighbours (engine.nn.healpix).",
    )
    width = param.Integer(
        16, bounds=(1, 256), doc="Channels of the first level (doubling per level)."
    )
    levels = param.Integer(4, bounds=(1, 8), doc="Number of 2x2 poolings of the U-Net.")
    margin = param.Integer(
        0,
        bounds=(0, 1024),
        doc="Padding of every face from its neighbours, pixels (a multiple of 2**levels); 0: "
        "4 * 2**levels.",
    )

    def model_kwargs(self, in_channels: int, n_outputs: int) -> dict[str, Any]:
        """Keyword arguments of ``build_model("healpix_unet", ...)`` (plain values)."""
        kwargs: dict[str, Any] = {
            "in_channels": int(in_channels),
            "out_channels": int(n_outputs),
            "width": int(self.width),
            "levels": int(self.levels),
            "residual": True,
        }
        if int(self.margin):
            kwargs["margin"] = int(self.margin)
        return kwargs


def _centre(x: torch.Tensor, m: int) -> torch.Tensor:
    """The Q/U input of padded windows ``(k, C, s + 2m, s + 2m)`` on their centres: what the
    loss calls "identity" — the observed sky, or with ``qe_input`` the QE-delensed sky."""
    x = x[:, :2]
    return x[:, :, m:-m, m:-m] if m else x


def _faces(maps: np.ndarray) -> torch.Tensor:
    """``(C, npix)`` RING maps → ``(12, C, n, n)`` float32 NESTED faces."""
    x = ring_to_nest(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)))
    return nest_to_faces(x).transpose(0, 1).contiguous()


class Delensing(Task):
    """The delensing task (module docstring).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams or None
        Task ``delensing``; None only through :meth:`from_state`.
    device : torch.device

    Raises
    ------
    ConfigError
        No dataset or not a CMB sky file, empty train or val split, an nside the network cannot
        pool (not a multiple of 2**levels), or a crop that is not a multiple of 2**levels or
        exceeds nside.
    """

    name = "delensing"
    params_class = DelensingParams
    model_params_class = DelenserModelParams
    selection = ("loss", "min")
    sample_unit = "windows"

    def __init__(self, settings, device):
        super().__init__(settings, device)
        if settings is None:
            return
        s = settings
        if not s.dataset:
            raise ConfigError(
                "task delensing trains on CMB skies: set dataset=PATH (a .zarr of python -m "
                "engine sky --kind cmb --count N --out PATH)"
            )
        self.source = CMBSkies(s.dataset)
        where = f"dataset={s.dataset!r}"
        self.train_rows = self.source.rows("train")
        self.val_rows = self.source.rows("val")
        if self.train_rows.size == 0 or self.val_rows.size == 0:
            raise ConfigError(
                f"{where}: {self.source.ds.sizes['sample']} skies leave an empty train or val "
                "split (80/10/10 %): write at least 10 skies"
            )
        nside = self.source.nside
        stride = 2 ** int(s.levels)
        if nside % stride:
            raise ConfigError(f"{where}: nside={nside} is not a multiple of 2**levels={stride}")
        if s.crop % stride or s.crop > nside:
            raise ConfigError(
                f"crop={s.crop} must be a multiple of 2**levels={stride} and at most nside={nside}"
            )
        q = self.source.sky(int(self.train_rows[0]), ("Q",))["Q"]
        scale = float(np.sqrt(np.mean(q.astype(np.float64) ** 2)))
        if not math.isfinite(scale) or scale <= 0:
            raise ConfigError(f"{where}: the first training sky's Q is zero or not finite")
        self._setup(scale, nside, dict(self.source.attrs), int(s.crop), bool(s.qe_input))
        if s.qe_template == "qe_it" and not self.qe_input:
            raise ConfigError("qe_template='qe_it' is the template of qe_input: set qe_input=true")
        if self.qe_input and s.qe_template == "qe_it":
            self.calibration = find_calibration(s.qe_calibration, self.sky_attrs, nside)
        self._slots: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * int(s.pool)
        self._slot_ids: list[int] = [-1] * int(s.pool)

    def _setup(
        self, scale: float, nside: int, attrs: Mapping[str, Any], crop: int, qe_input: bool
    ) -> None:
        self.qe_input = bool(qe_input)
        self.calibration: dict[str, Any] | None = None  # of the iterated QE (qe_template)
        self._templates: dict[int, np.ndarray] = {}
        self.scale = float(scale)
        self.crop = int(crop)
        self.nside = int(nside)
        self.sky_attrs = {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in attrs.items()
            if isinstance(v, (int, float, str, bool, np.generic))
        }

    def template(self, q: np.ndarray, u: np.ndarray) -> np.ndarray:
        """QE lensing-B template of one observed sky at the training skies' noise, beam and
        cosmology, ``(2, npix) float64`` Q/U, µK, RING: :func:`engine.tasks.delensing_inputs.
        qe_template` with the task's calibration (None: the plain QE)."""
        return qe_template(q, u, self.sky_attrs, self.calibration)

    def _stored_template(self, row: int) -> np.ndarray:
        """:meth:`template` of the stored sky ``row`` (computed once per process)."""
        if row not in self._templates:
            sky = self.source.sky(int(row), INPUTS)
            self._templates[row] = self.template(sky["Q"], sky["U"]).astype(np.float32)
        return self._templates[row]

    # -- networks ------------------------------------------------------------------------------

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{"model": ("healpix_unet", kwargs)}``: 2 channels in (Q, U; 4 with ``qe_input``:
        Q − T_Q, U − T_U, T_Q, T_U), 2 out."""
        n_in = len(QE_INPUTS if self.qe_input else INPUTS)
        kwargs = DelenserModelParams.model_kwargs(self.settings, n_in, len(TARGETS))
        return {"model": (self.settings.model, kwargs)}

    def build_networks(self) -> dict[str, nn.Module]:
        """One network ``model``: NESTED skies ``(B, 2, npix) → (B, 2, npix)``."""
        name, kwargs = self.network_specs()["model"]
        return {"model": build_model(name, **kwargs)}

    def _margin(self) -> int:
        """Face padding m, pixels (the network's default 4·2**levels unless set)."""
        s = self.settings
        if s is None:
            return self.margin
        stride = 2 ** int(s.levels)
        return min(int(s.margin) or 4 * stride, self.nside)

    # -- data ----------------------------------------------------------------------------------

    def _content(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool content ``c`` (module docstring): padded input faces ``(12, C, n+2m, n+2m)``
        and target faces ``(12, 4, n, n)`` (unlensed Q, U, then the Q, U of the input's noise
        realisation), scaled, float32 on the CPU."""
        s = self.settings
        pool = int(s.pool)
        rows = self.train_rows
        if c < pool:
            row = int(rows[c % rows.size])
            sky = self.source.sky(row, INPUTS + LENSED + TARGETS)
            x = np.stack([sky[n] for n in INPUTS])
            noise = x - np.stack([sky[n] for n in LENSED])
            y = np.stack([sky[n] for n in TARGETS])
            if self.qe_input:
                x = with_template(x, self._stored_template(row))
        else:
            rng = np.random.default_rng(derive_seed(s.seed, STREAM_DATA, c))
            row = int(rows[rng.integers(rows.size)])
            sky = self.source.sky(row, (INPUTS if self.qe_input else ()) + LENSED + TARGETS)
            euler = random_euler(rng)
            lensed = np.stack(rotate_qu(sky["Q_lensed"], sky["U_lensed"], euler))
            y = np.stack(rotate_qu(sky["Q_unlensed"], sky["U_unlensed"], euler))
            if self.qe_input:  # the stored observed sky and its template, rotated alike
                x = np.stack(rotate_qu(sky["Q"], sky["U"], euler))
                noise = x - lensed
                t = self._stored_template(row)
                x = with_template(x, np.stack(rotate_qu(t[0], t[1], euler)))
            else:
                noise = white_noise(self.source.noise, self.nside, rng)
                x = lensed + noise
        m = self._margin()
        xs = torch.from_numpy(np.ascontiguousarray(x / self.scale, dtype=np.float32))
        padded = pad_faces(ring_to_nest(xs)[None], m)  # (12, 2, n+2m, n+2m)
        return padded, _faces(np.concatenate([y, noise]) / self.scale)

    def _pool_at(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The pool at step ``step``: slot i holds the latest content c ≡ i (mod pool) with
        c < pool + (step // rotate_every) refreshes (module docstring)."""
        s = self.settings
        pool = int(s.pool)
        made = pool + (step // int(s.rotate_every) if int(s.rotate_every) else 0)
        for i in range(pool):
            c = i + pool * ((made - 1 - i) // pool)
            if self._slot_ids[i] != c:
                self._slots[i] = self._content(c)
                self._slot_ids[i] = c
        return self._slots  # type: ignore[return-value]

    def shard(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard ``index`` of the batch of step ``step``: windows ``(k, 2, crop+2m, crop+2m)``
        and their target centres ``(k, 7, crop, crop)`` (target Q, U, the input's noise Q, U,
        then the window's :func:`~engine.nn.healpix_pol.face_pol_basis`), from random pool
        skies and faces."""
        s = self.settings
        k = s.batch_size // s.batch_shards
        gen = torch.Generator().manual_seed(derive_seed(s.seed, STREAM_TRAIN, step, index))
        slots = self._pool_at(step)
        pick = torch.randint(0, len(slots) * 12, (k,), generator=gen)
        xs = torch.stack([slots[int(p) // 12][0][int(p) % 12] for p in pick])
        ys = torch.stack([slots[int(p) // 12][1][int(p) % 12] for p in pick])
        ys = torch.cat([ys, self._basis()[pick % 12]], dim=1)  # + the face's Q/U basis
        x, y = crop_padded(
            xs, int(s.crop), self._margin(), ys, generator=gen, align=2 ** int(s.levels)
        )
        return x.to(self.device), y.to(self.device)

    # -- objective -----------------------------------------------------------------------------

    def training_step(self, step, rows, nets, opt: Stepper) -> dict[str, torch.Tensor]:
        """The objective (:meth:`_objective`: Q/U mean squared error of the delensed window
        centres, scaled units, plus the optional B term); one step of ``model``. Logs ``loss``,
        ``loss_identity`` (the same for the input: no delensing), ``grad_norm`` and, with a B
        term, ``loss_mse``, ``loss_b`` and their ``_identity``."""
        x, yb = self.train_batch(step, *rows)
        with opt.autocast:
            pred = nets["model"].forward_faces(opt.prepare(x), self._margin())
        m = self._margin()
        loss, parts = self._objective(pred.float(), yb)
        grad_norm = opt.step("model", loss)
        with torch.no_grad():
            ident, ident_parts = self._objective(_centre(x, m), yb)
        return {
            "loss": loss.detach(), "loss_identity": ident, "grad_norm": grad_norm,
            **{k: v.detach() for k, v in parts.items()},
            **{f"{k}_identity": v for k, v in ident_parts.items()},
        }  # fmt: skip

    def _objective(self, pred: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The loss of delensed window centres ``pred`` ``(k, 2, s, s)`` against ``yb``
        ``(k, 7, s, s)`` (:meth:`shard`): the Q/U mean squared error against the unlensed sky,
        plus ``b_weight`` × the B power (:func:`engine.nn.healpix_pol.b_power`) of the error
        against the unlensed sky *plus the input's noise realisation* (so the B term weighs
        the lensing B left in the output, not the noise, which the cross-spectrum metrics do
        not count; measured 2026-11-26, a B term on the error against the noiseless sky made
        A_res worse and biased r low); scaled units squared; and the two terms (``loss_mse``,
        ``loss_b``). With ``keep_noise`` the Q/U error is taken against the unlensed sky plus
        the input's noise."""
        noisy_err = pred - yb[:, :2] - yb[:, 2:4]  # against unlensed + the input's noise
        err = noisy_err if getattr(self.settings, "keep_noise", False) else pred - yb[:, :2]
        mse = err.pow(2).mean()
        w = float(getattr(self.settings, "b_weight", 0.0) or 0.0)
        if w <= 0:
            return mse, {}
        b = b_power(noisy_err, yb[:, 4:7])
        return mse + w * b, {"loss_mse": mse, "loss_b": b}

    def _basis(self) -> torch.Tensor:
        """:func:`engine.nn.healpix_pol.face_pol_basis` of the training nside, ``(12, 3, n, n)``
        float32 on the CPU (cached)."""
        if getattr(self, "_basis_faces", None) is None:
            self._basis_faces = torch.from_numpy(np.array(face_pol_basis(self.nside)))
        return self._basis_faces

    def validation_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed windows of the val skies as stored: ``val_crops`` of them, cycling over skies
        and faces, in batches of ``batch_size``."""
        s = self.settings
        gen = torch.Generator().manual_seed(derive_seed(s.seed, STREAM_VAL))
        xs, ys = [], []
        per_sky = math.ceil(int(s.val_crops) / self.val_rows.size)
        for row in self.val_rows:
            sky = self.source.sky(int(row), INPUTS + LENSED + TARGETS)
            obs = np.stack([sky[n] for n in INPUTS])
            xin = with_template(obs, self._stored_template(int(row))) if self.qe_input else obs
            x = torch.from_numpy(xin / self.scale).float()
            y = np.stack([sky[n] for n in TARGETS] + list(obs - np.stack([sky[n] for n in LENSED])))
            padded = pad_faces(ring_to_nest(x)[None], self._margin())
            faces = torch.cat([_faces(y / self.scale), self._basis()], dim=1)  # + noise, basis
            pick = torch.randint(0, 12, (per_sky,), generator=gen)
            xc, yc = crop_padded(
                padded[pick], int(s.crop), self._margin(), faces[pick], generator=gen,
                align=2 ** int(s.levels),
            )  # fmt: skip
            xs.append(xc)
            ys.append(yc)
        x, y = torch.cat(xs)[: int(s.val_crops)], torch.cat(ys)[: int(s.val_crops)]
        bs = int(s.batch_size)
        return [
            (x[i : i + bs].to(self.device), y[i : i + bs].to(self.device))
            for i in range(0, len(x), bs)
        ]

    @torch.no_grad()
    def validate(self, nets, data, autocast=None) -> dict[str, float]:
        """``loss`` (the training objective, :meth:`_objective`: the MSE of the delensed
        windows, scaled units, plus ``b_weight`` × their B power), ``loss_identity`` (of the
        input, no delensing), ``loss_ratio`` = loss / loss_identity (< 1: better than no
        delensing); with a B term also ``loss_mse`` and ``loss_b`` and their ``_identity``."""
        model = nets["model"]
        model.eval()
        m = self._margin()
        sums: dict[str, float] = {}
        n = 0
        for x, yb in data:
            with self.autocast_or_null(autocast):
                pred = model.forward_faces(x, m)
            k = len(x)
            for name, out in (("", pred.float()), ("_identity", _centre(x, m))):
                loss, parts = self._objective(out, yb)
                for key, v in {"loss": loss, **parts}.items():
                    sums[key + name] = sums.get(key + name, 0.0) + float(v) * k
            n += k
        out = {key: v / n for key, v in sums.items()}
        out["loss_ratio"] = out["loss"] / out["loss_identity"]
        return out

    # -- state and inference -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``scale`` (µK), ``nside``, ``margin``, ``crop`` (training window, pixels: inference
        runs on windows of this size), ``inputs``/``targets`` (channel names) and ``sky_attrs``
        (the training skies' settings: noise, beam, r, lmax_unlensed, …)."""
        return {
            "crop": self.crop,
            "scale": self.scale,
            "nside": self.nside,
            "margin": self._margin(),
            "inputs": list(QE_INPUTS if self.qe_input else INPUTS),
            "targets": list(TARGETS),
            "qe_input": self.qe_input,
            "qe_calibration": self.calibration,
            "sky_attrs": dict(self.sky_attrs),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device) -> Delensing:
        """The task's prediction path from a checkpoint's ``task_state``."""
        task = cls(None, device)
        task._setup(
            state["scale"], state["nside"], state.get("sky_attrs", {}), state["crop"],
            bool(state.get("qe_input", False)),
        )  # fmt: skip
        task.margin = int(state["margin"])
        task.calibration = state.get("qe_calibration")
        return task

    def describe(self) -> dict[str, Any]:
        """Plain summary for ``config.json``: dataset, skies per split, nside, scale, sky
        settings."""
        return {
            "kind": "cmb",
            "dataset": self.source.spec,
            "skies": {"train": int(self.train_rows.size), "val": int(self.val_rows.size)},
            "nside": self.nside,
            "scale_uK": self.scale,
            "sky": dict(self.sky_attrs),
        }

    def map_config(self) -> dict[str, Any]:
        """``{"kind": "cmb", ...}``: the training skies' settings."""
        return {"kind": "cmb", **self.sky_attrs}

    @torch.no_grad()
    def predict(self, model: nn.Module, q: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
        """Delens one sky.

        Parameters
        ----------
        model : nn.Module
            The trained :class:`~engine.nn.healpix_unet.HealpixUNet` (eval mode).
        q, u : numpy.ndarray
            ``(npix,)`` observed Q, U in RING ordering, µK, at the training nside.

        Returns
        -------
        (q, u) : ``(npix,) float32`` delensed Q, U (RING, µK).

        With ``qe_input`` the QE template T of the sky (:meth:`template`, ~16 s at nside 512)
        is computed first. The network runs on windows of the training crop size with their
        margin from the padded faces (:meth:`engine.nn.healpix_unet.HealpixUNet.forward` with
        ``tile``), so that its normalisation statistics are those of training.

        Raises
        ------
        ConfigError
            Maps of another nside than the network's training skies.
        """
        import healpy as hp

        npix = int(np.asarray(q).size)
        if npix != hp.nside2npix(self.nside) or np.asarray(u).size != npix:
            got = hp.npix2nside(npix) if hp.isnpixok(npix) else f"{npix} pixels"
            raise ConfigError(
                f"maps have nside {got}; the delenser was trained at nside {self.nside}"
            )
        device = next(model.parameters()).device
        obs = np.stack([q, u]).astype(np.float64)
        if self.qe_input:
            obs = with_template(obs, self.template(obs[0], obs[1]))
        x = torch.from_numpy(obs.astype(np.float32) / self.scale)
        x = ring_to_nest(x)[None].to(device)
        out = model(x, tile=self.crop)[0].float().cpu()  # windows as in training
        y = nest_to_ring(out).numpy() * self.scale
        return y[0].astype(np.float32), y[1].astype(np.float32)
