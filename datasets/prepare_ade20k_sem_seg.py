#!/usr/bin/env python3
"""ADE20k-150 semantic labels in detectron2's convention (read by dataseg_ade20k_sem_seg_*).

The SceneParsing release stores labels as 0 = "other" and 1..150 = the classes; detectron2's
layout (``annotations_detectron2``, as written by detectron2's own
``datasets/prepare_ade20k_sem_seg.py``) stores 0..149 and 255 for "other", which is ignored.
"""

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prep_common import (  # noqa: E402
    PreparationError, dataset_root, files_with_suffix, make_parser, require_dir, run_parallel,
)

LAYOUT = """input (ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu/):
  ADEChallengeData2016/images/{training,validation}/*.jpg
  ADEChallengeData2016/annotations/{training,validation}/*.png   0 = other, 1..150
output:
  ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png   0..149, 255 = ignore"""

SPLITS = ("training", "validation")


def convert_label(src: Path, out_dir: Path):
    from PIL import Image

    with Image.open(src) as im:
        labels = np.asarray(im)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise PreparationError(f"{str(src)!r} is not a single-channel 8-bit label PNG "
                               f"(shape {labels.shape}, {labels.dtype}).")
    if labels.max(initial=0) > 150:
        raise PreparationError(f"{str(src)!r} holds label {int(labels.max())}; ADE20k-150 "
                               "labels are 0..150. Is this the SceneParsing 2016 release?")
    # uint8 arithmetic: 0 ("other") wraps to 255, the ignore label.
    Image.fromarray(labels - np.uint8(1)).save(out_dir / src.name)


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0], LAYOUT)
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS))
    args = parser.parse_args(argv)
    ade = dataset_root() / "ADEChallengeData2016"
    for split in args.splits:
        src_dir = require_dir(ade / "annotations" / split, "ADE20k annotations",
                              "Download and unzip ADEChallengeData2016.zip there.")
        out_dir = ade / "annotations_detectron2" / split
        out_dir.mkdir(parents=True, exist_ok=True)
        files = list(files_with_suffix(src_dir, ".png"))
        if not files:
            raise PreparationError(f"no *.png label in {str(src_dir)!r}.")
        run_parallel(functools.partial(convert_label, out_dir=out_dir), files, args.workers,
                     f"ADE20k {split}")
        print(f"wrote {len(files)} label maps to {out_dir}")


if __name__ == "__main__":
    main()
