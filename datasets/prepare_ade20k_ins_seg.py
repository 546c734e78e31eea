#!/usr/bin/env python3
"""ADE20k instance annotations as a COCO json (RLE masks), for dataseg_ade20k_instance_val.

Reads the instance-challenge masks (``annotations_instance``: R = instance class 1..100,
G = instance number) and writes one annotation per instance number. Layout and category ids
(0-based semantic ids of the 100 thing classes) follow Mask2Former's
``datasets/prepare_ade20k_ins_seg.py``; image ids here are integers (1..N in file order).
"""

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ade20k_meta import ade20k_categories  # noqa: E402
from prep_common import (  # noqa: E402
    PreparationError, bbox_xywh, dataset_root, files_with_suffix, import_optional, make_parser,
    require_dir, run_parallel, write_json,
)
from prepare_ade20k_pan_seg import read_instances  # noqa: E402

LAYOUT = """input (ADEChallengeData2016.zip and annotations_instance.tar from
http://sceneparsing.csail.mit.edu/; untar the latter inside ADEChallengeData2016/):
  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations_instance/{training,validation}/*.png   R class, G instance
output:
  ADEChallengeData2016/ade20k_instance_{train,val}.json   (needs pycocotools)"""

SPLITS = {"train": "training", "val": "validation"}


def convert_image(item, instance_dir: Path):
    from PIL import Image
    from pycocotools import mask as mask_util

    image_id, image_file = item
    with Image.open(image_file) as im:
        size = im.size
    numbers, semantic_of = read_instances(instance_dir / f"{image_file.stem}.png", size)
    annotations = []
    for number, cat in sorted(semantic_of.items()):
        mask = numbers == number
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(dict(image_id=image_id, category_id=cat, iscrowd=0,
                                bbox=bbox_xywh(mask), area=int(mask.sum()), segmentation=rle))
    return dict(id=image_id, file_name=image_file.name, width=size[0], height=size[1]), \
        annotations


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    args = parser.parse_args(argv)
    import_optional("pycocotools.mask", "pycocotools", "Writing RLE masks")
    ade = dataset_root() / "ADEChallengeData2016"
    categories = [dict(id=c["id"], name=c["name"]) for c in ade20k_categories() if c["isthing"]]
    for split in args.splits:
        folder = SPLITS[split]
        image_dir = require_dir(ade / "images" / folder, "ADE20k images",
                                "Download and unzip ADEChallengeData2016.zip there.")
        instance_dir = require_dir(
            ade / "annotations_instance" / folder, "ADE20k instance annotations",
            "Download annotations_instance.tar from http://sceneparsing.csail.mit.edu/ and "
            "untar it inside ADEChallengeData2016/.")
        images = list(files_with_suffix(image_dir, ".jpg"))
        if not images:
            raise PreparationError(f"no *.jpg image in {str(image_dir)!r}.")
        results = run_parallel(functools.partial(convert_image, instance_dir=instance_dir),
                               list(enumerate(images, start=1)), args.workers,
                               f"ADE20k instances {split}")
        annotations = [a for _, anns in results for a in anns]
        for ann_id, ann in enumerate(annotations, start=1):
            ann["id"] = ann_id
        out_json = ade / f"ade20k_instance_{split}.json"
        write_json(dict(images=[r[0] for r in results], annotations=annotations,
                        categories=categories), out_json)
        print(f"wrote {len(annotations)} instances of {len(results)} images to {out_json}")


if __name__ == "__main__":
    main()
