"""Where the real data lives (``shared/data/real`` next to the checkout; see its README.md).

One lookup for the explorer and the tests: the environment variable ``COSMO_REAL_DATA`` if set,
else ``<repo>/../shared/data/real``, else ``/work/shared/data/real``. Nothing here imports more
than the standard library, so tests can use it without loading Panel.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable overriding the real-data folder.
REAL_DATA_ENV = "COSMO_REAL_DATA"
_FALLBACK = Path("/work/shared/data/real")

#: WMAP 7-year W band (HEALPix nside 32, RING, I/Q/U in mK) and its temperature analysis mask.
WMAP_MAP = "wmap/wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"
WMAP_MASK = "wmap/wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"
#: healpy's reference TT C_ℓ of the masked I map (monopole removed, lmax 64, 3 iterations), mK².
WMAP_CL = "wmap/cl_wmap_band_iqumap_r9_7yr_W_v4_udgraded32_II_lmax64_rmmono_3iter.fits"


def real_data_dir() -> Path:
    """The real-data folder: ``$COSMO_REAL_DATA``, ``<repo>/../shared/data/real`` or the fallback.

    The first candidate that is an existing folder wins; if none exists the fallback path is
    returned (callers check the files they need, e.g. with :func:`wmap_available`).
    """
    candidates = [
        os.environ.get(REAL_DATA_ENV, ""),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
        _FALLBACK,
    ]
    return next((Path(p) for p in candidates if p and Path(p).is_dir()), _FALLBACK)


def real_file(relative: str) -> Path:
    """Path of a file under :func:`real_data_dir` (it may not exist)."""
    return real_data_dir() / relative


def wmap_available() -> bool:
    """True when the WMAP map and mask files are present."""
    return real_file(WMAP_MAP).is_file() and real_file(WMAP_MASK).is_file()
