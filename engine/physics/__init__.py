"""Generators and theory of cosmological maps, one module per physics topic (no UI, no training).

==============  ===========================================================================
module          topic
==============  ===========================================================================
cosmology       linear P(k, z) and D(z) tables from pyccl, parameter checks, k_eq, D2/D1²
mesh            Fourier grids, cloud-in-cell deposit/window/deconvolution, slab weights
stats           estimators: binned P(k) and cross-spectra, Gaussian errors, pixel PDF, peaks
randomfields    Gaussian and lognormal fields with a given spectrum on a periodic grid
generation      the one generation loop of flat kinds (per-sample parameters, seeded batches)
slabs           projected-slab maps (grf, lognormal) and their theory P_2D(k), file I/O
lpt             1LPT/2LPT particles on a mesh: volumes and slab maps (2lpt)
limber          weak-lensing theory: n(z), Limber C_ℓ^κκ, shape noise, smoothing
lensing         flat-sky κ maps (kappa)
sky             HEALPix κ skies, gnomonic patches, HEALPix files, C_ℓ of skies (sky)
cmb_theory      CMB spectra from CAMB: unlensed with tensors, lensed, C_ℓ^φφ, delensed BB
cmb             lensed CMB polarisation skies with primordial B on HEALPix (sky --kind cmb)
==============  ===========================================================================

Imports point one way (no cycles, checked by import-linter): cosmology, mesh and randomfields
at the bottom; stats on mesh; generation on cosmology; slabs on all of these; lpt on slabs;
limber on cosmology; lensing and sky on limber; cmb on cmb_theory. :mod:`engine.kinds` names each kind's
functions here.
"""
