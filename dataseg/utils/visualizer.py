"""Draw DaTaSeg predictions with detectron2's ``Visualizer``."""

from typing import Dict, Sequence

import numpy as np
from detectron2.data.catalog import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = ["visualization_metadata", "draw_predictions"]

# Panoptic/instance outputs use category ids of the dataset's whole vocabulary; detectron2's
# Visualizer looks things up in thing_classes and stuff in stuff_classes, so both hold it all.


def visualization_metadata(class_names: Sequence[str]) -> Metadata:
    """Metadata for drawing predictions over an arbitrary vocabulary."""
    names = [name.split(",")[0].strip() for name in class_names]  # first synonym reads best
    return Metadata(name="dataseg_visualization", thing_classes=names, stuff_classes=names)


def draw_predictions(
    image_rgb: np.ndarray,
    predictions: Dict,
    class_names: Sequence[str],
    output: str,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """Draw one output of the model over the image.

    Args:
        image_rgb: (H, W, 3) uint8 image in RGB order at the predictions' resolution.
        predictions: the model's output dict for that image.
        class_names: the vocabulary the predictions were made with.
        output: which output to draw: "panoptic_seg", "sem_seg" or "instances".
        score_threshold: instances scoring below it are not drawn.

    Returns:
        (H, W, 3) uint8 RGB drawing.
    """
    if output not in predictions:
        raise KeyError(
            f"the model produced {sorted(predictions)} for this image, not {output!r}; "
            "choose a task whose output the model was asked for"
        )
    visualizer = Visualizer(image_rgb, visualization_metadata(class_names),
                            instance_mode=ColorMode.IMAGE)
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

