"""Headless engine for machine learning on cosmological maps.

Layers (imports point downwards only): ``cli`` → ``runs`` → ``training`` → ``models`` →
``fields`` → ``stats`` → ``cosmology``. Nothing here imports Panel.

Units everywhere: comoving lengths in Mpc/h, wavenumbers k in h/Mpc, 3D P(k) in (Mpc/h)^3,
2D P(k) in (Mpc/h)^2.
"""

__version__ = "0.1.0"
