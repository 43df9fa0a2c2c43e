"""Where the real data for tests lives (../shared/data/real next to the checkout; see its README).

Override with the environment variable COSMO_REAL_DATA.
"""

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("COSMO_REAL_DATA", ""),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "real",
    "/work/shared/data/real",
]
REAL_DATA = next(
    (Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), Path("/work/shared/data/real")
)
WMAP = REAL_DATA / "wmap"
CAMELS = REAL_DATA / "camels"
