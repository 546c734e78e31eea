#!/usr/bin/env python
"""Segment images or a video with a trained DaTaSeg model and ANY vocabulary.

    # the vocabulary of a registered dataset; several tasks in one run
    python projects/demo/demo.py --config-file configs/tiny/DaTaSeg-tiny.yaml \\
        --input img.jpg more_images/ "shots/**/*.jpg" --output vis/ \\
        --task panoptic --task semantic --vocabulary dataseg_synth_panoptic_val \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth

    # any class names ("a,b,c", or "a, synonym;b" to give synonyms), a file of them, or a
    # registered vocabulary plus extra names; --things marks thing classes (panoptic)
    python projects/demo/demo.py ... --task semantic --classes "circle,block,meadow,ocean"
    python projects/demo/demo.py ... --classes-file lvis_names.txt
    python projects/demo/demo.py ... --vocabulary dataseg_synth_panoptic_val --classes "kite"

    # pseudo-label a folder: raw outputs in the standard formats under vis/predictions/
    python projects/demo/demo.py ... --input unlabelled/ --output vis/ --save-predictions

    # a video: annotated copy with detectron2's VideoVisualizer
    python projects/demo/demo.py ... --video-input clip.mp4 --output vis/

Without --output, one summary line per image (or frame) is printed instead. Config overrides
go after --opts or trail the command as KEY VALUE pairs, as in train_net.py. Works on the CPU.
The argument names follow detectron2's demo/demo.py; the inference is
``dataseg.engine.DaTaSegPredictor``.
"""

import argparse
import glob
import json
import logging
import os
import re
import sys
from collections import Counter

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode
from PIL import Image

import dataseg  # noqa: F401  (registers DaTaSeg)
from dataseg.data.image_io import read_image
from dataseg.data.panoptic_png import segment_ids_to_rgb
from dataseg.engine import DaTaSegPredictor, get_dataseg_cfg
from dataseg.engine.checkpoint import local_weights_file
from dataseg.text import match_class_names, normalize_class_name, parse_classes
from dataseg.utils import draw_predictions
from dataseg.modeling.fast_paths.malloc import tune_malloc

# demo task -> the model output it draws
TASK_OUTPUTS = {"panoptic": "panoptic_seg", "semantic": "sem_seg", "instance": "instances"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# output video extension -> OpenCV fourcc (both ship with opencv-python's ffmpeg)
VIDEO_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
# A config key swallowed by --input's nargs="+" ("--input a.jpg MODEL.WEIGHTS w.pth").
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")

logger = logging.getLogger("dataseg.demo")


def get_parser():
    parser = argparse.ArgumentParser(
        description="DaTaSeg demo: any vocabulary; drawings, summaries or raw predictions out")
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+",
                        help="images, folders (their images) and/or quoted globs ('a/**/*.jpg')")
    source.add_argument("--video-input", help="a video file; writes an annotated copy")
    parser.add_argument("--output", default=None,
                        help="folder for the drawings (a video may also be a .mp4/.avi file "
                             "name); without it a summary per image is printed")
    parser.add_argument("--task", action="append", default=None,
                        help=f"one of {sorted(TASK_OUTPUTS)}; repeat it or separate by commas "
                             "for several (default: panoptic)")
    parser.add_argument("--vocabulary", help="a registered dataset whose class names to use")
    parser.add_argument("--classes", help='class names: "a,b,c" or "a, synonym;b"')
    parser.add_argument("--classes-file",
                        help="text file, one class per line (commas separate synonyms, "
                             "# starts a comment)")
    parser.add_argument("--things", default=None,
                        help="which classes are things (panoptic): names of --classes / "
                             "--classes-file ones; default all of them (a --vocabulary keeps "
                             "its own flags)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="instances below it are not drawn nor saved")
    parser.add_argument("--save-predictions", action="store_true",
                        help="also write raw outputs under OUTPUT/predictions/: panoptic PNG + "
                             "COCO panoptic json, semantic label PNGs, instances as COCO RLE json")
    parser.add_argument("--opts", dest="flag_opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ... (trailing pairs work too)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def parse_args(argv=None):
    """Parse the command line; trailing and ``--opts`` overrides end up in ``args.opts``."""
    parser = get_parser()
    args = parser.parse_args(argv)
    # After a trailing pair, argparse leaves a later "--opts" inside the positional remainder.
    opts = [o for o in args.opts if o != "--opts"]
    if args.input:
        # --input takes several values, so trailing KEY VALUE pairs right after it land there.
        for i, item in enumerate(args.input):
            if _CONFIG_KEY.match(item) and not os.path.exists(item):
                opts = args.input[i:] + opts
                args.input = args.input[:i]
                break
        if not args.input:
            parser.error("--input needs at least one image, folder or glob")
    args.opts = opts + list(args.flag_opts)
    if len(args.opts) % 2:
        parser.error(f"config overrides come in KEY VALUE pairs, got {args.opts}")
    tasks = []
    for entry in args.task or ["panoptic"]:
        for task in (t.strip() for t in entry.split(",")):
            if task not in TASK_OUTPUTS:
                parser.error(f"--task {task!r}: choose from {sorted(TASK_OUTPUTS)}")
            if task not in tasks:
                tasks.append(task)
    args.task = tasks
    if args.save_predictions and (not args.output or args.video_input):
        parser.error("--save-predictions writes under --output and works on --input images")
    return args


def read_classes_file(path):
    """Class names of a text file: one per line, commas separate synonyms, # comments."""
    if not os.path.isfile(path):
        raise SystemExit(f"--classes-file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        names = [line.split("#", 1)[0].strip() for line in f]
    names = [n for n in names if n]
    if not names:
        raise SystemExit(f"--classes-file {path!r} holds no class names")
    return names


def resolve_vocabulary(args):
    """(class names, isthing flags) from --vocabulary, --classes, --classes-file, --things.

    A registered --vocabulary comes first with its own thing flags; the names of --classes and
    --classes-file follow (names it already has are not repeated). Returns (None, None) when
    none is given: the predictor then uses the config's default vocabulary.
    """
    base, base_flags = [], []
    if args.vocabulary:
        meta = MetadataCatalog.get(args.vocabulary) \
            if args.vocabulary in MetadataCatalog.list() else None
        if meta is None or meta.get("dataseg_classes", None) is None:
            raise SystemExit(
                f"--vocabulary {args.vocabulary!r} is not a DaTaSeg-registered dataset; pass "
                "one of the dataseg_* dataset names, or give class names with --classes.")
        base, base_flags = list(meta.dataseg_classes), list(meta.dataseg_isthing)
    extra = []
    if args.classes is not None:
        extra = parse_classes(args.classes)
        if not extra:
            raise SystemExit("--classes is empty; give comma-separated class names")
    if getattr(args, "classes_file", None):
        extra += read_classes_file(args.classes_file)
    known = {normalize_class_name(c) for c in base}
    unique = []
    for name in extra:
        key = normalize_class_name(name)
        if key not in known:
            known.add(key)
            unique.append(name)
    classes = base + unique
    if not classes:
        if args.things is not None:
            raise SystemExit("--things names thing classes of --classes / --classes-file; "
                             "give those too")
        return None, None
    if args.things is None:
        return classes, base_flags + [True] * len(unique)
    try:
        named = match_class_names(classes, parse_classes(args.things))
    except ValueError as e:
        raise SystemExit(f"--things: {e}") from e
    flags = base_flags + [False] * len(unique)
    return classes, [a or b for a, b in zip(flags, named)]


def list_images(paths):
    """Image files of files, folders (their images, sorted) and globs, without repeats."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(f for f in glob.glob(os.path.join(glob.escape(path), "*"))
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        elif glob.has_magic(path):
            matches = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
            if not matches:
                raise SystemExit(f"--input {path!r} matches no file")
            files += matches
        else:
            hint = " (config overrides go after --opts)" if _CONFIG_KEY.match(path) else ""
            raise SystemExit(f"--input {path!r} does not exist{hint}")
    if not files:
        raise SystemExit(f"no images found in {paths}")
    seen, unique = set(), []
    for f in files:
        key = os.path.abspath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def output_stems(files):
    """Output name (relative path, no extension) per input, distinct for distinct inputs.

    Paths are kept relative to the inputs' common folder, so ``a/0.jpg`` and ``b/0.jpg``
    become ``a/0`` and ``b/0``; ``x.jpg`` and ``x.png`` of one folder keep their extension.
    """
    absolute = [os.path.abspath(f) for f in files]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    relative = [os.path.relpath(p, root) for p in absolute]
    stems = [os.path.splitext(r)[0] for r in relative]
    counts = Counter(stems)
    return [r.replace(".", "_") if counts[s] > 1 else s for r, s in zip(relative, stems)]


def drawing_path(output, stem, task):
    """Where an image run draws ``task`` for the input of output name ``stem``."""
    return os.path.join(output, f"{stem}_{task}.png")


def image_run_outputs(args, stems):
    """Every file an image run will write (drawings and --save-predictions files)."""
    if not args.output:
        return []
    paths = [drawing_path(args.output, stem, task) for stem in stems for task in args.task]
    if args.save_predictions:
        paths += PredictionWriter.files(os.path.join(args.output, "predictions"), args.task,
                                        stems)
    return paths


def check_no_overwrite(inputs, outputs):
    """Refuse a run that would write over one of its inputs.

    Inputs are listed before anything is written, so a drawing is never read back as an
    input; but a drawing named like an input (``--output`` = the input folder holding an
    earlier run's ``x_panoptic.png``, or a video written over itself) would destroy it.
    """
    def key(path):
        return os.path.normcase(os.path.realpath(path))

    by_key = {key(p): p for p in inputs}
    clashes = [(out, by_key[key(out)]) for out in outputs if key(out) in by_key]
    if clashes:
        shown = ", ".join(f"{out} (input {inp})" for out, inp in clashes[:3])
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise SystemExit(
            f"--output would overwrite {len(clashes)} input file(s): {shown}{more}. Write to "
            "another folder (e.g. a new one next to the inputs), or move earlier drawings out "
            "of the input folder.")


def check_weights(cfg):
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit(
            "The demo needs trained weights: add `MODEL.WEIGHTS path/to/model_final.pth` "
            "(e.g. output/quickstart/model_final.pth written by `make train`).")
    local = local_weights_file(cfg.MODEL.WEIGHTS)
    if local is not None and not os.path.isfile(local):
        raise SystemExit(f"MODEL.WEIGHTS file {local!r} does not exist.")


# ---- what a prediction holds ----------------------------------------------------------------
def kept_instances(predictions, score_threshold):
    instances = predictions["instances"].to("cpu")
    return instances[instances.scores > score_threshold]


def describe(predictions, task, names, score_threshold):
    """(number of drawn segments, one-line summary) of one task's output."""
    output = TASK_OUTPUTS[task]
    if output == "sem_seg":
        labels = predictions["sem_seg"].argmax(dim=0).flatten().cpu()
        counts = torch.bincount(labels, minlength=len(names))
        order = [int(i) for i in torch.argsort(counts, descending=True) if counts[i] > 0]
        parts = [f"{names[i]} {100.0 * float(counts[i]) / labels.numel():.1f}%"
                 for i in order[:5]]
        return len(order), "semantic: " + ", ".join(parts)
    if output == "panoptic_seg":
        segments = predictions["panoptic_seg"][1]
        found = Counter(names[s["category_id"]] for s in segments)
        parts = [f"{n} x{k}" if k > 1 else n for n, k in found.most_common()]
        plural = "" if len(segments) == 1 else "s"
        return len(segments), f"panoptic: {len(segments)} segment{plural}" + (
            f" ({', '.join(parts)})" if parts else "")
    instances = kept_instances(predictions, score_threshold)
    parts = [f"{names[int(c)]} {float(s):.2f}"
             for c, s in zip(instances.pred_classes[:5], instances.scores[:5])]
    return len(instances), f"instance: {len(instances)} above {score_threshold:g}" + (
        f" ({', '.join(parts)})" if parts else "")


def nothing_passed_message(task, predictions, cfg, score_threshold):
    """Why a drawing shows the image unchanged, and which knob to turn."""
    if task == "panoptic":
        t = cfg.MODEL.DATASEG.TEST
        return (f"no panoptic segment passed the thresholds (MODEL.DATASEG.TEST."
                f"OBJECT_MASK_THRESHOLD {t.OBJECT_MASK_THRESHOLD}, OVERLAP_THRESHOLD "
                f"{t.OVERLAP_THRESHOLD}); the drawing is the unchanged image. Lower them with "
                "--opts MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD 0.5, or check the weights and "
                "the vocabulary.")
    scores = predictions["instances"].scores
    best = f" (best score {float(scores.max()):.2f})" if len(scores) else ""
    return (f"no instance scored above --score-threshold {score_threshold:g}{best}; the "
            "drawing is the unchanged image. Lower --score-threshold, or check the weights "
            "and the vocabulary.")


# ---- raw predictions ----------------------------------------------------------------------
def category_ids(vocabulary, num_classes):
    """Dataset category id per contiguous class: a registered vocabulary's own ids (inverse
    of ``stuff_dataset_id_to_contiguous_id`` / ``thing_dataset_id_to_contiguous_id``), then
    the next free ids for extra classes; 1..C for a custom vocabulary."""
    ids = []
    if vocabulary:
        meta = MetadataCatalog.get(vocabulary)
        n_own = len(meta.dataseg_classes)
        mapping = meta.get("stuff_dataset_id_to_contiguous_id", None) or \
            meta.get("thing_dataset_id_to_contiguous_id", None) or {}
        inverse = {int(c): int(d) for d, c in mapping.items()}
        if sorted(inverse) == list(range(n_own)):
            ids = [inverse[i] for i in range(n_own)]
    start = max(ids, default=0) + 1
    return ids + list(range(start, start + num_classes - len(ids)))


class PredictionWriter:
    """Raw outputs in the standard formats, under ``<output>/predictions/``:

    * ``panoptic/<name>.png`` (COCO panoptic RGB id encoding) + ``panoptic.json`` (COCO
      panoptic format: images, annotations with segments_info, categories);
    * ``semantic/<name>.png``: contiguous class ids (uint8, uint16 beyond 255 classes);
    * ``instances.json``: a COCO instances json (images, annotations with RLE masks,
      boxes, areas and scores, categories): only instances above --score-threshold.
    """

    def __init__(self, root, tasks, names, isthing, palette, vocabulary, score_threshold):
        self.root, self.tasks, self.names = root, tasks, names
        self.score_threshold = score_threshold
        self.ids = category_ids(vocabulary, len(names))
        self.categories = [
            {"id": self.ids[i], "name": n, "isthing": int(isthing[i]), "color": list(palette[i]),
             "supercategory": "thing" if isthing[i] else "stuff"}
            for i, n in enumerate(names)]
        self.images, self.panoptic, self.instances = [], [], []

    def add(self, image_file, stem, height, width, predictions):
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": image_file, "height": height,
                            "width": width})
        if "semantic" in self.tasks:
            labels = predictions["sem_seg"].argmax(dim=0).cpu().numpy()
            labels = labels.astype(np.uint8 if len(self.names) <= 256 else np.uint16)
            self._save(Image.fromarray(labels), "semantic", stem)
        if "panoptic" in self.tasks:
            self._add_panoptic(image_id, stem, predictions["panoptic_seg"])
        if "instance" in self.tasks:
            import pycocotools.mask as mask_util

            instances = kept_instances(predictions, self.score_threshold)
            instances.pred_masks = instances.pred_masks.numpy()  # what pycocotools encodes

            for ann in instances_to_coco_json(instances, image_id):
                ann["category_id"] = self.ids[ann["category_id"]]
                ann["id"] = len(self.instances) + 1
                ann["area"] = float(mask_util.area(ann["segmentation"]))
                ann["iscrowd"] = 0
                self.instances.append(ann)

    def _add_panoptic(self, image_id, stem, panoptic):
        ids, segments = panoptic
        ids = ids.cpu().numpy().astype(np.int64)
        infos = []
        for s in segments:
            mask = ids == s["id"]
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1)] if len(xs) else [0, 0, 0, 0]
            infos.append({"id": int(s["id"]), "category_id": self.ids[s["category_id"]],
                          "isthing": int(s["isthing"]), "area": int(mask.sum()), "bbox": bbox,
                          "iscrowd": 0})
        file_name = self._save(Image.fromarray(segment_ids_to_rgb(ids)), "panoptic", stem)
        self.panoptic.append({"image_id": image_id, "file_name": file_name,
                              "segments_info": infos})

    @staticmethod
    def files(root, tasks, stems):
        """The paths a writer of these tasks writes under ``root`` for these inputs."""
        folders = [t for t in ("panoptic", "semantic") if t in tasks]
        paths = [os.path.join(root, folder, stem + ".png") for folder in folders for stem in stems]
        return paths + [os.path.join(root, name) for task, name in (
            ("panoptic", "panoptic.json"), ("instance", "instances.json")) if task in tasks]

    def _save(self, image, folder, stem):
        path = os.path.join(self.root, folder, stem + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path)
        return stem + ".png"

    def close(self):
        """Write the json files; returns the written paths."""
        written = []
        for task, name, annotations in (("panoptic", "panoptic.json", self.panoptic),
                                        ("instance", "instances.json", self.instances)):
            if task in self.tasks:
                path = os.path.join(self.root, name)
                os.makedirs(self.root, exist_ok=True)
                with open(path, "w") as f:
                    json.dump({"images": self.images, "annotations": annotations,
                               "categories": self.categories}, f)
                written.append(path)
        return written


# ---- runs ---------------------------------------------------------------------------------
def run_images(args, cfg, predictor, images):
    """Predict, summarise and draw every input image; ``images``: the inputs, listed (and
    checked against the outputs) before anything was written. Returns the exit status."""
    stems = output_stems(images)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in images])
    names = predictor.metadata.thing_classes
    writer = None
    if args.save_predictions:
        writer = PredictionWriter(
            os.path.join(args.output, "predictions"), args.task, predictor.class_names,
            predictor.isthing, predictor.metadata.stuff_colors, predictor.vocabulary,
            args.score_threshold)
    failed = []
    for path, stem in zip(images, stems):
        try:
            image = read_image(path, format="BGR")
        except (OSError, ValueError) as e:
            logger.error(f"cannot read image {path}: {e}; skipping it")
            failed.append(path)
            continue
        predictions = predictor(image)
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        summary = []
        for task in args.task:
            drawn, text = describe(predictions, task, names, args.score_threshold)
            summary.append(text)
            if not drawn:
                logger.warning(f"{path}: " + nothing_passed_message(
                    task, predictions, cfg, args.score_threshold))
            if args.output:
                drawing = draw_predictions(rgb, predictions, predictor.class_names,
                                           TASK_OUTPUTS[task], args.score_threshold,
                                           metadata=predictor.metadata)
                out_path = drawing_path(args.output, stem, task)
                os.makedirs(os.path.dirname(out_path), exist_ok=True)
                Image.fromarray(drawing).save(out_path)
                logger.info(f"{path} -> {out_path}")
        if writer is not None:
            writer.add(os.path.relpath(os.path.abspath(path), root), stem, image.shape[0],
                       image.shape[1], predictions)
        print(f"{path}: " + "; ".join(summary), flush=True)
    if writer is not None:
        for path in writer.close():
            logger.info(f"wrote {path}")
    if failed:
        logger.error(f"{len(failed)} of {len(images)} images could not be read: {failed}")
        return 1
    return 0


def video_outputs(args):
    """Output file per task of a --video-input run (None without --output)."""
    if not args.output:
        return {task: None for task in args.task}
    root, ext = os.path.splitext(args.output)
    if ext.lower() in VIDEO_CODECS:
        if len(args.task) == 1:
            return {args.task[0]: args.output}
        return {task: f"{root}_{task}{ext}" for task in args.task}
    if ext:
        raise SystemExit(f"--output {args.output!r}: write a video as one of "
                         f"{sorted(VIDEO_CODECS)}, or give a folder")
    stem = os.path.splitext(os.path.basename(args.video_input))[0]
    return {task: os.path.join(args.output, f"{stem}_{task}.mp4") for task in args.task}


def _annotate_frames(args, predictor, video, writers):
    """Predict every frame, print its summary and write its drawings; (frames, empty counts)."""
    # One VideoVisualizer per task: it keeps instance colours stable from frame to frame.
    visualizers = {task: VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
                   for task in args.task}
    names = predictor.metadata.thing_classes
    empty = Counter()
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        predictions = predictor(frame)
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        summary = []
        for task in args.task:
            drawn, text = describe(predictions, task, names, args.score_threshold)
            summary.append(text)
            empty[task] += not drawn
            if task in writers:
                drawing = _draw_frame(visualizers[task], rgb, predictions, task,
                                      args.score_threshold)
                writers[task].write(np.ascontiguousarray(drawing[:, :, ::-1]))
        print(f"frame {frames}: " + "; ".join(summary), flush=True)
        frames += 1
    return frames, empty


def run_video(args, cfg, predictor):
    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        raise SystemExit(f"--video-input {args.video_input!r} cannot be opened as a video")
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    paths = video_outputs(args)  # checked against the input by main
    writers = {}
    # Released on every exit (an error, Ctrl-C): an unreleased writer leaves an unplayable file.
    try:
        for task, path in paths.items():
            if path is None:
                continue
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[os.path.splitext(path)[1].lower()])
            writer = cv2.VideoWriter(path, fourcc, float(fps), (width, height), True)
            if not writer.isOpened():
                raise SystemExit(f"OpenCV cannot write {path!r}; try a .avi or .mp4 --output")
            writers[task] = writer
        frames, empty = _annotate_frames(args, predictor, video, writers)
    finally:
        video.release()
        for writer in writers.values():
            writer.release()
    if not frames:
        raise SystemExit(f"--video-input {args.video_input!r} holds no readable frame")
    for task in args.task:
        if empty[task]:
            logger.warning(f"{args.video_input}: {task}: nothing passed the thresholds in "
                           f"{empty[task]} of {frames} frames (see --score-threshold and "
                           "MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD).")
    for task, path in paths.items():
        if path:
            logger.info(f"{args.video_input} ({frames} frames) -> {path}")
    return 0


def _draw_frame(visualizer, rgb, predictions, task, score_threshold):
    if task == "panoptic":
        ids, segments = predictions["panoptic_seg"]
        vis = visualizer.draw_panoptic_seg_predictions(rgb, ids.cpu(), segments)
    elif task == "semantic":
        vis = visualizer.draw_sem_seg(rgb, predictions["sem_seg"].argmax(dim=0).cpu())
    else:
        vis = visualizer.draw_instance_predictions(rgb, kept_instances(predictions,
                                                                       score_threshold))
    return vis.get_image()


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="dataseg")
    cfg = get_dataseg_cfg(args.config_file, args.opts)
    # CPU fast paths: reuse large freed blocks instead of page-faulting them in again.
    tune_malloc(cfg.MODEL.DATASEG.FAST_PATHS, cfg.MODEL.DEVICE)
    classes, isthing = resolve_vocabulary(args)
    # Fail on a wrong path before loading the model. The inputs are listed once, before
    # anything is written: a drawing saved into an input folder is never read back.
    images = None
    if args.input:
        images = list_images(args.input)
        check_no_overwrite(images, image_run_outputs(args, output_stems(images)))
    elif not os.path.isfile(args.video_input):
        raise SystemExit(f"--video-input {args.video_input!r} cannot be opened as a video "
                         "(no such file)")
    else:
        check_no_overwrite([args.video_input], [p for p in video_outputs(args).values() if p])
    check_weights(cfg)
    predictor = DaTaSegPredictor(cfg, vocabulary=args.vocabulary, classes=classes,
                                 task=args.task, isthing=isthing)
    if args.video_input:
        return run_video(args, cfg, predictor)
    return run_images(args, cfg, predictor, images)


if __name__ == "__main__":
    sys.exit(main())
