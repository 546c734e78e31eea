"""Registries for DaTaSeg's swappable parts (names are looked up from the config)."""

from detectron2.utils.registry import Registry

PIXEL_DECODER_REGISTRY = Registry("DATASEG_PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders: ``build(cfg, input_shape: dict[str, ShapeSpec])`` -> module whose
``forward(features)`` returns ``(mask_features (B, D_F, H/4, W/4), multi_scale_features
[3 maps, coarse to fine])``. Selected by ``MODEL.DATASEG.PIXEL_DECODER.NAME``.
"""

TRANSFORMER_DECODER_REGISTRY = Registry("DATASEG_TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Query decoders: ``build(cfg, in_channels: int, text_dim: int)``. Selected by
``MODEL.DATASEG.DECODER.NAME``.
"""

CLASSIFIER_REGISTRY = Registry("DATASEG_CLASSIFIER")
CLASSIFIER_REGISTRY.__doc__ = """
Open-vocabulary classifiers turning query class embeddings into logits over a named
vocabulary plus one background column (the LAST column). Selected by
``MODEL.DATASEG.CLASSIFIER.NAME``.
"""

CRITERION_REGISTRY = Registry("DATASEG_CRITERION")
CRITERION_REGISTRY.__doc__ = """
Training criteria: ``build(cfg)`` -> module called as ``criterion(outputs, targets, context)``
returning a dict of weighted losses. Selected by ``MODEL.DATASEG.CRITERION.NAME``.
"""
