#!/usr/bin/env python3
"""COCO panoptic -> semantic label maps (133 classes) for dataseg_coco_2017_{train,val}_sem_seg.

Every segment, crowd ones included, paints its class; void stays 255. Labels are the
contiguous ids of detectron2's ``COCO_CATEGORIES`` (0..132, things and stuff in one list),
the same space ``dataseg_coco_2017_*_panoptic`` uses, so output equals that of Mask2Former's
``prepare_coco_semantic_annos_from_panoptic_annos.py`` (``panoptic_semseg_*`` folders).
"""

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataseg.data.panoptic_png import rgb_to_segment_ids  # noqa: E402
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, make_parser, read_json, relative_entry, require_dir,
    require_file, run_parallel,
)

LAYOUT = """input (https://cocodataset.org/#download: panoptic_annotations_trainval2017.zip, then
unzip its annotations/panoptic_{train,val}2017.zip into coco/):
  coco/annotations/panoptic_{train,val}2017.json
  coco/panoptic_{train,val}2017/*.png
output:
  coco/panoptic_semseg_{train,val}2017/*.png   0..132, 255 = void"""

SPLITS = ("train", "val")


def convert_annotation(ann, png_dir: Path, out_dir: Path, contiguous):
    from PIL import Image

    png = png_dir / ann["file_name"]
    if not png.is_file():
        raise PreparationError(f"panoptic PNG {str(png)!r} (listed in the json) not found.")
    with Image.open(png) as im:
        ids = rgb_to_segment_ids(np.asarray(im.convert("RGB")))
    labels = np.full(ids.shape, 255, dtype=np.uint8)
    for seg in ann["segments_info"]:
        labels[ids == seg["id"]] = contiguous[seg["category_id"]]
    Image.fromarray(labels).save(out_dir / (Path(ann["file_name"]).stem + ".png"))


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    args = parser.parse_args(argv)
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    contiguous = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}
    coco = dataset_root() / "coco"
    for split in args.splits:
        json_file = require_file(coco / "annotations" / f"panoptic_{split}2017.json",
                                 "COCO panoptic json",
                                 "Unzip panoptic_annotations_trainval2017.zip into coco/.")
        png_dir = require_dir(coco / f"panoptic_{split}2017", "COCO panoptic PNG",
                              f"Unzip coco/annotations/panoptic_{split}2017.zip into coco/.")
        info = read_json(json_file, "COCO panoptic json")
        unknown = sorted({c["id"] for c in info["categories"]} - set(contiguous))
        if unknown:
            raise PreparationError(f"{str(json_file)!r} has category ids {unknown} that are not "
                                   "among COCO panoptic's 133 categories.")
        for ann in info["annotations"]:  # joined to the PNG folder; checked before any write
            relative_entry(ann["file_name"], f"{str(json_file)!r}, annotation of image_id "
                           f"{ann.get('image_id')!r}")
        out_dir = coco / f"panoptic_semseg_{split}2017"
        out_dir.mkdir(parents=True, exist_ok=True)
        run_parallel(functools.partial(convert_annotation, png_dir=png_dir, out_dir=out_dir,
                                       contiguous=contiguous),
                     info["annotations"], args.workers, f"COCO {split}")
        print(f"wrote {len(info['annotations'])} label maps to {out_dir}")


if __name__ == "__main__":
    main()
