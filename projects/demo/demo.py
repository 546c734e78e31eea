#!/usr/bin/env python
"""Segment images with a trained DaTaSeg model and ANY vocabulary; write detectron2 drawings.

    # the vocabulary of a registered dataset
    python projects/demo/demo.py --config-file configs/tiny/DaTaSeg-tiny.yaml \\
        --input img.jpg more_images/ --output vis/ --task panoptic \\
        --vocabulary dataseg_synth_panoptic_val MODEL.WEIGHTS output/quickstart/model_final.pth

    # any class names ("a,b,c", or "a, synonym;b" to give synonyms); --things marks thing
    # classes for panoptic output (the rest are stuff)
    python projects/demo/demo.py ... --task semantic --classes "circle,block,meadow,ocean"

Works on the CPU. Trailing KEY VALUE pairs override the config, as in train_net.py.
"""

import argparse
import glob
import logging
import os
import sys

import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image

import dataseg  # noqa: F401  (registers DaTaSeg)
from dataseg.engine import DaTaSegCheckpointer, get_dataseg_cfg
from dataseg.text import match_class_names, parse_classes
from dataseg.utils import draw_predictions
from dataseg.utils.malloc import tune_malloc

# demo task -> the model output it draws
TASK_OUTPUTS = {"panoptic": "panoptic_seg", "semantic": "sem_seg", "instance": "instances"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VOCABULARY_NAME = "dataseg_demo"

logger = logging.getLogger("dataseg.demo")


def get_parser():
    parser = argparse.ArgumentParser(description="DaTaSeg demo: any vocabulary, PNGs out")
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="images and/or folders")
    parser.add_argument("--output", required=True, help="folder for the PNG drawings")
    parser.add_argument("--task", choices=sorted(TASK_OUTPUTS), default="panoptic")
    vocab = parser.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocabulary", help="a registered dataset whose class names to use")
    vocab.add_argument("--classes", help='class names: "a,b,c" or "a, synonym;b"')
    parser.add_argument("--things", default="",
                        help="with --classes: which of them are things (panoptic); default all")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="instances below it are not drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def resolve_vocabulary(args):
    """(class names, isthing flags) from --vocabulary or --classes/--things."""
    if args.vocabulary:
        if args.vocabulary not in MetadataCatalog.list() or \
                MetadataCatalog.get(args.vocabulary).get("dataseg_classes", None) is None:
            raise SystemExit(
                f"--vocabulary {args.vocabulary!r} is not a DaTaSeg-registered dataset; pass "
                "one of the dataseg_* dataset names, or give class names with --classes.")
        meta = MetadataCatalog.get(args.vocabulary)
        return list(meta.dataseg_classes), list(meta.dataseg_isthing)
    classes = parse_classes(args.classes)
    if not classes:
        raise SystemExit("--classes is empty; give comma-separated class names")
    if not args.things:
        return classes, [True] * len(classes)
    try:
        return classes, match_class_names(classes, parse_classes(args.things))
    except ValueError as e:
        raise SystemExit(f"--things: {e}") from e


def list_images(paths):
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(path, "*"))
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"--input {path!r} does not exist")
    if not files:
        raise SystemExit(f"no images found in {paths}")
    return files


def load_model(cfg):
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit(
            "The demo needs trained weights: add `MODEL.WEIGHTS path/to/model_final.pth` "
            "(e.g. output/quickstart/model_final.pth written by `make train`).")
    if "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SystemExit(f"MODEL.WEIGHTS file {cfg.MODEL.WEIGHTS!r} does not exist.")
    model = build_model(cfg)
    # The project's checkpointer: a checkpoint of another text width fails with a message
    # instead of running with a randomly re-initialised classifier.
    DaTaSegCheckpointer(
        model, min_backbone_fraction=cfg.MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION,
    ).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def main(argv=None):
    args = get_parser().parse_args(argv)
    tune_malloc()  # CPU: reuse large freed blocks instead of page-faulting (opt-out: env)
    setup_logger(name="dataseg")
    cfg = get_dataseg_cfg(args.config_file, args.opts)
    classes, isthing = resolve_vocabulary(args)
    images = list_images(args.input)
    model = load_model(cfg)
    output = TASK_OUTPUTS[args.task]
    model.set_vocabulary(VOCABULARY_NAME, classes, task=args.task, isthing=isthing,
                         test_outputs=(output,))
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    os.makedirs(args.output, exist_ok=True)

    failed = []
    for path in images:
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except (OSError, ValueError) as e:
            logger.error(f"cannot read image {path}: {e}; skipping it")
            failed.append(path)
            continue
        height, width = image.shape[:2]
        resized = resize.get_transform(image).apply_image(image)
        inputs = {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                  "height": height, "width": width, "dataset_name": VOCABULARY_NAME}
        with torch.no_grad():
            predictions = model([inputs])[0]
        rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        drawing = draw_predictions(rgb, predictions, classes, output, args.score_threshold)
        out_path = os.path.join(
            args.output, os.path.splitext(os.path.basename(path))[0] + f"_{args.task}.png")
        Image.fromarray(drawing).save(out_path)
        logger.info(f"{path} -> {out_path}")
    if failed:
        logger.error(f"{len(failed)} of {len(images)} images could not be read: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
