"""Builtin registrations exist without any data and fail clearly when loaded."""

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

import dataseg.data  # noqa: F401  (registers)
from dataseg.data import load_vocabulary

BUILTINS = {
    "dataseg_coco_2017_train_panoptic": ("panoptic", 133),
    "dataseg_coco_2017_val_panoptic": ("panoptic", 133),
    "dataseg_ade20k_sem_seg_train": ("semantic", 150),
    "dataseg_ade20k_sem_seg_val": ("semantic", 150),
    "dataseg_ade20k_panoptic_val": ("panoptic", None),  # categories read from its json
    "dataseg_objects365_v2_train": ("box", 365),
    "dataseg_objects365_v2_val": ("box", 365),
    "dataseg_objects365_instance_seg_val": ("box", 365),
    "dataseg_cityscapes_fine_panoptic_val": ("panoptic", 19),
    "dataseg_pascal_context_59_val": ("semantic", 59),
    "dataseg_pascal_context_459_val": ("semantic", 459),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_registered(name):
    assert name in DatasetCatalog.list()
    task, num = BUILTINS[name]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type
    if num is not None:
        assert meta.dataseg_task == task
        assert len(meta.dataseg_classes) == num == len(meta.dataseg_isthing)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_missing_files_fail_clearly(name):
    try:
        DatasetCatalog.get(name)
    except FileNotFoundError as e:
        assert "expected path" in str(e) and "DETECTRON2_DATASETS" in str(e)
    else:  # pragma: no cover - only when the real data is installed
        pytest.skip(f"{name} is installed here")


def test_vocabularies_shipped():
    o365 = load_vocabulary("objects365_v2")
    assert len(o365) == 365 and o365[0] == "Person" and o365[-1] == "Table Tennis"
    assert len(load_vocabulary("pascal_context_59")) == 59
    assert len(set(load_vocabulary("pascal_context_459"))) == 459


def test_coco_things_and_stuff_share_contiguous_space():
    meta = MetadataCatalog.get("dataseg_coco_2017_val_panoptic")
    assert sum(meta.dataseg_isthing) == 80
    assert set(meta.thing_dataset_id_to_contiguous_id.values()) == {
        i for i, t in enumerate(meta.dataseg_isthing) if t}
    assert sorted(meta.stuff_dataset_id_to_contiguous_id.values()) == list(range(133))
