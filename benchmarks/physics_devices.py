"""The physics generators on CUDA against the same code on the CPU, in the same run:
``python -m benchmarks.physics_devices`` (on a machine with a GPU; on the CPU alone it times
the CPU twice and compares two CPU seeds).

* GRF and lognormal 256² maps (256 per device, independent seeds; box 256 Mpc/h, 10 Mpc/h
  slabs, Ω_m = 0.3, σ8 = 0.8): χ² of the difference of the mean P(k) per bin (the scatter of
  both means as the variance; for the lognormal maps, whose per-map P(k) is heavy-tailed, the
  χ² is conservative, read the mean ratio), the mean ratio over the first 60 bins and the
  pixel variance of each set;
* maps per second on each device, batches of 16 and 256;
* particle-mesh 64³ and 128³ particles, 10 steps (seconds per volume).

Writes ``physics_cuda.json`` into ``$OUT`` (or the working directory). Not part of
``make bench``: it measures the CUDA path, which this project's CI machine lacks.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from engine.params import FieldParams
from engine.physics import slabs, stats
from engine.physics.pm import PMParams, generate_volumes

OM, S8 = 0.3, 0.8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_maps(s: FieldParams, device: torch.device, n: int, seed: int, batch: int = 16):
    """``n`` maps of ``s`` at (OM, S8) made on ``device`` (float32, shape (n, N, N))."""
    g = torch.Generator(device=device).manual_seed(seed)
    om = torch.full((batch,), OM, device=device)
    s8 = torch.full((batch,), S8, device=device)
    return torch.cat([slabs.generate_maps(s, om, s8, g, device=device) for _ in range(n // batch)])


def maps_per_second(s: FieldParams, device: torch.device, batch: int, repeat: int) -> float:
    """Maps per second of ``slabs.generate_maps`` on ``device`` (one warm-up batch)."""
    g = torch.Generator(device=device).manual_seed(0)
    om = torch.full((batch,), OM, device=device)
    s8 = torch.full((batch,), S8, device=device)
    slabs.generate_maps(s, om, s8, g, device=device)
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        slabs.generate_maps(s, om, s8, g, device=device)
    _sync(device)
    return batch * repeat / (time.perf_counter() - t)


def compare_maps(kind: str, dev: torch.device) -> dict:
    """P(k) of 256 maps made on ``dev`` against 256 made on the CPU, and the rates."""
    s = FieldParams(size=256, box_size=256.0, thickness=10.0, kind=kind)
    cpu = torch.device("cpu")
    a = make_maps(s, dev, 256, 1).double().cpu()
    b = make_maps(s, cpu, 256, 2).double()
    edges = stats.default_edges((256, 256), 256.0)
    pa = stats.power_spectrum(a, 256.0, edges=edges).power.numpy()
    pb = stats.power_spectrum(b, 256.0, edges=edges).power.numpy()
    ma, mb = pa.mean(0), pb.mean(0)
    var = pa.var(0, ddof=1) / len(pa) + pb.var(0, ddof=1) / len(pb)
    ok = var > 0
    z = (ma - mb)[ok] / np.sqrt(var[ok])
    out = {
        f"{kind}_device_vs_cpu_pk": dict(
            chi2=float(np.sum(z**2)), dof=int(ok.sum()), max_abs_z=float(np.max(np.abs(z))),
            mean_ratio_first60=float(np.mean((ma / mb)[ok][:60])),
            var_device_maps=float(a.var()), var_cpu_maps=float(b.var()),
        )
    }  # fmt: skip
    for batch, repeat in ((16, 20), (256, 5)):
        out[f"{kind}_256_maps_per_s_b{batch}"] = {
            dev.type: maps_per_second(s, dev, batch, repeat),
            "cpu": maps_per_second(s, cpu, batch, max(1, repeat // 4)),
        }
    return out


def pm_seconds(n: int, device: torch.device) -> float:
    """Seconds for one PM volume of n³ particles, 10 steps to z = 0 (after one warm-up)."""
    p = PMParams(size=n, box_size=4.0 * n, dim=3, steps=10, redshift=0.0, mesh_ratio=1)
    g = torch.Generator(device=device).manual_seed(0)
    om, s8 = torch.tensor([OM], device=device), torch.tensor([S8], device=device)
    generate_volumes(p, om, s8, g, device=device)
    _sync(device)
    t = time.perf_counter()
    generate_volumes(p, om, s8, g, device=device)
    _sync(device)
    return time.perf_counter() - t


def main() -> int:
    """Run every comparison, print it, write ``physics_cuda.json``."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
    for kind in ("grf", "lognormal"):
        rows = compare_maps(kind, dev)
        print(kind, json.dumps(rows), flush=True)
        out.update(rows)
    for n in (64, 128):
        row = {f"{dev.type}_s": pm_seconds(n, dev)}
        row["cpu_s"] = pm_seconds(n, torch.device("cpu"))
        out[f"pm_{n}cube_10steps"] = row
        print("pm", n, row, flush=True)
    path = os.path.join(os.environ.get("OUT", "."), "physics_cuda.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
