#!/usr/bin/env python3
"""ADE20k-150 panoptic annotations (COCO panoptic format) for dataseg_ade20k_panoptic_val.

Stuff segments come from the semantic labels, thing segments from the instance-challenge
masks (``annotations_instance``: R = instance class 1..100, G = instance number); where both
annotate a pixel, the instance wins. Thing-class pixels of the semantic map that no instance
covers are void. The layout and category ids are those of Mask2Former's
``datasets/prepare_ade20k_pan_seg.py`` (whose procedure this follows); segment ids here are
deterministic, ``(category + 1) * 1000 + instance number``, and each segment's area and box
are measured after the instances are pasted.
"""

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ade20k_meta import INSTANCE_TO_SEMANTIC, ade20k_categories  # noqa: E402
from dataseg.data.panoptic_png import segment_ids_to_rgb  # noqa: E402
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, files_with_suffix, make_parser, require_dir,
    run_parallel, segments_of, write_json,
)

LAYOUT = """input (ADEChallengeData2016.zip and annotations_instance.tar, both from
http://sceneparsing.csail.mit.edu/; untar the latter inside ADEChallengeData2016/):
  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png            0 = other, 1..150
  ADEChallengeData2016/annotations_instance/{training,validation}/*.png   R class, G instance
output:
  ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png   COCO panoptic PNGs
  ADEChallengeData2016/ade20k_panoptic_{train,val}.json"""

SPLITS = {"train": "training", "val": "validation"}
# Semantic (0-based) class of each instance class 1..100; index 0 = no instance.
_INSTANCE_CLASS_TO_SEMANTIC = np.array([-1] + [s - 1 for s in INSTANCE_TO_SEMANTIC])


def read_instances(path: Path, size):
    """(instance number map, 0-based semantic class per instance number) of an instance PNG."""
    from PIL import Image

    with Image.open(path) as im:
        if im.size != size:
            raise PreparationError(f"instance mask {str(path)!r} is {im.size[0]}x{im.size[1]}, "
                                   f"its image {size[0]}x{size[1]} (WxH).")
        rgb = np.asarray(im.convert("RGB"))
    classes, numbers = rgb[..., 0].astype(np.int64), rgb[..., 1].astype(np.int64)
    if classes.max(initial=0) > 100:
        raise PreparationError(f"{str(path)!r} holds instance class {int(classes.max())}; the "
                               "instance challenge has classes 1..100 in the R channel.")
    semantic_of = {}
    for number in np.unique(numbers):
        if number == 0:
            continue
        cls = np.unique(classes[numbers == number])
        if len(cls) != 1 or cls[0] == 0:
            raise PreparationError(f"instance {int(number)} of {str(path)!r} has instance "
                                   f"classes {cls.tolist()}; expected exactly one in 1..100.")
        semantic_of[int(number)] = int(_INSTANCE_CLASS_TO_SEMANTIC[cls[0]])
    return numbers, semantic_of


def convert_image(image_file: Path, ade: Path, folder: str, out_dir: Path, isthing):
    from PIL import Image

    stem = image_file.stem
    with Image.open(image_file) as im:
        size = im.size  # header only: no need to decode the photo
    sem_file = ade / "annotations" / folder / f"{stem}.png"
    with Image.open(sem_file) as im:
        if im.size != size:
            raise PreparationError(f"label map {str(sem_file)!r} is {im.size[0]}x{im.size[1]}, "
                                   f"its image {size[0]}x{size[1]} (WxH).")
        semantic = np.asarray(im).astype(np.int64) - 1  # -1 = other (void)
    numbers, semantic_of = read_instances(ade / "annotations_instance" / folder / f"{stem}.png",
                                          size)
    ids = np.zeros(semantic.shape, dtype=np.int64)
    info = {}
    for cat in np.unique(semantic):
        if cat < 0 or isthing[cat]:
            continue
        seg_id = (int(cat) + 1) * 1000
        ids[semantic == cat] = seg_id
        info[seg_id] = dict(category_id=int(cat), iscrowd=0)
    for number, cat in semantic_of.items():
        seg_id = (cat + 1) * 1000 + number
        ids[numbers == number] = seg_id
        info[seg_id] = dict(category_id=cat, iscrowd=0)
    Image.fromarray(segment_ids_to_rgb(ids)).save(out_dir / f"{stem}.png")
    image = dict(id=stem, file_name=image_file.name, width=size[0], height=size[1])
    return image, dict(image_id=stem, file_name=f"{stem}.png",
                       segments_info=segments_of(ids, info))


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS))
    args = parser.parse_args(argv)
    ade = dataset_root() / "ADEChallengeData2016"
    categories = ade20k_categories()
    isthing = [bool(c["isthing"]) for c in categories]
    for split in args.splits:
        folder = SPLITS[split]
        image_dir = require_dir(ade / "images" / folder, "ADE20k images",
                                "Download and unzip ADEChallengeData2016.zip there.")
        require_dir(ade / "annotations" / folder, "ADE20k semantic annotations")
        require_dir(ade / "annotations_instance" / folder, "ADE20k instance annotations",
                    "Download annotations_instance.tar from http://sceneparsing.csail.mit.edu/ "
                    "and untar it inside ADEChallengeData2016/.")
        images = list(files_with_suffix(image_dir, ".jpg"))
        if not images:
            raise PreparationError(f"no *.jpg image in {str(image_dir)!r}.")
        out_dir = ade / f"ade20k_panoptic_{split}"
        out_dir.mkdir(parents=True, exist_ok=True)
        results = run_parallel(
            functools.partial(convert_image, ade=ade, folder=folder, out_dir=out_dir,
                              isthing=isthing),
            images, args.workers, f"ADE20k panoptic {split}")
        out_json = ade / f"ade20k_panoptic_{split}.json"
        write_json(dict(images=[r[0] for r in results], annotations=[r[1] for r in results],
                        categories=categories), out_json)
        print(f"wrote {len(results)} panoptic PNGs to {out_dir} and {out_json}")


if __name__ == "__main__":
    main()
