#!/usr/bin/env python3
"""Cityscapes panoptic annotations (COCO panoptic format) for dataseg_cityscapes_fine_panoptic_val.

Writes what cityscapesScripts' ``preparation/createPanopticImgs.py`` writes, with the label
ids of the 19 evaluated classes (detectron2's ``CITYSCAPES_CATEGORIES``), without needing
cityscapesScripts: every value of ``*_gtFine_instanceIds.png`` of an evaluated class is a
segment (values >= 1000 are instances, ``class * 1000 + k``; a thing class below 1000 is a
crowd region), other classes are void. It also writes ``*_gtFine_labelTrainIds.png`` (train
ids 0..18, 255 = ignore) from ``*_gtFine_labelIds.png``, which detectron2's Cityscapes
panoptic loader requires next to the panoptic files.
"""

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dataseg.data.panoptic_png import segment_ids_to_rgb  # noqa: E402
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, make_parser, require_dir, run_parallel,
    segments_of, write_json,
)

LAYOUT = """input (gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from
https://www.cityscapes-dataset.com/downloads/, unzipped into cityscapes/):
  cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png
  cityscapes/gtFine/{train,val}/<city>/*_gtFine_{instanceIds,labelIds}.png
output:
  cityscapes/gtFine/cityscapes_panoptic_{train,val}/*_gtFine_panoptic.png
  cityscapes/gtFine/cityscapes_panoptic_{train,val}.json
  cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelTrainIds.png"""

SPLITS = ("train", "val")
_SUFFIX = "_gtFine_instanceIds.png"


def convert_frame(instance_file: Path, split: str, root: Path, out_dir: Path, categories,
                  train_ids: bool):
    from PIL import Image

    base = instance_file.name[: -len(_SUFFIX)]
    city = instance_file.parent.name
    image_file = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
    if not image_file.is_file():
        raise PreparationError(f"image {str(image_file)!r} of {str(instance_file)!r} not found.")
    with Image.open(image_file) as im:
        size = im.size
    with Image.open(instance_file) as im:
        values = np.asarray(im).astype(np.int64)
    if (values.shape[1], values.shape[0]) != size:
        raise PreparationError(f"{str(instance_file)!r} is {values.shape[1]}x{values.shape[0]}, "
                               f"its image {size[0]}x{size[1]} (WxH).")
    by_id = {c["id"]: c for c in categories}
    ids = np.zeros(values.shape, dtype=np.int64)
    info = {}
    for value in np.unique(values):
        label = int(value) // 1000 if value >= 1000 else int(value)
        if label not in by_id:
            continue  # not evaluated: void
        ids[values == value] = value
        info[int(value)] = dict(category_id=label,
                                iscrowd=int(value < 1000 and bool(by_id[label]["isthing"])))
    Image.fromarray(segment_ids_to_rgb(ids)).save(out_dir / f"{base}_gtFine_panoptic.png")
    if train_ids:
        label_file = instance_file.with_name(f"{base}_gtFine_labelIds.png")
        if not label_file.is_file():
            raise PreparationError(f"{str(label_file)!r} not found (needed for labelTrainIds).")
        lut = np.full(256, 255, dtype=np.uint8)
        for c in categories:
            lut[c["id"]] = c["trainId"]
        with Image.open(label_file) as im:
            Image.fromarray(lut[np.asarray(im)]).save(
                instance_file.with_name(f"{base}_gtFine_labelTrainIds.png"))
    return (dict(id=base, file_name=image_file.name, width=size[0], height=size[1]),
            dict(image_id=base, file_name=f"{base}_gtFine_panoptic.png",
                 segments_info=segments_of(ids, info)))


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    parser.add_argument("--no-train-ids", action="store_true",
                        help="skip *_gtFine_labelTrainIds.png (e.g. made by cityscapesScripts)")
    args = parser.parse_args(argv)
    from detectron2.data.datasets.builtin_meta import CITYSCAPES_CATEGORIES

    root = dataset_root() / "cityscapes"
    for split in args.splits:
        gt_dir = require_dir(root / "gtFine" / split, "Cityscapes gtFine",
                             "Unzip gtFine_trainvaltest.zip into cityscapes/.")
        require_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit",
                    "Unzip leftImg8bit_trainvaltest.zip into cityscapes/.")
        frames = sorted(gt_dir.glob(f"*/*{_SUFFIX}"))
        if not frames:
            raise PreparationError(f"no <city>/*{_SUFFIX} under {str(gt_dir)!r}.")
        out_dir = root / "gtFine" / f"cityscapes_panoptic_{split}"
        out_dir.mkdir(parents=True, exist_ok=True)
        results = run_parallel(
            functools.partial(convert_frame, split=split, root=root, out_dir=out_dir,
                              categories=CITYSCAPES_CATEGORIES, train_ids=not args.no_train_ids),
            frames, args.workers, f"Cityscapes {split}")
        categories = [dict(id=c["id"], name=c["name"], color=list(c["color"]),
                           isthing=int(c["isthing"])) for c in CITYSCAPES_CATEGORIES]
        out_json = root / "gtFine" / f"cityscapes_panoptic_{split}.json"
        write_json(dict(images=[r[0] for r in results], annotations=[r[1] for r in results],
                        categories=categories), out_json)
        print(f"wrote {len(results)} panoptic PNGs to {out_dir} and {out_json}")


if __name__ == "__main__":
    main()
