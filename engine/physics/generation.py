"""The one generation loop of every flat kind: per-sample parameters, seeded batches, DataArray.

:func:`generate_samples` turns a batch function (the torch hot path of a kind, e.g.
:func:`engine.physics.slabs.generate_maps`) and a DataArray wrapper into ``settings.count``
samples from ``settings.seed``:

1. per-sample parameters Ω_m, σ8 (:func:`per_sample`: a scalar, a (count,) array, or the
   settings' own value), checked against the prior box (:func:`engine.physics.cosmology.
   check_parameters`), then the kind's settings check;
2. one ``torch.Generator`` on the device seeded with ``settings.seed``, consumed batch after batch
   of ``batch_size`` samples (same seed and batch size ⇒ same output on CPU);
3. each batch moved to the CPU as numpy and concatenated, then wrapped by the kind's
   ``to_dataarray(maps, settings, omega_m, sigma8)``.

:meth:`engine.kinds.Kind.generate` calls it with the kind's functions; the modules' own
``generate`` (slabs, lpt, lensing) are thin wrappers around it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr

from engine.device import default_device
from engine.params import ConfigError
from engine.physics.cosmology import check_parameters


def per_sample(value, default: float, count: int, name: str) -> np.ndarray:
    """``value`` (scalar, (count,) array or None → ``default``) as a float64 array (count,).

    Raises
    ------
    ConfigError
        An array of another length.
    """
    v = np.asarray(default if value is None else value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(count, float(v))
    if v.shape != (count,):
        raise ConfigError(
            f"{name} must be a scalar or hold count={count} values, got shape {v.shape}"
        )
    return v


def generate_samples(
    settings,
    batch: Callable,
    wrap: Callable[..., xr.DataArray],
    omega_m=None,
    sigma8=None,
    device=None,
    batch_size: int = 64,
    progress: bool | None = None,
    check: Callable | None = None,
    desc: str = "maps",
) -> xr.DataArray:
    """Generate ``settings.count`` samples from ``settings.seed`` as a labelled DataArray.

    Parameters
    ----------
    settings : param.Parameterized
        The kind's settings; uses ``count``, ``seed``, ``omega_m`` and ``sigma8`` (defaults of
        the per-sample parameters) and whatever ``batch`` and ``wrap`` read.
    batch : callable
        ``(settings, omega_m, sigma8, generator, device) -> torch.Tensor (B, ...)``, with
        ``omega_m``, ``sigma8`` torch.Tensor (B,) float64 on the CPU.
    wrap : callable
        ``(maps, settings, omega_m, sigma8) -> xarray.DataArray``, with ``maps`` numpy (count, ...)
        and the parameters numpy (count,) float64.
    omega_m, sigma8 : float or array_like (count,), optional
        Per-sample parameters (dimensionless); default ``settings.omega_m`` / ``settings.sigma8``.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU. (Same seed ⇒ same samples on CPU; CUDA samples
        are reproducible on the same GPU but differ from CPU ones.)
    batch_size : int
        Samples per call of ``batch``; the random stream is drawn batch by batch. For settings
        with ``slabs`` (maps per simulation, :class:`engine.physics.pm.PMParams`) it is rounded
        up to a multiple of ``slabs``, so that every batch starts with a new simulation.
    progress : bool, optional
        tqdm progress bar; default only when stderr is a terminal and count > batch_size.
    check : callable, optional
        ``(settings) -> None`` raising ConfigError for unusable settings, called before any work.
    desc : str
        Label of the progress bar.

    Returns
    -------
    xarray.DataArray from ``wrap``.

    Raises
    ------
    ConfigError
        Parameters out of range or of the wrong length, or settings rejected by ``check`` or
        ``batch``.
    """
    from tqdm.auto import tqdm

    device = default_device(None if device is None else str(device))
    count = settings.count
    om = per_sample(omega_m, settings.omega_m, count, "omega_m")
    s8 = per_sample(sigma8, settings.sigma8, count, "sigma8")
    check_parameters(torch.from_numpy(om), torch.from_numpy(s8))
    if check is not None:
        check(settings)
    per_simulation = int(getattr(settings, "slabs", 1))
    batch_size = per_simulation * -(-int(batch_size) // per_simulation)
    gen = torch.Generator(device=device).manual_seed(int(settings.seed))
    if progress is None:
        progress = sys.stderr.isatty() and count > batch_size
    chunks = []
    for start in tqdm(range(0, count, batch_size), disable=not progress, desc=desc, unit="batch"):
        sl = slice(start, min(start + batch_size, count))
        out = batch(settings, torch.from_numpy(om[sl]), torch.from_numpy(s8[sl]), gen, device)
        chunks.append(out.cpu().numpy())
    return wrap(np.concatenate(chunks), settings, om, s8)
