"""The columnar cache of large COCO box jsons gives the json path's dataset dicts, lazily."""

import io
import json
import os
import pickle
import multiprocessing

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.common import DatasetFromList

from dataseg.data import DatasetValidationError, build_dataseg_train_loader, register_box_dataset
from dataseg.data import file_lock
from dataseg.data.columnar import (
    ColumnarDatasetDicts,
    columnar_cache_folder,
    ensure_columnar_cache,
)
from dataseg.data.json_stream import JsonStream

CATEGORIES = [{"id": 90, "name": "pyramid"}, {"id": 7, "name": "ball"},
              {"id": 72, "name": "crate"}]


def _tricky_coco(tmp_path):
    """A small json exercising every rule of load_coco_json the cache reproduces."""
    images = [
        {"id": 30, "file_name": "c.jpg", "height": 20, "width": 40, "license": 1},
        {"id": 4, "file_name": "sub/ä.jpg", "height": 11, "width": 13},
        {"id": 12, "file_name": "b.jpg", "height": 16, "width": 17},
        {"id": 8, "file_name": "crowd_only.jpg", "height": 9, "width": 9},
        {"id": 50, "file_name": "empty.jpg", "height": 5, "width": 6},
    ]
    annotations = [
        {"id": 1, "image_id": 30, "category_id": 72, "bbox": [1, 2, 3, 4], "iscrowd": 0,
         "area": 12, "isfake": 0},
        {"id": 2, "image_id": 4, "category_id": 7, "bbox": [0.1, 0.2, 5.123456789012345, 3.3],
         "iscrowd": 0, "segmentation": [[0, 0, 4, 0, 4, 3]]},
        {"id": 3, "image_id": 30, "category_id": 90, "bbox": [10.5, 2.25, 7, 8]},  # no iscrowd
        {"id": 4, "image_id": 999, "category_id": 7, "bbox": [1, 1, 1, 1], "iscrowd": 0},
        {"id": 5, "image_id": 12, "category_id": 90, "bbox": [2, 2, 2, 2], "iscrowd": 0,
         "segmentation": [[1, 2, 3, 4]]},  # only invalid polygons: dropped by both paths
        {"id": 6, "image_id": 8, "category_id": 72, "bbox": [0, 0, 9, 9], "iscrowd": 1},
        {"id": 7, "image_id": 12, "category_id": 7, "bbox": [3.0, 4.0, 1e-3, 2.5e2],
         "iscrowd": 0},
        {"id": 8, "image_id": 30, "category_id": 7, "bbox": [0, 0, 1, 1], "iscrowd": 0,
         "segmentation": {"size": [20, 40], "counts": "PPYo1"}},  # RLE: kept, mask dropped
    ]
    image_root = tmp_path / "images"
    for img in images:
        path = image_root / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # loading checks that files exist, not their content
    path = tmp_path / "boxes.json"
    # Pretty-printed: whitespace between every token of the streamed arrays.
    path.write_text(json.dumps({"info": {"year": 2019}, "images": images,
                                "annotations": annotations, "categories": CATEGORIES},
                               indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path), str(image_root)


def _register_both(tmp_path, json_file, image_root, prefix, **kwargs):
    plain, cached = f"{prefix}_json", f"{prefix}_columnar"
    register_box_dataset(plain, json_file, image_root, columnar_cache=False, replace=True,
                         **kwargs)
    register_box_dataset(cached, json_file, image_root, columnar_cache=True,
                         columnar_cache_dir=str(tmp_path / "cache"), replace=True, **kwargs)
    return plain, cached


@pytest.mark.parametrize("registered", ["from-json", "own-order"])
def test_cache_dicts_equal_the_json_path_field_by_field(tmp_path, registered):
    json_file, image_root = _tricky_coco(tmp_path)
    kwargs = {}
    if registered == "own-order":  # contiguous ids of the registration, not the json's order
        kwargs = dict(class_names=["crate", "pyramid", "ball"], category_ids=[72, 90, 7])
    plain, cached = _register_both(tmp_path, json_file, image_root, f"t_col_{registered}",
                                   **kwargs)
    expected = DatasetCatalog.get(plain)
    got = DatasetCatalog.get(cached)
    assert isinstance(got, ColumnarDatasetDicts) and isinstance(expected, list)
    assert len(got) == len(expected) == 5
    for want, have in zip(expected, got):
        assert have.keys() == want.keys()
        for key in want:
            assert have[key] == want[key], key
            assert type(have[key]) is type(want[key]), key
    # By hand: images sorted by id; image 30 keeps its 3 boxes in file order, the one without
    # iscrowd has no such key; image 12 has 1 box left (the other has only invalid polygons).
    assert [d["image_id"] for d in got] == [4, 8, 12, 30, 50]
    assert got[2]["file_name"] == os.path.join(image_root, "b.jpg")
    assert (got[2]["height"], got[2]["width"]) == (16, 17)
    assert got[0]["file_name"] == os.path.join(image_root, "sub", "ä.jpg")
    image30 = got[3]["annotations"]
    assert [a["bbox"] for a in image30] == [[1, 2, 3, 4], [10.5, 2.25, 7, 8], [0, 0, 1, 1]]
    assert "iscrowd" not in image30[1] and image30[0]["iscrowd"] == 0
    names = MetadataCatalog.get(cached).thing_classes
    assert [names[a["category_id"]] for a in image30] == ["crate", "pyramid", "ball"]
    assert got[0]["annotations"][0]["bbox"][2] == 5.123456789012345  # float64, not rounded
    assert got[4]["annotations"] == []
    assert got[-1] == got[4] and got[1:3] == expected[1:3]
    with pytest.raises(IndexError):
        got[5]


def test_crowd_filter_equals_detectron2s(tmp_path):
    json_file, image_root = _tricky_coco(tmp_path)
    plain, cached = _register_both(tmp_path, json_file, image_root, "t_col_filter")
    expected = filter_images_with_only_crowd_annotations(DatasetCatalog.get(plain))
    got = DatasetCatalog.get(cached).without_crowd_only_images()
    assert [d["image_id"] for d in got] == [4, 12, 30]  # crowd-only 8 and empty 50 removed
    assert list(got) == expected
    # A subset of a subset indexes the cache's records, not the subset's positions.
    assert got.subset([2, 0])[0] == expected[2]


def test_pickles_as_a_reference_to_the_folder(tmp_path):
    json_file, image_root = _tricky_coco(tmp_path)
    _, cached = _register_both(tmp_path, json_file, image_root, "t_col_pickle")
    dicts = DatasetCatalog.get(cached).without_crowd_only_images()
    blob = pickle.dumps(dicts)
    assert b"crate" not in blob and b"b.jpg" not in blob  # no record travels
    assert list(pickle.loads(blob)) == list(dicts)


def test_built_once_keyed_by_the_json(tmp_path):
    json_file, _ = _tricky_coco(tmp_path)
    cache = str(tmp_path / "cache")
    folder = ensure_columnar_cache(json_file, cache)
    stamp = os.path.getmtime(os.path.join(folder, "boxes.npy"))
    assert ensure_columnar_cache(json_file, cache) == folder
    assert os.path.getmtime(os.path.join(folder, "boxes.npy")) == stamp
    with open(os.path.join(folder, "meta.json")) as f:
        meta = json.load(f)
    assert (meta["num_images"], meta["num_annotations"]) == (5, 6)
    assert (meta["num_unmatched_annotations"], meta["num_invalid_segmentation"]) == (1, 1)
    assert meta["category_ids"] == [7, 72, 90]
    # An edited json is a different cache.
    with open(json_file, "a") as f:
        f.write("\n")
    assert columnar_cache_folder(json_file, cache) != folder
    assert sorted(os.listdir(cache)) == [os.path.basename(folder)]


def test_concurrent_processes_build_one_complete_folder(tmp_path):
    json_file, _ = _tricky_coco(tmp_path)
    cache = str(tmp_path / "cache")
    # Forked processes (as data-loader workers or ranks started together): one lock each.
    with multiprocessing.get_context("fork").Pool(3) as pool:
        outputs = pool.starmap(ensure_columnar_cache, [(json_file, cache)] * 3)
    assert len(set(outputs)) == 1
    assert os.listdir(cache) == [os.path.basename(outputs[0])]  # no lock, no temp folder
    assert len(ColumnarDatasetDicts(outputs[0], "")) == 5


def test_stale_lock_is_taken_over_and_the_dead_builders_folder_removed(tmp_path):
    json_file, _ = _tricky_coco(tmp_path)
    cache = str(tmp_path / "cache")
    folder = columnar_cache_folder(json_file, cache)
    os.makedirs(cache)
    # What a builder killed mid-build leaves: its lock and its half-written temporary folder,
    # both untouched for longer than the stale-lock time.
    lock, leftover = folder + ".lock", folder + ".tmp-deadhost-12345"
    with open(lock, "w") as f:
        f.write("deadhost 12345 deadhost-12345-0\n")
    os.makedirs(leftover)
    with open(os.path.join(leftover, "image_ids.npy"), "wb") as f:
        f.write(b"partial")
    old = os.path.getmtime(lock) - 2 * file_lock.STALE_LOCK_S
    for path in (os.path.join(leftover, "image_ids.npy"), leftover, lock):
        os.utime(path, (old, old))
    assert ensure_columnar_cache(json_file, cache, wait_timeout_s=60) == folder
    assert os.listdir(cache) == [os.path.basename(folder)]  # no lock, leftover nor .stale-*
    assert len(ColumnarDatasetDicts(folder, "")) == 5


def test_takeover_of_a_lock_that_is_live_again_puts_it_back(tmp_path):
    # Two waiters judged the same lock stale; the first took it over and created its own
    # fresh lock before the second's takeover: the second moves the fresh lock away, sees it
    # is live and puts it back, and the leftovers stay.
    folder = str(tmp_path / "boxes-0123")
    lock, other_build = folder + ".lock", folder + ".tmp-host-1"
    with open(lock, "w") as f:
        f.write("first waiter\n")
    os.makedirs(other_build)
    old = os.path.getmtime(lock) - 2 * file_lock.STALE_LOCK_S
    os.utime(other_build, (old, old))
    assert not file_lock.take_over_stale_lock(lock, folder, "h 2 h-2-ab\n")
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(p) for p in (lock, other_build)]
    with open(lock) as f:
        assert f.read() == "first waiter\n"
    # A lock that is stale indeed: removed, with the folder its builder left.
    os.utime(lock, (old, old))
    assert file_lock.take_over_stale_lock(lock, folder, "h 2 h-2-ab\n")
    assert os.listdir(tmp_path) == []


def test_heartbeat_survives_a_vanished_lock(tmp_path, monkeypatch):
    from dataseg.data import columnar

    lock = str(tmp_path / "x.lock")
    file_lock.heartbeat(lock, "me\n")  # no lock: re-created, no FileNotFoundError
    with open(lock) as f:
        assert f.read() == "me\n"
    with open(lock, "w") as f:
        f.write("other\n")
    file_lock.heartbeat(lock, "me\n")  # another process's lock is only touched
    with open(lock) as f:
        assert f.read() == "other\n"
    # A build whose lock a waiter removes (as stale) mid-build completes, and releases the lock
    # its heartbeat re-created.
    json_file, _ = _tricky_coco(tmp_path)
    cache = str(tmp_path / "cache")
    build, beats = columnar.build_columnar_cache, []

    def build_losing_the_lock(json_file, folder, heartbeat=None):
        def beat():
            if os.path.exists(cache_lock):
                os.remove(cache_lock)
            heartbeat()
            beats.append(os.path.exists(cache_lock))
        return build(json_file, folder, heartbeat=beat)

    cache_lock = columnar_cache_folder(json_file, cache) + ".lock"
    monkeypatch.setattr(columnar, "build_columnar_cache", build_losing_the_lock)
    monkeypatch.setattr(columnar, "_HEARTBEAT_EVERY", 1)
    folder = ensure_columnar_cache(json_file, cache)
    assert beats and all(beats)
    assert os.listdir(cache) == [os.path.basename(folder)]
    assert len(ColumnarDatasetDicts(folder, "")) == 5


@pytest.mark.parametrize("annotation", [0, 3])  # of a known image; of an unknown one (999)
def test_annotation_without_category_id_fails_as_on_the_json_path(tmp_path, annotation):
    json_file, image_root = _tricky_coco(tmp_path)
    with open(json_file) as f:
        info = json.load(f)
    del info["annotations"][annotation]["category_id"]
    with open(json_file, "w") as f:
        json.dump(info, f)
    plain, cached = _register_both(tmp_path, json_file, image_root, f"t_col_nocat{annotation}")
    with pytest.raises(DatasetValidationError, match="category_id"):
        DatasetCatalog.get(plain)  # pycocotools indexes every annotation by category_id
    ann_id = info["annotations"][annotation]["id"]
    with pytest.raises(DatasetValidationError,
                       match=f"1 annotation.*no 'category_id'.*id {ann_id} of image"):
        DatasetCatalog.get(cached)
    assert not any(n.endswith(".lock") or ".tmp-" in n for n in os.listdir(tmp_path / "cache"))


def test_invalid_coco_value_errors_name_the_dataset_and_file(tmp_path):
    json_file, image_root = _tricky_coco(tmp_path)
    with open(json_file) as f:
        info = json.load(f)
    info["annotations"][1]["id"] = info["annotations"][0]["id"]
    with open(json_file, "w") as f:
        json.dump(info, f)
    _, cached = _register_both(tmp_path, json_file, image_root, "t_col_dup_ids")
    with pytest.raises(DatasetValidationError, match="not unique") as e:
        DatasetCatalog.get(cached)
    assert "t_col_dup_ids_columnar" in str(e.value) and json_file in str(e.value)


def test_stream_parser_across_chunk_boundaries():
    text = json.dumps({"a": 12345678901, "images": [{"id": 1, "x": [1.5, -2e-3]}, {"id": 22}],
                       "annotations": [], "s": "x,}]", "categories": [{"id": 3}]}, indent=1)
    expected = json.loads(text)
    for chunk in (1, 2, 3, 7, 1000):
        got = {}
        for key, value, element in JsonStream(io.StringIO(text), chunk_chars=chunk):
            if element:
                got.setdefault(key, []).append(value)
            else:
                got[key] = value
        got.setdefault("annotations", [])
        assert got == expected, chunk


def test_unsupported_json_falls_back_to_the_json_path(tmp_path, caplog):
    json_file, image_root = _tricky_coco(tmp_path)
    with open(json_file) as f:
        info = json.load(f)
    info["annotations"][0]["keypoints"] = [1, 2, 2]
    with open(json_file, "w") as f:
        json.dump(info, f)
    plain, cached = _register_both(tmp_path, json_file, image_root, "t_col_keypoints")
    got = DatasetCatalog.get(cached)
    assert isinstance(got, list) and got == DatasetCatalog.get(plain)
    assert "cannot be cached" in caplog.text


def test_invalid_json_errors(tmp_path):
    json_file, image_root = _tricky_coco(tmp_path)
    with open(json_file) as f:
        text = f.read()
    register_box_dataset("t_col_truncated", json_file, image_root, columnar_cache=True,
                         columnar_cache_dir=str(tmp_path / "cache"), replace=True)
    with open(json_file, "w") as f:  # truncated after registration (which reads categories)
        f.write(text[: len(text) // 2])
    with pytest.raises(DatasetValidationError, match="not valid JSON"):
        DatasetCatalog.get("t_col_truncated")
    info = json.loads(text)
    info["annotations"][0]["category_id"] = 42
    with open(json_file, "w") as f:
        json.dump(info, f)
    register_box_dataset("t_col_unknown", json_file, image_root, columnar_cache=True,
                         columnar_cache_dir=str(tmp_path / "cache"), replace=True,
                         class_names=["ball", "crate", "pyramid"], category_ids=[7, 72, 90])
    with pytest.raises(DatasetValidationError, match="42"):
        DatasetCatalog.get("t_col_unknown")
    assert not any(n.endswith(".lock") or ".tmp-" in n for n in os.listdir(tmp_path / "cache"))


def test_train_loader_keeps_the_cache_lazy_and_maps_the_same(tmp_path, synthetic_root,
                                                             dataseg_cfg):
    box = os.path.join(synthetic_root, "box")
    json_file = os.path.join(box, "annotations", "instances_train.json")
    plain, cached = _register_both(tmp_path, json_file, os.path.join(box, "images", "train"),
                                   "t_col_loader")
    batches = {}
    for name in (plain, cached):
        cfg = dataseg_cfg.clone()
        cfg.DATASETS.TRAIN = (name,)
        loader = build_dataseg_train_loader(cfg)
        dataset = loader.dataset.datasets[0]
        assert isinstance(dataset, ColumnarDatasetDicts if name == cached else DatasetFromList)
        it = iter(loader)
        batches[name] = [next(it) for _ in range(3)]
    for want, have in zip(batches[plain], batches[cached]):
        for a, b in zip(want, have):
            assert a["image_id"] == b["image_id"] and a["file_name"] == b["file_name"]
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
            assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
    assert sum(len(b["instances"]) for batch in batches[cached] for b in batch) > 0


def test_large_json_uses_the_cache_by_default(tmp_path, monkeypatch):
    from dataseg.data import columnar

    json_file, image_root = _tricky_coco(tmp_path)
    monkeypatch.setenv("DATASEG_CACHE", str(tmp_path / "dataseg_cache"))
    register_box_dataset("t_col_auto", json_file, image_root, replace=True)
    assert isinstance(DatasetCatalog.get("t_col_auto"), list)  # below the threshold
    monkeypatch.setattr(columnar, "COLUMNAR_MIN_JSON_BYTES", os.path.getsize(json_file))
    got = DatasetCatalog.get("t_col_auto")
    assert isinstance(got, ColumnarDatasetDicts)
    assert got.folder.startswith(str(tmp_path / "dataseg_cache" / "columnar"))
    # Held-out sets with masks keep their segmentation: never cached.
    register_box_dataset("t_col_masks", json_file, image_root, has_masks=True,
                         columnar_cache=True, replace=True)
    assert isinstance(DatasetCatalog.get("t_col_masks"), list)
    assert len(got) == 5


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_categories_read_without_parsing_the_boxes(tmp_path, where):
    from dataseg.data.json_stream import read_coco_list

    big = [{"id": i, "image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 7} for i in range(3000)]
    parts = {"info": {"note": 'the "categories": [] key is escaped here'}, "images": [],
             "annotations": big}
    keys = list(parts)
    keys.insert({"first": 0, "middle": 2, "last": len(keys)}[where], "categories")
    info = {k: (CATEGORIES if k == "categories" else parts[k]) for k in keys}
    path = tmp_path / "cats.json"
    path.write_text(json.dumps(info))
    # A 1 kB window: "middle" is found by the whole-file scan, the others at an end.
    assert read_coco_list(str(path), "categories", window=1024) == CATEGORIES
    del info["categories"]
    path.write_text(json.dumps(info))
    assert read_coco_list(str(path), "categories", window=1024) is None
