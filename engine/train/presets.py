"""Named training settings (``--preset NAME``): a preset is a mapping of settings of the
composed :class:`engine.train.settings.TrainParams` of its task (its ``"task"`` entry; the
regression task when there is none), applied before config files, flags and ``--set``.

The presets of the shipped models (``assets/models/NAME``) say how their data were made.
"""

from __future__ import annotations

from typing import Any

#: Named settings; ``default`` is the parameter defaults of the task's settings class themselves.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "size": 32,
        "batch_size": 32,
        "steps_per_epoch": 20,
        "epochs": 3,
        "val_maps": 64,
        "eval_maps": 64,
        "lr": 2e-3,
        "warmup_steps": 10,
        "log_every": 5,
        "width": 8,
    },
    "default": {},
    # Issue #4 §6 results (docs/results.md): one preset per shipped model in assets/models/NAME,
    # trained on this project's 2-core CPU; retrain with
    # python -m engine train --preset NAME --run-dir assets/models/NAME
    "grf64": {
        # Gaussian slabs, 64² pixels of 15.6 Mpc/h, 100 Mpc/h thick (linear scales): the P(k)
        # likelihood reaches the Cramér-Rao bound here (efficiency ~0.99 for both parameters).
        "kind": "grf",
        "size": 64,
        "box_size": 1000.0,
        "thickness": 100.0,
        "model": "hybrid_std",
        "width": 8,
        "batch_size": 128,
        "steps_per_epoch": 150,
        "epochs": 4,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 1024,
        "eval_maps": 1024,
        "log_every": 25,
    },
    "lognormal64": {
        # Lognormal slabs, 64² pixels of 2 Mpc/h, 5 Mpc/h thick (pixel std ~1.9, strongly
        # non-Gaussian); hybrid_log sees ln(1 + δ), a Gaussian field for these maps.
        "kind": "lognormal",
        "size": 64,
        "box_size": 128.0,
        "thickness": 5.0,
        "model": "hybrid_log",
        "width": 8,
        "batch_size": 128,
        "steps_per_epoch": 150,
        "epochs": 6,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 1024,
        "eval_maps": 1024,
        "log_every": 25,
    },
    "2lpt64": {
        # 2LPT slabs at z = 0: 64³ particles in a 128 Mpc/h box (2 Mpc/h cells), a slab of
        # 8 Mpc/h (4 cells) projected to 64² pixels; hybrid_log (ln(1 + δ), empty cells at
        # ln 1e-3). On the fly this costs ~0.3 s per map on 2 CPU cores: on a CPU train on a
        # dataset instead (docs/results.md): python -m engine dataset --kind 2lpt --size 64
        # --box 128 --thickness 8 --omega-m 0.1:0.5 --sigma8 0.6:1.0 --count 3200
        # --split 0.75,0.1,0.15 --seed 0 --chunk 64 --out data/2lpt64.zarr, then add
        # --set dataset=data/2lpt64.zarr to the train command.
        "kind": "2lpt",
        "size": 64,
        "box_size": 128.0,
        "thickness": 8.0,
        "model": "hybrid_log",
        "width": 8,
        "batch_size": 64,
        "steps_per_epoch": 150,
        "epochs": 6,
        "lr": 2e-3,
        "warmup_steps": 100,
        "ema_decay": 0.998,
        "augment_flips": True,
        "val_maps": 256,
        "eval_maps": 480,
        "log_every": 25,
    },
}
# The geometry and network of 2lpt64 with particle-mesh N-body slabs (FastPM-style, 10
# kick-drift-kick steps from a = 0.1, force mesh = particle grid): a dataset first on a CPU, as
# for 2lpt64 (docs/results.md): python -m engine dataset --kind pm --size 64 --box 128
# --thickness 8 --omega-m 0.1:0.5 --sigma8 0.6:1.0 --count 2400 --split 0.75,0.1,0.15 --seed 0
# --chunk 64 --out data/pm64.zarr, then --set dataset=data/pm64.zarr.
PRESETS["pm64"] = {**PRESETS["2lpt64"], "kind": "pm"}
# The regressor of the emulators' conditioning test and domain FID (engine.evaluation.
# emulator_eval): pm64's network on the delta channel of the 32² PM slabs the shipped emulators
# are trained on (the same simulations as data/pm2c32.zarr, written with --fields delta: python
# -m engine dataset --kind pm --size 32 --box 64 --thickness 8 --redshift 0 --steps 10
# --a-start 0.1 --mesh-ratio 1 --fields delta --slabs 8 --omega-m 0.1:0.5 --sigma8 0.6:1.0
# --count 9600 --split 0.8,0.1,0.1 --seed 0 --device cpu --out data/pm32.zarr).
PRESETS["pm32"] = {
    **PRESETS["pm64"],
    "size": 32,
    "box_size": 64.0,
    "dataset": "data/pm32.zarr",
    "epochs": 8,
}
# Conditional GAN (engine.tasks.gan): a seconds-long CPU run of tiny networks on 16² Gaussian
# maps (tests), and the emulator of 64², 2-channel (delta, theta) PM slabs. The emulator's
# evaluation is separate (eval_maps 0).
PRESETS["gan_smoke"] = {
    "task": "gan",
    "kind": "grf",
    "size": 16,
    "width": 4,
    "d_width": 4,
    "latent_dim": 8,
    "embed_dim": 8,
    "batch_size": 8,
    "steps_per_epoch": 5,
    "epochs": 2,
    "lr": 2e-4,
    "warmup_steps": 2,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "val_maps": 16,
    "eval_maps": 0,
    "log_every": 2,
}
PRESETS["gan64"] = {
    # Hinge loss, spectral-norm projection D, TTUR (D lr 3e-4, G 2e-4, betas (0, 0.9)), EMA of G,
    # no weight decay or gradient clipping (Adam bounds each update); ~0.7 s per step of 64
    # maps on 2 idle CPU cores (6000 steps: ~1.2 h).
    "task": "gan",
    "dataset": "data/pm2c64.zarr",
    "width": 32,
    "d_width": 32,
    "latent_dim": 64,
    "embed_dim": 64,
    "batch_size": 64,
    "steps_per_epoch": 250,
    "epochs": 24,
    "lr": 2e-4,
    "d_lr_scale": 1.5,
    "warmup_steps": 100,
    "final_lr_fraction": 0.25,
    "weight_decay": 0.0,
    "grad_clip": 0.0,
    "ema_decay": 0.999,
    "augment_flips": True,
    "eval_maps": 0,
    "log_every": 25,
}
# The shipped GAN (assets/models/gan32): gan64's networks and optimiser on 32², 2-channel PM
# slabs (32³ particles in 64 Mpc/h, the same 2 Mpc/h pixels and 8 Mpc/h slabs), the size this
# 2-core CPU could train in the time it had (4000 steps of 32 maps). Data: python -m engine dataset
# --kind pm --size 32 --box 64 --thickness 8 --redshift 0 --steps 10 --a-start 0.1
# --mesh-ratio 1 --fields delta,theta --slabs 8 --omega-m 0.1:0.5 --sigma8 0.6:1.0 --count 9600
# --split 0.8,0.1,0.1 --seed 0 --device cpu --out data/pm2c32.zarr
PRESETS["gan32"] = {
    **PRESETS["gan64"],
    "dataset": "data/pm2c32.zarr",
    "batch_size": 32,
    "steps_per_epoch": 250,
    "epochs": 16,
}
# Conditional diffusion (engine.tasks.diffusion): a seconds-long CPU run of a tiny U-Net on 16²
# Gaussian maps (tests), and the emulator of the 64², 2-channel (delta, theta) PM slabs of
# data/pm2c64.zarr (benchmarks/emulator_data.py). diffusion64: a 1.1 M-parameter U-Net (levels
# 64², 32², 16², 8², attention at 8²), v-prediction on the cosine schedule, EMA 0.999. On the
# project's 2 CPU cores shared with other jobs (load 4-8): 1.3-3.5 s per step of 32 maps (4000
# steps: 1.5-4 h) and 1.4 maps/s sampled with 20 DDIM steps (each validation generates 256
# maps: ~3 min); the default U-Net (width 32, levels 3, 2.8 M) is ~3-5x slower.
PRESETS["diffusion_smoke"] = {
    "task": "diffusion",
    "kind": "grf",
    "size": 16,
    "width": 8,
    "levels": 2,
    "layers_per_block": 1,
    "batch_size": 8,
    "steps_per_epoch": 5,
    "epochs": 2,
    "lr": 2e-3,
    "warmup_steps": 2,
    "ema_decay": 0.99,
    "val_maps": 16,
    "sample_steps": 8,
    "val_sample_steps": 4,
    "eval_maps": 0,
    "log_every": 5,
}
PRESETS["diffusion64"] = {
    "task": "diffusion",
    "dataset": "data/pm2c64.zarr",
    "width": 16,
    "levels": 4,
    "layers_per_block": 1,
    "attention": True,
    "batch_size": 32,
    "steps_per_epoch": 400,
    "epochs": 10,
    "lr": 5e-4,
    "warmup_steps": 200,
    "ema_decay": 0.999,
    "augment_flips": True,
    "sample_steps": 50,
    "val_sample_steps": 20,
    "eval_maps": 0,
    "log_every": 25,
}
# The shipped diffusion model (assets/models/diffusion32): diffusion64's U-Net with 3 levels
# (32², 16², 8², attention at 8²) on the 32² PM slabs of data/pm2c32.zarr (see gan32), 8000
# steps of 32 maps (~1.2 h on 2 idle cores), sampled with DPM-Solver++ (at 50 steps its maps
# carry more of the small-scale power than DDIM's: docs/results.md).
PRESETS["diffusion32"] = {
    **PRESETS["diffusion64"],
    "dataset": "data/pm2c32.zarr",
    "levels": 3,
    "epochs": 20,
    "sampler": "dpm",
}

# Classification of strong-lens dark-matter substructure (engine.tasks.classification; after
# ML4SCI DeepLense): a seconds-long CPU run of a tiny CNN on any labelled image set (tests; give
# --set dataset=...), and ResNet-18 / ViT presets for the 64² euclid-preset lens images of the
# strong_lens kind: python -m engine dataset --kind strong_lens --preset euclid --substructure all
# --size 64 --count 30000 --split 0.8,0.1,0.1 --seed 0 --out data/lenses64.zarr (10^4 per class),
# then python -m engine train --preset lens_resnet --run-dir runs/lens_resnet. Rotations by any
# angle and the 8 symmetries of the square are exact symmetries of the classes.
PRESETS["lens_smoke"] = {
    "task": "classification",
    "model": "cnn",
    "width": 8,
    "batch_size": 32,
    "steps_per_epoch": 20,
    "epochs": 3,
    "lr": 3e-3,
    "warmup_steps": 5,
    "augment_flips": True,
    "augment_rotate": True,
    "eval_maps": 64,
    "log_every": 5,
}
PRESETS["lens_resnet"] = {
    "task": "classification",
    "dataset": "data/lenses64.zarr",
    "model": "resnet18",
    "width": 32,  # 2.8 M parameters; the ImageNet stem (stem=large): ~320 images/s here
    "batch_size": 128,
    "steps_per_epoch": 200,
    "epochs": 20,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 300,
    "ema_decay": 0.999,
    "augment_flips": True,
    "augment_rotate": True,
    "patience": 8,
    "eval_maps": 100_000,
    "log_every": 25,
}
PRESETS["lens_vit"] = {
    **PRESETS["lens_resnet"],
    "model": "vit_small",
    "width": 48,  # tokens of 192 dimensions (ViT-Tiny's width), 6 blocks, 8x8 patches of 64²
    "patch_size": 8,
    "depth": 6,
    "lr": 5e-4,
    "epochs": 60,
    "warmup_steps": 1000,
    "patience": 12,
}

# Class-conditional diffusion of strong-lens images (engine.tasks.diffusion, setting label;
# issue 13 §3): one class embedding per substructure class (none, cdm, vortex), no continuous
# parameters (targets none), zero padding (lens images are not periodic), asinh(x / s) with s the
# robust noise level then standardisation, the 8 symmetries of the square as augmentation, and a
# null class trained 10 % of the time so that classifier-free guidance is available at sampling
# (engine sample --guidance W; default 0: the plain conditional model). lens_diffusion_smoke: a
# seconds-long CPU run of a tiny U-Net for tests (give --set dataset=...).
PRESETS["lens_diffusion_smoke"] = {
    "task": "diffusion",
    "label": "substructure",
    "targets": "none",
    "log_channels": "none",
    "asinh_channels": "all",
    "circular_padding": False,
    "p_uncond": 0.2,
    "width": 8,
    "levels": 2,
    "layers_per_block": 1,
    "attention": False,
    "batch_size": 8,
    "steps_per_epoch": 3,
    "epochs": 2,
    "lr": 2e-3,
    "warmup_steps": 2,
    "ema_decay": 0.9,
    "augment_flips": True,
    "val_generated": 8,
    "sample_steps": 4,
    "val_sample_steps": 2,
    "eval_maps": 0,
    "log_every": 2,
}
# lens_diffusion: the 64² euclid images of data/lenses64.zarr (made as for lens_resnet above).
# CPU budget ~30-40 min on this project's 2 cores: diffusion64's 1.1 M-parameter U-Net (width 16,
# levels 64², 32², 16², 8², attention at 8²) took 1.3 s per step of 32 maps of 64² on 2 idle
# cores (presets above), so 1500 steps ≈ 33 min, plus 5 validations that each sample 64 images
# with 10 DDIM steps (~20 s each at 1.4 maps/s with 20 steps) ≈ 2 min; on cores shared with
# other jobs it takes up to 2.5x longer. Then: python -m engine evaluate --checkpoint RUN
# --dataset "data/lenses64.zarr?split=test" --count 256 --out RUN/lens_report.
PRESETS["lens_diffusion"] = {
    **PRESETS["lens_diffusion_smoke"],
    "dataset": "data/lenses64.zarr",
    "p_uncond": 0.1,
    "width": 16,
    "levels": 4,
    "attention": True,
    "batch_size": 32,
    "steps_per_epoch": 300,
    "epochs": 5,
    "lr": 5e-4,
    "warmup_steps": 100,
    "ema_decay": 0.998,
    "val_generated": 64,
    "sample_steps": 50,
    "val_sample_steps": 10,
    "log_every": 25,
}

# CMB delensing on HEALPix skies (engine.tasks.delensing; issue 14 §2). delens_smoke: a seconds-long
# CPU run of a tiny U-Net for tests (give --set dataset=... : skies of nside >= 32). delens512:
# the reference setting (nside 512, 5' beam, 2 uK-arcmin): make the skies with
# python -m engine sky --kind cmb --nside 512 --noise 2 --beam 5 --r 0.01 --count 40 --workers 2
# --seed 1 --out data/cmb512.zarr (~10 s per sky); windows of 128² face pixels plus a 64-pixel
# margin from the neighbouring faces, one pool sky replaced every 32 steps by a rotated one with
# fresh noise. On this 2-core CPU a step of 8 windows took ~2-5 s (load-dependent), so the 1000
# steps are ~40-80 min.
PRESETS["delens_smoke"] = {
    "task": "delensing",
    "width": 4,
    "levels": 2,
    "crop": 16,
    "batch_size": 4,
    "steps_per_epoch": 6,
    "epochs": 2,
    "pool": 2,
    "rotate_every": 2,
    "val_crops": 8,
    "lr": 2e-3,
    "warmup_steps": 2,
    "eval_maps": 4,
    "log_every": 2,
}
PRESETS["delens512"] = {
    "task": "delensing",
    "dataset": "data/cmb512.zarr",
    "width": 8,  # 0.54 M parameters; width 16 (2.2 M) was 3.8x slower per step on this CPU
    "levels": 4,
    "crop": 128,  # windows of 256² with the 64-pixel margin
    "batch_size": 8,
    "steps_per_epoch": 100,
    "epochs": 10,
    "pool": 8,
    "rotate_every": 32,  # a rotated sky costs ~12 s of spherical transforms at nside 512
    "val_crops": 32,
    "lr": 1e-3,
    "warmup_steps": 100,
    "ema_decay": 0.995,
    "patience": 0,
    "eval_maps": 0,  # evaluate separately on test skies at r = 0, 0.01, 0.05 (README)
    "log_every": 10,
}

# delens512_qe: the same network and skies, fed the quadratic-estimator template
# (engine.physics.cmb_qe) beside the QE-delensed sky (qe_input): it starts as QE delensing and
# learns a correction. Each stored sky's template is computed once (~16 s at nside 512).
PRESETS["delens512_qe"] = {**PRESETS["delens512"], "qe_input": True}

# delens512_qeit: the same, fed the calibrated iterated QE's template (engine.physics.cmb_qe_iter;
# qe_template=qe_it; the calibration of assets/qe at nside 512, 2 uK-arcmin, 5'), fine-tuned from
# the shipped delens512_qe weights: 400 steps at lr 3e-4 (the inputs change from one template to a
# better one of the same kind). Each stored sky's template is computed once (~28 s at nside 512).
PRESETS["delens512_qeit"] = {
    **PRESETS["delens512_qe"],
    "qe_template": "qe_it",
    "init_from": "assets/models/delens512_qe/checkpoints/best.pt",
    "epochs": 4,
    "lr": 3e-4,
    "warmup_steps": 20,
}

# delens512_qeit_n5: delens512_qeit fine-tuned at 5 uK-arcmin (a delenser must be trained and
# calibrated at the noise where it is used: delens512_qeit, trained at 2 uK-arcmin, leaves an
# own-noise A_res of 0.83 at 5). Skies: the delens512 command with --noise 5 --count 16
# --out data/cmb512_n5.zarr (the same seeds: the same lensed skies, more noise); the iterated
# QE's calibration is the one of assets/qe at 5 uK-arcmin. Measured (README): own-noise A_res 0.689
# at 5 uK-arcmin (delens512_qeit 0.829), still above its input's 0.618; not shipped.
PRESETS["delens512_qeit_n5"] = {
    **PRESETS["delens512_qeit"],
    "dataset": "data/cmb512_n5.zarr",
    "init_from": "assets/models/delens512_qeit/checkpoints/best.pt",
}


def preset_task(preset: str) -> str | None:
    """The task a preset is for (its ``"task"`` entry; None for the regression presets that
    name none, or an unknown preset)."""
    return PRESETS.get(preset, {}).get("task")
