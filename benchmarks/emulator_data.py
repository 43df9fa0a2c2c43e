"""Data of the emulators (conditional GAN, diffusion): two-channel PM slabs, training set and grid.

Both sets use one geometry (:func:`emulator_settings`): particle-mesh N-body simulations of 64³
particles in a 128 Mpc/h box (force mesh 64³, ``mesh_ratio=1``), 10 kick-drift-kick steps from
a = 0.1 to z = 0, and from each simulation 8 slabs 8 Mpc/h thick, 16 Mpc/h apart along z
(``slabs=8``), each a 64² map of two channels (``fields="delta,theta"``): the density contrast δ
and the velocity divergence θ = −∇·[(1+δ)v]/(aHf) of the same simulation
(:mod:`engine.physics.pm`; dimensionless, θ = δ in linear theory).

* Training set ``data/pm2c64.zarr`` (4800 maps = 600 simulations × 8 slabs, (Ω_m, σ8) uniform in
  [0.1, 0.5] × [0.6, 1.0] per simulation, split 80/10/10 % by simulation), written by the
  engine's own verb::

      python -m engine dataset --kind pm --size 64 --box 128 --thickness 8 --redshift 0 \\
          --steps 10 --a-start 0.1 --mesh-ratio 1 --fields delta,theta --slabs 8 \\
          --omega-m 0.1:0.5 --sigma8 0.6:1.0 --count 4800 --split 0.8,0.1,0.1 --seed 0 \\
          --device cpu --out data/pm2c64.zarr

* Held-out grid ``data/pm2c64_grid.zarr`` (:func:`write_grid`, ``python -m
  benchmarks.emulator_data``): the centres of a 4 × 4 division of the same prior box,
  Ω_m ∈ {0.15, 0.25, 0.35, 0.45} × σ8 ∈ {0.65, 0.75, 0.85, 0.95}, 64 maps per point (8
  simulations × 8 slabs), seed 1000, all in split ``test``. ``python -m engine dataset`` draws
  parameters uniformly and cannot write a grid, so this script does, with the engine's generator
  (:func:`engine.physics.pm.generate` with per-map Ω_m, σ8 arrays) and the dataset layout of
  :mod:`engine.data.store` (readable by ``open_dataset``, ``data/pm2c64_grid.zarr?split=test``
  specs and :class:`engine.data.sources.LabelledMaps` readers of test splits).

The shipped emulators (``assets/models/gan32``, ``diffusion32``) use the same geometry at half
the size — 32³ particles in 64 Mpc/h (the same 2 Mpc/h pixels and 8 Mpc/h slabs), which this
2-core CPU could train in the time it had: ``data/pm2c32.zarr`` (9600 maps, 1200 simulations;
``--size 32 --box 64 --count 9600`` in the command above) and the grid
``python -m benchmarks.emulator_data --size 32 --box 64 --sims 16 --out data/pm2c32_grid.zarr``
(128 maps per point).

Same seed ⇒ same maps on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from engine.params import ConfigError, to_dict
from engine.physics import pm

ROOT = Path(__file__).resolve().parent.parent
#: Default output of :func:`write_grid`.
GRID_OUT = ROOT / "data" / "pm2c64_grid.zarr"
#: Grid values: the centres of a 4 × 4 division of the prior box [0.1, 0.5] × [0.6, 1.0].
GRID_OMEGA_M = (0.15, 0.25, 0.35, 0.45)
GRID_SIGMA8 = (0.65, 0.75, 0.85, 0.95)
#: The prior box of the training set (recorded as the grid's ``<name>_range`` attrs, so that
#: readers normalise the labels of both sets alike).
PRIOR = {"omega_m": (0.1, 0.5), "sigma8": (0.6, 1.0)}
#: Seed of the held-out grid (the training set uses 0).
GRID_SEED = 1000
#: SeedSequence stream of the grid points' map seeds.
_STREAM_GRID = 201


def emulator_settings(**overrides) -> pm.PMParams:
    """The PM settings of the emulator data (module docstring): 64³ particles, 128 Mpc/h, 8 slabs
    of 8 Mpc/h per simulation, z = 0, 10 steps from a = 0.1, mesh_ratio 1, fields δ and θ.

    Parameters
    ----------
    **overrides
        Other values of :class:`engine.physics.pm.PMParams` settings (e.g. ``size=16`` in tests).

    Raises
    ------
    ConfigError
        A value out of its setting's bounds.
    """
    from engine.params import set_values

    settings = pm.PMParams(
        size=64,
        box_size=128.0,
        thickness=8.0,
        redshift=0.0,
        steps=10,
        a_start=0.1,
        mesh_ratio=1,
        fields="delta,theta",
        slabs=8,
        dim=2,
    )
    return set_values(settings, overrides)


def _point_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), _STREAM_GRID, int(index)]).generate_state(1)[0])


def grid_points(omega_m: Sequence[float], sigma8: Sequence[float]) -> np.ndarray:
    """The (Ω_m, σ8) grid points, Ω_m slowest: (len(omega_m) · len(sigma8), 2) float64."""
    om, s8 = np.meshgrid(np.asarray(omega_m, float), np.asarray(sigma8, float), indexing="ij")
    return np.stack([om.reshape(-1), s8.reshape(-1)], axis=1)


def _grid_chunks(settings, points, sims, seed, device, progress) -> Iterator:
    """One DataArray per grid point: ``sims`` simulations × ``slabs`` maps from the point's own
    seed, with global simulation ids, split ``test`` and the grid's attrs."""
    from tqdm.auto import tqdm

    from engine.data.store import SPLITS

    per_point = sims * settings.slabs
    attrs = {
        "seed": int(seed),
        "count": int(len(points) * per_point),
        "chunk": int(per_point),
        "split_fractions": [0.0, 0.0, 1.0],
        **{f"{n}_range": list(PRIOR[n]) for n in PRIOR},
        "grid_omega_m": sorted({float(v) for v in points[:, 0]}),
        "grid_sigma8": sorted({float(v) for v in points[:, 1]}),
        "simulations_per_point": int(sims),
        "maps_per_point": int(per_point),
    }
    for i, (om, s8) in enumerate(tqdm(points, disable=not progress, desc="grid", unit="point")):
        part = pm.PMParams(
            **{**to_dict(settings), "count": per_point, "seed": _point_seed(seed, i)}
        )
        da = pm.generate(
            part,
            omega_m=np.full(per_point, om),
            sigma8=np.full(per_point, s8),
            device=device,
            progress=False,
        )
        da.attrs.update(attrs)
        yield da.assign_coords(
            simulation=da["simulation"] + i * sims,
            split=(
                "sample",
                np.full(per_point, SPLITS.index("test"), dtype=np.int8),
                {"flag_values": [0, 1, 2], "flag_meanings": " ".join(SPLITS)},
            ),
        )


def write_grid(
    out: str | Path = GRID_OUT,
    omega_m: Sequence[float] = GRID_OMEGA_M,
    sigma8: Sequence[float] = GRID_SIGMA8,
    sims: int = 8,
    seed: int = GRID_SEED,
    settings: pm.PMParams | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write the held-out grid of two-channel PM slabs (module docstring) to ``out`` (.zarr).

    For each grid point p (Ω_m slowest, :func:`grid_points`) ``sims`` simulations of
    ``settings`` (default :func:`emulator_settings`) are run from the point's own seed (derived
    from ``(seed, p)``, so a point's maps do not depend on the other points) and cut into
    ``settings.slabs`` maps each. The store has the layout of
    :func:`engine.data.store.write_dataset`: variable "maps" (sample, channel, y, x) float32
    (channels δ, θ; dimensionless; y, x in Mpc/h), per-sample coords ``omega_m``, ``sigma8``
    (float64), ``simulation`` (int64, global), ``slab``, ``slab_start`` (Mpc/h) and ``split``
    (int8, all 2 = test); attrs: every setting, the prior box as ``omega_m_range`` /
    ``sigma8_range``, ``grid_omega_m``, ``grid_sigma8``, ``simulations_per_point``,
    ``maps_per_point``, ``seed``, ``count``. Written point by point into a temporary directory
    moved into place when complete (:func:`engine.physics.slabs.save`).

    Parameters
    ----------
    out : str or Path
        Output ``.zarr`` directory.
    omega_m, sigma8 : sequence of float
        Grid values (dimensionless), each inside the engine's prior bounds.
    sims : int
        Simulations per grid point (>= 1).
    seed : int
        Same seed ⇒ same maps on the CPU.
    settings : PMParams, optional
        Map settings (``count`` and ``seed`` are replaced); default :func:`emulator_settings`.
    device : str
        Torch device ("cpu" for reproducible files).
    overwrite : bool
        Whether an existing ``out`` may be replaced (only once the new one is complete).
    progress : bool, optional
        tqdm bar over the points; default when stderr is a terminal.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ConfigError
        ``sims`` < 1, parameters out of the engine's bounds, bad settings, an output that is not
        ``.zarr``, exists without ``overwrite`` or does not fit on the disk (before any work).
    """
    import torch

    from engine.data.store import sample_bytes
    from engine.outputs import check_output
    from engine.physics import slabs
    from engine.physics.cosmology import check_parameters

    settings = settings if settings is not None else emulator_settings()
    if int(sims) < 1:
        raise ConfigError(f"sims={sims!r} is out of range: allowed sims >= 1")
    out = Path(out)
    if out.suffix != ".zarr":
        raise ConfigError(f"--out {str(out)!r} must end in .zarr (datasets are zarr stores)")
    points = grid_points(omega_m, sigma8)
    check_parameters(torch.from_numpy(points[:, 0]), torch.from_numpy(points[:, 1]))
    pm.check_settings(settings)
    count = len(points) * int(sims) * settings.slabs
    check_output(out, overwrite=overwrite, disk_bytes=count * sample_bytes(settings))
    if progress is None:
        progress = sys.stderr.isatty()
    chunks = _grid_chunks(settings, points, int(sims), int(seed), device, progress)
    return slabs.save(chunks, out, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.emulator_data``: write the held-out grid; prints a summary line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.emulator_data", description=write_grid.__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default=str(GRID_OUT), help="Output .zarr (default %(default)s).")
    parser.add_argument("--sims", type=int, default=8, help="Simulations per grid point.")
    parser.add_argument("--seed", type=int, default=GRID_SEED, help="Seed (default %(default)s).")
    parser.add_argument(
        "--size", type=int, default=64, help="Particles per side = map pixels (default 64)."
    )
    parser.add_argument(
        "--box", type=float, default=128.0, help="Box side, Mpc/h (default 128; 64 for --size 32)."
    )
    parser.add_argument("--device", default="cpu", help="Torch device (default cpu).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        settings = emulator_settings(size=args.size, box_size=args.box)
        out = write_grid(
            args.out,
            sims=args.sims,
            seed=args.seed,
            settings=settings,
            device=args.device,
            overwrite=args.overwrite,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(GRID_OMEGA_M) * len(GRID_SIGMA8)
    print(
        f"wrote {n} grid points × {args.sims} simulations × {emulator_settings().slabs} slabs "
        f"to {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
