"""Draw DaTaSeg predictions with detectron2's ``Visualizer`` in the dataset's own colours."""

from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["visualization_metadata", "class_palette", "draw_predictions"]

# Panoptic/instance outputs use category ids of the dataset's whole vocabulary; detectron2's
# Visualizer looks things up in thing_classes and stuff in stuff_classes, so both hold it all,
# and thing_colors / stuff_colors both hold one colour per class.


def class_palette(num_classes: int, source: Optional[Metadata] = None) -> List[List[int]]:
    """One RGB colour (0-255 ints) per class.

    The first classes take ``source``'s palette (``stuff_colors``, else ``thing_colors``)
    when it has one colour per class of its vocabulary (``dataseg_classes``), so predictions
    look like the dataset's ground-truth drawings; the others (a custom vocabulary, or extra
    classes after a registered one) cycle through detectron2's fixed colormap, so the same
    class gets the same colour in every image instead of a random one.
    """
    colors: List[List[int]] = []
    if source is not None:
        own = source.get("stuff_colors", None) or source.get("thing_colors", None)
        n_own = len(source.get("dataseg_classes", None) or source.get("stuff_classes", None)
                    or [])
        if own and len(own) >= n_own > 0:
            colors = [[int(v) for v in c] for c in own[:min(n_own, num_classes)]]
    fixed = colormap(rgb=True, maximum=255)
    for i in range(len(colors), num_classes):
        colors.append([int(v) for v in fixed[i % len(fixed)]])
    return colors


def visualization_metadata(class_names: Sequence[str],
                           source: Optional[Metadata] = None) -> Metadata:
    """Metadata for drawing predictions over an arbitrary vocabulary.

    Args:
        class_names: the vocabulary, in contiguous-id order (synonyms comma-separated).
        source: metadata of the registered dataset the vocabulary starts with; its palette
            colours those classes (see :func:`class_palette`).
    """
    names = [name.split(",")[0].strip() for name in class_names]  # first synonym reads best
    colors = class_palette(len(names), source)
    return Metadata(name="dataseg_visualization", thing_classes=names, stuff_classes=names,
                    thing_colors=colors, stuff_colors=colors)


def draw_predictions(
    image_rgb: np.ndarray,
    predictions: Dict,
    class_names: Sequence[str],
    output: str,
    score_threshold: float = 0.5,
    metadata: Optional[Metadata] = None,
) -> np.ndarray:
    """Draw one output of the model over the image.

    Args:
        image_rgb: (H, W, 3) uint8 image in RGB order at the predictions' resolution.
        predictions: the model's output dict for that image.
        class_names: the vocabulary the predictions were made with.
        output: which output to draw: "panoptic_seg", "sem_seg" or "instances".
        score_threshold: instances scoring below it are not drawn.
        metadata: drawing metadata (:func:`visualization_metadata`, e.g. with the dataset's
            palette); default: built from ``class_names`` with detectron2's fixed colormap.

    Returns:
        (H, W, 3) uint8 RGB drawing.
    """
    if output not in predictions:
        raise KeyError(
            f"the model produced {sorted(predictions)} for this image, not {output!r}; "
            "choose a task whose output the model was asked for"
        )
    if metadata is None:
        metadata = visualization_metadata(class_names)
    # SEGMENTATION mode colours instances by class from thing_colors (detectron2 jitters them
    # slightly so touching instances stay apart); IMAGE mode would draw random colours.
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
    if output == "panoptic_seg":
        panoptic_seg, segments_info = predictions["panoptic_seg"]
        drawing = visualizer.draw_panoptic_seg(panoptic_seg.to("cpu"), segments_info)
    elif output == "sem_seg":
        drawing = visualizer.draw_sem_seg(predictions["sem_seg"].argmax(dim=0).to("cpu"))
    elif output == "instances":
        instances = predictions["instances"].to("cpu")
        instances = instances[instances.scores > score_threshold]
        drawing = visualizer.draw_instance_predictions(instances)
    else:
        raise ValueError(f"unknown output {output!r}; use panoptic_seg, sem_seg or instances")
    return drawing.get_image()
