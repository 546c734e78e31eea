"""Generated datasets in the REAL on-disk formats, for tests and the out-of-the-box run.

No COCO/ADE/Objects365 data is reachable offline, so the project draws its own scenes: textured
"stuff" backgrounds (grass, water, sky, sand) and coloured "thing" shapes (disks, squares,
triangles). Every dataset shows the same visual concepts but NAMES them differently, as real
datasets do (COCO "grass" vs ADE "grass, lawn"), and each is written in its real format:

=====================  ==========================================  =====================
dataset                format (under ``root``)                     vocabulary
=====================  ==========================================  =====================
panoptic               COCO panoptic json + RGB-id PNGs + jpgs     disk, square, ... sky
semantic               ADE-style jpgs + label PNGs (0..C-1, 255)   lawn, "sea, lake", ...
box / instance         COCO instances json (boxes only / +RLE)     ball, crate, pyramid
heldout panoptic/sem.  as above, other names (open vocabulary)     circle, block, ...
=====================  ==========================================  =====================

Semantic label PNGs follow detectron2's prepared-ADE convention (``annotations_detectron2``):
ids ``0..C-1`` and ``255`` = ignore (concepts outside the vocabulary, e.g. triangles).

CLI: ``python -m dataseg.data.synthetic --root DIR [--num-train N --num-val M
--image-size S --seed K]``. Generation is deterministic for a seed and takes seconds.
"""

import argparse
import json
import logging
import os
from typing import Dict, List, Optional

import cv2
import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from .catalog import register_box_dataset, register_instance_dataset, \
    register_panoptic_dataset, register_semantic_dataset
from .panoptic_png import segment_ids_to_rgb

__all__ = [
    "THING_CONCEPTS",
    "STUFF_CONCEPTS",
    "SYNTHETIC_VOCABULARIES",
    "SYNTHETIC_DATASET_NAMES",
    "generate_synthetic_datasets",
    "register_synthetic_datasets",
    "default_synthetic_root",
]

logger = logging.getLogger(__name__)

THING_CONCEPTS = ("disk", "square", "triangle")
STUFF_CONCEPTS = ("grass", "water", "sky", "sand")
_NUM_STUFF = len(STUFF_CONCEPTS)

# concept -> class name per dataset (None: not in that vocabulary -> void / ignore / absent).
SYNTHETIC_VOCABULARIES = {
    "panoptic": {"disk": "disk", "square": "square", "triangle": "triangle",
                 "grass": "grass", "water": "water", "sky": "sky", "sand": "sand"},
    "semantic": {"disk": "ball", "square": "box", "triangle": None,
                 "grass": "lawn", "water": "sea, lake", "sky": "blue sky", "sand": "beach"},
    "box": {"disk": "ball", "square": "crate", "triangle": "pyramid"},
    "heldout_panoptic": {"disk": "circle", "square": "block", "triangle": "wedge",
                         "grass": "meadow", "water": "ocean", "sky": "heaven", "sand": "desert"},
    "heldout_semantic": {"disk": "round blob", "square": "quad", "triangle": "trigon",
                         "grass": "turf", "water": "river", "sky": "atmosphere", "sand": "dune"},
}

# Registered names, relative to the prefix ("dataseg_synth" by default).
SYNTHETIC_DATASET_NAMES = (
    "panoptic_train", "panoptic_val", "semantic_train", "semantic_val", "instance_train",
    "instance_val", "box_train", "box_val", "heldout_panoptic_val", "heldout_semantic_val",
)

_COLORS = {  # display colours (RGB) of the concepts, for visualisation metadata
    "disk": (220, 20, 60), "square": (0, 0, 142), "triangle": (255, 165, 0),
    "grass": (60, 160, 60), "water": (30, 90, 200), "sky": (150, 200, 250),
    "sand": (210, 190, 130),
}
# Panoptic category ids are deliberately non-contiguous (as COCO's), so id mapping is tested.
_PANOPTIC_IDS = {"disk": 1, "square": 2, "triangle": 3,
                 "grass": 11, "water": 12, "sky": 13, "sand": 14}
_FORMAT_VERSION = 1
_MIN_THING_AREA = 24  # visible pixels below this are void: too small to be a fair target


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS/dataseg_synthetic`` (default ``datasets/dataseg_synthetic``)."""
    return os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
                        "dataseg_synthetic")


# ------------------------------------------------------------------------------ rendering
def _texture(concept: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    if concept == "grass":
        v = np.sin(xx * 0.9 + 2 * noise) * 25
        rgb = (50 + 0.3 * v, 140 + v, 45 + 0.3 * v)
    elif concept == "water":
        phase = rng.uniform(0, 6.28)
        v = np.sin(yy * 0.45 + 3 * np.sin(xx * 0.05 + phase)) * 30 + 6 * noise
        rgb = (30 + 0.3 * v, 85 + 0.6 * v, 190 + v)
    elif concept == "sky":
        t = yy / max(h - 1, 1)
        rgb = (200 - 80 * t + 3 * noise, 222 - 50 * t + 3 * noise, 255 - 15 * t + 3 * noise)
    else:  # sand
        v = 18 * noise
        rgb = (210 + v, 188 + v, 128 + v)
    return np.clip(np.stack(rgb, axis=-1), 0, 255)


def _shape_mask(concept: str, h: int, w: int, cx, cy, r) -> np.ndarray:
    yy, xx = np.ogrid[0:h, 0:w]
    if concept == "disk":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if concept == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # triangle pointing up, base 2r at cy + r
    top = cy - r
    return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2.0)


def _render_scene(rng: np.random.Generator, size: int):
    """One scene: (RGB uint8 image, stuff map (H,W) of stuff concept index, thing instance map
    (H,W) 0 = none else 1-based, list of thing concepts per instance)."""
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w]
    # Sky on top, then one or two ground stuffs split by wavy boundaries.
    horizon = rng.uniform(0.2, 0.45) * h + 6 * np.sin(xx * rng.uniform(0.02, 0.08))
    stuff = np.full((h, w), STUFF_CONCEPTS.index("sky"), dtype=np.int64)
    ground = rng.choice([0, 1, 3], size=2, replace=False)  # grass/water/sand
    split = rng.uniform(0.3, 0.7) * w + 10 * np.sin(yy * rng.uniform(0.03, 0.1))
    below = yy >= horizon
    stuff[below & (xx < split)] = ground[0]
    stuff[below & (xx >= split)] = ground[1]
    if rng.random() < 0.3:  # sometimes a single ground stuff
        stuff[below] = ground[0]
    image = np.zeros((h, w, 3), dtype=np.float32)
    for s in np.unique(stuff):
        sel = stuff == s
        image[sel] = _texture(STUFF_CONCEPTS[s], h, w, rng)[sel]

    things = np.zeros((h, w), dtype=np.int64)
    concepts: List[str] = []
    for k in range(int(rng.integers(1, 5))):
        concept = THING_CONCEPTS[int(rng.integers(len(THING_CONCEPTS)))]
        r = rng.uniform(0.06, 0.16) * size
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        mask = _shape_mask(concept, h, w, cx, cy, r)
        color = rng.uniform(40, 255, size=3)
        if rng.random() < 0.5:  # striped texture on half of the things
            stripes = (np.sin((xx + yy) * rng.uniform(0.2, 0.6)) > 0)[..., None]
            paint = np.where(stripes, color, color * 0.55)
        else:
            paint = np.broadcast_to(color, (h, w, 3))
        image[mask] = paint[mask]
        things[mask] = k + 1
        concepts.append(concept)
    return image.astype(np.uint8), stuff, things, concepts


def _scene_segments(stuff, things, concepts):
    """Visible segments of a scene: list of (concept, boolean mask)."""
    segments = []
    for s in np.unique(stuff[things == 0]):
        segments.append((STUFF_CONCEPTS[s], (stuff == s) & (things == 0)))
    for k, concept in enumerate(concepts):
        mask = things == k + 1
        segments.append((concept, mask))
    return segments


def _bbox(mask: np.ndarray) -> List[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _write_jpg(path: str, rgb: np.ndarray):
    cv2.imwrite(path, rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])


# ------------------------------------------------------------------------------ writers
def _panoptic_categories(vocab: Dict[str, Optional[str]]):
    return [
        {"id": _PANOPTIC_IDS[c], "name": vocab[c], "isthing": int(c in THING_CONCEPTS),
         "color": list(_COLORS[c]), "supercategory": "thing" if c in THING_CONCEPTS else "stuff"}
        for c in THING_CONCEPTS + STUFF_CONCEPTS if vocab.get(c)
    ]


def _semantic_classes(vocab):
    return [vocab[c] for c in STUFF_CONCEPTS + THING_CONCEPTS if vocab.get(c)]


def _box_classes(vocab):
    return [vocab[c] for c in THING_CONCEPTS]


def _write_panoptic(out_dir, split, scenes, vocab):
    img_dir = os.path.join(out_dir, "images", split)
    png_dir = os.path.join(out_dir, f"panoptic_{split}")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    images, annotations = [], []
    for image_id, (image, stuff, things, concepts) in enumerate(scenes, start=1):
        stem = f"{image_id:06d}"
        _write_jpg(os.path.join(img_dir, stem + ".jpg"), image)
        ids = np.zeros(stuff.shape, dtype=np.int64)
        segments_info = []
        for k, (concept, mask) in enumerate(_scene_segments(stuff, things, concepts)):
            if not vocab.get(concept) or mask.sum() < _MIN_THING_AREA:
                continue  # void
            seg_id = _PANOPTIC_IDS[concept] * 1000 + k + 1
            ids[mask] = seg_id
            segments_info.append({"id": int(seg_id), "category_id": _PANOPTIC_IDS[concept],
                                  "iscrowd": 0, "bbox": _bbox(mask), "area": int(mask.sum())})
        Image.fromarray(segment_ids_to_rgb(ids)).save(os.path.join(png_dir, stem + ".png"))
        h, w = stuff.shape
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        annotations.append({"image_id": image_id, "file_name": stem + ".png",
                            "segments_info": segments_info})
    with open(os.path.join(out_dir, f"panoptic_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": _panoptic_categories(vocab)}, f)


def _write_semantic(out_dir, split, scenes, vocab):
    img_dir = os.path.join(out_dir, "images", split)
    lab_dir = os.path.join(out_dir, "annotations_detectron2", split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    classes = _semantic_classes(vocab)
    for i, (image, stuff, things, concepts) in enumerate(scenes, start=1):
        stem = f"synth_{split}_{i:06d}"
        _write_jpg(os.path.join(img_dir, stem + ".jpg"), image)
        labels = np.full(stuff.shape, 255, dtype=np.uint8)
        for concept, mask in _scene_segments(stuff, things, concepts):
            if vocab.get(concept) and mask.sum() >= _MIN_THING_AREA:
                labels[mask] = classes.index(vocab[concept])
        Image.fromarray(labels).save(os.path.join(lab_dir, stem + ".png"))


def _write_coco(out_dir, split, scenes, vocab):
    img_dir = os.path.join(out_dir, "images", split)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    os.makedirs(img_dir, exist_ok=True)
    classes = _box_classes(vocab)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(classes)]
    images, boxes, instances = [], [], []
    for image_id, (image, stuff, things, concepts) in enumerate(scenes, start=1):
        stem = f"{image_id:06d}"
        _write_jpg(os.path.join(img_dir, stem + ".jpg"), image)
        h, w = stuff.shape
        images.append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w})
        for k, concept in enumerate(concepts):
            mask = things == k + 1
            if mask.sum() < _MIN_THING_AREA:
                continue
            ann = {"id": len(boxes) + 1, "image_id": image_id, "iscrowd": 0,
                   "category_id": classes.index(vocab[concept]) + 1, "bbox": _bbox(mask),
                   "area": float(mask.sum())}
            boxes.append(dict(ann))
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            instances.append(dict(ann, segmentation=rle))
    for kind, anns in (("boxes", boxes), ("instances", instances)):
        with open(os.path.join(out_dir, "annotations", f"{kind}_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)


def generate_synthetic_datasets(root: Optional[str] = None, num_train: int = 64,
                                num_val: int = 16, image_size: int = 256, seed: int = 0,
                                force: bool = False) -> str:
    """Write every generated dataset under ``root`` (deterministic for ``seed``).

    An existing generation with the same parameters is kept unless ``force``.

    Returns:
        the root folder.
    """
    root = root or default_synthetic_root()
    params = {"num_train": num_train, "num_val": num_val, "image_size": image_size,
              "seed": seed, "version": _FORMAT_VERSION}
    marker = os.path.join(root, "GENERATED.json")
    if not force and os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == params:
                return root
    os.makedirs(root, exist_ok=True)

    def scenes(tag: int, n: int):
        # One independent stream per (dataset, split): datasets show different images.
        rng = np.random.default_rng([seed, tag])
        return [_render_scene(rng, image_size) for _ in range(n)]

    V = SYNTHETIC_VOCABULARIES
    for tag, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        _write_panoptic(os.path.join(root, "panoptic"), split, scenes(10 + tag, n), V["panoptic"])
        ade_split = {"train": "training", "val": "validation"}[split]
        _write_semantic(os.path.join(root, "semantic"), ade_split, scenes(20 + tag, n),
                        V["semantic"])
        _write_coco(os.path.join(root, "box"), split, scenes(30 + tag, n), V["box"])
    _write_panoptic(os.path.join(root, "heldout_panoptic"), "val", scenes(41, num_val),
                    V["heldout_panoptic"])
    _write_semantic(os.path.join(root, "heldout_semantic"), "validation", scenes(51, num_val),
                    V["heldout_semantic"])
    with open(marker, "w") as f:
        json.dump(params, f)
    return root


def register_synthetic_datasets(root: Optional[str] = None, prefix: str = "dataseg_synth",
                                replace: bool = False) -> List[str]:
    """Register the generated datasets found (or expected) under ``root``.

    Files are not needed at registration; loading a missing one says how to generate it.

    Args:
        root: generation root (default :func:`default_synthetic_root`).
        prefix: name prefix; tests use unique prefixes to register private copies.
        replace: replace existing registrations of the same names.

    Returns:
        the registered dataset names.
    """
    root = root or default_synthetic_root()
    hint = dict(dataseg_missing_hint=(
        f"Generate the synthetic datasets with: python -m dataseg.data.synthetic --root {root}"
    ))
    V = SYNTHETIC_VOCABULARIES
    names = []
    for split, ade_split in (("train", "training"), ("val", "validation")):
        pan = os.path.join(root, "panoptic")
        register_panoptic_dataset(
            f"{prefix}_panoptic_{split}", os.path.join(pan, "images", split),
            os.path.join(pan, f"panoptic_{split}"), os.path.join(pan, f"panoptic_{split}.json"),
            categories=_panoptic_categories(V["panoptic"]), replace=replace, **hint)
        sem = os.path.join(root, "semantic")
        register_semantic_dataset(
            f"{prefix}_semantic_{split}", os.path.join(sem, "images", ade_split),
            os.path.join(sem, "annotations_detectron2", ade_split),
            _semantic_classes(V["semantic"]), replace=replace, **hint)
        box = os.path.join(root, "box")
        register_instance_dataset(
            f"{prefix}_instance_{split}", os.path.join(box, "annotations", f"instances_{split}.json"),
            os.path.join(box, "images", split), class_names=_box_classes(V["box"]),
            replace=replace, **hint)
        names += [f"{prefix}_panoptic_{split}", f"{prefix}_semantic_{split}",
                  f"{prefix}_instance_{split}"]
    box = os.path.join(root, "box")
    register_box_dataset(
        f"{prefix}_box_train", os.path.join(box, "annotations", "boxes_train.json"),
        os.path.join(box, "images", "train"), class_names=_box_classes(V["box"]),
        replace=replace, **hint)
    # Held-out masks of the box dataset: evaluates box->mask transfer (mask AP).
    register_box_dataset(
        f"{prefix}_box_val", os.path.join(box, "annotations", "instances_val.json"),
        os.path.join(box, "images", "val"), class_names=_box_classes(V["box"]), has_masks=True,
        replace=replace, **hint)
    hp = os.path.join(root, "heldout_panoptic")
    register_panoptic_dataset(
        f"{prefix}_heldout_panoptic_val", os.path.join(hp, "images", "val"),
        os.path.join(hp, "panoptic_val"), os.path.join(hp, "panoptic_val.json"),
        categories=_panoptic_categories(V["heldout_panoptic"]), replace=replace, **hint)
    hs = os.path.join(root, "heldout_semantic")
    register_semantic_dataset(
        f"{prefix}_heldout_semantic_val", os.path.join(hs, "images", "validation"),
        os.path.join(hs, "annotations_detectron2", "validation"),
        _semantic_classes(V["heldout_semantic"]), replace=replace, **hint)
    names += [f"{prefix}_box_train", f"{prefix}_box_val", f"{prefix}_heldout_panoptic_val",
              f"{prefix}_heldout_semantic_val"]
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=default_synthetic_root(),
                        help="output folder (default $DETECTRON2_DATASETS/dataseg_synthetic)")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    root = generate_synthetic_datasets(args.root, args.num_train, args.num_val, args.image_size,
                                       args.seed, force=args.force)
    print(f"Synthetic datasets written to {root}")


if __name__ == "__main__":
    main()
