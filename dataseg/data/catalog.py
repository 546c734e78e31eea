"""Registering datasets with the metadata DaTaSeg needs (docs/interfaces.md).

Four helpers, one per kind of annotation on disk, fill detectron2's ``DatasetCatalog`` with a
lazy loader and ``MetadataCatalog`` with both DaTaSeg's keys (``dataseg_task``,
``dataseg_classes``, ``dataseg_isthing``, ``dataseg_test_outputs``) and detectron2's usual keys,
so that detectron2's own evaluators work unchanged.

Registration never touches the disk beyond optional reads of small category lists: datasets
that are not downloaded can be registered at import time. Files are checked when the dataset
is loaded, and every failure names the path that was expected.
"""

import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.utils.file_io import PathManager

from ..tasks import TASKS, check_task, get_task
from .panoptic_png import rgb_to_segment_ids

logger = logging.getLogger(__name__)

__all__ = [
    "TASKS",
    "DatasetValidationError",
    "check_panoptic_segment_ids",
    "check_semantic_labels",
    "check_task",
    "get_dataset_task",
    "class_names_to_vocabulary",
    "register_panoptic_dataset",
    "register_semantic_dataset",
    "register_instance_dataset",
    "register_box_dataset",
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

    Objects365-style "a/b" alternatives become the "a, b" synonym form the text classifier
    understands; stray whitespace (ADE's "window ") is dropped.
    """
    vocab = []
    for name in names:
        parts = [p.strip() for p in name.replace("/", ",").split(",")]
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


def _read_json(path: str, what: str, dataset_name: str):
    """``json.load`` with the error a user can act on (a half-downloaded file, usually)."""
    with PathManager.open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetValidationError(
                f"Dataset {dataset_name!r}: {what} {path!r} is not valid JSON ({e}); the file is "
                "probably truncated or was only partly downloaded. Download or extract it again."
            ) from e


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
    # What the model must produce to evaluate the dataset, unless registration says otherwise
    # (a box dataset with held-out masks is evaluated on instance masks, for example).
    test_outputs = tuple(test_outputs or get_task(task).default_test_outputs)
    bad = set(test_outputs) - {"sem_seg", "panoptic_seg", "instances"}
    if bad:
        raise ValueError(f"Unknown test outputs {sorted(bad)}; use sem_seg/panoptic_seg/instances.")
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
    with Image.open(image_file) as im, Image.open(label_file) as lab:
        if im.size != lab.size:
            raise DatasetValidationError(
                f"Dataset {dataset_name!r}: image {image_file!r} is {im.size[0]}x{im.size[1]} "
                f"but its annotation {label_file!r} is {lab.size[0]}x{lab.size[1]} (WxH); "
                "masks and images must have the same size."
            )


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
    for record in dicts[:_NUM_VALIDATED_FILES]:
        require_path(record["file_name"], "image", name, hint, is_dir=False)
        require_path(record["pan_seg_file_name"], "panoptic PNG", name, hint, is_dir=False)
        _check_same_size(record["file_name"], record["pan_seg_file_name"], name)
        with Image.open(record["pan_seg_file_name"]) as png:
            check_panoptic_segment_ids(np.asarray(png.convert("RGB")), record["segments_info"],
                                       record["pan_seg_file_name"], name)
    return dicts


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
def _load_semantic(name, image_root, sem_seg_root, image_ext, gt_ext):
    meta = MetadataCatalog.get(name)
    hint = _hint(meta.as_dict())
    require_path(image_root, "image", name, hint)
    require_path(sem_seg_root, "semantic label", name, hint)
    if not any(f.endswith(gt_ext) for f in PathManager.ls(sem_seg_root)):
        raise DatasetValidationError(
            f"Dataset {name!r}: no *.{gt_ext} label maps in {sem_seg_root!r} (empty dataset).{hint}"
        )
    dicts = load_sem_seg(sem_seg_root, image_root, gt_ext=gt_ext, image_ext=image_ext)
    if not dicts:
        raise DatasetValidationError(
            f"Dataset {name!r}: no image in {image_root!r} matches a label map in "
            f"{sem_seg_root!r} (empty dataset)."
        )
    num_classes, ignore = len(meta.stuff_classes), meta.ignore_label
    for record in dicts[:_NUM_VALIDATED_FILES]:
        _check_same_size(record["file_name"], record["sem_seg_file_name"], name)
        with Image.open(record["sem_seg_file_name"]) as lab:
            check_semantic_labels(np.asarray(lab), num_classes, ignore,
                                  record["sem_seg_file_name"], name)
    return dicts


def check_semantic_labels(labels: np.ndarray, num_classes: int, ignore_label: int,
                          file_name: str, dataset_name: str):
    """Raise if a label map holds ids outside ``0..num_classes-1`` and the ignore label."""
    values = np.unique(labels)
    bad = values[(values >= num_classes) & (values != ignore_label)]
    if bad.size:
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
    their path relative to ``image_root``/``sem_seg_root`` without extension.

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
        image_ext, gt_ext: file extensions.
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
def _coco_category_metadata(names: Sequence[str], ids: Sequence[int]) -> Dict:
    return dict(
        thing_classes=list(names),
        thing_dataset_id_to_contiguous_id={int(c): i for i, c in enumerate(ids)},
    )


def _json_categories(categories: Sequence[Dict]):
    """(names, ids) of a COCO json's categories, sorted by id: the json's ids are the truth."""
    cats = sorted(categories, key=lambda c: c["id"])
    return [c["name"] for c in cats], [int(c["id"]) for c in cats]


def _read_coco_categories(json_file: str, dataset_name: str):
    if os.path.isfile(json_file) and os.path.getsize(json_file) >= _CATEGORIES_SCAN_BYTES:
        # Objects365-sized: find the categories without parsing every box at registration.
        from .columnar import read_coco_categories

        categories = read_coco_categories(json_file)
        if categories is not None:
            return categories
    return _read_json(json_file, "COCO json", dataset_name)["categories"]


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


def _load_coco(name, json_file, image_root, task, keep_masks):
    meta = MetadataCatalog.get(name)
    hint = _hint(meta.as_dict())
    require_path(json_file, "COCO json", name, hint, is_dir=False)
    require_path(image_root, "image", name, hint)
    if task == "box" and not keep_masks:
        # Large box jsons: a memory-mapped columnar cache instead of one dict per box in every
        # process (dataseg/data/columnar.py); None when the json path is used.
        from .columnar import load_columnar_box_dicts

        columnar = load_columnar_box_dicts(name, json_file, image_root)
        if columnar is not None:
            return columnar
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
        raise DatasetValidationError(
            f"Dataset {name!r}: COCO json {json_file!r} is not valid JSON ({e}); the file is "
            "probably truncated or was only partly downloaded. Download or extract it again."
        ) from e
    except KeyError as e:
        if e.args == ("category_id",):
            raise DatasetValidationError(
                f"Dataset {name!r}: {json_file!r} has an annotation without a category_id. "
                "Give every annotation the id of one of the json's categories."
            ) from e
        raise DatasetValidationError(
            f"Dataset {name!r}: {json_file!r} has an annotation whose category_id is not among "
            f"its categories ({e}). Fix the annotation or add the category to the json."
        ) from e
    finally:
        if probe in MetadataCatalog.list():
            MetadataCatalog.remove(probe)
    if not meta.get("dataseg_classes", None):
        _set_metadata(name, **_coco_category_metadata(json_names, json_ids),
                      **dataseg_metadata(task, json_names, None, None, "coco", {}))
    id_map = meta.thing_dataset_id_to_contiguous_id
    _check_category_ids(name, json_file, list(id_map), json_ids, json_names)
    # json order -> json id -> registered order (the same when the registration read the json).
    to_registered = [id_map[c] for c in json_ids]
    for record in dicts:
        for obj in record.get("annotations", []):
            obj["category_id"] = to_registered[obj["category_id"]]
            if not keep_masks:
                obj.pop("segmentation", None)
    if not dicts:
        raise DatasetValidationError(f"Dataset {name!r}: {json_file!r} has no images.")
    for record in dicts[:_NUM_VALIDATED_FILES]:
        require_path(record["file_name"], "image", name, hint, is_dir=False)
    return dicts


def _register_coco(name, json_file, image_root, task, class_names, test_outputs,
                   eval_tasks, keep_masks, replace, extra_metadata):
    category_ids = extra_metadata.pop("category_ids", None)
    json_names = json_ids = None
    if PathManager.isfile(json_file):
        json_names, json_ids = _json_categories(_read_coco_categories(json_file, name))
    if class_names is None and json_names is not None:
        class_names, category_ids = json_names, json_ids
    meta = dict(json_file=json_file, image_root=image_root, evaluator_type="coco",
                coco_eval_tasks=tuple(eval_tasks), **extra_metadata)
    if class_names is not None:
        names = list(class_names)
        if category_ids is None:
            if json_ids is not None and len(json_ids) != len(names):
                raise ValueError(
                    f"Dataset {name!r}: {len(names)} class_names but {json_file!r} has "
                    f"{len(json_ids)} categories ({json_names[:5]}...); pass category_ids= or "
                    "omit class_names to take them from the json.")
            # The json's ids in their order; before the json exists, 1..C (checked at load).
            category_ids = json_ids if json_ids is not None else range(1, len(names) + 1)
        ids = [int(c) for c in category_ids]
        if len(ids) != len(names) or len(set(ids)) != len(ids):
            raise ValueError(
                f"Dataset {name!r}: category_ids must be {len(names)} distinct ids, one per "
                f"class name; got {ids}.")
        if json_ids is not None:
            _check_category_ids(name, json_file, ids, json_ids, json_names)
        meta.update(**_coco_category_metadata(names, ids),
                    **dataseg_metadata(task, names, None, test_outputs, "coco", {}))
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
        category_ids: the json's category ids in the order of ``class_names`` (default: the
            json's ids sorted, or ``1..C`` while the json does not exist yet). The json's ids
            are the truth: ids that disagree with its categories fail, naming both.
        test_outputs: outputs needed to evaluate it (default ``("instances",)``).
        replace: replace an existing registration.
        **extra_metadata: more metadata.
    """
    _register_coco(name, json_file, image_root, "instance", class_names, test_outputs,
                   ("segm", "bbox"), True, replace,
                   dict(extra_metadata, category_ids=category_ids))


def register_box_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    class_names: Optional[Sequence[str]] = None,
    category_ids: Optional[Sequence[int]] = None,
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
                   has_masks, replace, dict(extra_metadata, category_ids=category_ids))
