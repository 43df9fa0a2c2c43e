"""Headless engine for machine learning on cosmological maps.

Layers (imports point downwards only; checked by import-linter, ``make lint`` and
tests/test_layers.py, contracts in pyproject.toml)::

    cli/          python -m engine <verb>: one module per verb group (fields, train, evaluate)
    evaluation/   per-task evaluation (EVALUATORS), the P(k) likelihood, Fisher / Cramér–Rao
                  bound, metrics, figures, compare; schema.py is torch-free (the explorer reads it)
    train/        the one task-agnostic loop (Trainer), settings (LoopParams + composed
                  TrainParams, presets), checkpoints, schedule, fine-tuning/EMA, DDP, the run
                  process (status, signals)
    tasks/        one module per task (regression today), the Task interface, shared model and
                  data settings
    nn/           networks: blocks, heads, backbones, hybrid P(k) networks, the registry by name
    data/         dataset specs and readers (generated kinds, our files, CAMELS, Quijote, DES,
                  folders), training sources, augmentations, domain transfer, on-disk datasets
    kinds.py      registry of map kinds: settings class, generator, theory, units and family
    physics/      generators and theory: cosmology, mesh, stats, random fields, slabs, lpt,
                  limber, lensing, sky, the one generation loop
    outputs.py    output files that never destroy data: --overwrite, size checks, staged writes
    launch.py     start (launch_train) and stop (stop_run) engine processes on run directories
    runs.py       run-directory protocol (no torch): the contract with the explorer; the run lock,
                  process identity (a killed run reads as "died")
    device.py     the torch device (CUDA when present)
    params.py     param helpers, ConfigError, the shared cosmology and map settings, PARAM_NAMES,
                  FIDUCIAL (no torch)

No module here imports Panel or the explorer; the explorer starts training as an engine
process (``python -m engine train``) and reads run directories through :mod:`engine.runs`.

Units everywhere: comoving lengths in Mpc/h, wavenumbers k in h/Mpc, 3D P(k) in (Mpc/h)^3,
2D P(k) in (Mpc/h)^2, angles in arcmin (maps) or degrees (fields of view).
"""

__version__ = "0.1.0"
