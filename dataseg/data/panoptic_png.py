"""COCO panoptic PNGs: segment id = R + 256 G + 256^2 B, through panopticapi's own codec.

panopticapi is imported on first use, so ``import dataseg`` works without it and the error
says how to install it (its PyPI build pins numpy<2 in its metadata, so it is installed
without dependencies; ``make setup`` does that).
"""

import numpy as np

__all__ = ["rgb_to_segment_ids", "segment_ids_to_rgb"]


def _panopticapi_utils():
    try:
        from panopticapi import utils
    except ImportError as e:
        raise ImportError(
            "Reading or writing COCO panoptic PNGs needs panopticapi: "
            "`pip install --no-deps panopticapi-lite` (or `make setup`, which installs it)."
        ) from e
    return utils


def rgb_to_segment_ids(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG -> (H, W) int segment ids (0 is void)."""
    return _panopticapi_utils().rgb2id(rgb)


def segment_ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) int segment ids -> (H, W, 3) uint8 panoptic PNG."""
    return _panopticapi_utils().id2rgb(ids)
