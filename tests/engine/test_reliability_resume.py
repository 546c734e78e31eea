"""Kill -9 a real ``train_net.py`` run part-way, ``--resume`` it, and end with the weights of
an uninterrupted run, bit for bit.

Why bitwise equality holds here: the data stream is a function of (seed, iteration); torch's
RNG is re-seeded from (seed, iteration, rank) before every step; model, optimizer, LR
scheduler and the data seed are in the checkpoint; and CPU kernels are deterministic for a
fixed thread count (pinned below). On GPUs, atomics-based kernels make runs differ in the last
bits even without a kill; there the same test would need a tolerance.
"""

import os
import signal
import subprocess
import sys
import time

import torch

from helpers import REPO

ROOT = str(REPO)
MAX_ITER, PERIOD = 8, 2


def _command(output_dir, resume=False):
    opts = {
        "SOLVER.MAX_ITER": MAX_ITER, "SOLVER.CHECKPOINT_PERIOD": PERIOD, "SEED": 5,
        "DATASETS.TEST": "()", "INPUT.DATASEG.IMAGE_SIZES": "[64]",
        "MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS": 256, "MODEL.DATASEG.TEXT.ENCODER": "Random",
        "DATALOADER.NUM_WORKERS": 0, "OUTPUT_DIR": output_dir,
    }
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           os.path.join(ROOT, "configs", "tiny", "DaTaSeg-tiny.yaml")]
    if resume:
        cmd.append("--resume")
    for key, value in opts.items():
        cmd += [key, str(value)]
    return cmd


def _env(data_root, cache):
    return dict(os.environ, DETECTRON2_DATASETS=data_root, DATASEG_CACHE=cache,
                OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")


def _last_checkpoint(output_dir):
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip()
    except OSError:
        return ""


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_kill_and_resume_gives_the_uninterrupted_weights(tmp_path):
    from dataseg.data.synthetic import generate_synthetic_datasets

    data_root = str(tmp_path / "data")
    generate_synthetic_datasets(os.path.join(data_root, "dataseg_synthetic"), num_train=6,
                                num_val=2, image_size=64, seed=0)
    env = _env(data_root, str(tmp_path / "cache"))

    # Killed run first: it runs alone, so its timing is predictable.
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(_command(killed), env=env, cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while _last_checkpoint(killed) != "model_0000003.pth":  # 4 of 8 iterations done
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "model_final.pth"))
    resumed = subprocess.run(_command(killed, resume=True), env=env, cwd=str(tmp_path),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = open(os.path.join(killed, "log.txt")).read()
    assert "Resuming with" not in log  # explicit SEED: nothing to override
    assert "Starting training from iteration 4" in log

    full = str(tmp_path / "full")
    done = subprocess.run(_command(full), env=env, cwd=str(tmp_path), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    # Same state where the resumed run picked up, and same end state.
    for name in ("model_0000003.pth", "model_final.pth"):
        a, b = _weights(os.path.join(full, name)), _weights(os.path.join(killed, name))
        assert a.keys() == b.keys()
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]}"
