"""A tiny synthetic labelled set of lens-like images for the classification and lens-diffusion
tests (no lenstronomy): Gaussian rings; class ``none`` plain, ``cdm`` with two bright blobs at
random places, ``vortex`` with a line of blobs through the centre at a random angle; white noise.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

CLASSES = ("none", "cdm", "vortex")


def synthetic_lenses(
    n: int,
    size: int = 32,
    seed: int = 0,
    *,
    pixel_scale: float = 0.1,
    ring=(6.0, 9.0),
    ring_width: float = 1.5,
    ring_amp: float = 1.0,
    blob_amp: float = 1.5,
    blob_var: float = 2.0,
    blob_r=(3.0, 11.0),
    line=(9.0, 7),
    noise: float = 0.05,
    units: str = "counts",
    theta_e: bool = False,
) -> xr.DataArray:
    """``n`` images (sample, y, x) float32, classes in turn (none, cdm, vortex), with a split
    coord (70/15/15 %, shuffled) and the attrs of the strong_lens kind.

    Radii, widths and positions are in pixels: ring radius uniform in ``ring``, Gaussian profile
    of σ ``ring_width`` and height ``ring_amp``; blobs exp(−d²/``blob_var``) of height
    ``blob_amp`` at radius uniform in ``blob_r``; the vortex line spans ±``line[0]`` pixels with
    ``line[1]`` blobs; white noise of σ ``noise``. ``theta_e``: add a per-sample ``theta_e``
    coord (arcsec, uniform 0.8–1.2).
    """
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    r = np.hypot(yy, xx)

    def blob(y0, x0):
        return blob_amp * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / blob_var)

    images, names = [], []
    for i in range(n):
        k = i % 3
        img = ring_amp * np.exp(-((r - rng.uniform(*ring)) ** 2) / (2 * ring_width**2))
        if k == 1:
            for _ in range(2):
                rr, a = rng.uniform(*blob_r), rng.uniform(0, 2 * np.pi)
                img += blob(rr * np.sin(a), rr * np.cos(a))
        elif k == 2:
            a = rng.uniform(0, np.pi)
            for t in np.linspace(-line[0], line[0], line[1]):
                img += blob(t * np.sin(a), t * np.cos(a))
        images.append((img + noise * rng.standard_normal((size, size))).astype(np.float32))
        names.append(CLASSES[k])
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    split = rng.permutation(
        np.repeat(np.array([0, 1, 2], np.int8), [n_train, n_val, n - n_train - n_val])
    )
    coords = (np.arange(size) - c) * pixel_scale
    extra = {"theta_e": ("sample", rng.uniform(0.8, 1.2, n))} if theta_e else {}
    return xr.DataArray(
        np.stack(images),
        dims=("sample", "y", "x"),
        name="image",
        coords={
            "y": ("y", coords, {"units": "arcsec"}),
            "x": ("x", coords, {"units": "arcsec"}),
            "substructure": ("sample", np.array(names, dtype=object)),
            **extra,
            "split": (
                "sample",
                split,
                {"flag_values": [0, 1, 2], "flag_meanings": "train val test"},
            ),
        },
        attrs={
            "kind": "strong_lens",
            "pixel_scale": pixel_scale,
            "preset": "synthetic",
            "size": size,
            "units": units,
        },
    )
