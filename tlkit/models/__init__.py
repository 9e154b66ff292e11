"""Backbones: a model name -> a network, its preprocessing and where its weights came from.

* :mod:`~tlkit.models.backbones` -- ``create_backbone(name)``: timm names, ``tv:`` torchvision names
  (:mod:`~tlkit.models.tv_backbones`), weight sources (package, cache, hub, file).
* :mod:`~tlkit.models.weights` -- reading weights files safely and loading them onto a model.
* :mod:`~tlkit.models.backbone_info` -- :class:`WeightsInfo`, without torch or timm.
* :mod:`~tlkit.models.inference` -- ``prepare_for_inference``: eval copy, BatchNorm folded, channels_last.

The engines (:mod:`tlkit.engines`) run these models; features, training and active learning build them.
Importing this package imports none of them.
"""
