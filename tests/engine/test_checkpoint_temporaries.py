"""A job killed while saving a checkpoint leaves a temporary file; the next run removes it."""

import os
import signal
import subprocess
import sys

import torch

from dataseg.engine import DaTaSegCheckpointer, DaTaSegTrainer
from dataseg.engine import trainer as trainer_module
from helpers import REPO, trainer_cfg

# Writes half a checkpoint through atomic_write, says so, and waits to be killed. The module
# is loaded from its file: importing the dataseg package would cost seconds.
_KILLED_SAVE = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location(
    "atomic_file", {str(REPO / "dataseg" / "utils" / "atomic_file.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)

def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)

module.atomic_write(sys.argv[1], write)
"""


def _kill_during_save(path):
    """The temporary file a SIGKILL during ``atomic_write(path, ...)`` leaves behind."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    folder = os.path.dirname(path)
    left = [f for f in os.listdir(folder) if f.startswith(f".tmp-{os.path.basename(path)}.")]
    assert len(left) == 1 and not os.path.exists(path)
    return os.path.join(folder, left[0])


def _others(folder):
    """Files the clean-up must keep: a checkpoint, and .tmp- names that are not its own."""
    keep = ["model_0000001.pth", "last_checkpoint", ".tmp-metrics.json.abcd1234",
            ".tmp-model_0000002.pth", "notes.tmp-model_0000003.pth.abcd1234"]
    for name in keep:
        (folder / name).write_bytes(b"keep")
    os.mkdir(folder / ".tmp-model_0000004.pth.abcd1234")  # a folder, not a temporary file
    return sorted(keep + [".tmp-model_0000004.pth.abcd1234"])


def test_checkpointer_removes_only_its_stale_temporary_files(tmp_path):
    stale = [_kill_during_save(tmp_path / "model_0000299.pth"),
             _kill_during_save(tmp_path / "last_checkpoint")]
    keep = _others(tmp_path)
    removed = DaTaSegCheckpointer(torch.nn.Linear(2, 2), str(tmp_path)) \
        .remove_stale_temporary_files()
    assert sorted(removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == keep


def test_training_start_removes_stale_temporary_files_on_the_main_process(
        tmp_path, synthetic_datasets, monkeypatch):
    cfg = trainer_cfg(tmp_path, [synthetic_datasets["semantic_train"]])
    stale = _kill_during_save(tmp_path / "model_0000299.pth")
    # Another rank leaves the folder to the main process.
    monkeypatch.setattr(trainer_module.comm, "is_main_process", lambda: False)
    DaTaSegTrainer(cfg)
    assert os.path.exists(stale)
    monkeypatch.undo()
    DaTaSegTrainer(cfg)
    assert not os.path.exists(stale)
