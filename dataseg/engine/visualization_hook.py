"""Write prediction drawings for a few images of every test dataset after training."""

import logging
import os

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm
from PIL import Image

from ..data.image_io import read_image
from ..utils.visualizer import draw_predictions, visualization_metadata

__all__ = ["PredictionVisualizationHook", "save_prediction_drawings"]

logger = logging.getLogger(__name__)


def save_prediction_drawings(model, data_loader, dataset_name, output_dir, num_images=4):
    """Run ``model`` on the first ``num_images`` of ``data_loader`` and save one PNG per
    output the dataset is evaluated with. Returns the written paths."""
    metadata = MetadataCatalog.get(dataset_name)
    palette = visualization_metadata(metadata.dataseg_classes, metadata)  # dataset's colours
    os.makedirs(output_dir, exist_ok=True)
    written = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for inputs in data_loader:
            for inp, predictions in zip(inputs, model(inputs)):
                image = read_image(inp["file_name"], format="RGB")
                stem = os.path.splitext(os.path.basename(inp["file_name"]))[0]
                for output in metadata.dataseg_test_outputs:
                    drawing = draw_predictions(image, predictions, metadata.dataseg_classes, output,
                                               metadata=palette)
                    path = os.path.join(output_dir, f"{stem}_{output}.png")
                    Image.fromarray(drawing).save(path)
                    written.append(path)
                if len(written) >= num_images * len(metadata.dataseg_test_outputs):
                    model.train(was_training)
                    return written
    model.train(was_training)
    return written


class PredictionVisualizationHook(HookBase):
    """After training, draw predictions on ``num_images`` images of each test dataset into
    ``OUTPUT_DIR/visualizations/<dataset>/`` (people would rather look than read)."""

    def __init__(self, cfg, build_test_loader, num_images: int = 4):
        self._cfg = cfg
        self._build_test_loader = build_test_loader
        self._num_images = num_images

    def after_train(self):
        if not comm.is_main_process() or self._num_images <= 0:
            return
        model = self.trainer.model
        model = getattr(model, "module", model)
        for dataset_name in self._cfg.DATASETS.TEST:
            out_dir = os.path.join(self._cfg.OUTPUT_DIR, "visualizations", dataset_name)
            paths = save_prediction_drawings(
                model, self._build_test_loader(self._cfg, dataset_name), dataset_name,
                out_dir, self._num_images,
            )
            logger.info(f"Wrote {len(paths)} prediction drawings to {out_dir}")
