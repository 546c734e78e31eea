#!/usr/bin/env python3
"""Objects365 v2 jsons whose image paths match the disk, for dataseg_objects365_v2_{train,val}.

The official release's ``file_name`` fields do not match its archives: they read
``images/v1/patch8/objects365_v1_00420917.jpg`` while ``patch8.tar.gz`` of the train split
unpacks to ``patch8/...``, some releases carry bare file names, and a few listed images are
in no archive at all (three of train). Objects365 file names are unique, so every image is
looked up by its base name under the split folder, wherever the archives put it; the json is
rewritten with the path found (relative to ``objects365/<split>/``), images that are not on
disk are dropped with their boxes, and the category list is checked against the 365 classes
(ids 1..365; the json's spelling quirks such as "Table Teniis paddle" are kept, the package's
vocabulary holds the names the text encoder embeds).
"""

import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, make_parser, read_json, require_dir, vocabulary, write_json,
)

LAYOUT = """input (https://www.objects365.org/ or OpenDataLab's Objects365 v2 release):
  objects365/train/zhiyuan_objv2_train.json      (from zhiyuan_objv2_train.tar.gz)
  objects365/train/patch0 .. patch50/*.jpg       (from patch0.tar.gz .. patch50.tar.gz)
  objects365/val/zhiyuan_objv2_val.json
  objects365/val/images/v1/patch0 .. patch15/, objects365/val/images/v2/patch16 .. patch43/
  (the jsons may also be in objects365/ or objects365/annotations/; any folder nesting of
  the images under objects365/<split>/ works)
output:
  objects365/annotations/zhiyuan_objv2_{train,val}.json
  (an input json at that very path is first kept as zhiyuan_objv2_<split>.orig.json)"""

SPLITS = ("train", "val")


def json_candidates(o365: Path, split: str) -> List[Path]:
    name = f"zhiyuan_objv2_{split}.json"
    return [o365 / split / name, o365 / name,
            o365 / "annotations" / f"zhiyuan_objv2_{split}.orig.json", o365 / "annotations" / name]


def index_images(image_root: Path) -> Dict[str, List[str]]:
    """base name -> paths (relative to ``image_root``) of every .jpg below it."""
    found = defaultdict(list)
    for dirpath, _, files in os.walk(image_root):
        for f in files:
            if f.lower().endswith(".jpg"):
                found[f].append(os.path.relpath(os.path.join(dirpath, f), image_root))
    return found


def locate(file_name: str, index: Dict[str, List[str]]) -> Optional[str]:
    """Path on disk of a json ``file_name``: the path as given if it exists, else by base name
    (among duplicates, the one in the same ``patchN`` folder)."""
    candidates = index.get(os.path.basename(file_name), [])
    norm = os.path.normpath(file_name)
    if norm in candidates or not candidates:
        return norm if norm in candidates else None
    if len(candidates) > 1:
        patch = os.path.basename(os.path.dirname(norm))
        same = [c for c in candidates if os.path.basename(os.path.dirname(c)) == patch]
        return sorted(same or candidates)[0]
    return candidates[0]


def fix_image_paths(data: dict, image_root: Path, what: str) -> dict:
    """Rewrite ``data``'s image paths to the files under ``image_root``; drop missing images."""
    index = index_images(image_root)
    kept, missing = [], []
    for image in data["images"]:
        path = locate(image["file_name"], index)
        if path is None:
            missing.append(image)
        else:
            kept.append(dict(image, file_name=path))
    if not kept:
        raise PreparationError(
            f"none of the {len(data['images'])} images of {what} is under {str(image_root)!r} "
            f"(e.g. {data['images'][0]['file_name'] if data['images'] else '-'!r}); extract the "
            "image archives of this split there.")
    if missing:
        print(f"  {len(missing)} of {len(data['images'])} images of {what} are not on disk and "
              f"are dropped: {[m['file_name'] for m in missing[:5]]}"
              f"{' ...' if len(missing) > 5 else ''}")
    kept_ids = {image["id"] for image in kept}
    annotations = [a for a in data.get("annotations", []) if a["image_id"] in kept_ids]
    return dict(data, images=kept, annotations=annotations)


def check_categories(categories: List[dict], what: str):
    """The 365 classes with ids 1..365 (names are compared loosely: the release has typos)."""
    import difflib

    names = vocabulary("objects365_v2")
    ids = sorted(c["id"] for c in categories)
    if ids != list(range(1, len(names) + 1)):
        raise PreparationError(f"{what} has category ids {ids[:5]}...{ids[-3:]} "
                               f"({len(ids)} categories); Objects365 v2 has ids 1..365.")
    for c in categories:
        expected = names[c["id"] - 1]
        a, b = c["name"].strip().lower(), expected.lower()
        if difflib.SequenceMatcher(None, a, b).ratio() < 0.8:
            raise PreparationError(
                f"{what}: category {c['id']} is {c['name']!r}, but Objects365 v2's category "
                f"{c['id']} is {expected!r}: this is not the Objects365 v2 category list.")


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT, workers=False)
    parser.add_argument("--splits", nargs="+", choices=SPLITS,
                        help="splits to fix (default: every split whose json is found)")
    args = parser.parse_args(argv)
    o365 = dataset_root() / "objects365"
    wanted = args.splits or [s for s in SPLITS
                             if any(p.is_file() for p in json_candidates(o365, s))]
    if not wanted:
        raise PreparationError(
            "no Objects365 v2 json found; looked for "
            f"{[str(p) for s in SPLITS for p in json_candidates(o365, s)]}.")
    for split in wanted:
        found = [p for p in json_candidates(o365, split) if p.is_file()]
        if not found:
            raise PreparationError(f"no json for split {split!r}; looked for "
                                   f"{[str(p) for p in json_candidates(o365, split)]}.")
        src = found[0]
        image_root = require_dir(o365 / split, f"Objects365 {split} images",
                                 "Extract the split's patch archives there.")
        print(f"reading {src}")
        data = read_json(src, "Objects365 json")
        check_categories(data["categories"], str(src))
        data = fix_image_paths(data, image_root, str(src))
        out = o365 / "annotations" / f"zhiyuan_objv2_{split}.json"
        if src == out:
            os.replace(src, src.with_name(f"zhiyuan_objv2_{split}.orig.json"))
        write_json(data, out)
        print(f"wrote {out}: {len(data['images'])} images, {len(data['annotations'])} boxes")


if __name__ == "__main__":
    main()
