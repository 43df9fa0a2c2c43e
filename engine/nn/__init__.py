"""Networks that infer cosmological parameters from maps ``(B, C, H, W) → (B, 2 * n_params)``.

Modules (import the one you need; this package imports nothing):

- :mod:`engine.nn.blocks`: norms, 'same' convolutions with periodic padding, ConvBlock, the
  attention blocks CBAM and squeeze-and-excitation, ``soft_clamp`` of the log-stds.
- :mod:`engine.nn.heads`: ``GaussianHead`` (means and log-stds), ``LogitsHead`` (class logits of
  classifiers) and the amplitude features.
- :mod:`engine.nn.backbones`: the ``CNN`` baseline, ``ResNet``/``BasicBlock``, ``resnet18``,
  ``resnet_cbam``.
- :mod:`engine.nn.hybrid`: ``LogPowerSpectrum``, ``InputTransform`` (ln(1 + δ)),
  ``set_map_scale``, ``HybridPk``, ``hybrid_std``, ``hybrid_log``.
- :mod:`engine.nn.vit`: a small Vision Transformer (``ViT``, ``vit_small``).
- :mod:`engine.nn.registry`: ``MODELS`` by name, ``build_model``, ``model_options``,
  ``count_parameters``, ``format_count``, ``summary``.
"""
