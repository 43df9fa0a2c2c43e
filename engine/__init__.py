"""Headless engine for machine learning on cosmological maps.

Layers (imports point downwards only): ``cli`` → ``training`` → ``runs``, ``models`` →
``fields`` (``lpt``, ``lensing``, ``sky``) → ``stats`` → ``cosmology``. ``runs`` (the run-directory
protocol) imports neither torch nor Panel, so the explorer can tail runs cheaply; it starts
training in a new process rather than importing ``training``. Nothing here imports Panel.

Units everywhere: comoving lengths in Mpc/h, wavenumbers k in h/Mpc, 3D P(k) in (Mpc/h)^3,
2D P(k) in (Mpc/h)^2.
"""

__version__ = "0.1.0"
