"""Conditional generators of maps (the base of :mod:`engine.tasks.gan` and
:mod:`engine.tasks.diffusion`): data, the map transform, conditioning, sampling and the
validation metrics every emulator shares.

Data and splits are those of :class:`engine.tasks.regression.Regression` (any dataset spec with
parameter labels, split by simulation, or a kind generated on the fly; the same reproducible
batches): the labels the generator is conditioned on (``targets``) are normalised to the label
box, ``y = (theta - low) / (high - low)`` in [0, 1].

Map transform (:meth:`GenerativeTask.encode`, inverted by :meth:`GenerativeTask.decode`):
channel ``c`` becomes ``u = ln(x + offset_c)`` for the channels modelled in log (a density
contrast δ > −1 with offset 1, i.e. ln(1 + δ), the Gaussianising variable of a density field,
Coles & Jones 1991; positive fields such as CAMELS' Mgas, HI or B with offset 0), clipped below at
``ln(LOG_FLOOR)`` for empty pixels — or, with the setting ``log_epsilon`` = ε > 0, δ as
``ln(1 + ε + δ)`` (offset 1 + ε): empty pixels (δ = −1, no particle) then sit at ln ε next to
the sparsest occupied ones instead of a spike at ln 10⁻³ ≈ −6.9, far below every other pixel,
that a generator cannot draw exactly and a discriminator reads as a sign of real maps; decoded
δ is clipped at −1; ``u = asinh(x / s)`` for a signed heavy-tailed channel (the
velocity divergence θ of N-body slabs, whose halo pixels reach ~100 standard deviations; s the
robust standard deviation, so the core stays linear and the tails logarithmic; forced for the
channels of the setting ``asinh_channels``, e.g. ``all`` for strong-lens images, positive with
noise that can make pixels slightly negative: s = 1.4826 MAD ≈ the noise level, so the noise stays
Gaussian and the arcs are compressed logarithmically, the stretch of Lupton, Gunn & Szalay 1999,
AJ 118, 1406); then ``(u − mean_c) / std_c`` with the mean and standard
deviation of the train split (of 256 maps drawn once from the run's seed on the fly). Fixed
per-channel constants, saved in the task state, so generated maps come back in map units.

Validation (:meth:`GenerativeTask.validate`): the generator draws one map for every validation
map, at the same parameters, from a fixed seed; ``fid`` is the Fréchet distance (Heusel et al.
2017, eq. 2, computed by torchmetrics) between the two sets in the space of
:class:`engine.nn.features.SummaryFeatures` (per channel: ln P(k) in 8 bins and 7 quantiles
of the standardised pixels of the transformed map; the features of the emulator report without
a regressor) — a physics FID, not an Inception one; ``fid_floor`` is the same between the
two halves of the validation set (the score of a perfect generator at that N: FID is biased at
small N); ``pk_error`` is the mean over channels and k ≤ k_N/2 of |P_gen(k)/P_real(k) − 1| of the
mean spectra (map units). ``fid`` selects ``best.pt``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import param
import torch
from torch import nn

from engine.data.sources import STREAM_VAL, GeneratedMaps, derive_seed
from engine.nn.features import SummaryFeatures, frechet_distance
from engine.params import PARAM_NAMES, ConfigError
from engine.physics.stats import power_spectrum
from engine.tasks.regression import Regression, target_names

#: Floor of ``x + offset`` before the logarithm of log channels (an empty pixel of δ = −1).
LOG_FLOOR = 1e-3
#: Maps drawn to fit the transform's constants when maps are generated on the fly.
TRANSFORM_MAPS = 256
#: Validation maps generated per validation (the first ones of the validation set).
VAL_GENERATED_MAX = 512
#: Seed key of the generator's validation draws (with STREAM_VAL).
_VAL_SAMPLE_KEY = 7


class GenerativeParams(param.Parameterized):
    """Settings every conditional generator task shares."""

    targets = param.String(
        "omega_m,sigma8",
        doc="Comma-separated labels the generator is conditioned on: omega_m,sigma8 (maps "
        "generated on the fly have only these), any label coords of a dataset (e.g. the six "
        "CAMELS parameters omega_m,sigma8,A_SN1,A_AGN1,A_SN2,A_AGN2), or 'all'.",
    )
    log_channels = param.String(
        "auto",
        doc="Channels modelled as ln(x + offset) before standardisation: 'auto' (a channel "
        "named delta, or a single-channel density-contrast kind: ln(1 + delta); a channel whose "
        "train maps are all positive: ln(x); any other channel with heavy tails, excess "
        "kurtosis > 10, such as the velocity divergence theta: asinh(x / s), s = 1.4826 MAD), "
        "'none', or comma-separated channel indices (log only).",
    )
    log_epsilon = param.Number(
        0.0,
        bounds=(0.0, 10.0),
        doc="epsilon of the density-contrast channels' transform ln(1 + epsilon + delta) "
        "(dimensionless): 0 keeps ln(1 + delta) with empty pixels (delta = -1) clipped at "
        "ln(1e-3); a fraction of one particle's contribution to a pixel, 1/n (n: mean "
        "particles per pixel), puts them next to the sparsest occupied pixels.",
    )
    asinh_channels = param.String(
        "auto",
        doc="Channels modelled as asinh(x / s) before standardisation, s = 1.4826 MAD of the "
        "train pixels (the noise level of mostly-empty images: noise stays linear, bright "
        "features become logarithmic; positive images with noise such as strong-lens images): "
        "'auto' (the heavy-tailed channels of log_channels=auto), 'all', 'none', or "
        "comma-separated channel indices (these are never log channels).",
    )

    def check(self) -> None:
        """Raises ConfigError for targets other than omega_m,sigma8 without a dataset, or
        noise/smoothing augmentations (a generator must learn the maps, not augmented ones), or
        bad channel transforms (:meth:`check_maps`)."""
        names = target_names(self.targets)
        if not getattr(self, "dataset", "") and names != PARAM_NAMES:
            raise ConfigError(
                f"targets={self.targets!r}: maps generated on the fly are labelled with "
                "omega_m,sigma8 only; train on a dataset (dataset=SPEC) for other targets"
            )
        GenerativeParams.check_maps(self)

    def check_maps(self) -> None:
        """The checks of :meth:`check` that are not about the targets: no noise or smoothing
        augmentation, valid ``log_channels`` and ``asinh_channels`` that share no channel.

        Raises
        ------
        ConfigError
            As :meth:`check`.
        """
        for name in ("augment_noise", "augment_smoothing"):
            if getattr(self, name, 0) > 0:
                raise ConfigError(
                    f"{name}={getattr(self, name)} must be 0 for a generator (it would learn "
                    "the augmented maps); augment_flips is allowed"
                )
        log = _parse_log_channels(self.log_channels)
        asinh = _parse_asinh_channels(getattr(self, "asinh_channels", "auto"))
        if isinstance(log, list) and log and asinh not in ("auto", []):
            both = set(log) if asinh == "all" else set(log) & set(asinh)
            if both:
                raise ConfigError(
                    f"channel {min(both)} is in both log_channels={self.log_channels!r} and "
                    f"asinh_channels={self.asinh_channels!r}: a channel has one transform"
                )


def _parse_asinh_channels(text: str) -> str | list[int]:
    """``"auto"`` / ``"none"`` / ``"all"`` / ``"0,1"`` → "auto", [], "all" or [0, 1].

    Raises
    ------
    ConfigError
        Anything else.
    """
    text = str(text).strip()
    if text == "all":
        return "all"
    try:
        return _parse_log_channels(text)
    except ConfigError:
        raise ConfigError(
            f"asinh_channels={text!r} must be 'auto', 'none', 'all' or comma-separated channel "
            "indices"
        ) from None


def _parse_log_channels(text: str) -> str | list[int]:
    """``"auto"`` / ``"none"`` / ``"0,1"`` → "auto", [] or [0, 1].

    Raises
    ------
    ConfigError
        Anything else.
    """
    text = str(text).strip()
    if text in ("auto", ""):
        return "auto"
    if text == "none":
        return []
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ConfigError(
            f"log_channels={text!r} must be 'auto', 'none' or comma-separated channel indices"
        ) from None
    if any(i < 0 for i in out):
        raise ConfigError(f"log_channels={text!r}: channel indices must be ≥ 0")
    return out


#: Excess kurtosis above which an 'auto' channel that is not a log channel is modelled as
#: asinh(x / s): a heavy-tailed signed field (the velocity divergence θ of N-body slabs).
HEAVY_TAIL_KURTOSIS = 10.0


def robust_scale(x: torch.Tensor) -> float:
    """The robust standard deviation 1.4826 · MAD of the values of ``x`` (any shape, map
    units; exact for a Gaussian), or their standard deviation when the MAD is 0 (1.0 when both
    are 0): the scale s of u = asinh(x / s)."""
    v = x.double().flatten()
    mad = float((v - v.median()).abs().median())
    if mad > 0:
        return 1.4826 * mad
    std = float(v.std()) if v.numel() > 1 else 0.0
    return std if std > 0 else 1.0


def _asinh_scale(x: torch.Tensor) -> float | None:
    """The scale s of u = asinh(x / s) for a heavy-tailed channel ``x`` (any shape): the robust
    standard deviation 1.4826 · MAD (exact for a Gaussian), so the core of the distribution
    stays linear and the tails become logarithmic; None when the excess kurtosis is at most
    :data:`HEAVY_TAIL_KURTOSIS` (a channel kept linear)."""
    v = x.double().flatten()
    z = (v - v.mean()) / v.std().clamp(min=1e-300)
    if float(z.pow(4).mean()) - 3.0 <= HEAVY_TAIL_KURTOSIS:
        return None
    return robust_scale(v)


class GenerativeTask(Regression):
    """Base of the conditional generator tasks (module docstring). Subclasses give the
    networks, the training step, :meth:`sample_normalised` and their own ``state``."""

    params_class = GenerativeParams
    selection = ("fid", "min")
    sample_unit = "maps"
    #: True when :meth:`sample_normalised` takes ``progress(step, total)`` and calls it per
    #: sampling step (diffusion): :meth:`generate` then reports steps, not batches.
    progress_per_step: ClassVar[bool] = False

    def __init__(self, settings, device):
        super().__init__(settings, device)
        if settings is None:
            return
        self._fit_transform()

    # -- the map transform ---------------------------------------------------------------------

    def _channel_names(self) -> list[str]:
        src = self.source
        fields = getattr(src, "attrs", {}).get("fields") if hasattr(src, "attrs") else None
        if fields is None and isinstance(src, GeneratedMaps):
            fields = getattr(src.settings, "fields", None)
        if isinstance(fields, str):
            fields = [f.strip() for f in fields.split(",")]
        names = list(fields) if fields is not None else []
        if len(names) != self.channels:
            names = ["delta"] if (self.channels == 1 and self._is_density()) else []
            names += [f"channel_{i}" for i in range(len(names), self.channels)]
        return [str(n) for n in names]

    def _is_density(self) -> bool:
        """True for the single-channel kinds whose maps are a density contrast δ > −1."""
        return str(self.kind) in ("lognormal", "2lpt", "pm")

    def _fit_transform(self) -> None:
        """Channel names, log channels and offsets, and the per-channel mean/std of the
        transformed train maps."""
        if isinstance(self.source, GeneratedMaps):
            gen = torch.Generator(device=self.device).manual_seed(
                derive_seed(self.settings.seed, STREAM_VAL, 1)
            )
            maps = self.source.draw(TRANSFORM_MAPS, gen)[0].cpu()
        else:
            maps = self.source.split("train")[0][:2048]
        self.channel_names = self._channel_names()
        spec = _parse_log_channels(self.settings.log_channels)
        forced = _parse_asinh_channels(getattr(self.settings, "asinh_channels", "auto"))
        if forced == "all":
            forced = list(range(self.channels))
        if isinstance(forced, list) and any(i >= self.channels for i in forced):
            raise ConfigError(
                f"asinh_channels={self.settings.asinh_channels!r}: the maps have "
                f"{self.channels} channels (indices 0..{self.channels - 1})"
            )
        offsets = []
        delta = 1.0 + float(getattr(self.settings, "log_epsilon", 0.0))  # offset of δ channels
        for c, name in enumerate(self.channel_names):
            low = float(maps[:, c].min())
            if isinstance(forced, list) and c in forced:
                offsets.append(None)
            elif spec == "auto":
                use = name == "delta" or (low > 0)
                offsets.append((delta if name == "delta" else 0.0) if use else None)
            else:
                if any(i >= self.channels for i in spec):
                    raise ConfigError(
                        f"log_channels={self.settings.log_channels!r}: the maps have "
                        f"{self.channels} channels (indices 0..{self.channels - 1})"
                    )
                offsets.append((delta if name == "delta" else 0.0) if c in spec else None)
        self.log_offsets = offsets
        self.asinh_scales = [
            robust_scale(maps[:, c])
            if isinstance(forced, list) and c in forced
            else _asinh_scale(maps[:, c])
            if (off is None and spec == "auto" and forced == "auto")
            else None
            for c, off in enumerate(offsets)
        ]
        u = self._forward_transform(maps.double())
        self.u_mean = u.mean(dim=(0, 2, 3)).tolist()
        self.u_std = u.std(dim=(0, 2, 3)).clamp(min=1e-12).tolist()

    def _forward_transform(self, maps: torch.Tensor) -> torch.Tensor:
        out = maps.clone()
        for c, off in enumerate(self.log_offsets):
            if off is not None:
                out[:, c] = torch.log((maps[:, c] + off).clamp(min=LOG_FLOOR))
        for c, scale in enumerate(self.asinh_scales):
            if scale is not None:
                out[:, c] = torch.asinh(maps[:, c] / scale)
        return out

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(self.u_mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        s = torch.tensor(self.u_std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return m, s

    def encode(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw maps ``(B, C, N, N)`` (map units) → standardised network space (module doc)."""
        u = self._forward_transform(maps.float())
        m, s = self._stats(u)
        return (u - m) / s

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Network-space maps ``(B, C, N, N)`` → maps in map units (inverse of :meth:`encode`
        above the log floor; density contrasts, offset ≥ 1, clipped at δ = −1), float32."""
        m, s = self._stats(x)
        u = x.float() * s + m
        out = u.clone()
        for c, off in enumerate(self.log_offsets):
            if off is not None:
                out[:, c] = torch.exp(u[:, c]) - off
                if off > 1.0:  # ln(1 + ε + δ): a value below δ = −1 is an empty pixel
                    out[:, c] = out[:, c].clamp(min=-1.0)
        for c, scale in enumerate(self.asinh_scales):
            if scale is not None:
                out[:, c] = torch.sinh(u[:, c]) * scale
        return out

    # -- sampling ------------------------------------------------------------------------------

    def sample_normalised(
        self, nets: Mapping[str, nn.Module], y: torch.Tensor, generator: torch.Generator, **options
    ) -> torch.Tensor:
        """Network-space maps ``(B, C, N, N)`` for normalised labels ``y (B, P)`` in [0, 1]
        (subclasses)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        nets: Mapping[str, nn.Module],
        theta,
        generator: torch.Generator,
        batch_size: int = 64,
        progress=None,
        **options,
    ) -> torch.Tensor:
        """Maps in map units at physical parameters ``theta``.

        Parameters
        ----------
        nets : mapping of str to nn.Module
            The task's networks (eval mode; EMA weights from a checkpoint's ``state``).
        theta : array-like (B, P) float
            Physical values of :attr:`names` (e.g. omega_m, sigma8), inside the label box.
        generator : torch.Generator
            On the task's device; same generator state ⇒ same maps.
        batch_size : int
            Maps per network call.
        progress : callable, optional
            Called as ``progress(done, total)`` after each batch; with
            :attr:`progress_per_step` (diffusion) after each sampling step, counting the steps
            of all batches (``total`` = steps × batches).
        **options
            Task sampling options (diffusion: ``steps``).

        Returns
        -------
        torch.Tensor (B, C, N, N) float32 on the task's device.

        Raises
        ------
        ConfigError
            theta of the wrong width or outside the label box.
        """
        y = self.normalised_parameters(theta)
        return self.generate_normalised(nets, y, generator, batch_size, progress, **options)

    def normalised_parameters(self, theta) -> torch.Tensor:
        """Physical parameters ``theta (B, P)`` (array-like; ``(P,)`` is one map) → normalised
        ``y (B, P)`` float32 on the task's device, checked against the label box.

        Raises
        ------
        ConfigError
            theta of the wrong width or outside the label box.
        """
        theta = torch.as_tensor(theta, dtype=torch.float32, device=self.device)
        theta = theta.reshape(-1, len(self.names)) if theta.ndim < 2 else theta
        if theta.shape[1] != len(self.names):
            raise ConfigError(
                f"theta has {theta.shape[1]} parameters per map; the generator is conditioned "
                f"on {len(self.names)}: {', '.join(self.names)}"
            )
        y = Regression.normalise(self, theta)
        bad = ((y < -1e-6) | (y > 1 + 1e-6)).any(dim=0)
        if bad.any():
            j = int(bad.nonzero()[0])
            raise ConfigError(
                f"{self.names[j]} must be in [{float(self.low[j]):g}, {float(self.high[j]):g}] "
                "(the generator's training box)"
            )
        return y

    @torch.no_grad()
    def generate_normalised(
        self,
        nets: Mapping[str, nn.Module],
        y: torch.Tensor,
        generator: torch.Generator,
        batch_size: int = 64,
        progress=None,
        **options,
    ) -> torch.Tensor:
        """Maps in map units ``(B, C, N, N)`` float32 for conditioning ``y (B, ·)`` in network
        form (normalised parameters, and what a subclass appends), in batches of
        ``batch_size``; ``progress`` and ``options`` as :meth:`generate`."""
        for net in nets.values():
            net.eval()
        out = []
        n_batches = -(-len(y) // batch_size)
        for b, i in enumerate(range(0, len(y), batch_size)):
            if progress is not None and self.progress_per_step:

                def per_step(done, total, b=b):
                    progress(b * total + done, n_batches * total)

                options["progress"] = per_step
            x = self.sample_normalised(nets, y[i : i + batch_size], generator, **options)
            out.append(self.decode(x))
            if progress is not None and not self.progress_per_step:
                progress(min(i + batch_size, len(y)), len(y))
        return torch.cat(out)

    # -- validation ----------------------------------------------------------------------------

    def generator_nets(self, nets: Mapping[str, nn.Module]) -> Mapping[str, nn.Module]:
        """The networks sampling needs (default: all)."""
        return nets

    @torch.no_grad()
    def sample_metrics(self, nets, data, **options) -> dict[str, float]:
        """``fid``, ``fid_floor`` and ``pk_error`` of generated against validation maps
        (module docstring), on the first :data:`VAL_GENERATED_MAX` validation maps."""
        xs, ys, n = [], [], 0
        for x, y in data:
            xs.append(x)
            ys.append(y)
            n += len(x)
            if n >= VAL_GENERATED_MAX:
                break
        real = torch.cat(xs)[:VAL_GENERATED_MAX]
        y = torch.cat(ys)[:VAL_GENERATED_MAX]
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.settings.seed if self.settings else 0, STREAM_VAL, _VAL_SAMPLE_KEY)
        )
        nets = self.generator_nets(nets)
        for net in nets.values():
            net.eval()
        bs = max(1, int(getattr(self.settings, "batch_size", 64)))
        fake = torch.cat(
            [
                self.sample_normalised(nets, y[i : i + bs], gen, **options)
                for i in range(0, len(y), bs)
            ]
        )
        feats = SummaryFeatures()
        f_real, f_fake = feats(real.cpu()), feats(fake.float().cpu())
        half = len(real) // 2
        out = {
            "fid": frechet_distance(f_fake, f_real),
            "fid_floor": frechet_distance(f_real[:half], f_real[half : 2 * half]),
        }
        out["pk_error"] = _pk_error(self.decode(fake.float()).cpu(), self.decode(real).cpu())
        if not all(math.isfinite(v) for v in out.values()):
            out = {k: (v if math.isfinite(v) else float("inf")) for k, v in out.items()}
        return out

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The regression task's state plus the transform: ``channel_names``,
        ``log_offsets`` (None: not a log channel), ``asinh_scales`` (None: not an asinh
        channel), ``u_mean``, ``u_std``."""
        out = super().state()
        out.update(
            channel_names=list(self.channel_names),
            log_offsets=list(self.log_offsets),
            asinh_scales=list(self.asinh_scales),
            u_mean=list(self.u_mean),
            u_std=list(self.u_std),
        )
        return out

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device):
        """The task for sampling from a checkpoint's ``task_state`` (no data)."""
        task = super().from_state(state, device)
        task.channel_names = list(state["channel_names"])
        task.log_offsets = [None if o is None else float(o) for o in state["log_offsets"]]
        scales = state.get("asinh_scales") or [None] * len(task.log_offsets)
        task.asinh_scales = [None if v is None else float(v) for v in scales]
        task.u_mean = [float(v) for v in state["u_mean"]]
        task.u_std = [float(v) for v in state["u_std"]]
        return task


def _pk_error(gen: torch.Tensor, real: torch.Tensor) -> float:
    """Mean over channels and bins with k ≤ k_N/2 of |P̄_gen/P̄_real − 1| (mean spectra of maps
    ``(B, C, N, N)``; pixel units: bins of integer wavenumber index 1 … N/4)."""
    n = gen.shape[-1]
    edges = np.arange(1, n // 4 + 2) - 0.5
    pg = power_spectrum(gen.double(), 2 * math.pi, edges, dim=2).power.mean(0)
    pr = power_spectrum(real.double(), 2 * math.pi, edges, dim=2).power.mean(0)
    return float((pg / pr - 1).abs().mean())
