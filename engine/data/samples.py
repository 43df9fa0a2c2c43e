r"""Tiny sample datasets in the native formats of :mod:`engine.data`, made by our own generators.

``python -m engine.data.samples --out assets/samples [--overwrite]`` writes (deterministically,
seeded; ~1.5 MB):

=========================================  =====================================================
path                                       what
=========================================  =====================================================
``camels/Maps_Mtot_Sample_LH_z=0.00.npy``  CMD-format (30, 64, 64) float32 surface densities Σ
                                           in (Msun/h)/(Mpc/h)²: 2 "simulations" × 15 lognormal
                                           δ maps (:mod:`engine.physics.slabs`, 25 Mpc/h, 5 Mpc/h slabs)
                                           turned into Σ = Ω_m ρ_crit Δ (1 + δ)
``camels/params_LH_Sample.txt``            the CMD params header and the first 2 rows of the
                                           real CAMELS IllustrisTNG LH table (:data:`CAMELS_ROWS`)
``quijote/LH/{0,1,2}/df_m_32_CIC_z=0.npy`` Quijote-format 32³ float32 δ grids over 1000 Mpc/h
                                           from 2LPT (:mod:`engine.physics.lpt`, CIC)
``quijote/LH/latin_hypercube_params.txt``  ``# Omega_m Omega_b h n_s sigma_8``, rows drawn in
                                           the Quijote LH ranges
``des/kappa_nside64.fits``                 HEALPix (nside 64, RING) κ sky of :mod:`engine.physics.sky`
                                           (DES-like footprint, UNSEEN outside)
``des/mask_nside64.fits``                  its footprint mask (1 observed, 0 not)
``folder/``                                8 lognormal δ maps 32² over 100 Mpc/h (6 .npy, 1
                                           .npz, 1 .fits) and ``labels.csv``
``README.md``                              this table and the command
=========================================  =====================================================

None of it is real data: every map is simulated here, only the CAMELS parameter values are real.
Files are written to a temporary folder next to ``--out`` and moved into place at the end; an
existing ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from engine.params import ConfigError

#: First two rows of the real CAMELS ``params_LH_IllustrisTNG.txt`` (Om sigma8 SN1 AGN1 SN2 AGN2).
CAMELS_ROWS = (
    (0.30900, 0.97900, 3.11234, 1.12194, 0.66850, 0.53182),
    (0.30260, 0.93940, 3.42001, 3.96137, 1.03311, 1.16070),
)
#: Header of the CAMELS parameter tables (tab-separated, as in the real files).
CAMELS_HEADER = "# Om\tsigma8\tSN1\tAGN1\tSN2\tAGN2"
#: Critical density today in (Msun/h)/(Mpc/h)^3 (3 H0² / 8πG with H0 = 100 h km/s/Mpc).
RHO_CRIT = 2.775e11
#: Quijote latin-hypercube ranges: Omega_m, Omega_b, h, n_s, sigma_8 (Villaescusa-Navarro 2020).
QUIJOTE_RANGES = ((0.1, 0.5), (0.03, 0.07), (0.5, 0.9), (0.8, 1.2), (0.6, 1.0))
SEED = 2024


def _camels(out: Path) -> None:
    from engine.params import FieldParams
    from engine.physics.slabs import generate

    maps = []
    for s, row in enumerate(CAMELS_ROWS):
        settings = FieldParams(
            kind="lognormal", size=64, box_size=25.0, thickness=5.0, count=15, seed=SEED + s
        )
        delta = generate(settings, omega_m=row[0], sigma8=row[1], device="cpu", progress=False)
        sigma_bar = row[0] * RHO_CRIT * settings.thickness
        maps.append(sigma_bar * (1.0 + delta.values.astype(np.float64)))
    np.save(out / "Maps_Mtot_Sample_LH_z=0.00.npy", np.concatenate(maps).astype(np.float32))
    lines = [CAMELS_HEADER] + [" ".join(f"{v:.5f}" for v in row) for row in CAMELS_ROWS]
    (out / "params_LH_Sample.txt").write_text("\n".join(lines) + "\n")


def _quijote(out: Path, n_sims: int = 3) -> None:
    import torch

    from engine.physics.lpt import LPTParams, generate_volumes

    rng = np.random.default_rng(SEED)
    lo, hi = np.array(QUIJOTE_RANGES).T
    table = lo + (hi - lo) * rng.random((n_sims, len(QUIJOTE_RANGES)))
    for i, (om, ob, h, ns, s8) in enumerate(table):
        settings = LPTParams(size=32, box_size=1000.0, dim=3, omega_b=ob, h=h, n_s=ns)
        gen = torch.Generator().manual_seed(SEED + i)
        vol = generate_volumes(
            settings,
            torch.tensor([om], dtype=torch.float64),
            torch.tensor([s8], dtype=torch.float64),
            gen,
            "cpu",
        )
        (out / str(i)).mkdir()
        np.save(out / str(i) / "df_m_32_CIC_z=0.npy", vol[0].numpy().astype(np.float32))
    lines = ["# Omega_m Omega_b h n_s sigma_8"] + [" ".join(f"{v:.5f}" for v in r) for r in table]
    (out / "latin_hypercube_params.txt").write_text("\n".join(lines) + "\n")


def _des(out: Path) -> None:
    import healpy as hp

    from engine.physics.sky import SkyParams, generate

    settings = SkyParams(nside=64, footprint="des_like", smoothing=0.0, count=1, seed=SEED)
    sky = generate(settings, omega_m=0.3, sigma8=0.8)
    hp.write_map(
        str(out / "kappa_nside64.fits"),
        sky.values[0],
        dtype=np.float32,
        column_names=["KAPPA"],
        overwrite=True,
    )
    hp.write_map(
        str(out / "mask_nside64.fits"),
        sky["mask"].values.astype(np.uint8),
        dtype=np.uint8,
        column_names=["MASK"],
        overwrite=True,
    )


def _folder(out: Path, n_maps: int = 8) -> None:
    from astropy.io import fits

    from engine.params import FieldParams
    from engine.physics.slabs import generate

    rng = np.random.default_rng(SEED + 1)
    om = np.round(rng.uniform(0.15, 0.45, n_maps), 4)
    s8 = np.round(rng.uniform(0.65, 0.95, n_maps), 4)
    settings = FieldParams(
        kind="lognormal", size=32, box_size=100.0, thickness=20.0, count=n_maps, seed=SEED + 2
    )
    maps = generate(settings, omega_m=om, sigma8=s8, device="cpu", progress=False).values
    rows = ["file,omega_m,sigma8"]
    for i in range(n_maps):
        if i == n_maps - 2:
            name = f"map_{i:03d}.npz"
            np.savez(out / name, delta=maps[i])
        elif i == n_maps - 1:
            name = f"map_{i:03d}.fits"
            fits.PrimaryHDU(maps[i]).writeto(out / name)
        else:
            name = f"map_{i:03d}.npy"
            np.save(out / name, maps[i])
        rows.append(f"{name},{om[i]},{s8[i]}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")


README = """# Sample datasets (simulated here, in real native formats)

Made by `python -m engine.data.samples --out assets/samples` (deterministic, seeded). Every map
is generated by this project's own code; only the CAMELS parameter values are real (the first two
rows of the CAMELS IllustrisTNG LH table). Use them to try the readers of `engine.data`:

| spec | what |
|---|---|
| `camels:assets/samples/camels/Maps_Mtot_Sample_LH_z=0.00.npy` | CMD format: (30, 64, 64) float32 surface density in (Msun/h)/(Mpc/h)^2 over 25 Mpc/h, 2 simulations x 15 maps (map i has row i // 15 of `params_LH_Sample.txt`, real CMD header `# Om sigma8 SN1 AGN1 SN2 AGN2`); lognormal delta maps (engine.physics.slabs, 5 Mpc/h slabs) times Omega_m rho_crit 5 Mpc/h. Add `?delta=true` for delta maps. |
| `quijote:assets/samples/quijote/LH?thickness=250` | Quijote LH layout: `0/`, `1/`, `2/` each with a 32^3 float32 delta grid `df_m_32_CIC_z=0.npy` over 1000 Mpc/h (2LPT, engine.physics.lpt, CIC) and `latin_hypercube_params.txt` (`# Omega_m Omega_b h n_s sigma_8`, drawn in the Quijote LH ranges). |
| `des:assets/samples/des/kappa_nside64.fits?mask=assets/samples/des/mask_nside64.fits&fov=10&size=32` | HEALPix nside 64 RING kappa sky (engine.physics.sky, DES-like footprint, UNSEEN outside, no smoothing) and its 0/1 footprint mask. |
| `folder:assets/samples/folder?box_size=100` | 8 lognormal delta maps, 32^2 over 100 Mpc/h (6 .npy, 1 .npz, 1 .fits) with `labels.csv` (file, omega_m, sigma8). |
"""


#: Estimated size of the samples on disk, bytes (checked against the free space first).
SIZE = 2 * 2**20


def write_samples(out: str | Path, overwrite: bool = False) -> Path:
    """Write the sample datasets (module docstring) to the directory ``out``; returns ``out``.

    Everything is built in a temporary directory next to ``out`` that is moved into place with
    ``os.replace`` when complete (:func:`engine.outputs.staged`): an interrupted run leaves
    nothing half-written, and an existing ``out`` is replaced only with ``overwrite``, and only
    then.

    Raises
    ------
    ConfigError
        ``out`` exists (and is not an empty directory) without ``overwrite``, its parent
        directory does not exist or is not writable, or the disk is full (before any work).
    """
    from engine.outputs import check_output, staged

    out = check_output(out, overwrite=overwrite, disk_bytes=SIZE)
    with staged(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        for name, make in (
            ("camels", _camels),
            ("quijote", lambda p: _quijote(p / "LH")),
            ("des", _des),
            ("folder", _folder),
        ):
            (tmp / name).mkdir()
            if name == "quijote":
                (tmp / name / "LH").mkdir()
            make(tmp / name)
        (tmp / "README.md").write_text(README)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.data.samples --out DIR [--overwrite]``: write the samples; 2 (one line
    ``error: ...``) on a bad or existing ``--out``."""
    from engine.outputs import add_overwrite_argument

    parser = argparse.ArgumentParser(
        prog="python -m engine.data.samples", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="assets/samples", help="output folder")
    add_overwrite_argument(parser)
    args = parser.parse_args(argv)
    try:
        path = write_samples(args.out, overwrite=args.overwrite)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"wrote sample datasets to {path} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
