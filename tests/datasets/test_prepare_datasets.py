"""The preparation scripts of ``datasets/`` on miniature copies of the original downloads.

Each test writes a few tiny files in the layout and format of the real download, runs the
script as a user does (its ``main`` with command-line arguments, ``$DETECTRON2_DATASETS``
pointing at the copy; one run is a real subprocess), checks the written values against
hand-computed ones, then loads the output through the project's builtin dataset names.
"""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

import dataseg.data  # noqa: F401  (registers the builtin names)
from dataseg.data.builtin import builtin_dataset_root, load_vocabulary, register_all_builtin

from helpers import REPO

SCRIPTS = REPO / "datasets"  # on the path through pytest.ini: the scripts import as modules

ALL_SCRIPTS = sorted(p.stem for p in SCRIPTS.glob("*.py")
                     if p.stem.startswith(("prepare_", "check_")))
H, W = 6, 8


def run(root, script, *args):
    """Run ``datasets/<script>.py`` with ``args`` and ``$DETECTRON2_DATASETS=root``."""
    module = importlib.import_module(script)
    old = os.environ.get("DETECTRON2_DATASETS")
    os.environ["DETECTRON2_DATASETS"] = str(root)
    try:
        module.main(list(args))
    finally:
        if old is None:
            del os.environ["DETECTRON2_DATASETS"]
        else:
            os.environ["DETECTRON2_DATASETS"] = old


@pytest.fixture
def builtin_at():
    """``builtin_at(root)`` points the builtin names at ``root``; restored afterwards."""
    default = builtin_dataset_root()
    yield lambda root: register_all_builtin(str(root), replace=True)
    register_all_builtin(default, replace=True)


def write_jpg(path, size=(W, H), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read(path):
    with Image.open(path) as im:
        return np.asarray(im)


def pq_of_ground_truth_against_itself(json_file, png_dir):
    """panopticapi's PQ with the written annotation as both prediction and ground truth."""
    from panopticapi.evaluation import pq_compute

    return pq_compute(str(json_file), str(json_file), str(png_dir), str(png_dir))["All"]["pq"]


def rgb_ids(path):
    rgb = read(path).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_help(script):
    out = subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "DETECTRON2_DATASETS" in out.stdout and "input" in out.stdout


def test_scripts_listed_in_readme():
    readme = (SCRIPTS / "README.md").read_text()
    for script in ALL_SCRIPTS:
        assert f"{script}.py" in readme, script


# ----------------------------------------------------------------------------- ADE20k
# Semantic labels (0 = other, 1..150): row 0 "other", columns 0-3 wall (1), 4-7 bed (8).
ADE_SEM = np.zeros((H, W), dtype=np.uint8)
ADE_SEM[1:, :4] = 1
ADE_SEM[1:, 4:] = 8
# Instances (R: instance class 1..100, G: number): two beds (instance class 1 = semantic 8);
# bed pixel (5, 7) has no instance; a person (instance class 4 = semantic 13) on the wall.
ADE_INS = np.zeros((H, W, 3), dtype=np.uint8)
ADE_INS[1:, 4:6] = (1, 1, 0)
ADE_INS[1:, 6:] = (1, 2, 0)
ADE_INS[5, 7] = 0
ADE_INS[3, 1] = (4, 3, 0)


def write_ade(root):
    ade = root / "ADEChallengeData2016"
    for folder, stem in (("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                         ("validation", "ADE_val_00000001")):
        write_jpg(ade / "images" / folder / f"{stem}.jpg")
        write_png(ade / "annotations" / folder / f"{stem}.png", ADE_SEM)
        write_png(ade / "annotations_instance" / folder / f"{stem}.png", ADE_INS)
    return ade


def test_ade20k_sem_seg_cli_and_load(tmp_path, builtin_at):
    ade = write_ade(tmp_path)
    # A real subprocess with two workers: the command a user types.
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    out = subprocess.run([sys.executable, str(SCRIPTS / "prepare_ade20k_sem_seg.py"),
                          "--workers", "2"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[1:, :4] = 0
    expected[1:, 4:] = 7
    for stem in ("training/ADE_train_00000001", "training/ADE_train_00000002",
                 "validation/ADE_val_00000001"):
        np.testing.assert_array_equal(read(ade / "annotations_detectron2" / f"{stem}.png"),
                                      expected)
    builtin_at(tmp_path)
    records = DatasetCatalog.get("dataseg_ade20k_sem_seg_val")
    assert len(records) == 1 and records[0]["file_name"].endswith("ADE_val_00000001.jpg")
    np.testing.assert_array_equal(read(records[0]["sem_seg_file_name"]), expected)
    assert len(DatasetCatalog.get("dataseg_ade20k_sem_seg_train")) == 2


def test_ade20k_panoptic_values_and_load(tmp_path, builtin_at):
    ade = write_ade(tmp_path)
    run(tmp_path, "prepare_ade20k_pan_seg", "--splits", "val", "--workers", "1")
    info = json.loads((ade / "ade20k_panoptic_val.json").read_text())
    assert len(info["categories"]) == 150 and sum(c["isthing"] for c in info["categories"]) == 100
    assert info["images"] == [dict(id="ADE_val_00000001", file_name="ADE_val_00000001.jpg",
                                   width=W, height=H)]
    (ann,) = info["annotations"]
    segs = {s["id"]: s for s in ann["segments_info"]}
    # wall (0): 20 pixels minus the person's; beds (7) 10 and 9 (one uncovered pixel);
    # person (12) 1 pixel.
    assert segs == {
        1000: dict(id=1000, category_id=0, iscrowd=0, area=19, bbox=[0, 1, 4, 5]),
        8001: dict(id=8001, category_id=7, iscrowd=0, area=10, bbox=[4, 1, 2, 5]),
        8002: dict(id=8002, category_id=7, iscrowd=0, area=9, bbox=[6, 1, 2, 5]),
        13003: dict(id=13003, category_id=12, iscrowd=0, area=1, bbox=[1, 3, 1, 1]),
    }
    ids = rgb_ids(ade / "ade20k_panoptic_val" / "ADE_val_00000001.png")
    assert ids[0].tolist() == [0] * W and ids[5, 7] == 0 and ids[3, 1] == 13003
    assert ids[2, 5] == 8001 and ids[2, 6] == 8002 and ids[4, 0] == 1000
    # The files are what the panoptic evaluator reads: ground truth fed back scores 100.
    assert pq_of_ground_truth_against_itself(ade / "ade20k_panoptic_val.json",
                                             ade / "ade20k_panoptic_val") == pytest.approx(1.0)

    builtin_at(tmp_path)
    meta = MetadataCatalog.get("dataseg_ade20k_panoptic_val")
    assert len(meta.dataseg_classes) == 150 and sum(meta.dataseg_isthing) == 100
    assert meta.dataseg_classes[0] == "wall" and meta.dataseg_isthing[7]
    (record,) = DatasetCatalog.get("dataseg_ade20k_panoptic_val")
    assert os.path.isfile(record["file_name"])
    assert sorted((s["category_id"], s["isthing"]) for s in record["segments_info"]) == [
        (0, False), (7, True), (7, True), (12, True)]


def test_ade20k_instances_values_and_load(tmp_path, builtin_at):
    from pycocotools import mask as mask_util

    ade = write_ade(tmp_path)
    run(tmp_path, "prepare_ade20k_ins_seg", "--splits", "val", "--workers", "1")
    info = json.loads((ade / "ade20k_instance_val.json").read_text())
    assert len(info["categories"]) == 100 and info["categories"][0] == dict(id=7, name="bed")
    anns = info["annotations"]
    assert [(a["id"], a["image_id"], a["category_id"], a["area"], a["bbox"]) for a in anns] == [
        (1, 1, 7, 10, [4, 1, 2, 5]), (2, 1, 7, 9, [6, 1, 2, 5]), (3, 1, 12, 1, [1, 3, 1, 1])]
    np.testing.assert_array_equal(mask_util.decode(anns[1]["segmentation"]),
                                  ADE_INS[..., 1] == 2)

    builtin_at(tmp_path)
    meta = MetadataCatalog.get("dataseg_ade20k_instance_val")
    assert meta.dataseg_task == "instance" and len(meta.dataseg_classes) == 100
    (record,) = DatasetCatalog.get("dataseg_ade20k_instance_val")
    # Contiguous ids in thing order: bed 0, window 1, cabinet 2, person 3.
    assert [a["category_id"] for a in record["annotations"]] == [0, 0, 3]
    assert all("segmentation" in a for a in record["annotations"])


def test_ade20k_instance_class_mix_is_an_error(tmp_path):
    ade = write_ade(tmp_path)
    bad = ADE_INS.copy()
    bad[1, 4] = (2, 1, 0)  # instance 1 with two instance classes
    write_png(ade / "annotations_instance" / "validation" / "ADE_val_00000001.png", bad)
    with pytest.raises(SystemExit, match=r"instance 1 of .*ADE_val_00000001.png.*\[1, 2\]"):
        run(tmp_path, "prepare_ade20k_pan_seg", "--splits", "val", "--workers", "1")


def test_error_in_a_worker_fails_the_run_instead_of_hanging(tmp_path):
    # A PreparationError (a SystemExit) raised in a pool worker used to end the worker and
    # leave Pool.imap waiting forever; the run must stop with the message and status 1.
    ade = write_ade(tmp_path)
    bad = ade / "annotations" / "training" / "ADE_train_00000002.png"
    write_png(bad, ADE_SEM[:3, :4])
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    out = subprocess.run([sys.executable, str(SCRIPTS / "prepare_ade20k_pan_seg.py"),
                          "--splits", "train", "--workers", "2"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1, (out.stdout, out.stderr)
    message = f"error: label map {str(bad)!r} is 4x3, its image 8x6 (WxH)."
    assert out.stderr.strip().splitlines()[-1] == message, out.stderr
    assert out.stderr.count("error:") == 1 and "Traceback" not in out.stderr, out.stderr


def test_run_parallel_reraises_a_worker_preparation_error():
    from prep_common import PreparationError, run_parallel

    with pytest.raises(PreparationError) as raised:
        run_parallel(_fails_on_three, [1, 2, 3, 4], workers=2, what="test")
    assert raised.value.code == "error: item 3 is bad." and raised.value.message == "item 3 is bad."
    assert run_parallel(_fails_on_three, [1, 2], workers=2, what="test") == [2, 4]


def _fails_on_three(x):
    from prep_common import PreparationError

    if x == 3:
        raise PreparationError(f"item {x} is bad.")
    return 2 * x


def test_missing_download_names_path_and_fix(tmp_path):
    (tmp_path / "ADEChallengeData2016" / "images" / "validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016" / "annotations" / "validation").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"annotations_instance.*annotations_instance\.tar"):
        run(tmp_path, "prepare_ade20k_pan_seg", "--splits", "val")


def test_missing_optional_package_says_how_to_install(tmp_path, monkeypatch):
    write_ade(tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)  # import fails
    with pytest.raises(SystemExit, match=r"pip install pycocotools"):
        run(tmp_path, "prepare_ade20k_ins_seg", "--splits", "val")


# ----------------------------------------------------------------------------- COCO
def test_coco_panoptic_to_semantic_and_load(tmp_path, builtin_at):
    coco = tmp_path / "coco"
    write_jpg(coco / "val2017" / "000000000139.jpg")
    ids = np.zeros((H, W), dtype=np.int64)
    ids[:2] = 30  # road (149), stuff
    ids[2:, :3] = 5  # person (1)
    ids[2:, 5:] = 7  # car (3), crowd
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    write_png(coco / "panoptic_val2017" / "000000000139.png", rgb)
    categories = [dict(id=1, name="person", isthing=1), dict(id=3, name="car", isthing=1),
                  dict(id=149, name="road", isthing=0)]
    segments = [dict(id=30, category_id=149, iscrowd=0, area=16, bbox=[0, 0, 8, 2]),
                dict(id=5, category_id=1, iscrowd=0, area=12, bbox=[0, 2, 3, 4]),
                dict(id=7, category_id=3, iscrowd=1, area=12, bbox=[5, 2, 3, 4])]
    panoptic = dict(images=[dict(id=139, file_name="000000000139.jpg", width=W, height=H)],
                    annotations=[dict(image_id=139, file_name="000000000139.png",
                                      segments_info=segments)],
                    categories=categories)
    (coco / "annotations").mkdir()
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    run(tmp_path, "prepare_coco_sem_seg", "--splits", "val", "--workers", "1")
    expected = np.full((H, W), 255, dtype=np.uint8)
    expected[:2] = 100  # road's place among COCO panoptic's 133 classes
    expected[2:, :3] = 0
    expected[2:, 5:] = 2
    np.testing.assert_array_equal(read(coco / "panoptic_semseg_val2017" / "000000000139.png"),
                                  expected)

    builtin_at(tmp_path)
    meta = MetadataCatalog.get("dataseg_coco_2017_val_sem_seg")
    assert meta.dataseg_task == "semantic" and len(meta.stuff_classes) == 133
    assert meta.stuff_classes[100] == "road"
    (record,) = DatasetCatalog.get("dataseg_coco_2017_val_sem_seg")
    np.testing.assert_array_equal(read(record["sem_seg_file_name"]), expected)
    # The miniature is real COCO panoptic: the panoptic name loads it too, in the same ids.
    (pan,) = DatasetCatalog.get("dataseg_coco_2017_val_panoptic")
    assert sorted(s["category_id"] for s in pan["segments_info"]) == [0, 2, 100]


# ----------------------------------------------------------------------------- Pascal Context
def test_pascal_context_59_and_459_and_load(tmp_path, builtin_at):
    from scipy.io import savemat

    voc = tmp_path / "VOCdevkit" / "VOC2010"
    write_jpg(voc / "JPEGImages" / "2008_000002.jpg")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n")
    labels = np.zeros((H, W), dtype=np.uint16)  # 0 = unlabeled
    labels[0] = 2  # aeroplane: 59-class 0, 459-class 1
    labels[1] = 1  # accordion: not among the 59
    labels[2] = 458  # wood: last of the 59
    labels[3] = 459  # wool: last of the 459, not among the 59
    (voc / "trainval").mkdir()
    savemat(str(voc / "trainval" / "2008_000002.mat"), {"LabelMap": labels})
    run(tmp_path, "prepare_pascal_context", "--workers", "1")

    ctx = tmp_path / "pascal_ctx_d2"
    exp59 = np.full((H, W), 255, dtype=np.uint8)
    exp59[0], exp59[2] = 0, 58
    exp459 = np.full((H, W), 65535, dtype=np.uint16)
    exp459[0], exp459[1], exp459[2], exp459[3] = 1, 0, 457, 458
    got459 = read(ctx / "annotations_ctx459" / "validation" / "2008_000002.tif")
    assert got459.dtype == np.uint16
    np.testing.assert_array_equal(got459, exp459)
    np.testing.assert_array_equal(
        read(ctx / "annotations_ctx59" / "validation" / "2008_000002.png"), exp59)
    assert (ctx / "images" / "validation" / "2008_000002.jpg").read_bytes() == \
        (voc / "JPEGImages" / "2008_000002.jpg").read_bytes()

    builtin_at(tmp_path)
    for num, expected in ((59, exp59), (459, exp459)):
        (record,) = DatasetCatalog.get(f"dataseg_pascal_context_{num}_val")
        np.testing.assert_array_equal(read(record["sem_seg_file_name"]), expected)
    meta = MetadataCatalog.get("dataseg_pascal_context_59_val")
    assert meta.stuff_classes[0] == "aeroplane" and meta.stuff_classes[58] == "wood"


@pytest.mark.parametrize("entry", ["../../../../escaped", "ABSOLUTE", "a/../../../../../escaped"])
def test_pascal_context_split_entry_outside_the_root_is_refused(tmp_path, entry):
    from scipy.io import savemat

    entry = str(tmp_path / "escaped") if entry == "ABSOLUTE" else entry
    root = tmp_path / "root"
    voc = root / "VOCdevkit" / "VOC2010"
    write_jpg(voc / "JPEGImages" / "2008_000002.jpg")
    (voc / "trainval").mkdir()
    savemat(str(voc / "trainval" / "2008_000002.mat"),
            {"LabelMap": np.zeros((H, W), dtype=np.uint16)})
    # The files the bad entry points to exist: the script used to convert them and write
    # tmp_path/escaped.{tif,png}, outside $DETECTRON2_DATASETS.
    write_jpg(tmp_path / "escaped.jpg")
    savemat(str(tmp_path / "escaped.mat"), {"LabelMap": np.zeros((H, W), dtype=np.uint16)})
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    listing = voc / "ImageSets" / "Main" / "val.txt"
    listing.write_text(f"2008_000002\n\n{entry}\n")
    with pytest.raises(SystemExit) as error:
        run(root, "prepare_pascal_context", "--workers", "1")
    message = str(error.value)
    assert f"{str(listing)!r}, line 3: the entry {entry!r}" in message
    assert "outside $DETECTRON2_DATASETS" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escaped.jpg", "escaped.mat", "root"]
    assert not (root / "pascal_ctx_d2").exists()  # refused before anything is written


def test_coco_semantic_file_name_outside_the_root_is_refused(tmp_path):
    coco = tmp_path / "coco"
    (coco / "panoptic_val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    panoptic = dict(images=[], categories=[dict(id=1, name="person", isthing=1)],
                    annotations=[dict(image_id=7, file_name="../../x.png", segments_info=[])])
    (coco / "annotations" / "panoptic_val2017.json").write_text(json.dumps(panoptic))
    with pytest.raises(SystemExit, match=r"panoptic_val2017\.json'?, annotation of image_id 7: "
                                         r"the entry '\.\./\.\./x\.png'"):
        run(tmp_path, "prepare_coco_sem_seg", "--splits", "val", "--workers", "1")
    assert not (coco / "panoptic_semseg_val2017").exists()


# ----------------------------------------------------------------------------- Cityscapes
def test_cityscapes_panoptic_and_load(tmp_path, builtin_at):
    cs = tmp_path / "cityscapes"
    base = "frankfurt_000000_000294"
    write_png(cs / "leftImg8bit" / "val" / "frankfurt" / f"{base}_leftImg8bit.png",
              np.zeros((H, W, 3), dtype=np.uint8))
    values = np.zeros((H, W), dtype=np.uint16)  # 0 unlabeled
    values[:2] = 7  # road
    values[2:, :2] = 26000  # car instance 0
    values[2:, 2:4] = 26001  # car instance 1
    values[2:, 4:6] = 24  # person crowd region (thing class below 1000)
    values[2:, 6:] = 1  # ego vehicle: not evaluated
    gt = cs / "gtFine" / "val" / "frankfurt"
    write_png(gt / f"{base}_gtFine_instanceIds.png", values)
    label_ids = np.where(values >= 1000, values // 1000, values).astype(np.uint8)
    write_png(gt / f"{base}_gtFine_labelIds.png", label_ids)
    run(tmp_path, "prepare_cityscapes_panoptic", "--splits", "val", "--workers", "1")

    info = json.loads((cs / "gtFine" / "cityscapes_panoptic_val.json").read_text())
    assert info["images"] == [dict(id=base, file_name=f"{base}_leftImg8bit.png", width=W,
                                   height=H)]
    assert len(info["categories"]) == 19
    (ann,) = info["annotations"]
    assert ann["file_name"] == f"{base}_gtFine_panoptic.png"
    assert {s["id"]: (s["category_id"], s["iscrowd"], s["area"], s["bbox"])
            for s in ann["segments_info"]} == {
        7: (7, 0, 16, [0, 0, 8, 2]), 24: (24, 1, 8, [4, 2, 2, 4]),
        26000: (26, 0, 8, [0, 2, 2, 4]), 26001: (26, 0, 8, [2, 2, 2, 4])}
    ids = rgb_ids(cs / "gtFine" / "cityscapes_panoptic_val" / f"{base}_gtFine_panoptic.png")
    np.testing.assert_array_equal(ids, np.where(values == 1, 0, values))
    train_ids = np.full((H, W), 255, dtype=np.uint8)
    train_ids[:2], train_ids[2:, :4], train_ids[2:, 4:6] = 0, 13, 11
    np.testing.assert_array_equal(read(gt / f"{base}_gtFine_labelTrainIds.png"), train_ids)
    assert pq_of_ground_truth_against_itself(
        cs / "gtFine" / "cityscapes_panoptic_val.json",
        cs / "gtFine" / "cityscapes_panoptic_val") == pytest.approx(1.0)

    builtin_at(tmp_path)
    (record,) = DatasetCatalog.get("dataseg_cityscapes_fine_panoptic_val")
    assert record["image_id"] == base
    assert sorted((s["category_id"], s["iscrowd"]) for s in record["segments_info"]) == [
        (0, 0), (11, 1), (13, 0), (13, 0)]  # train ids


# ----------------------------------------------------------------------------- Objects365
def o365_categories(rename=None):
    cats = [dict(id=i + 1, name=n) for i, n in enumerate(load_vocabulary("objects365_v2"))]
    cats[354]["name"] = "Table Teniis paddle"  # the release's spelling
    for cat_id, name in (rename or {}).items():
        cats[cat_id - 1]["name"] = name
    return cats


def write_o365_val(root, categories=None):
    o365 = root / "objects365"
    val = o365 / "val"
    write_jpg(val / "images" / "v1" / "patch0" / "objects365_v1_00000001.jpg")
    write_jpg(val / "images" / "v2" / "patch16" / "objects365_v2_00908726.jpg", seed=1)
    images = [
        dict(id=1, file_name="images/v1/patch0/objects365_v1_00000001.jpg", width=W, height=H),
        # Listed under v1, on disk under v2.
        dict(id=2, file_name="images/v1/patch16/objects365_v2_00908726.jpg", width=W, height=H),
        # In no archive.
        dict(id=3, file_name="images/v2/patch20/objects365_v2_01000000.jpg", width=W, height=H),
    ]
    boxes = [dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 3, 2], area=6, iscrowd=0),
             dict(id=2, image_id=2, category_id=365, bbox=[0, 0, 4, 4], area=16, iscrowd=0),
             dict(id=3, image_id=3, category_id=2, bbox=[0, 0, 2, 2], area=4, iscrowd=0)]
    data = dict(images=images, annotations=boxes, categories=categories or o365_categories())
    (val / "zhiyuan_objv2_val.json").write_text(json.dumps(data))
    return o365


def test_objects365_paths_fixed_and_load(tmp_path, builtin_at, capsys):
    o365 = write_o365_val(tmp_path)
    run(tmp_path, "prepare_objects365_v2")  # finds the val json only
    assert "1 of 3 images" in capsys.readouterr().out
    data = json.loads((o365 / "annotations" / "zhiyuan_objv2_val.json").read_text())
    assert [(i["id"], i["file_name"]) for i in data["images"]] == [
        (1, "images/v1/patch0/objects365_v1_00000001.jpg"),
        (2, "images/v2/patch16/objects365_v2_00908726.jpg")]
    assert [a["id"] for a in data["annotations"]] == [1, 2]
    assert not (o365 / "annotations" / "zhiyuan_objv2_train.json").exists()

    builtin_at(tmp_path)
    records = DatasetCatalog.get("dataseg_objects365_v2_val")
    assert [os.path.isfile(r["file_name"]) for r in records] == [True, True]
    assert [[a["category_id"] for a in r["annotations"]] for r in records] == [[0], [364]]
    assert records[1]["annotations"][0]["bbox"] == [0, 0, 4, 4]


def test_objects365_foreign_category_list_is_an_error(tmp_path):
    write_o365_val(tmp_path, o365_categories(rename={2: "Banana"}))
    with pytest.raises(SystemExit, match=r"category 2 is 'Banana'.*'Sneakers'"):
        run(tmp_path, "prepare_objects365_v2", "--splits", "val")
    with pytest.raises(SystemExit, match=r"no json for split 'train'"):
        run(tmp_path, "prepare_objects365_v2", "--splits", "train")


def write_instance_seg_val(o365, file_name, segmentation=True):
    from pycocotools import mask as mask_util

    mask = np.zeros((H, W), dtype=np.uint8)
    mask[1:4, 2:6] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    anns = [dict(id=1, image_id=1, category_id=1, bbox=[2, 1, 4, 3], area=12, iscrowd=0,
                 segmentation=rle),
            dict(id=2, image_id=1, category_id=9, bbox=[0, 0, 2, 2], area=2, iscrowd=0,
                 segmentation=[[0, 0, 2, 0, 0, 2]])]
    if not segmentation:
        del anns[1]["segmentation"]
    data = dict(images=[dict(id=1, file_name=file_name, width=W, height=H)], annotations=anns,
                categories=o365_categories())
    path = o365 / "annotations" / "o365_instance_seg_val.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_instance_seg_val_checker_and_load(tmp_path, builtin_at, capsys):
    o365 = write_o365_val(tmp_path)
    write_instance_seg_val(o365, "images/v1/patch0/objects365_v1_00000001.jpg")
    run(tmp_path, "check_o365_instance_seg_val")
    out = capsys.readouterr().out
    assert "OK:" in out and "1 images, 2 masks, 365 categories" in out
    assert "the paper's set has 1000" in out

    builtin_at(tmp_path)
    meta = MetadataCatalog.get("dataseg_objects365_instance_seg_val")
    assert set(meta.coco_eval_tasks) == {"bbox", "segm"}
    (record,) = DatasetCatalog.get("dataseg_objects365_instance_seg_val")
    assert [a["category_id"] for a in record["annotations"]] == [0, 8]
    assert all("segmentation" in a for a in record["annotations"])


def test_instance_seg_val_checker_errors_and_fix_paths(tmp_path):
    o365 = write_o365_val(tmp_path)
    write_instance_seg_val(o365, "objects365_v1_00000001.jpg", segmentation=False)
    with pytest.raises(SystemExit, match=r"annotation 2 has no mask"):
        run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")
    path = write_instance_seg_val(o365, "objects365_v1_00000001.jpg")
    with pytest.raises(SystemExit, match=r"is at 'images/v1/patch0/objects365_v1_00000001.jpg'"
                                         r".*--fix-paths"):
        run(tmp_path, "check_o365_instance_seg_val")
    run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")
    assert json.loads(path.read_text())["images"][0]["file_name"] == \
        "images/v1/patch0/objects365_v1_00000001.jpg"
    assert json.loads(path.with_name("o365_instance_seg_val.orig.json").read_text())[
        "images"][0]["file_name"] == "objects365_v1_00000001.jpg"
    run(tmp_path, "check_o365_instance_seg_val")  # passes as is now


def test_instance_seg_val_fix_paths_keeps_the_first_backup(tmp_path):
    o365 = write_o365_val(tmp_path)
    path = write_instance_seg_val(o365, "objects365_v1_00000001.jpg")
    original = path.read_text()
    backup = path.with_name("o365_instance_seg_val.orig.json")
    run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")
    fixed = path.read_text()
    assert backup.read_text() == original and fixed != original
    run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")  # nothing left to fix
    assert backup.read_text() == original and path.read_text() == fixed
    # A backup already there is never overwritten, even when the file needs fixing again.
    path.write_text(original.replace('"width"', ' "width"'))
    run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")
    assert backup.read_text() == original
    assert json.loads(path.read_text())["images"][0]["file_name"] == \
        "images/v1/patch0/objects365_v1_00000001.jpg"


def test_instance_seg_val_fix_paths_leaves_a_correct_file_untouched(tmp_path, capsys):
    o365 = write_o365_val(tmp_path)
    path = write_instance_seg_val(o365, "images/v1/patch0/objects365_v1_00000001.jpg")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    run(tmp_path, "check_o365_instance_seg_val", "--fix-paths")
    assert "left as is" in capsys.readouterr().out
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in path.parent.iterdir()) == ["o365_instance_seg_val.json"]
