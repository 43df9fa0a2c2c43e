"""Parameter regression: infer (omega_m, sigma8), or any labels of a dataset, from maps.

The network predicts, per target, a mean and a log standard deviation of the target normalised
to the label box, ``y = (theta - low) / (high - low)``; the loss is the Gaussian negative
log-likelihood (the heteroscedastic regression loss of Nix & Weigend 1994; Kendall & Gal 2017,
eq. 5). Maps enter the network divided by ONE fixed global scale per channel (the kind's
:meth:`engine.kinds.Kind.map_scale`, the pixel std at the fiducial cosmology; for a dataset its
``map_scale`` attr or the std of its train maps), never standardised per map, which would erase
the amplitude that carries sigma8.

Reproducibility: the batch of (0-based) step ``s`` is ``batch_shards`` shards of ``batch_size /
batch_shards`` maps; shard ``j`` comes from a generator seeded with ``derive_seed(seed,
STREAM_TRAIN, s)`` (one shard) or ``derive_seed(seed, STREAM_TRAIN, s, j)``: its parameters,
maps and augmentations (a dataset: the rows of a per-pass permutation seeded with
``derive_seed(seed, STREAM_DATA, pass)``). The validation set comes from ``derive_seed(seed,
STREAM_VAL)`` (or is the dataset's val split). So a run resumed from any checkpoint reaches the
same weights as an uninterrupted one, and a DDP run trains on the same global batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import param
import torch
from torch import nn

from engine.data.augment import augment_maps
from engine.data.sources import (
    STREAM_TRAIN,
    STREAM_VAL,
    GeneratedMaps,
    LabelledMaps,
    derive_seed,
    epoch_rows,
    scale_maps,
)
from engine.nn.hybrid import set_map_scale
from engine.nn.registry import build_model
from engine.params import PARAM_NAMES, ConfigError
from engine.tasks.base import Stepper, Task
from engine.tasks.settings import DataParams, ModelParams


class RegressionParams(param.Parameterized):
    """Settings of the regression task."""

    targets = param.String(
        "omega_m,sigma8",
        doc="Comma-separated labels the network infers: omega_m,sigma8 (maps generated on the "
        "fly have only these), any label coords of a dataset (e.g. the CAMELS parameters "
        "omega_m,sigma8,A_SN1,A_AGN1,A_SN2,A_AGN2), or 'all' for every label of the dataset.",
    )

    def check(self) -> None:
        """Raises ConfigError for targets other than omega_m,sigma8 without a dataset."""
        names = target_names(self.targets)
        if not getattr(self, "dataset", "") and names != PARAM_NAMES:
            raise ConfigError(
                f"targets={self.targets!r}: maps generated on the fly are labelled with "
                "omega_m,sigma8 only; train on a dataset (dataset=SPEC) for other targets"
            )


def target_names(text: str) -> tuple[str, ...] | None:
    """``"omega_m, sigma8"`` → ``("omega_m", "sigma8")``; ``"all"`` → None.

    Raises
    ------
    ConfigError
        Empty or repeated names.
    """
    if text.strip() == "all":
        return None
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"targets={text!r} must be distinct comma-separated label names")
    return names


class Regression(Task):
    """Regression of labels from maps with a Gaussian negative log-likelihood (module doc).

    Parameters
    ----------
    settings : engine.train.settings.TrainParams or None
        The run's settings; None only through :meth:`from_state` (inference).
    device : torch.device

    Raises
    ------
    ConfigError
        Bad map settings or dataset.
    """

    name = "regression"
    params_class = RegressionParams
    selection = ("loss", "min")
    sample_unit = "maps"
    #: Clamp of the predicted log standard deviation (normalised units), for a stable loss.
    LOG_STD_MIN, LOG_STD_MAX = -7.0, 3.0

    def __init__(self, settings, device):
        super().__init__(settings, device)
        self._perms: dict[int, torch.Tensor] = {}
        if settings is None:
            return
        s = settings
        if s.dataset:
            self.source = LabelledMaps(s.dataset, target_names(s.targets))
        else:
            self.source = GeneratedMaps(
                s.kind,
                DataParams.map_settings(s),
                [s.omega_m_min, s.sigma8_min],
                [s.omega_m_max, s.sigma8_max],
                DataParams.resolved_prior_points(s),
                s.seed,
                self.device,
            )
        src = self.source
        self._setup(src.names, src.low, src.high, src.scale, src.channels, src.kind)
        self.pixel = src.pixel

    def _setup(self, names, low, high, scale, channels, kind) -> None:
        self.names = tuple(names)
        self.scale = scale
        self.channels = int(channels)
        self.kind = kind
        self.low = torch.tensor(low, dtype=torch.float32, device=self.device)
        self.high = torch.tensor(high, dtype=torch.float32, device=self.device)

    # -- networks ------------------------------------------------------------------------------

    def network_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """``{"model": (name, kwargs)}`` from the model settings."""
        m = self.settings
        kwargs = ModelParams.model_kwargs(m, self.channels, len(self.names))
        return {"model": (m.model, kwargs)}

    def build_networks(self) -> dict[str, nn.Module]:
        """One network ``model``; models with an input transform (ln(1 + δ)) get the map
        scale to undo the normalisation (:func:`engine.nn.hybrid.set_map_scale`)."""
        name, kwargs = self.network_specs()["model"]
        model = build_model(name, **kwargs)
        if isinstance(self.scale, float):
            set_map_scale(model, self.scale)
        return {"model": model}

    # -- data ----------------------------------------------------------------------------------

    def to_physical(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised labels ``(B, P)`` → physical ones."""
        return self.low + (self.high - self.low) * y

    def normalise(self, theta: torch.Tensor) -> torch.Tensor:
        """Physical labels ``(B, P)`` → normalised ones, float32 on the task's device."""
        theta = theta.to(self.device, torch.float32)
        return (theta - self.low) / (self.high - self.low)

    def encode(self, maps: torch.Tensor) -> torch.Tensor:
        """Raw maps ``(B, C, N, N)`` (map units) → network inputs: divided by :attr:`scale`
        (one global scale per channel, never per map)."""
        return scale_maps(maps, self.scale)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The augmentations of the settings on normalised maps ``x (B, C, N, N)``;
        ``augment_noise`` (map units) and ``augment_smoothing`` (length units) converted."""
        s = self.settings
        scale = self.scale if isinstance(self.scale, float) else min(self.scale)
        return augment_maps(
            x,
            generator,
            flips=s.augment_flips,
            noise=s.augment_noise / scale,
            smoothing=s.augment_smoothing / self.pixel,
        )

    def sample(self, n: int, generator: torch.Generator, augment: bool = False):
        """``n`` maps generated on the fly: ``x (n, 1, N, N)`` divided by :attr:`scale` (and
        augmented if ``augment``) and normalised labels ``y (n, 2)`` in [0, 1).

        Raises
        ------
        ConfigError
            The task reads a dataset.
        """
        if not isinstance(self.source, GeneratedMaps):
            raise ConfigError("sample() generates maps on the fly; this task reads a dataset")
        maps, y = self.source.draw(n, generator)
        x = self.encode(maps)
        return (self.augment(x, generator) if augment else x), y

    def _rows(self, start: int, n: int) -> torch.Tensor:
        """Train-split rows of global sample positions ``start .. start+n-1``: each pass over
        the split is a permutation seeded with ``derive_seed(seed, STREAM_DATA, pass)``."""
        count = len(self.source.split("train")[0])
        return epoch_rows(self._perms, self.settings.seed, count, start, n)

    def shard(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard ``index`` of the training batch of step ``step`` (module docstring)."""
        s = self.settings
        m = s.batch_size // s.batch_shards
        keys = (step,) if s.batch_shards == 1 else (step, index)
        gen = torch.Generator(device=self.device).manual_seed(
            derive_seed(s.seed, STREAM_TRAIN, *keys)
        )
        if isinstance(self.source, GeneratedMaps):
            return self.sample(m, gen, augment=True)
        maps, theta = self.source.split("train")
        rows = self._rows(step * s.batch_size + index * m, m)
        x = self.encode(maps[rows].to(self.device))
        return self.augment(x, gen), self.normalise(theta[rows])

    # -- objective -----------------------------------------------------------------------------

    def split(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Model output ``(B, 2P)`` → mean ``(B, P)`` and clamped log-std ``(B, P)``, float32."""
        output = output.float()
        p = len(self.names)
        return output[:, :p], output[:, p:].clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian negative log-likelihood per label of ``y`` (normalised), scalar."""
        mean, log_std = self.split(output)
        z = (y - mean) * torch.exp(-log_std)
        return (0.5 * z.square() + log_std).mean() + 0.5 * math.log(2 * math.pi)

    def training_step(self, step, rows, nets, opt: Stepper) -> dict[str, torch.Tensor]:
        """NLL on this process's rows of the batch of ``step``; one step of ``model``."""
        x, y = self.train_batch(step, *rows)
        with opt.autocast:
            out = nets["model"](opt.prepare(x))
        loss = self.loss(out, y)
        grad_norm = opt.step("model", loss)
        return {"loss": loss.detach(), "grad_norm": grad_norm}

    def validation_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed validation batches ``[(x, y), ...]`` of ``batch_size`` maps.

        On the fly: ``val_maps`` maps generated once from ``derive_seed(seed, STREAM_VAL)``
        (never augmented). A dataset: its val split in file order.
        """
        s = self.settings
        bs = s.batch_size
        if not isinstance(self.source, GeneratedMaps):
            maps, theta = self.source.split("val")
            return [
                (
                    self.encode(maps[i : i + bs].to(self.device)),
                    self.normalise(theta[i : i + bs]),
                )
                for i in range(0, len(maps), bs)
            ]
        gen = torch.Generator(device=self.device).manual_seed(derive_seed(s.seed, STREAM_VAL))
        sizes = [min(bs, s.val_maps - i) for i in range(0, s.val_maps, bs)]
        return [self.sample(n, gen) for n in sizes]

    @torch.no_grad()
    def validate(self, nets, data, autocast=None) -> dict[str, float]:
        """``loss`` (mean NLL, normalised units), ``rmse_<name>`` (RMSE of the predicted mean)
        and ``std_<name>`` (mean predicted standard deviation), physical units, per label."""
        model = nets["model"]
        model.eval()
        means, log_stds, ys = [], [], []
        for x, y in data:
            with self.autocast_or_null(autocast):
                out = model(x)
            mean, log_std = self.split(out)
            means.append(mean)
            log_stds.append(log_std)
            ys.append(y)
        mean, log_std, y = torch.cat(means), torch.cat(log_stds), torch.cat(ys)
        loss = self.loss(torch.cat([mean, log_std], dim=1), y)
        width = self.high - self.low
        rmse = ((mean - y).square().mean(0).sqrt() * width).tolist()
        std = (log_std.exp().mean(0) * width).tolist()
        out = {"loss": float(loss)}
        for i, name in enumerate(self.names):
            out[f"rmse_{name}"] = rmse[i]
            out[f"std_{name}"] = std[i]
        return out

    # -- state and inference -------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """``names``, ``prior_low``, ``prior_high`` (physical units), ``map_scale`` (float or
        one per channel), ``channels``, ``kind``."""
        return {
            "names": list(self.names),
            "prior_low": self.low.tolist(),
            "prior_high": self.high.tolist(),
            "map_scale": self.scale,
            "channels": self.channels,
            "kind": self.kind,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], device) -> Regression:
        """The task's prediction path from a checkpoint's ``task_state`` (no data set-up)."""
        task = cls(None, device)
        scale = state["map_scale"]
        task._setup(
            state["names"],
            state["prior_low"],
            state["prior_high"],
            float(scale) if isinstance(scale, float | int) else list(scale),
            state.get("channels", 1),
            state.get("kind", ""),
        )
        return task

    def describe(self) -> dict[str, Any]:
        """The data source's summary (kind, dataset, label box, scale, channels)."""
        return self.source.describe()

    def map_config(self) -> dict[str, Any]:
        """``{"kind": ..., setting: value}`` of the training maps."""
        return self.source.map_config()

    @torch.no_grad()
    def predict(self, model: nn.Module, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of the labels for raw maps.

        Parameters
        ----------
        maps : torch.Tensor (B, N, N) or (B, C, N, N) float32
            Maps in map units, not normalised.

        Returns
        -------
        mean, std : torch.Tensor (B, P) float32, physical units.
        """
        model.eval()
        x = maps.to(self.device, torch.float32)
        x = scale_maps(x.unsqueeze(1) if x.ndim == 3 else x, self.scale)
        mean, log_std = self.split(model(x))
        return self.to_physical(mean), log_std.exp() * (self.high - self.low)
