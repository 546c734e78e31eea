"""Registering datasets with the metadata DaTaSeg needs (docs/interfaces.md).

Four helpers, one per kind of annotation on disk, fill detectron2's ``DatasetCatalog`` with a
lazy loader and ``MetadataCatalog`` with both DaTaSeg's keys (``dataseg_task``,
``dataseg_classes``, ``dataseg_isthing``, ``dataseg_test_outputs``) and detectron2's usual keys,
so that detectron2's own evaluators work unchanged.

Registration never touches the disk beyond optional reads of small category lists: datasets
that are not downloaded can be registered at import time. Files are checked when the dataset
is loaded, and every failure names the path that was expected: every image and label file is
looked up (one folder listing per folder), ids are checked once, and a sample of files is
opened to compare sizes and label values.

COCO box jsons of Objects365's size are read through the memory-mapped columnar cache
(``dataseg.data.columnar``) instead of detectron2's ``load_coco_json``; both readers' results
go through the same checks against the registration.
"""

import json
import logging
import os
import unicodedata
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json
from detectron2.utils.file_io import PathManager

from ..tasks import TASKS, check_task, get_task, resolve_test_outputs
from .columnar import (
    ColumnarDatasetDicts,
    ColumnarUnsupported,
    RepeatedImageIds,
    ensure_columnar_cache,
    use_columnar_cache,
)
from .image_io import display_size, exif_orientation
from .json_stream import read_coco_list
from .panoptic_png import rgb_to_segment_ids

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "DatasetValidationError",
    "check_panoptic_segment_ids",
    "check_semantic_labels",
    "check_task",
    "check_unique_image_ids",
    "get_dataset_task",
    "class_names_to_vocabulary",
    "register_panoptic_dataset",
    "register_semantic_dataset",
    "register_instance_dataset",
    "register_box_dataset",
    "require_files",
    "require_path",
    "dataseg_metadata",
]

# Header reads are cheap, full label reads are not: validate sizes/ids on a sample at load
# time; the mappers re-check every image they read.
_NUM_VALIDATED_FILES = 8


class DatasetValidationError(ValueError):
    """A registered dataset's files are missing or inconsistent with its registration."""


def get_dataset_task(dataset_name: str) -> str:
    """The training task of a registered dataset, from its ``dataseg_task`` metadata."""
    meta = MetadataCatalog.get(dataset_name)
    task = meta.get("dataseg_task", None)
    if task is None:
        raise KeyError(
            f"Dataset {dataset_name!r} has no 'dataseg_task' metadata. Register it with one of "
            "dataseg.data.register_{panoptic,semantic,instance,box}_dataset, or set "
            f"MetadataCatalog.get({dataset_name!r}).dataseg_task to one of {list(TASKS)}."
        )
    return check_task(task)


def class_names_to_vocabulary(names: Sequence[str]) -> List[str]:
    """Normalise class names into DaTaSeg's vocabulary format.

    Commas separate synonyms (``"tv,monitor"`` -> ``"tv, monitor"``); stray whitespace (ADE's
    ``"window "``) is dropped. Nothing else splits a name: ``"AC/DC"`` stays one class embedded
    as written (Objects365's ``"Cabinet/shelf"`` alternatives become synonyms only because its
    registration passes ``text_names`` with commas).
    """
    vocab = []
    for name in names:
        parts = [p.strip() for p in name.split(",")]
        vocab.append(", ".join(p for p in parts if p))
    return vocab


def _hint(metadata: Dict) -> str:
    hint = metadata.get("dataseg_missing_hint", "")
    return f" {hint}" if hint else ""


def require_path(path: str, what: str, dataset_name: str, hint: str = "", is_dir=True):
    """Raise ``FileNotFoundError`` naming ``path`` unless it is an existing folder (file).

    For custom loaders (dataseg.data.builtin's Cityscapes one): the message names the dataset,
    what was expected (``what``: "image", "panoptic json") and ends with ``hint``.
    """
    exists = PathManager.isdir(path) if is_dir else PathManager.isfile(path)
    if not exists:
        kind = "folder" if is_dir else "file"
        raise FileNotFoundError(
            f"Dataset {dataset_name!r}: {what} {kind} not found at expected path {path!r}.{hint}"
        )


# Missing files listed in one error; the count says how many more there are.
_NUM_LISTED_FILES = 10


def require_files(paths: Sequence[str], what: str, dataset_name: str, hint: str = ""):
    """Raise one :class:`DatasetValidationError` listing the first of ``paths`` that are missing.

    Cheap enough for every file of a dataset: one directory listing per folder, and a ``stat``
    only for the names a listing lacks (a case-insensitive filesystem, a symlink). Checked at
    load time, so a missing image fails before training or evaluation starts, not when the
    data loader reaches it.
    """
    by_folder = defaultdict(list)
    for path in paths:
        by_folder[os.path.dirname(path)].append(path)
    missing = []
    for folder, files in by_folder.items():
        try:
            present = set(PathManager.ls(folder)) if folder else set(os.listdir("."))
        except Exception:  # no such folder, or storage without listings: stat each file
            present = set()
        missing += [f for f in files
                    if os.path.basename(f) not in present and not PathManager.isfile(f)]
    if missing:
        more = len(missing) - _NUM_LISTED_FILES
        listed = ", ".join(repr(f) for f in missing[:_NUM_LISTED_FILES])
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: {len(missing)} of its {len(paths)} {what} files are "
            f"missing: {listed}{f' and {more} more' if more > 0 else ''}. Restore them (an "
            f"interrupted download or copy?) or remove their entries from the annotations.{hint}"
        )


def _repeated(entries: Sequence[Dict], key: str, value: str) -> Dict:
    """{``key`` shared by several entries: their ``value``s}, in the order of first appearance."""
    values_of = defaultdict(list)
    for entry in entries:
        values_of[entry.get(key)].append(entry.get(value))
    return {k: v for k, v in values_of.items() if len(v) > 1}


def check_unique_image_ids(images: Sequence[Dict], json_file: str, dataset_name: str):
    """Raise if two entries of a COCO (or COCO panoptic) json's ``images`` share an ``id``.

    Loaders index images by id: a repeated id silently drops one of the photos and hands its
    annotations to the other, and the evaluator then scores ground truth against the wrong
    image.
    """
    files_of = _repeated(images, "id", "file_name")
    repeated = list(files_of)
    if repeated:
        first = repeated[0]
        others = ""
        if len(repeated) > 1:
            others = f" ({len(repeated)} ids are repeated: {repeated[:_NUM_LISTED_FILES]})"
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: {json_file!r} gives image id {first!r} to "
            f"{len(files_of[first])} images {files_of[first][:_NUM_LISTED_FILES]}{others}. "
            "Every image needs its own id: give each a distinct id and update the image_id of "
            "its annotations."
        )


def _invalid_json_error(path: str, what: str, dataset_name: str,
                        error: json.JSONDecodeError) -> DatasetValidationError:
    """The error a user can act on for a json that does not parse (a half-downloaded file,
    usually), whichever reader found it."""
    return DatasetValidationError(
        f"Dataset {dataset_name!r}: {what} {path!r} is not valid JSON ({error}); the file is "
        "probably truncated or was only partly downloaded. Download or extract it again.")


def _read_json(path: str, what: str, dataset_name: str):
    """``json.load`` with the error a user can act on."""
    with PathManager.open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise _invalid_json_error(path, what, dataset_name, e) from e


def _set_metadata(name: str, **kwargs):
    # Metadata refuses re-setting a key to another value; re-registration (tests, notebooks)
    # should replace the entry instead.
    MetadataCatalog.get(name).set(**kwargs)


def _register(name: str, loader, metadata: Dict, replace: bool):
    if replace:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    _set_metadata(name, **metadata)


def _text_names(text_names, names, dataset_name) -> List[str]:
    if text_names is None:
        return list(names)
    if len(text_names) != len(names):
        raise ValueError(f"Dataset {dataset_name!r}: {len(text_names)} text_names for "
                         f"{len(names)} classes; give one per class, in the same order.")
    return list(text_names)


def dataseg_metadata(task: str, class_names: Sequence[str], isthing=None, test_outputs=None,
                     evaluator_type: str = "", extra: Optional[Dict] = None) -> Dict:
    """The DaTaSeg metadata keys of a registration (``dataseg_task``, ``dataseg_classes``, ...).

    For datasets registered with a custom loader instead of the ``register_*`` helpers: set
    the returned dict on ``MetadataCatalog.get(name)``. ``isthing`` defaults to the task's
    default and ``test_outputs`` to the outputs its evaluation needs; ``extra`` is merged in.
    """
    check_task(task)
    if isthing is None:
        isthing = [bool(get_task(task).default_isthing)] * len(class_names)
    if len(isthing) != len(class_names):
        raise ValueError(
            f"isthing has {len(isthing)} entries but there are {len(class_names)} classes."
        )
    test_outputs = resolve_test_outputs(task, test_outputs)
    meta = dict(
        dataseg_task=task,
        dataseg_classes=class_names_to_vocabulary(class_names),
        dataseg_isthing=[bool(x) for x in isthing],
        dataseg_test_outputs=test_outputs,
        evaluator_type=evaluator_type,
    )
    meta.update(extra or {})
    return meta


def _check_same_size(image_file: str, label_file: str, dataset_name: str):
    """Compare a label map with its image as training sees it: in display orientation.

    Images are read with their EXIF orientation applied (``dataseg.data.image_io``, as
    detectron2 and labelme do), label maps as stored; so a label drawn on the displayed photo
    (labelme's export) has the displayed size, which differs from the stored one under a
    rotating orientation tag.
    """
    with Image.open(image_file) as im, Image.open(label_file) as lab:
        (w, h), orientation = display_size(im), exif_orientation(im)
        rotated = ""
        if orientation != 1:
            rotated = (f" The image carries EXIF orientation {orientation}: it is used as "
                       f"displayed ({w}x{h}; stored {im.size[0]}x{im.size[1]}), so its label "
                       "must be drawn on the displayed image (as labelme does). A label drawn "
                       "on the stored pixels needs the image rotated the same way: save it "
                       "with PIL.ImageOps.exif_transpose.")
        if (w, h) != lab.size:
            raise DatasetValidationError(
                f"Dataset {dataset_name!r}: image {image_file!r} is {w}x{h} "
                f"but its annotation {label_file!r} is {lab.size[0]}x{lab.size[1]} (WxH); "
                f"masks and images must have the same size.{rotated}"
            )
        if orientation != 1 and (w, h) == im.size:
            # The sizes cannot tell a label drawn on the stored pixels from a displayed one.
            logger.warning(f"Dataset {dataset_name!r}: {image_file!r}:{rotated}")


# ----------------------------------------------------------------------------- panoptic
def _panoptic_category_metadata(categories: Sequence[Dict]) -> Dict:
    """detectron2's "semantic view" of a panoptic label set: all C names in stuff_classes."""
    names = [c["name"] for c in categories]
    isthing = [bool(c.get("isthing", 0)) for c in categories]
    meta = dict(
        stuff_classes=names,
        thing_classes=names,
        # Both maps point into the same 0..C-1 space, so a contiguous id means the same class
        # for semantic and panoptic outputs.
        thing_dataset_id_to_contiguous_id={
            c["id"]: i for i, c in enumerate(categories) if isthing[i]
        },
        stuff_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
    )
    colors = [c.get("color") for c in categories]
    if all(col is not None for col in colors):
        meta["stuff_colors"] = [list(c) for c in colors]
        meta["thing_colors"] = [list(c) for c in colors]
    return meta, names, isthing


def _load_panoptic(name, image_root, panoptic_root, panoptic_json, image_ext, test_outputs):
    meta = MetadataCatalog.get(name)
    hint = _hint(meta.as_dict())
    require_path(panoptic_json, "panoptic json", name, hint, is_dir=False)
    require_path(image_root, "image", name, hint)
    require_path(panoptic_root, "panoptic PNG", name, hint)
    info = _read_json(panoptic_json, "panoptic json", name)
    if not meta.get("dataseg_classes", None):
        # Deferred category metadata (registration happened before the json existed).
        cat_meta, names, isthing = _panoptic_category_metadata(info["categories"])
        common = dataseg_metadata("panoptic", names, isthing, test_outputs, meta.evaluator_type,
                                  {})
        _set_metadata(name, **cat_meta, **common)
    thing_map = meta.thing_dataset_id_to_contiguous_id
    stuff_map = meta.stuff_dataset_id_to_contiguous_id
    check_unique_image_ids(info.get("images", []), panoptic_json, name)
    _check_one_png_per_image(info.get("annotations", []), panoptic_json, name)
    id_to_image = {img["id"]: img for img in info.get("images", [])}
    dicts = []
    for ann in info.get("annotations", []):
        stem = os.path.splitext(ann["file_name"])[0]
        img = id_to_image.get(ann["image_id"], {})
        image_file = img.get("file_name", stem + "." + image_ext)
        segments = []
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in stuff_map and cat not in thing_map:
                raise DatasetValidationError(
                    f"Dataset {name!r}: segment {seg['id']} of {ann['file_name']!r} has "
                    f"category_id {cat}, which is not among the registered categories "
                    f"{sorted(stuff_map)}."
                )
            seg = dict(seg)
            seg["isthing"] = cat in thing_map
            seg["category_id"] = thing_map[cat] if seg["isthing"] else stuff_map[cat]
            segments.append(seg)
        record = {
            "file_name": os.path.join(image_root, image_file),
            "image_id": ann["image_id"],
            "pan_seg_file_name": os.path.join(panoptic_root, ann["file_name"]),
            "segments_info": segments,
        }
        if "height" in img and "width" in img:
            record["height"], record["width"] = img["height"], img["width"]
        dicts.append(record)
    if not dicts:
        raise DatasetValidationError(
            f"Dataset {name!r}: {panoptic_json!r} holds no annotations (empty dataset)."
        )
    require_files([r["file_name"] for r in dicts], "image", name, hint)
    require_files([r["pan_seg_file_name"] for r in dicts], "panoptic PNG", name, hint)
    for record in dicts[:_NUM_VALIDATED_FILES]:
        _check_same_size(record["file_name"], record["pan_seg_file_name"], name)
        with Image.open(record["pan_seg_file_name"]) as png:
            check_panoptic_segment_ids(np.asarray(png.convert("RGB")), record["segments_info"],
                                       record["pan_seg_file_name"], name)
    return dicts


def _check_one_png_per_image(annotations: Sequence[Dict], panoptic_json: str, dataset_name: str):
    """Raise if two annotations (PNGs) of a panoptic json describe the same ``image_id``: one
    of them would be paired with a photo it was not drawn on."""
    repeated = _repeated(annotations, "image_id", "file_name")
    if repeated:
        image_id, pngs = next(iter(repeated.items()))
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: {panoptic_json!r} has {len(pngs)} annotations for "
            f"image id {image_id!r} (panoptic PNGs {pngs[:_NUM_LISTED_FILES]}); each image "
            "has exactly one panoptic PNG. Give each annotation the image_id of the photo "
            "its PNG was drawn on."
        )


def check_panoptic_segment_ids(rgb: np.ndarray, segments_info: Sequence[Dict], file_name: str,
                               dataset_name: str) -> np.ndarray:
    """Decode a COCO panoptic PNG and check that every non-void id is in ``segments_info``.

    Returns:
        the (H, W) int64 segment-id map (``R + 256 G + 256^2 B``; 0 is void).
    Raises:
        DatasetValidationError: naming the ids the json does not describe. Such pixels would
            silently become background, which usually means PNGs and json are from different
            releases or a PNG is corrupt.
    """
    ids = rgb_to_segment_ids(rgb)
    known = np.array([0] + [int(s["id"]) for s in segments_info], dtype=np.int64)
    unknown = ~np.isin(ids, known)
    if unknown.any():
        bad = np.unique(ids[unknown])
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: panoptic PNG {file_name!r} holds segment ids "
            f"{bad.tolist()[:10]} that are not in its json segments_info (ids "
            f"{sorted(known[1:].tolist())[:10]}); the PNGs and the json do not belong together "
            "or the PNG is corrupt."
        )
    return ids


def register_panoptic_dataset(
    name: str,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    *,
    categories: Optional[Sequence[Dict]] = None,
    text_names: Optional[Sequence[str]] = None,
    test_outputs: Optional[Sequence[str]] = None,
    image_ext: str = "jpg",
    evaluator_type: str = "coco_panoptic_seg",
    replace: bool = False,
    **extra_metadata,
):
    """Register a COCO-panoptic-format dataset (json + PNGs) as a DaTaSeg panoptic dataset.

    Args:
        name: dataset name for ``DatasetCatalog``/``MetadataCatalog``.
        image_root: folder of the images (``file_name`` of the json's ``images``, or the PNG
            name with ``image_ext``).
        panoptic_root: folder of the panoptic PNGs (RGB-encoded segment ids).
        panoptic_json: COCO panoptic json.
        categories: COCO panoptic categories (dicts with ``id``, ``name``, ``isthing``,
            optional ``color``), in contiguous-id order. ``None`` reads them from
            ``panoptic_json`` now if it exists, else when the dataset is first loaded.
        text_names: what the text encoder embeds for each category (``dataseg_classes``),
            when the categories' names are ids rather than words (COCO's
            ``"sky-other-merged"``); default: the categories' names. Evaluation keeps them.
        test_outputs: model outputs needed to evaluate it (default ``("panoptic_seg",)``).
        image_ext: image extension when the json has no ``images`` list.
        evaluator_type: key of ``dataseg.evaluation``'s evaluator registry.
        replace: replace an existing registration of ``name``.
        **extra_metadata: more metadata (e.g. ``dataseg_missing_hint``, a message appended
            to missing-file errors).
    """
    if categories is None and PathManager.isfile(panoptic_json):
        categories = _read_json(panoptic_json, "panoptic json", name)["categories"]
    meta = dict(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        ignore_label=255,
        label_divisor=1000,
        evaluator_type=evaluator_type,
        **extra_metadata,
    )
    if categories is not None:
        cat_meta, names, isthing = _panoptic_category_metadata(categories)
        meta.update(cat_meta)
        meta.update(dataseg_metadata("panoptic", _text_names(text_names, names, name), isthing,
                                     test_outputs, evaluator_type, {}))
    _register(
        name,
        lambda: _load_panoptic(name, image_root, panoptic_root, panoptic_json, image_ext,
                               test_outputs),
        meta,
        replace,
    )


# ----------------------------------------------------------------------------- semantic
# Spellings of one file format: a folder of "jpg" images may hold ".JPG" and ".jpeg" files.
_EXTENSION_VARIANTS = (("jpg", "jpeg"), ("tif", "tiff"))


def _extension_variants(ext: str) -> List[str]:
    """``ext`` and the other spellings of its format, lowercase (``"jpg"`` -> jpg, jpeg).

    ``ext`` is a file-name ending as detectron2's ``load_sem_seg`` takes it (``"jpg"``,
    ``".png"``, ``"_labelTrainIds.png"``); only its last extension has variants."""
    ext = ext.lower()
    head, dot, last = ext.rpartition(".")
    for variants in _EXTENSION_VARIANTS:
        if last in variants:
            return [head + dot + v for v in variants]
    return [ext]


def _files_by_stem(folder: str, ext: str, what: str, dataset_name: str) -> Dict[str, str]:
    """{name without ``ext``: path} of the files of ``folder`` ending with ``ext`` or one of its
    variants, in any letter case (``a.JPG``, ``b.jpeg`` for ``"jpg"``)."""
    endings = _extension_variants(ext)
    found = {}
    for f in sorted(PathManager.ls(folder)):
        ending = next((e for e in endings if f.lower().endswith(e)), None)
        if ending is None:
            continue
        stem = f[:len(f) - len(ending)].rstrip(".")
        if stem in found:
            raise DatasetValidationError(
                f"Dataset {dataset_name!r}: {what} files {found[stem]!r} and "
                f"{os.path.join(folder, f)!r} have the same name {stem!r}; images and label "
                "maps are matched by name without extension. Remove or rename one."
            )
        found[stem] = os.path.join(folder, f)
    return found


def _match_semantic_files(name, image_root, sem_seg_root, image_ext, gt_ext, hint):
    """Dataset dicts pairing each label map with the image of the same name.

    As detectron2's ``load_sem_seg`` (files directly in the two folders, names compared
    without extension) but extensions match in any case and spelling (``.JPG``, ``.jpeg``),
    and a label map without its image is an error instead of being dropped. Images without
    a label map are left out (a label folder may cover part of an image folder), with a
    warning naming them.
    """
    labels = _files_by_stem(sem_seg_root, gt_ext, "label", name)
    if not labels:
        raise DatasetValidationError(
            f"Dataset {name!r}: no label maps ending in {_extension_variants(gt_ext)} in "
            f"{sem_seg_root!r} (empty dataset).{hint}"
        )
    images = _files_by_stem(image_root, image_ext, "image", name)
    unmatched = sorted(set(labels) - set(images))
    if unmatched:
        listed = [labels[s] for s in unmatched[:_NUM_LISTED_FILES]]
        raise DatasetValidationError(
            f"Dataset {name!r}: {len(unmatched)} of {len(labels)} label maps have no image of "
            f"the same name in {image_root!r} (looked for endings "
            f"{_extension_variants(image_ext)}, any case): {listed}. Add the images, or pass "
            "the image extension the folder uses as image_ext=."
        )
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        logger.warning(
            f"Dataset {name!r}: {len(unlabelled)} images of {image_root!r} have no label map "
            f"in {sem_seg_root!r} and are not used, e.g. "
            f"{[images[s] for s in unlabelled[:3]]}.")
    return [{"file_name": images[s], "sem_seg_file_name": labels[s]} for s in sorted(labels)]


def _load_semantic(name, image_root, sem_seg_root, image_ext, gt_ext):
    meta = MetadataCatalog.get(name)
    hint = _hint(meta.as_dict())
    require_path(image_root, "image", name, hint)
    require_path(sem_seg_root, "semantic label", name, hint)
    dicts = _match_semantic_files(name, image_root, sem_seg_root, image_ext, gt_ext, hint)
    num_classes, ignore = len(meta.stuff_classes), meta.ignore_label
    for record in dicts[:_NUM_VALIDATED_FILES]:
        _check_same_size(record["file_name"], record["sem_seg_file_name"], name)
        with Image.open(record["sem_seg_file_name"]) as lab:
            check_semantic_labels(np.asarray(lab), num_classes, ignore,
                                  record["sem_seg_file_name"], name)
    return dicts


def check_semantic_labels(labels: np.ndarray, num_classes: int, ignore_label: int,
                          file_name: str, dataset_name: str):
    """Raise if a label map holds ids outside ``0..num_classes-1`` and the ignore label
    (negative ones included, which an integer TIFF can hold).

    One vectorised pass over the pixels; only the offending values are sorted for the message,
    so the evaluator can afford it on every file.
    """
    bad = labels[(labels < 0) | ((labels >= num_classes) & (labels != ignore_label))]
    if bad.size:
        bad = np.unique(bad)
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: label map {file_name!r} holds class ids "
            f"{bad.tolist()[:10]} outside the {num_classes} registered classes "
            f"(0..{num_classes - 1}, ignore={ignore_label})."
        )


def register_semantic_dataset(
    name: str,
    image_root: str,
    sem_seg_root: str,
    class_names: Sequence[str],
    ignore_label: int = 255,
    *,
    text_names: Optional[Sequence[str]] = None,
    isthing: Optional[Sequence[bool]] = None,
    test_outputs: Optional[Sequence[str]] = None,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    evaluator_type: str = "sem_seg",
    replace: bool = False,
    **extra_metadata,
):
    """Register a semantic segmentation dataset (images + single-channel label PNGs).

    Label maps hold contiguous ids ``0..len(class_names)-1`` and ``ignore_label`` (detectron2's
    convention, e.g. ADE20k's ``annotations_detectron2``); images and labels are matched by
    their name without extension. Extensions match in any case and spelling (``image_ext="jpg"``
    takes ``.jpg``, ``.JPG``, ``.jpeg``); a label map without its image fails when loaded.

    Args:
        name: dataset name.
        image_root: images folder.
        sem_seg_root: label maps folder.
        class_names: vocabulary in id order; ``"a, b"`` entries are synonyms.
        ignore_label: label id that is not evaluated nor trained on.
        text_names: what the text encoder embeds for each class, when ``class_names`` are
            not words (Pascal Context's ``"tvmonitor"``); default ``class_names``, which stay
            the evaluation names.
        isthing: optional thing/stuff flags (default all stuff); only informative here.
        test_outputs: outputs needed to evaluate it (default ``("sem_seg",)``).
        image_ext, gt_ext: file extensions (or name endings, ``"_labelTrainIds.png"``).
        evaluator_type: evaluator registry key.
        replace: replace an existing registration.
        **extra_metadata: more metadata.
    """
    meta = dict(
        stuff_classes=[n.strip() for n in class_names],
        image_root=image_root,
        sem_seg_root=sem_seg_root,
        ignore_label=ignore_label,
        **dataseg_metadata("semantic", _text_names(text_names, class_names, name), isthing,
                           test_outputs, evaluator_type, extra_metadata),
    )
    _register(
        name, lambda: _load_semantic(name, image_root, sem_seg_root, image_ext, gt_ext), meta,
        replace,
    )


# ----------------------------------------------------------------------------- COCO json
def _coco_category_metadata(names: Sequence[str], ids: Optional[Sequence[int]]) -> Dict:
    meta = dict(thing_classes=list(names))
    if ids is not None:  # else set when the json is loaded (_registered_id_map)
        meta["thing_dataset_id_to_contiguous_id"] = {int(c): i for i, c in enumerate(ids)}
    return meta


def _json_categories(categories: Sequence[Dict]):
    """(names, ids) of a COCO json's categories, sorted by id: the json's ids are the truth."""
    cats = sorted(categories, key=lambda c: c["id"])
    return [c["name"] for c in cats], [int(c["id"]) for c in cats]


def _read_coco_list(json_file: str, key: str, dataset_name: str) -> List[Dict]:
    """The json's top-level list ``key`` ("categories", "images"), in the json's order.

    Found by a byte search (``read_coco_list``), without parsing the rest of the json, for the
    images always (they are read at load time, when ``load_coco_json`` parses the json anyway:
    a full parse here would be a second one) and for the categories of a json of
    :data:`_CATEGORIES_SCAN_BYTES` or more (read at registration, often at import time: a
    small json is parsed whole, so that no ``categories`` key nested in an image or an
    annotation can be taken for the list).
    """
    if os.path.isfile(json_file) and (
            key == "images" or os.path.getsize(json_file) >= _CATEGORIES_SCAN_BYTES):
        found = read_coco_list(json_file, key)
        if found is not None:
            return found
    info = _read_json(json_file, "COCO json", dataset_name)
    if key == "images":
        return info.get("images", [])
    return info[key]


_CATEGORIES_SCAN_BYTES = 16 * 2 ** 20


def _describe_ids(ids) -> str:
    ids = sorted(ids)
    return str(ids) if len(ids) <= 12 else f"{len(ids)} ids {ids[:5]} ... {ids[-3:]}"


def _check_category_ids(name, json_file, registered_ids, json_ids, json_names):
    if sorted(registered_ids) != sorted(json_ids):
        raise DatasetValidationError(
            f"Dataset {name!r}: the registered category ids {_describe_ids(registered_ids)} do "
            f"not match the categories of {json_file!r}, {_describe_ids(json_ids)} "
            f"({json_names[:5]}...). Pass category_ids= in the json's order of class_names, or "
            "omit class_names to take names and ids from the json."
        )


def _name_key(name: str) -> str:
    """How class names are compared with a json's category names: unicode-normalised (NFKC),
    case-folded, surrounding whitespace stripped."""
    return unicodedata.normalize("NFKC", name).strip().casefold()


def _category_ids_of_names(dataset_name: str, json_file: str, names: Sequence[str],
                           categories: Sequence[Dict]) -> List[int]:
    """The json category id of each class name, for a registration without ``category_ids``.

    Names that are the json's category names (in any order, ignoring case and surrounding
    whitespace) take the ids of those categories. Other names (words chosen for the text
    encoder) are read in the order of the json's ids, which is only unambiguous when the json
    lists its categories in that order and no name is the name of another category.

    Args:
        names: registered class names, in contiguous-id order.
        categories: the json's ``categories``, in the json's order.
    Raises:
        DatasetValidationError: the names cannot be assigned to the json's categories without
            guessing; the message says to pass ``category_ids``.
    """
    if len(names) != len(categories):
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: {len(names)} class_names but {json_file!r} has "
            f"{len(categories)} categories ({[c['name'] for c in categories][:5]}...); pass "
            "category_ids= or omit class_names to take them from the json.")
    ids_of = defaultdict(list)
    for c in categories:
        ids_of[_name_key(c["name"])].append(int(c["id"]))
    keys = [_name_key(n) for n in names]
    if sorted(keys) == sorted(ids_of) and all(len(ids) == 1 for ids in ids_of.values()):
        return [ids_of[k][0] for k in keys]
    listed = [int(c["id"]) for c in categories]
    by_id = sorted(listed)
    clashes = [f"{n!r} is the json's category {ids_of[k]} but would get id {i}"
               for n, k, i in zip(names, keys, by_id) if k in ids_of and i not in ids_of[k]]
    if clashes or listed != by_id:
        why = "; ".join(clashes[:3]) if clashes else (
            f"the json lists its categories in the order of ids {listed[:8]}"
            f"{'...' if len(listed) > 8 else ''}, not sorted by id")
        raise DatasetValidationError(
            f"Dataset {dataset_name!r}: cannot tell which category of {json_file!r} each of "
            f"class_names {list(names)[:5]}{'...' if len(names) > 5 else ''} is: they are not "
            f"the json's category names ({[c['name'] for c in categories][:5]}...), and "
            f"reading them in the order of the json's ids is ambiguous: {why}. "
            "Pass category_ids= (the json's id of each class name, in the order of "
            "class_names), use the json's category names, or omit class_names to take names "
            "and ids from the json.")
    return by_id


def _registered_id_map(name: str, json_file: str) -> Dict[int, int]:
    """json category id -> registered contiguous id of a loaded COCO dataset. Class names
    registered before the json existed, without ``category_ids``, get their ids now, as a
    registration that found the json would have given them."""
    meta = MetadataCatalog.get(name)
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is None:
        ids = _category_ids_of_names(name, json_file, meta.thing_classes,
                                     _read_coco_list(json_file, "categories", name))
        id_map = {c: i for i, c in enumerate(ids)}
        _set_metadata(name, thing_dataset_id_to_contiguous_id=id_map)
    return id_map


def _unknown_category_error(name: str, json_file: str,
                            error: KeyError) -> DatasetValidationError:
    """An annotation's category_id is not among the json's categories (either reader)."""
    return DatasetValidationError(
        f"Dataset {name!r}: {json_file!r} has an annotation whose category_id is not among "
        f"its categories ({error}). Fix the annotation or add the category to the json.")


def _read_coco_json(name: str, json_file: str, image_root: str):
    """detectron2's ``load_coco_json`` with errors a user can act on.

    Returns:
        (dicts, json_ids, json_names): the dataset dicts, whose ``category_id`` is the index
        in the json's categories sorted by id; those categories' ids and names.
    """
    # pycocotools indexes images by id: a repeated id would vanish without a trace.
    check_unique_image_ids(_read_coco_list(json_file, "images", name), json_file, name)
    # load_coco_json reports the json's own categories through the metadata of the name it is
    # given (and maps annotations to their contiguous order): a private name, so the
    # registered metadata is compared with the json instead of being overwritten by it.
    probe = f"__dataseg_json_categories__{name}"
    try:
        dicts = load_coco_json(json_file, image_root, dataset_name=probe)
        probed = MetadataCatalog.get(probe)
        json_ids = [int(c) for c in probed.thing_dataset_id_to_contiguous_id]
        json_names = list(probed.thing_classes)
    except json.JSONDecodeError as e:
        raise _invalid_json_error(json_file, "COCO json", name, e) from e
    except KeyError as e:
        if e.args == ("category_id",):
            raise DatasetValidationError(
                f"Dataset {name!r}: {json_file!r} has an annotation without a category_id. "
                "Give every annotation the id of one of the json's categories."
            ) from e
        raise _unknown_category_error(name, json_file, e) from e
    finally:
        if probe in MetadataCatalog.list():
            MetadataCatalog.remove(probe)
    return dicts, json_ids, json_names


def _columnar_cache_folder(name: str, json_file: str) -> Optional[str]:
    """The columnar cache folder of a box json (dataseg/data/columnar.py), built if missing, or
    ``None`` for the json path: cache not wanted (registration, json size), or the json holds
    what the cache does not keep."""
    meta = MetadataCatalog.get(name)
    if not use_columnar_cache(json_file, meta.get("dataseg_columnar_cache", None)):
        return None
    try:
        return ensure_columnar_cache(json_file, meta.get("dataseg_columnar_cache_dir", None))
    except ColumnarUnsupported as e:
        logger.warning(f"Dataset {name!r}: {json_file} cannot be cached in columns ({e}); "
                       "loading the json itself.")
        return None
    except RepeatedImageIds as e:
        check_unique_image_ids(e.images, json_file, name)  # raises the json path's error
        raise
    except json.JSONDecodeError as e:
        raise _invalid_json_error(json_file, "COCO json", name, e) from e
    except KeyError as e:
        raise _unknown_category_error(name, json_file, e) from e
    except ValueError as e:  # repeated annotation ids, "ignore", empty bbox, no category_id
        raise DatasetValidationError(
            f"Dataset {name!r}: {json_file!r} is not a valid COCO json: {e} Fix the json."
        ) from e


def _check_loaded_coco(name: str, json_file: str, task: str, json_ids: Sequence[int],
                       json_names: Sequence[str], file_names: Sequence[str],
                       hint: str) -> List[int]:
    """What loading a COCO json does once the json is read, by either reader (the json path,
    the columnar cache): the category metadata deferred by a registration that ran before the
    json existed, the registered category ids checked against the json's, a check that there
    are images and that every image file exists.

    Args:
        json_ids, json_names: the json's categories, sorted by id.
        file_names: the image path of every record.
    Returns:
        per json category (sorted by id), its registered contiguous id.
    """
    meta = MetadataCatalog.get(name)
    if not meta.get("dataseg_classes", None):
        _set_metadata(name, **_coco_category_metadata(json_names, json_ids),
                      **dataseg_metadata(task, json_names, None, None, "coco", {}))
    id_map = _registered_id_map(name, json_file)
    _check_category_ids(name, json_file, list(id_map), json_ids, json_names)
    if not file_names:
        raise DatasetValidationError(f"Dataset {name!r}: {json_file!r} has no images.")
    require_files(file_names, "image", name, hint)
    # json order -> json id -> registered order (the same when the registration read the json).
    return [id_map[c] for c in json_ids]


def _load_coco(name, json_file, image_root, task, keep_masks):
    meta = MetadataCatalog.get(name)
    hint = _hint(meta.as_dict())
    require_path(json_file, "COCO json", name, hint, is_dir=False)
    require_path(image_root, "image", name, hint)
    # Large box jsons: a memory-mapped columnar cache instead of one dict per box in every
    # process (docs/scale.md).
    folder = None
    if task == "box" and not keep_masks:
        folder = _columnar_cache_folder(name, json_file)
    if folder is not None:
        columns = ColumnarDatasetDicts(folder, image_root)
        columns.map_categories(_check_loaded_coco(
            name, json_file, task, columns.meta["category_ids"], columns.meta["category_names"],
            columns.file_names(), hint))
        return columns
    dicts, json_ids, json_names = _read_coco_json(name, json_file, image_root)
    to_registered = _check_loaded_coco(name, json_file, task, json_ids, json_names,
                                       [record["file_name"] for record in dicts], hint)
    for record in dicts:
        for obj in record.get("annotations", []):
            obj["category_id"] = to_registered[obj["category_id"]]
            if not keep_masks:
                obj.pop("segmentation", None)
    return dicts


def _register_coco(name, json_file, image_root, task, class_names, test_outputs,
                   eval_tasks, keep_masks, replace, extra_metadata):
    category_ids = extra_metadata.pop("category_ids", None)
    text_names = extra_metadata.pop("text_names", None)
    categories = json_names = json_ids = None
    if PathManager.isfile(json_file):
        categories = _read_coco_list(json_file, "categories", name)
        json_names, json_ids = _json_categories(categories)
    if class_names is None and json_names is not None:
        class_names, category_ids = json_names, json_ids
    if text_names is not None and class_names is None:
        raise ValueError(
            f"Dataset {name!r}: text_names need class_names (one text per class, in their "
            f"order) while {json_file!r} does not exist yet.")
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type="coco",
                coco_eval_tasks=tuple(eval_tasks), **extra_metadata)
    if class_names is not None:
        names = list(class_names)
        ids = None  # names without ids, before the json exists: matched with it when loaded
        if category_ids is None and categories is not None:
            ids = _category_ids_of_names(name, json_file, names, categories)
        elif category_ids is not None:
            ids = [int(c) for c in category_ids]
            if len(ids) != len(names) or len(set(ids)) != len(ids):
                raise ValueError(
                    f"Dataset {name!r}: category_ids must be {len(names)} distinct ids, one "
                    f"per class name; got {ids}.")
        if ids is not None and json_ids is not None:
            _check_category_ids(name, json_file, ids, json_ids, json_names)
        meta.update(**_coco_category_metadata(names, ids),
                    **dataseg_metadata(task, _text_names(text_names, names, name), None,
                                       test_outputs, "coco", {}))
    _register(
        name, lambda: _load_coco(name, json_file, image_root, task, keep_masks), meta, replace
    )


def register_instance_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
    text_names: Optional[Sequence[str]] = None,
    test_outputs: Optional[Sequence[str]] = None,
    replace: bool = False,
    **extra_metadata,
):
    """Register a COCO instances json with masks (``segmentation``) as an instance dataset.

    Args:
        name: dataset name.
        json_file: COCO instances json.
        image_root: images folder.
        class_names: names in contiguous order; ``None`` reads the json's categories (sorted by
            id) now if it exists, else when first loaded.
        category_ids: the json's category ids in the order of ``class_names``. Default:
            names that are the json's category names take their ids (in any order, ignoring
            case); other names take the json's ids sorted, when the json lists its categories
            in id order, else registration fails asking for ``category_ids``. Without the json
            yet, this happens when it is loaded. The json's ids are the truth: ids that
            disagree with its categories fail, naming both.
        text_names: what the text encoder embeds for each class (``dataseg_classes``; commas
            separate synonyms), when the names are not the words to embed; default the class
            names, which stay the evaluation names.
        test_outputs: outputs needed to evaluate it (default ``("instances",)``).
        replace: replace an existing registration.
        **extra_metadata: more metadata.
    """
    _register_coco(name, json_file, image_root, "instance", class_names, test_outputs,
                   ("segm", "bbox"), True, replace,
                   dict(extra_metadata, category_ids=category_ids, text_names=text_names))


def register_box_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
    text_names: Optional[Sequence[str]] = None,
    has_masks: bool = False,
    test_outputs: Optional[Sequence[str]] = None,
    columnar_cache: Optional[bool] = None,
    columnar_cache_dir: str = "",
    replace: bool = False,
    **extra_metadata,
):
    """Register a COCO json used with its boxes only (box-supervised training).

    Masks in the json are dropped at load time for training. ``has_masks=True`` marks a
    held-out set whose masks ARE evaluated (weak-supervision transfer: DaTaSeg's Objects365
    mask val): its evaluator computes ``bbox`` and ``segm`` AP from the json.

    Args: as :func:`register_instance_dataset`, plus ``has_masks`` and
        columnar_cache: load through the memory-mapped columnar cache (docs/scale.md):
            ``None`` (default) for jsons of at least
            ``dataseg.data.columnar.COLUMNAR_MIN_JSON_BYTES`` (128 MiB); never with
            ``has_masks``. Metadata ``dataseg_columnar_cache``.
        columnar_cache_dir: where the cache is built (default ``$DATASEG_CACHE/columnar`` or
            ``~/.cache/dataseg/columnar``). Metadata ``dataseg_columnar_cache_dir``.
    """
    if columnar_cache is not None:
        extra_metadata["dataseg_columnar_cache"] = bool(columnar_cache)
    if columnar_cache_dir:
        extra_metadata["dataseg_columnar_cache_dir"] = columnar_cache_dir
    eval_tasks = ("bbox", "segm") if has_masks else ("bbox",)
    _register_coco(name, json_file, image_root, "box", class_names, test_outputs, eval_tasks,
                   has_masks, replace,
                   dict(extra_metadata, category_ids=category_ids, text_names=text_names))
