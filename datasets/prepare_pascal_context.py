#!/usr/bin/env python3
"""Pascal Context 59 and 459 (full) label maps for dataseg_pascal_context_{59,459}_val.

Reads the full 459-class annotation of every image (``trainval/*.mat``, field ``LabelMap``:
0 = unlabeled, 1..459 in the order of the release's labels.txt) and writes ODISE's
``pascal_ctx_d2`` layout:
  * 459 classes as 16-bit TIFFs, 0..458 and 65535 = ignore (uint8 cannot hold 459 ids);
  * 59 classes as PNGs, 0..58 and 255 = ignore: the 59 frequent classes keep their pixels,
    every other class becomes ignore. The 59 are found by name in the 459 list (the package's
    vocabularies), which gives the same table of 459-ids ODISE's Detail-API-based script uses,
    so the Detail API is not needed.
Splits are VOC2010's ``ImageSets/Main/{train,val}.txt`` (4,998 / 5,105 images).
"""

import functools
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, import_optional, make_parser, relative_entry, require_dir,
    require_file, run_parallel, vocabulary,
)

LAYOUT = """input (VOCtrainval_03-May-2010.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2010/,
trainval.tar.gz from https://www.cs.stanford.edu/~roozbeh/pascal-context/ untarred into
VOCdevkit/VOC2010/):
  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt
  VOCdevkit/VOC2010/trainval/*.mat                 LabelMap: 0 = unlabeled, 1..459
output:
  pascal_ctx_d2/images/{training,validation}/*.jpg            (copies)
  pascal_ctx_d2/annotations_ctx59/{training,validation}/*.png   0..58, 255 = ignore
  pascal_ctx_d2/annotations_ctx459/{training,validation}/*.tif  0..458, 65535 = ignore"""

SPLITS = {"train": "training", "val": "validation"}


def lookup_tables():
    """uint16 LUTs over the 459-ids 0..459: -> 459-class labels and -> 59-class labels."""
    full, frequent = vocabulary("pascal_context_459"), vocabulary("pascal_context_59")
    to459 = np.arange(-1, len(full), dtype=np.int64)  # id k -> k - 1; 0 -> -1 (ignore)
    to459[0] = 65535
    to59 = np.full(len(full) + 1, 255, dtype=np.int64)
    for i, name in enumerate(frequent):
        to59[full.index(name) + 1] = i
    return to459.astype(np.uint16), to59.astype(np.uint8)


def convert_image(stem: str, voc: Path, out: Path, folder: str, tables):
    from PIL import Image
    from scipy.io import loadmat

    to459, to59 = tables
    image = voc / "JPEGImages" / f"{stem}.jpg"
    mat = voc / "trainval" / f"{stem}.mat"
    if not image.is_file() or not mat.is_file():
        raise PreparationError(f"image {stem!r} of the split list needs {str(image)!r} and "
                               f"{str(mat)!r}; one is missing.")
    labels = loadmat(str(mat))["LabelMap"].astype(np.int64)
    with Image.open(image) as im:
        if im.size != (labels.shape[1], labels.shape[0]):
            raise PreparationError(f"{str(mat)!r} is {labels.shape[1]}x{labels.shape[0]}, "
                                   f"its image {im.size[0]}x{im.size[1]} (WxH).")
    if labels.min() < 0 or labels.max() >= len(to459):
        raise PreparationError(f"{str(mat)!r} holds labels outside 0..{len(to459) - 1}.")
    shutil.copyfile(image, out / "images" / folder / image.name)
    Image.fromarray(to459[labels]).save(out / "annotations_ctx459" / folder / f"{stem}.tif")
    Image.fromarray(to59[labels]).save(out / "annotations_ctx59" / folder / f"{stem}.png")


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=["val"],
                        help="splits to write (default: val, the benchmark)")
    args = parser.parse_args(argv)
    import_optional("scipy.io", "scipy", "Reading Pascal Context's .mat annotations")
    root = dataset_root()
    voc = root / "VOCdevkit" / "VOC2010"
    require_dir(voc / "JPEGImages", "VOC2010 images",
                "Untar VOCtrainval_03-May-2010.tar in $DETECTRON2_DATASETS.")
    require_dir(voc / "trainval", "Pascal Context annotation",
                "Untar Pascal Context's trainval.tar.gz into VOCdevkit/VOC2010/.")
    tables = lookup_tables()
    out = root / "pascal_ctx_d2"
    for split in args.splits:
        folder = SPLITS[split]
        listing = require_file(voc / "ImageSets" / "Main" / f"{split}.txt", "VOC2010 split list")
        # Checked before anything is written: a stem is joined to the output folders.
        stems = [relative_entry(line.strip(), f"split list {str(listing)!r}, line {n}")
                 for n, line in enumerate(listing.read_text().splitlines(), start=1)
                 if line.strip()]
        for sub in ("images", "annotations_ctx59", "annotations_ctx459"):
            (out / sub / folder).mkdir(parents=True, exist_ok=True)
        run_parallel(functools.partial(convert_image, voc=voc, out=out, folder=folder,
                                       tables=tables),
                     stems, args.workers, f"Pascal Context {split}")
        print(f"wrote {len(stems)} images with 59- and 459-class labels under {out}")


if __name__ == "__main__":
    main()
