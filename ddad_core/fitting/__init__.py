"""Fitting: good images in, a model bundle out (``fit.py`` runs the stages in order).

``recipes.py`` (named settings) -> ``autoencoder_training.py`` (the own ConvAutoencoder, when used) -> ``train.py``
(UNet) -> ``adapt.py`` (domain adaptation) -> ``synthetic.py`` (synthetic defects on held-out good images) ->
``select.py`` (per-product settings) -> ``calibration.py`` (thresholds). Inference never imports this package.
"""
