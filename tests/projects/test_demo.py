"""projects/demo/demo.py: any vocabulary in, detectron2 drawings out, clear errors."""

import os
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from dataseg.engine import get_dataseg_cfg

from helpers import REPO
from helpers import TINY_CONFIG as CONFIG
from helpers import TINY_OPTS as TINY

import demo  # projects/demo, on the path through pytest.ini


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised tiny model saved as a checkpoint (the demo's mechanics only)."""
    out = tmp_path_factory.mktemp("demo_weights")
    torch.manual_seed(0)  # the same random model in every run
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    return str(out / "model.pth")


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog that also sees the demo's log: setup_logger stops "dataseg" from propagating."""
    from detectron2.utils.logger import setup_logger

    monkeypatch.setattr(setup_logger(name="dataseg"), "propagate", True)
    return caplog


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return folder


@pytest.mark.parametrize("task", ["panoptic", "semantic", "instance"])
def test_demo_draws_any_vocabulary(task, weights, images, tmp_path):
    out = tmp_path / "vis"
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(out),
                    "--task", task, "--classes", "circle;block;meadow, lawn",
                    "--things", "circle;block", "--score-threshold", "0"]
                   + TINY + ["MODEL.WEIGHTS", weights])
    assert rc == 0
    drawings = sorted(os.listdir(out))
    assert drawings == [f"0_{task}.png", f"1_{task}.png"]
    assert Image.open(out / drawings[0]).size == (64, 48)  # original resolution


def test_demo_registered_vocabulary(weights, images, tmp_path, synthetic_datasets):
    rc = demo.main(["--config-file", CONFIG, "--input", str(images / "0.jpg"),
                    "--output", str(tmp_path), "--vocabulary",
                    synthetic_datasets["panoptic_val"]] + TINY + ["MODEL.WEIGHTS", weights])
    assert rc == 0


def test_demo_unreadable_image_is_reported(weights, images, tmp_path, caplog):
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path),
                    "--classes", "a,b"] + TINY + ["MODEL.WEIGHTS", weights])
    assert rc == 1
    assert (tmp_path / "0_panoptic.png").exists()  # the readable ones are still drawn
    assert "cannot read image" in caplog.text and "broken.jpg" in caplog.text


def test_demo_needs_weights(images, tmp_path):
    with pytest.raises(SystemExit, match="needs trained weights"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path),
                   "--classes", "a,b"] + TINY)
    with pytest.raises(SystemExit, match="does not exist"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path),
                   "--classes", "a,b"] + TINY + ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")])


def test_things_accept_synonyms_and_any_case():
    args = demo.get_parser().parse_args(
        ["--config-file", CONFIG, "--input", "x", "--output", "y",
         "--classes", "tv, monitor;person;Sky", "--things", "TV, Monitor"])
    assert demo.resolve_vocabulary(args) == (["tv, monitor", "person", "Sky"],
                                             [True, False, False])
    args.things = "monitor;PERSON"
    assert demo.resolve_vocabulary(args)[1] == [True, True, False]
    args.things = "car"
    with pytest.raises(SystemExit, match="'car'.*name no class"):
        demo.resolve_vocabulary(args)


def test_demo_refuses_a_checkpoint_of_another_text_width(images, tmp_path):
    from dataseg.engine import DaTaSegCheckpointer

    model = build_model(get_dataseg_cfg(CONFIG, TINY + ["MODEL.DATASEG.TEXT.RANDOM_DIM", "32"]))
    DaTaSegCheckpointer(model, save_dir=str(tmp_path)).save("other_width")
    with pytest.raises(ValueError, match="text dimension 32"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output",
                   str(tmp_path / "vis"), "--classes", "a,b"]
                  + TINY + ["MODEL.WEIGHTS", str(tmp_path / "other_width.pth")])


# ---- what users of detectron2 / Mask2Former demos expect -----------------------------------
def _predictor(weights, *opts, **kwargs):
    from dataseg.engine import DaTaSegPredictor

    return DaTaSegPredictor(get_dataseg_cfg(CONFIG, TINY + ["MODEL.WEIGHTS", weights]
                                            + list(opts)), **kwargs)


def _bgr(path):
    return np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1].copy()


def test_folders_globs_several_tasks_and_same_names(weights, tmp_path):
    rng = np.random.default_rng(1)
    for folder, name in (("a", "0.png"), ("b", "0.png"), ("c", "x.png"), ("c", "x.jpg")):
        (tmp_path / "in" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            tmp_path / "in" / folder / name)
    out = tmp_path / "vis"
    # a folder, a file, a quoted glob; trailing KEY VALUE right after --input
    rc = demo.main(["--config-file", CONFIG, "--output", str(out), "--task", "semantic",
                    "--task", "panoptic", "--classes", "circle;block;meadow",
                    "--input", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b" / "0.png"),
                    str(tmp_path / "in" / "c" / "x.*")] + TINY + ["MODEL.WEIGHTS", weights])
    assert rc == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == sorted(f"{stem}_{task}.png" for stem in ("a/0", "b/0", "c/x_jpg", "c/x_png")
                             for task in ("semantic", "panoptic"))
    # a/0 and b/0 are different photos: two drawings, none overwritten
    assert not np.array_equal(np.asarray(Image.open(out / "a/0_semantic.png")),
                              np.asarray(Image.open(out / "b/0_semantic.png")))


def test_without_output_a_summary_is_printed(weights, images):
    """CLI: no --output, so one line per image with the class shares of the semantic map."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(REPO / "projects" / "demo" / "demo.py"), "--config-file", CONFIG,
         "--input", str(images / "0.jpg"), "--task", "semantic", "--classes", "circle;meadow",
         "--opts"] + TINY + ["MODEL.WEIGHTS", weights],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith(str(images / "0.jpg"))]
    assert len(line) == 1
    labels = _predictor(weights, classes=["circle", "meadow"], task="semantic")(
        _bgr(images / "0.jpg"))["sem_seg"].argmax(0)
    shares = {n: 100.0 * float((labels == i).float().mean()) for i, n in
              enumerate(["circle", "meadow"])}
    for name, share in shares.items():
        if share > 0:
            assert f"{name} {share:.1f}%" in line[0]
    assert not list(images.glob("*_semantic.png"))


def test_nothing_passed_the_thresholds_is_logged(weights, images, tmp_path, caplog,
                                                 synthetic_datasets):
    argv = ["--config-file", CONFIG, "--input", str(images / "0.jpg"), "--output",
            str(tmp_path), "--vocabulary", synthetic_datasets["panoptic_val"],
            "--task", "panoptic,instance", "--score-threshold", "1.0"]
    # No class probability exceeds 1 (scores > threshold), so nothing can pass.
    assert demo.main(argv + TINY + ["MODEL.WEIGHTS", weights,
                                    "MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD", "1.0"]) == 0
    assert "no panoptic segment passed the thresholds" in caplog.text
    assert "OBJECT_MASK_THRESHOLD 1.0" in caplog.text
    assert "no instance scored above --score-threshold 1" in caplog.text
    drawing = np.asarray(Image.open(tmp_path / "0_panoptic.png"))
    assert np.abs(drawing.astype(int) - np.asarray(Image.open(images / "0.jpg"))).max() <= 1
    caplog.clear()
    # --opts lowers the threshold: now there are segments, and no warning
    assert demo.main(argv + ["--opts"] + TINY + [
        "MODEL.WEIGHTS", weights, "MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD", "0.0",
        "MODEL.DATASEG.TEST.OVERLAP_THRESHOLD", "0.0"]) == 0
    assert "no panoptic segment passed" not in caplog.text
    assert "no instance scored above" in caplog.text


def test_classes_file_and_union_with_a_registered_vocabulary(synthetic_datasets, tmp_path):
    from detectron2.data import MetadataCatalog

    pan = synthetic_datasets["panoptic_val"]
    names = tmp_path / "names.txt"
    names.write_text("# extra classes\nkite, paper kite\n\nDisk  # already in the dataset\n"
                     "puddle\n")
    args = demo.parse_args(["--config-file", CONFIG, "--input", "x", "--vocabulary", pan,
                            "--classes-file", str(names), "--things", "kite"])
    meta = MetadataCatalog.get(pan)
    classes, isthing = demo.resolve_vocabulary(args)
    assert classes == list(meta.dataseg_classes) + ["kite, paper kite", "puddle"]
    assert isthing == list(meta.dataseg_isthing) + [True, False]
    names.write_text("# nothing\n\n")
    with pytest.raises(SystemExit, match="holds no class names"):
        demo.resolve_vocabulary(args)


def test_save_predictions_pseudo_labels_a_folder(weights, images, tmp_path, synthetic_datasets):
    """Panoptic PNG + COCO panoptic json, semantic label PNGs and COCO RLE instances, read
    back and compared with the predictor's outputs."""
    import json

    import pycocotools.mask as mask_util
    from detectron2.data import MetadataCatalog
    from panopticapi.utils import rgb2id
    from pycocotools.coco import COCO

    pan = synthetic_datasets["panoptic_val"]
    meta = MetadataCatalog.get(pan)
    out = tmp_path / "out"
    opts = ["MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD", "0.0"]
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(out),
                    "--vocabulary", pan, "--classes", "kite", "--task", "panoptic",
                    "--task", "semantic", "--task", "instance", "--score-threshold", "0.0",
                    "--save-predictions"] + TINY + ["MODEL.WEIGHTS", weights] + opts)
    assert rc == 0
    root = out / "predictions"
    predictor = _predictor(weights, *opts, vocabulary=pan, classes=["kite"],
                           task=["panoptic", "semantic", "instance"])
    # category ids: the dataset's own ids, then the next free one for "kite"
    ids = [next(d for d, c in meta.stuff_dataset_id_to_contiguous_id.items() if c == i)
           for i in range(len(meta.dataseg_classes))] + [15]
    panoptic = json.loads((root / "panoptic.json").read_text())
    assert [c["id"] for c in panoptic["categories"]] == ids
    assert [c["name"] for c in panoptic["categories"]] == predictor.class_names
    assert [im["file_name"] for im in panoptic["images"]] == ["0.jpg", "1.jpg"]
    instances = COCO(str(root / "instances.json"))
    for image_info, ann in zip(panoptic["images"], panoptic["annotations"]):
        expected = predictor(_bgr(images / image_info["file_name"]))
        # panoptic: PNG ids and json segments are the predictor's
        png = rgb2id(np.asarray(Image.open(root / "panoptic" / ann["file_name"])))
        assert np.array_equal(png, expected["panoptic_seg"][0].numpy())
        segments = ann["segments_info"]
        assert len(segments) == len(expected["panoptic_seg"][1]) > 0
        for seg, ref in zip(segments, expected["panoptic_seg"][1]):
            assert seg["category_id"] == ids[ref["category_id"]]
            assert seg["area"] == int((png == seg["id"]).sum())
        # semantic: contiguous ids of the argmax
        label = np.asarray(Image.open(root / "semantic" / ann["file_name"]))
        assert np.array_equal(label, expected["sem_seg"].argmax(0).numpy())
        # instances: those above the threshold, RLE masks decode to the predicted masks
        kept = expected["instances"][expected["instances"].scores > 0.0]
        anns = instances.loadAnns(instances.getAnnIds(imgIds=[image_info["id"]]))
        assert len(anns) == len(kept) > 0
        for a, mask, cls in zip(anns, kept.pred_masks, kept.pred_classes):
            assert np.array_equal(mask_util.decode(a["segmentation"]).astype(bool), mask.numpy())
            assert a["category_id"] == ids[int(cls)]


def test_save_predictions_needs_output(images):
    with pytest.raises(SystemExit):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--classes", "a",
                   "--save-predictions"] + TINY)


def test_demo_refuses_a_checkpoint_of_another_architecture(images, tmp_path):
    model = build_model(get_dataseg_cfg(CONFIG, TINY + ["MODEL.DATASEG.DECODER.NUM_QUERIES", "30"]))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("other_queries")
    with pytest.raises(ValueError, match="NUM_QUERIES is 20 in the config, 30 in the file"):
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output",
                   str(tmp_path / "vis"), "--classes", "a,b"]
                  + TINY + ["MODEL.WEIGHTS", str(tmp_path / "other_queries.pth")])
    assert not (tmp_path / "vis").exists()


def test_output_into_the_input_folder_never_overwrites_an_input(weights, images, capsys):
    """--output = the input folder: a user's file named like a drawing is refused before
    anything is written; without such a name, the drawings are written next to the inputs
    and are not read back as inputs."""
    users = images / "0_panoptic.png"  # the user's own file, with a drawing's name
    Image.fromarray(np.full((48, 64, 3), 7, np.uint8)).save(users)
    before = users.read_bytes()
    argv = ["--config-file", CONFIG, "--input", str(images), "--output", str(images),
            "--classes", "a,b"] + TINY + ["MODEL.WEIGHTS", weights]
    with pytest.raises(SystemExit, match=r"--output would overwrite 1 input file\(s\): "
                                         r".*0_panoptic.png \(input .*0_panoptic.png\)"):
        demo.main(argv)
    assert users.read_bytes() == before
    assert sorted(os.listdir(images)) == ["0.jpg", "0_panoptic.png", "1.jpg"]

    users.unlink()
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert sorted(os.listdir(images)) == ["0.jpg", "0_panoptic.png", "1.jpg", "1_panoptic.png"]
    summaries = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()
                 if ": panoptic:" in line]
    assert summaries == [str(images / "0.jpg"), str(images / "1.jpg")]


def test_save_predictions_and_videos_never_overwrite_an_input(tmp_path, images):
    nested = images / "predictions" / "semantic"
    nested.mkdir(parents=True)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(nested / "0.png")
    with pytest.raises(SystemExit, match=r"would overwrite 1 input.*predictions/semantic/0.png"):
        demo.main(["--config-file", CONFIG, "--input", str(nested), "--output", str(images),
                   "--task", "semantic", "--save-predictions", "--classes", "a"] + TINY)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"a user's video")
    with pytest.raises(SystemExit, match=r"would overwrite 1 input.*clip.mp4"):
        demo.main(["--config-file", CONFIG, "--video-input", str(clip), "--output", str(clip),
                   "--classes", "a"] + TINY)
    assert clip.read_bytes() == b"a user's video"
