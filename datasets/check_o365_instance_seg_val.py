#!/usr/bin/env python3
"""Check a user-supplied o365_instance_seg_val.json (DaTaSeg's Objects365 mask val) before use.

DaTaSeg (Gu et al., 2023) annotated instance masks on 1,000 Objects365 v2 val images to
measure box -> mask transfer; that file is not distributed with this project. Whoever has it
puts it at ``objects365/annotations/o365_instance_seg_val.json`` (images in
``objects365/val/``, as for ``dataseg_objects365_v2_val``) and runs this check, which
validates: COCO instances format; the 365 Objects365 v2 categories (ids 1..365); every
annotation with a box and a mask (RLE or polygons) that decodes at its image's size; every
image on disk. With ``--fix-paths`` image paths are rewritten to where the images are (as
prepare_objects365_v2.py does) and, if any path changed, the file is saved in place, the
original kept as ``o365_instance_seg_val.orig.json`` (an existing backup is never overwritten:
it holds the file as it was before the first fix).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, import_optional, make_parser, read_json, require_file,
    write_json,
)
from prepare_objects365_v2 import check_categories, index_images, locate  # noqa: E402

LAYOUT = """input:
  objects365/annotations/o365_instance_seg_val.json   (COCO instances, masks as RLE or polygons)
  objects365/val/...                                  (Objects365 v2 val images)"""

EXPECTED_IMAGES = 1000


def check(data: dict, image_root: Path, what: str, fix_paths: bool):
    """Raise on the first hard error; returns (warnings, number of image paths rewritten)."""
    mask_util = import_optional("pycocotools.mask", "pycocotools", "Decoding masks")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise PreparationError(f"{what} has no {key!r} list; expected the COCO instances "
                                   "format (images, annotations, categories).")
    check_categories(data["categories"], what)
    warnings = []
    if len(data["images"]) != EXPECTED_IMAGES:
        warnings.append(f"{len(data['images'])} images; the paper's set has {EXPECTED_IMAGES}.")
    index = index_images(image_root)
    images = {}
    fixed = 0
    for image in data["images"]:
        for key in ("id", "file_name", "height", "width"):
            if key not in image:
                raise PreparationError(f"{what}: image {image.get('id', '?')} has no {key!r}.")
        if image["id"] in images:
            raise PreparationError(f"{what}: image id {image['id']} appears twice.")
        path = locate(image["file_name"], index)
        if path is None:
            raise PreparationError(f"{what}: image {image['file_name']!r} not found under "
                                   f"{str(image_root)!r} (not even by its base name).")
        if path != os.path.normpath(image["file_name"]):
            if not fix_paths:
                raise PreparationError(
                    f"{what}: image {image['file_name']!r} is at {path!r} (relative to "
                    f"{str(image_root)!r}); run again with --fix-paths to rewrite the paths.")
            image["file_name"] = path
            fixed += 1
        images[image["id"]] = image
    ann_ids = set()
    category_ids = {c["id"] for c in data["categories"]}
    for ann in data["annotations"]:
        where = f"{what}: annotation {ann.get('id', '?')}"
        if ann.get("id") in ann_ids or ann.get("id") in (None, 0):
            raise PreparationError(f"{where}: annotation ids must be unique and non-zero.")
        ann_ids.add(ann["id"])
        image = images.get(ann.get("image_id"))
        if image is None:
            raise PreparationError(f"{where} refers to image {ann.get('image_id')}, not listed.")
        if ann.get("category_id") not in category_ids:
            raise PreparationError(f"{where} has category_id {ann.get('category_id')}.")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and box[2] > 0 and box[3] > 0):
            raise PreparationError(f"{where} has bbox {box}; expected [x, y, w, h], w, h > 0.")
        seg = ann.get("segmentation")
        h, w = image["height"], image["width"]
        if isinstance(seg, list):
            if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
                raise PreparationError(f"{where}: polygons need >= 3 (x, y) points each.")
            rle = mask_util.merge(mask_util.frPyObjects(seg, h, w))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [h, w]:
                raise PreparationError(f"{where}: RLE size {seg['size']} but its image is "
                                       f"{h}x{w} (HxW).")
            rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
        else:
            raise PreparationError(f"{where} has no mask: 'segmentation' must be polygons or "
                                   "an RLE dict (this set evaluates masks).")
        if int(mask_util.area(rle)) == 0:
            warnings.append(f"annotation {ann['id']} has an empty mask.")
    if not data["annotations"]:
        raise PreparationError(f"{what} has no annotations.")
    return warnings, fixed


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT, workers=False)
    parser.add_argument("--json", type=Path, default=None,
                        help="file to check (default: objects365/annotations/"
                             "o365_instance_seg_val.json under $DETECTRON2_DATASETS)")
    parser.add_argument("--fix-paths", action="store_true",
                        help="rewrite image paths to where the images are and save in place")
    args = parser.parse_args(argv)
    o365 = dataset_root() / "objects365"
    path = args.json or o365 / "annotations" / "o365_instance_seg_val.json"
    require_file(path, "DaTaSeg's Objects365 instance-mask val json",
                 "It is not public; see datasets/README.md for its format and location.")
    image_root = o365 / "val"
    data = read_json(path, "Objects365 instance-seg json")
    warnings, fixed = check(data, image_root, str(path), args.fix_paths)
    for w in warnings[:20]:
        print(f"warning: {w}")
    if fixed:
        backup = path.with_name(path.stem + ".orig.json")
        if not backup.exists():  # an existing one holds the file before the first fix
            os.replace(path, backup)
        write_json(data, path)
        print(f"rewrote {fixed} image paths in {path} (original in {backup})")
    elif args.fix_paths:
        print(f"no image path needed fixing; {path} left as is")
    print(f"OK: {path}: {len(data['images'])} images, {len(data['annotations'])} masks, "
          f"{len(data['categories'])} categories.")


if __name__ == "__main__":
    main()
