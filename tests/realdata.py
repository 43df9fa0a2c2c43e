"""Where the real data for tests lives: the one lookup of :mod:`explorer.data` (no Panel import).

Override with the environment variable COSMO_REAL_DATA.
"""

from explorer.data import real_data_dir

REAL_DATA = real_data_dir()
WMAP = REAL_DATA / "wmap"
CAMELS = REAL_DATA / "camels"
