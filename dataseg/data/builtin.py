"""The paper's datasets, registered in their standard layouts under ``$DETECTRON2_DATASETS``.

Names carry a ``dataseg_`` prefix so they never clash with detectron2's own registrations of
the same data. Layouts follow detectron2 / Mask2Former / ODISE / Detic preparation scripts:

==========================================  ============================================
name                                        files (relative to $DETECTRON2_DATASETS)
==========================================  ============================================
dataseg_coco_2017_{train,val}_panoptic      coco/{train,val}2017, coco/panoptic_{split}2017,
                                            coco/annotations/panoptic_{split}2017.json
dataseg_coco_2017_{train,val}_sem_seg       coco/{train,val}2017, coco/panoptic_semseg_{split}2017
dataseg_ade20k_sem_seg_{train,val}          ADEChallengeData2016/images/{training,validation},
                                            .../annotations_detectron2/{training,validation}
dataseg_ade20k_panoptic_val                 ADEChallengeData2016/ade20k_panoptic_val(.json)
dataseg_ade20k_instance_val                 ADEChallengeData2016/ade20k_instance_val.json
dataseg_objects365_v2_{train,val}           objects365/{train,val},
                                            objects365/annotations/zhiyuan_objv2_{split}.json
dataseg_objects365_instance_seg_val         objects365/val,
                                            objects365/annotations/o365_instance_seg_val.json
dataseg_cityscapes_fine_panoptic_val        cityscapes/leftImg8bit/val,
                                            cityscapes/gtFine/cityscapes_panoptic_val(.json)
dataseg_pascal_context_{59,459}_val         pascal_ctx_d2/images/validation,
                                            pascal_ctx_d2/annotations_ctx{59,459}/validation
==========================================  ============================================

The scripts in the repository's ``datasets/`` folder write these layouts from the original
downloads (``datasets/README.md``). Registration never reads these files (the category lists
of ADE's panoptic and instance jsons are read when present); loading a missing dataset fails
naming the expected path and ``DETECTRON2_DATASETS``.
"""

import os
from importlib import resources
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    ADE20K_SEM_SEG_CATEGORIES,
    CITYSCAPES_CATEGORIES,
    COCO_CATEGORIES,
)

from ..text.vocabulary import clean_class_name
from .catalog import (
    dataseg_metadata,
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
    require_path,
)

__all__ = ["register_all_builtin", "load_vocabulary", "builtin_dataset_root",
           "adopt_detectron2_registration"]

# The DaTaSeg keys a registration adds to detectron2's metadata.
_DATASEG_KEYS = ("dataseg_task", "dataseg_classes", "dataseg_isthing", "dataseg_test_outputs",
                 "dataseg_test_size")


def builtin_dataset_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), as detectron2 reads it."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def load_vocabulary(name: str) -> List[str]:
    """Class names shipped with the package (``dataseg/data/vocabularies/<name>.txt``)."""
    text = resources.files(__package__).joinpath("vocabularies", f"{name}.txt").read_text()
    return [line.rstrip("\n") for line in text.splitlines() if line.strip()]


# The standard test resolution (shortest, longest edge) of each benchmark; the test mapper
# uses it unless INPUT.DATASEG.MIN/MAX_SIZES_TEST say otherwise (dataseg.data.mappers).
_COCO_SIZE = dict(dataseg_test_size=(800, 1333))
_ADE_SIZE = dict(dataseg_test_size=(512, 2048))
_CITYSCAPES_SIZE = dict(dataseg_test_size=(1024, 2048))


def adopt_detectron2_registration(name: str) -> bool:
    """Give detectron2's own registration ``name`` the DaTaSeg metadata of ``dataseg_<name>``.

    detectron2 registers the same benchmarks under its names (``ade20k_sem_seg_val``,
    ``coco_2017_val_panoptic``) without DaTaSeg's keys. Where that is unambiguous (the
    ``dataseg_`` twin exists, with the same evaluator and the same classes in the same
    contiguous order), the DaTaSeg keys are copied over so the name works in DATASETS.TEST.

    Returns:
        True if ``name`` has DaTaSeg metadata now.
    """
    meta = MetadataCatalog.get(name)
    if meta.get("dataseg_classes", None) is not None:
        return True
    twin = f"dataseg_{name}"
    if twin not in DatasetCatalog.list():
        return False
    ours = MetadataCatalog.get(twin)
    theirs_names = [n.strip() for n in meta.get("stuff_classes", [])]
    if meta.get("evaluator_type", None) != ours.get("evaluator_type", None) or \
            theirs_names != [n.strip() for n in ours.get("stuff_classes", [])]:
        return False
    meta.set(**{k: ours.get(k) for k in _DATASEG_KEYS if ours.get(k, None) is not None})
    return True


def _if_new(replace, register, name, *args, **kwargs):
    # A user may have registered their own copy under the same name first: keep theirs
    # (unless asked to replace the builtin registrations).
    if replace or name not in DatasetCatalog.list():
        register(name, *args, replace=True, **kwargs)


def _hint(root: str) -> dict:
    return dict(dataseg_missing_hint=(
        f"Builtin datasets are read from $DETECTRON2_DATASETS (now {root!r}); set it to the "
        "folder holding the prepared datasets (layouts: detectron2's datasets/README.md)."
    ))


def _register_coco_panoptic(root: str, replace: bool):
    for split in ("train", "val"):
        _if_new(replace, register_panoptic_dataset,
            f"dataseg_coco_2017_{split}_panoptic",
            os.path.join(root, "coco", f"{split}2017"),
            os.path.join(root, "coco", f"panoptic_{split}2017"),
            os.path.join(root, "coco", "annotations", f"panoptic_{split}2017.json"),
            categories=COCO_CATEGORIES,
            text_names=[clean_class_name(c["name"]) for c in COCO_CATEGORIES], **_COCO_SIZE,
            **_hint(root),
        )
        # The same 133 classes as semantic labels (datasets/prepare_coco_sem_seg.py).
        _if_new(replace, register_semantic_dataset,
            f"dataseg_coco_2017_{split}_sem_seg",
            os.path.join(root, "coco", f"{split}2017"),
            os.path.join(root, "coco", f"panoptic_semseg_{split}2017"),
            [c["name"] for c in COCO_CATEGORIES],
            isthing=[bool(c["isthing"]) for c in COCO_CATEGORIES],
            text_names=[clean_class_name(c["name"]) for c in COCO_CATEGORIES], **_COCO_SIZE,
            **_hint(root),
        )


def _register_ade20k(root: str, replace: bool):
    ade = os.path.join(root, "ADEChallengeData2016")
    for split, folder in (("train", "training"), ("val", "validation")):
        _if_new(replace, register_semantic_dataset,
            f"dataseg_ade20k_sem_seg_{split}",
            os.path.join(ade, "images", folder),
            os.path.join(ade, "annotations_detectron2", folder),
            ADE20K_SEM_SEG_CATEGORIES,
            text_names=[clean_class_name(n) for n in ADE20K_SEM_SEG_CATEGORIES], **_ADE_SIZE,
            **_hint(root),
        )
    # Weak-transfer evaluation (semantic training -> panoptic PQ). Its thing/stuff split is in
    # the json written by datasets/prepare_ade20k_pan_seg.py (or Mask2Former's script of that
    # name): read it there (now if the file exists, else when first loaded).
    _if_new(replace, register_panoptic_dataset,
        "dataseg_ade20k_panoptic_val",
        os.path.join(ade, "images", "validation"),
        os.path.join(ade, "ade20k_panoptic_val"),
        os.path.join(ade, "ade20k_panoptic_val.json"),
        **_ADE_SIZE, **_hint(root),
    )
    # Instance masks of the 100 thing classes (datasets/prepare_ade20k_ins_seg.py); names and
    # ids are read from the json.
    _if_new(replace, register_instance_dataset,
        "dataseg_ade20k_instance_val",
        os.path.join(ade, "ade20k_instance_val.json"),
        os.path.join(ade, "images", "validation"),
        **_ADE_SIZE, **_hint(root),
    )


def _register_objects365(root: str, replace: bool):
    names = load_vocabulary("objects365_v2")
    # Objects365's "Cabinet/shelf" names alternatives: embedded as synonyms ("a, b"). A "/"
    # in other datasets' names is kept as written.
    text_names = [", ".join(p.strip() for p in n.split("/")) for n in names]
    o365 = os.path.join(root, "objects365")
    for split in ("train", "val"):
        _if_new(replace, register_box_dataset,
            f"dataseg_objects365_v2_{split}",
            os.path.join(o365, "annotations", f"zhiyuan_objv2_{split}.json"),
            os.path.join(o365, split),
            class_names=names, text_names=text_names, **_COCO_SIZE, **_hint(root),
        )
    # The 1,000 val images the DaTaSeg authors annotated with masks (box -> mask transfer AP);
    # the file is not distributed here: datasets/README.md gives its format and a checker.
    _if_new(replace, register_box_dataset,
        "dataseg_objects365_instance_seg_val",
        os.path.join(o365, "annotations", "o365_instance_seg_val.json"),
        os.path.join(o365, "val"),
        class_names=names, text_names=text_names, has_masks=True, **_COCO_SIZE,
        **_hint(root),
    )


def _register_cityscapes_panoptic(root: str, replace: bool):
    # Cityscapes' nested city folders need detectron2's own loader; the metadata is DaTaSeg's
    # "semantic view" (all 19 train ids in stuff_classes, things mapped into the same space).
    from detectron2.data.datasets.cityscapes_panoptic import load_cityscapes_panoptic

    name = "dataseg_cityscapes_fine_panoptic_val"
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "val")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "cityscapes_panoptic_val")
    gt_json = gt_dir + ".json"
    names = [c["name"] for c in CITYSCAPES_CATEGORIES]
    isthing = [bool(c["isthing"]) for c in CITYSCAPES_CATEGORIES]
    meta = dict(
        stuff_classes=names,
        thing_classes=names,
        stuff_colors=[list(c["color"]) for c in CITYSCAPES_CATEGORIES],
        thing_colors=[list(c["color"]) for c in CITYSCAPES_CATEGORIES],
        thing_dataset_id_to_contiguous_id={
            c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if c["isthing"]
        },
        stuff_dataset_id_to_contiguous_id={
            c["id"]: c["trainId"] for c in CITYSCAPES_CATEGORIES if not c["isthing"]
        },
    )
    hint = _hint(root)

    def load():
        for path, what, is_dir in ((image_dir, "image", True), (gt_dir, "panoptic PNG", True),
                                   (gt_json, "panoptic json", False)):
            require_path(path, what, name, " " + hint["dataseg_missing_hint"], is_dir=is_dir)
        return load_cityscapes_panoptic(image_dir, gt_dir, gt_json, meta)

    if name in DatasetCatalog.list():
        if not replace:
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_dir, panoptic_root=gt_dir, panoptic_json=gt_json,
        gt_dir=os.path.join(root, "cityscapes", "gtFine", "val"),
        ignore_label=255, label_divisor=1000, **meta, **hint, **_CITYSCAPES_SIZE,
        **dataseg_metadata("panoptic", names, isthing, ("panoptic_seg",), "coco_panoptic_seg"),
    )


def _register_pascal_context(root: str, replace: bool):
    ctx = os.path.join(root, "pascal_ctx_d2")
    # 459 classes do not fit uint8 label PNGs: ODISE's layout stores them as 16-bit TIFFs.
    for num, ext, ignore in ((59, "png", 255), (459, "tif", 65535)):
        _if_new(replace, register_semantic_dataset,
            f"dataseg_pascal_context_{num}_val",
            os.path.join(ctx, "images", "validation"),
            os.path.join(ctx, f"annotations_ctx{num}", "validation"),
            load_vocabulary(f"pascal_context_{num}"), ignore_label=ignore, gt_ext=ext,
            text_names=[clean_class_name(n) for n in load_vocabulary(f"pascal_context_{num}")],
            **_ADE_SIZE,
            **_hint(root),
        )


_REGISTRARS = (_register_coco_panoptic, _register_ade20k, _register_objects365,
               _register_cityscapes_panoptic, _register_pascal_context)


def register_all_builtin(root: str = None, replace: bool = False):
    """Register every builtin dataset under ``root`` (default ``$DETECTRON2_DATASETS``).

    Already registered names are kept (importing twice, or a user override, is harmless)
    unless ``replace``: then every builtin name is registered anew under ``root`` (to point
    the builtin names at another dataset folder after ``import dataseg.data``).
    """
    root = root or builtin_dataset_root()
    for registrar in _REGISTRARS:
        registrar(root, replace)
