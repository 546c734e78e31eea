"""Training on COCO instance jsons as annotation tools export them: polygons (labelme's
``labelme2coco`` layout) and RLE, through the large-scale-jitter crop, then COCO evaluation.

The crop clips polygons with shapely (fvcore's ``CropTransform.apply_polygons``), so these tests
also pin that the set-up installs it.
"""

import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from dataseg.data.catalog import register_instance_dataset
from dataseg.data.mappers.instance import InstanceDatasetMapper
from dataseg.engine import DaTaSegTrainer
from dataseg.evaluation import build_dataseg_evaluator

from helpers import trainer_cfg

CATEGORIES = [{"supercategory": None, "id": 1, "name": "cat"},
              {"supercategory": None, "id": 2, "name": "dog"}]
# (file name relative to the image root, height, width, [(category id, [polygon, ...]), ...]):
# a concave polygon the crop can split in two, one on the image border, an instance made of
# two polygons (labelme's shapes sharing a group_id).
IMAGES = [
    ("JPEGImages/0001.jpg", 72, 96, [
        (1, [[10.5, 8.0, 50.0, 12.5, 24.0, 60.0]]),
        (2, [[55.0, 10.0, 90.0, 10.0, 90.0, 60.0, 80.0, 60.0, 80.0, 25.0, 65.0, 25.0, 65.0, 60.0,
              55.0, 60.0]]),
    ]),
    ("JPEGImages/0002.png", 96, 80, [
        (1, [[40.0, 5.0, 70.0, 30.0, 60.0, 70.0, 20.0, 70.0, 10.0, 30.0]]),
        (2, [[0.0, 75.0, 50.0, 75.0, 50.0, 96.0, 0.0, 96.0]]),
    ]),
    ("JPEGImages/0003.jpg", 64, 112, [
        (1, [[5.0, 5.0, 30.0, 5.0, 30.0, 30.0, 5.0, 30.0], [40.0, 40.0, 60.0, 40.0, 50.0, 60.0]]),
        (2, [[70.0, 10.0, 105.0, 20.0, 100.0, 55.0, 75.0, 50.0]]),
    ]),
]


def _polygon_mask(polygons, h, w) -> np.ndarray:
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, h, w)))


def _uncompressed_rle(mask: np.ndarray):
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with 0s."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def _segmentation(polygons, h, w, segm_format):
    if segm_format == "polygon":
        return polygons
    mask = _polygon_mask(polygons, h, w)
    if segm_format == "rle_string":  # COCO's compressed counts, as a json string
        return {"size": [h, w], "counts": mask_util.encode(np.asfortranarray(mask))["counts"]
                .decode("ascii")}
    return {"size": [h, w], "counts": _uncompressed_rle(mask)}


def write_labelme_export(root, segm_format="polygon"):
    """A ``labelme2coco``-style export under ``root``: ``annotations.json`` next to the image
    folder, image and annotation ids from 0, area and bbox of the rasterized polygons.
    Returns (json path, image root)."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, (file_name, h, w, objects) in enumerate(IMAGES):
        pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for category_id, polygons in objects:
            mask = _polygon_mask(polygons, h, w).astype(bool)
            pixels[mask] = (200, 40, 40) if category_id == 1 else (40, 40, 200)
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(dict(
                id=len(annotations), image_id=image_id, category_id=category_id,
                segmentation=_segmentation(polygons, h, w, segm_format),
                area=float(mask_util.area(rle)), bbox=mask_util.toBbox(rle).tolist(),
                iscrowd=0))
        (root / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / file_name)
        images.append(dict(license=0, url=None, file_name=file_name, height=h, width=w,
                           date_captured=None, id=image_id))
    export = dict(info=dict(description=None, url=None, version=None, year=2024,
                            contributor=None, date_created="2024-01-01 00:00:00.000000"),
                  licenses=[dict(url=None, id=0, name=None)], images=images, type="instances",
                  annotations=annotations, categories=CATEGORIES)
    json_file = root / "annotations.json"
    json_file.write_text(json.dumps(export))
    return str(json_file), str(root)


def _ground_truth_as_predictions(d):
    """The image's own annotations as a perfect prediction (masks rasterized at full size)."""
    h, w = d["height"], d["width"]
    annos = d["annotations"]
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.tensor(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
        dtype=torch.float32))
    inst.scores = torch.ones(len(annos))
    inst.pred_classes = torch.tensor([a["category_id"] for a in annos])
    inst.pred_masks = torch.from_numpy(
        np.stack([_polygon_mask(a["segmentation"], h, w) for a in annos]).astype(bool))
    return {"instances": inst}


def test_train_two_iterations_on_labelme_polygons_then_evaluate(tmp_path):
    name = "t_polygon_labelme"
    json_file, image_root = write_labelme_export(tmp_path / "export")
    register_instance_dataset(name, json_file, image_root, replace=True)

    # Training goes through the LSJ crop (CropTransform.apply_polygons on every polygon);
    # the final evaluation runs the trained model on the same set.
    cfg = trainer_cfg(tmp_path / "run", [name], [name])
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses), losses
    for task in ("segm", "bbox"):
        for metric in ("AP", "AP50", "AP75"):
            assert math.isfinite(results[name][task][metric]), (task, metric)

    # The evaluator reads the polygon json as ground truth: fed it, it scores 100.
    evaluator = build_dataseg_evaluator(cfg, name, str(tmp_path / "eval"))
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        evaluator.process([d], [_ground_truth_as_predictions(d)])
    perfect = evaluator.evaluate()
    for task in ("segm", "bbox"):
        assert perfect[task]["AP"] == pytest.approx(100.0), task


@pytest.mark.parametrize("scale", [1.5, 0.75])
@pytest.mark.parametrize("segm_format", ["polygon", "rle_string", "rle_list"])
def test_lsj_crop_keeps_polygon_and_rle_masks(tmp_path, segm_format, scale):
    """The training mapper's masks equal the source masks put through the same LSJ
    transforms: exactly for RLE (a mask is transformed as a mask), up to the rasterization of
    the cropped polygon's boundary for polygons. At scale 1.5 of the 64-px square the crop cuts
    objects; at 0.75 every image is padded, and padding is not object."""
    name = f"t_polygon_lsj_{segm_format}"
    json_file, image_root = write_labelme_export(tmp_path, segm_format)
    register_instance_dataset(name, json_file, image_root, replace=True)
    cfg = trainer_cfg(tmp_path, [name], **{"INPUT.DATASEG.MIN_SCALES": [scale],
                                           "INPUT.DATASEG.MAX_SCALES": [scale]})
    mapper = InstanceDatasetMapper(cfg, True, dataset_name=name)
    cut = padded = 0
    for seed, d in enumerate(DatasetCatalog.get(name)):
        np.random.seed(seed)
        out = mapper(d)
        # The same random draws again: the transforms the mapper applied.
        np.random.seed(seed)
        aug_input = T.AugInput(utils.read_image(d["file_name"], format="BGR"))
        transforms = mapper.augmentations(aug_input)
        resize = transforms.transforms[0]
        h, w = d["height"], d["width"]
        padded += int(min(resize.new_h, resize.new_w) < 64)
        expected, classes = [], []
        for category_id, polygons in IMAGES[seed][3]:
            source = _polygon_mask(polygons, h, w)
            # Object pixels only (the crop pads label maps with the ignore value).
            mask = transforms.apply_segmentation(source) == 1
            # Fewer pixels after the crop than after the resize alone: the crop cut it.
            cut += int(mask.sum() < resize.apply_segmentation(source).sum())
            if mask.any():
                expected.append(mask)
                classes.append(category_id - 1)
        inst = out["instances"]
        assert out["image"].shape[1:] == (64, 64)
        assert inst.gt_classes.tolist() == classes
        for m, e in zip(inst.gt_masks.tensor.numpy(), expected):
            if segm_format == "polygon":
                iou = (m & e).sum() / (m | e).sum()
                assert iou > 0.8, (d["file_name"], iou)
            else:
                np.testing.assert_array_equal(m, e, err_msg=d["file_name"])
    # Each scale did what it is there for: cut objects (clipped polygons), or padded.
    assert (cut if scale > 1 else padded) > 0
