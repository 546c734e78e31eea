"""projects/demo/demo.py: any vocabulary in, detectron2 drawings out, clear errors."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from PIL import Image

from dataseg.engine import get_dataseg_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "tiny" / "DaTaSeg-tiny.yaml")
TINY = ["MODEL.DATASEG.TEXT.ENCODER", "Random", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]

sys.path.insert(0, str(REPO / "projects" / "demo"))
import demo  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised tiny model saved as a checkpoint (the demo's mechanics only)."""
    out = tmp_path_factory.mktemp("demo_weights")
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    DetectionCheckpointer(model, save_dir=str(out)).save("model")
    return str(out / "model.pth")


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
