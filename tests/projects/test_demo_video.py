"""projects/demo/demo.py --video-input: an annotated copy of a clip, through the CLI."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from dataseg.engine import DaTaSegCheckpointer, get_dataseg_cfg
from helpers import REPO, TINY_CONFIG, TINY_OPTS

DEMO = str(REPO / "projects" / "demo" / "demo.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_weights")
    torch.manual_seed(0)
    DaTaSegCheckpointer(build_model(get_dataseg_cfg(TINY_CONFIG, TINY_OPTS)),
                        save_dir=str(out)).save("model")
    return str(out / "model.pth")


def write_clip(path, frames=3, size=(64, 48)):
    """A short MJPG clip: a white square moving over a grey background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, size, True)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        frame[10:30, 5 + 10 * i:25 + 10 * i] = 255
        writer.write(frame)
    writer.release()


def read_frames(path):
    video = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    video.release()
    return frames


def test_video_input_writes_an_annotated_video_per_task(weights, tmp_path):
    clip = tmp_path / "clip.avi"
    write_clip(clip)
    out = tmp_path / "vis"
    proc = subprocess.run(
        [sys.executable, DEMO, "--config-file", TINY_CONFIG, "--video-input", str(clip),
         "--output", str(out), "--task", "semantic,instance", "--classes", "square;floor",
         "--score-threshold", "0"] + TINY_OPTS + ["MODEL.WEIGHTS", weights],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    source = read_frames(clip)
    for task in ("semantic", "instance"):
        frames = read_frames(out / f"clip_{task}.mp4")
        assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
        # annotated: the drawing covers the frame (semantic: every pixel has a class)
        diff = np.abs(frames[0].astype(int) - source[0].astype(int)).mean()
        assert diff > 10, (task, diff)
    assert [line.split(":")[0] for line in proc.stdout.splitlines()
            if line.startswith("frame")] == ["frame 0", "frame 1", "frame 2"]


def test_video_output_file_name_and_bad_inputs(weights, tmp_path):
    import demo

    clip = tmp_path / "clip.avi"
    write_clip(clip, frames=2)
    base = ["--config-file", TINY_CONFIG, "--classes", "a;b", "--task", "semantic"]
    opts = TINY_OPTS + ["MODEL.WEIGHTS", weights]
    assert demo.main(base + ["--video-input", str(clip), "--output",
                             str(tmp_path / "annotated.avi")] + opts) == 0
    assert len(read_frames(tmp_path / "annotated.avi")) == 2
    with pytest.raises(SystemExit, match="cannot be opened as a video"):
        demo.main(base + ["--video-input", str(tmp_path / "missing.mp4")] + opts)
    with pytest.raises(SystemExit, match="write a video as one of"):
        demo.main(base + ["--video-input", str(clip), "--output", str(tmp_path / "x.gif")]
                  + opts)
