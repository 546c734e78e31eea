"""Training keeps going through bad single images and stops loudly on non-finite losses;
checkpoints are atomic and portable across vocabularies but not across text widths."""

import os
import shutil

import pytest
import torch

from detectron2.modeling import build_model

from dataseg.data import register_semantic_dataset
from dataseg.engine import DaTaSegCheckpointer, DaTaSegTrainer
from dataseg.engine import checkpoint as checkpoint_module

from helpers import trainer_cfg


def _train(cfg):
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


# ---- corrupt images ---------------------------------------------------------------------
def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.fixture
def semantic_with_truncated_jpegs(tmp_path, synthetic_root):
    root = tmp_path / "semantic"
    shutil.copytree(os.path.join(synthetic_root, "semantic"), root)
    images = root / "images" / "training"
    files = sorted(os.listdir(images))
    # Keep the first file intact: the loader validates a sample of files at start-up and
    # would (rightly) refuse a dataset whose sample is broken.
    for name in files[1:4]:
        _truncate(images / name)

    def register(name):
        from detectron2.data import MetadataCatalog

        classes = MetadataCatalog.get("pytest_synth_semantic_train").stuff_classes
        labels = root / "annotations_detectron2" / "training"
        register_semantic_dataset(name, str(images), str(labels), classes, replace=True)
        return name

    return register, [str(images / n) for n in files[1:4]]


def test_truncated_jpeg_really_is_unreadable(semantic_with_truncated_jpegs):
    from detectron2.data.detection_utils import read_image

    _, bad = semantic_with_truncated_jpegs
    with pytest.raises(OSError, match="truncated"):
        read_image(bad[0], format="BGR")


def test_truncated_jpegs_are_skipped_and_counted(tmp_path, synthetic_datasets,
                                                 semantic_with_truncated_jpegs, caplog):
    register, bad = semantic_with_truncated_jpegs
    name = register("rel_truncated")
    cfg = trainer_cfg(tmp_path, [name], **{"SOLVER.MAX_ITER": 3,
                                        "DATALOADER.DATASEG.BATCH_SIZES": [6]})
    with caplog.at_level("WARNING", logger="dataseg.data.build"):
        trainer = _train(cfg)
    # 6 images per step over 6 images, 3 of them truncated: every step skips some.
    skipped = trainer.storage.history("data/skipped_images").latest()
    assert skipped == trainer.skipped_images >= 3
    assert any("Skipping training image" in r.message and os.path.basename(bad[0]) in r.message
               for r in caplog.records)


def test_too_many_skipped_images_stop_training(tmp_path, synthetic_datasets,
                                               semantic_with_truncated_jpegs):
    register, _ = semantic_with_truncated_jpegs
    name = register("rel_truncated_limit")
    cfg = trainer_cfg(tmp_path, [name], **{"SOLVER.MAX_ITER": 3,
                                        "DATALOADER.DATASEG.BATCH_SIZES": [6],
                                        "INPUT.DATASEG.MAX_SKIPPED_IMAGES": 2})
    with pytest.raises(RuntimeError, match=r"INPUT.DATASEG.MAX_SKIPPED_IMAGES"):
        _train(cfg)


# ---- non-finite losses ------------------------------------------------------------------
def test_non_finite_loss_names_dataset_iteration_and_term(tmp_path, synthetic_datasets):
    name = synthetic_datasets["semantic_train"]
    trainer = DaTaSegTrainer(trainer_cfg(tmp_path, [name]))
    trainer.resume_or_load(resume=False)

    def poison(module, args, output):
        return {k: v * float("nan") if k == "loss_dice" else v for k, v in output.items()}

    trainer.model.criterion.register_forward_hook(poison)
    with pytest.raises(FloatingPointError) as info:
        trainer.train()
    message = str(info.value)
    assert f"dataset '{name}'" in message
    assert "iteration 0" in message and "loss_dice=nan" in message
    assert "loss_ce" not in message  # only the offending terms


# ---- checkpoints ------------------------------------------------------------------------
def test_trainer_uses_the_atomic_checkpointer(tmp_path, synthetic_datasets):
    trainer = DaTaSegTrainer(trainer_cfg(tmp_path, [synthetic_datasets["semantic_train"]]))
    from detectron2.engine.hooks import PeriodicCheckpointer

    hook = next(h for h in trainer._hooks if isinstance(h, PeriodicCheckpointer))
    assert isinstance(trainer.checkpointer, DaTaSegCheckpointer)
    assert hook.checkpointer is trainer.checkpointer


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = DaTaSegCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    assert ckpt.get_checkpoint_file().endswith("model_0000001.pth")

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    assert not os.path.exists(tmp_path / "model_0000002.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    monkeypatch.undo()

    def dying_write(path, write):  # killed while rewriting last_checkpoint
        raise KeyboardInterrupt

    ckpt.save("model_0000003")
    monkeypatch.setattr(checkpoint_module, "_atomic_write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.tag_last_checkpoint("model_0000004.pth")
    assert open(tmp_path / "last_checkpoint").read() == "model_0000003.pth"
    # Resume finds a complete file.
    DaTaSegCheckpointer(torch.nn.Linear(3, 2), str(tmp_path)).resume_or_load("", resume=True)


@pytest.fixture
def trained_checkpoint(tmp_path, synthetic_datasets):
    cfg = trainer_cfg(tmp_path / "train", [synthetic_datasets["semantic_train"]])
    trainer = _train(cfg)
    trainer.checkpointer.save("model_test")
    return cfg, os.path.join(cfg.OUTPUT_DIR, "model_test.pth")


def test_checkpoint_loads_with_other_datasets_and_vocabularies(tmp_path, synthetic_datasets,
                                                               trained_checkpoint):
    from dataseg.data import build_dataseg_test_loader

    train_cfg, path = trained_checkpoint
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert not any("_vocab_" in k for k in saved["model"])  # embeddings are not saved
    assert saved["dataseg_text"] == {"encoder": "Random/dim64", "dim": 64}
    other = synthetic_datasets["heldout_panoptic_val"]  # other classes, other task
    cfg = trainer_cfg(tmp_path / "eval", [synthetic_datasets["box_train"]], test=[other])
    model = build_model(cfg)
    DaTaSegCheckpointer(model).load(path)
    model.eval()
    batch = next(iter(build_dataseg_test_loader(cfg, other)))
    with torch.no_grad():
        out = model(batch)
    assert "panoptic_seg" in out[0]
    sd = model.state_dict()
    assert torch.equal(sd["classifier.background_embedding"],
                       saved["model"]["classifier.background_embedding"])


def test_checkpoint_with_other_text_dimension_is_refused(tmp_path, synthetic_datasets,
                                                         trained_checkpoint):
    _, path = trained_checkpoint
    cfg = trainer_cfg(tmp_path / "eval", [synthetic_datasets["semantic_train"]],
                   **{"MODEL.DATASEG.TEXT.RANDOM_DIM": 32})
    model = build_model(cfg)
    with pytest.raises(ValueError, match=r"Checkpoint text dimension 64 \(text encoder "
                                         r"Random/dim64\) .* configured text encoder "
                                         r"Random/dim32 \(dimension 32\)"):
        DaTaSegCheckpointer(model).load(path)
    # Without the stored record (older checkpoints) the parameter shape still tells.
    saved = torch.load(path, map_location="cpu", weights_only=False)
    del saved["dataseg_text"]
    torch.save(saved, tmp_path / "old.pth")
    with pytest.raises(ValueError, match=r"text dimension 64 .* \(dimension 32\)"):
        DaTaSegCheckpointer(model).load(str(tmp_path / "old.pth"))


def test_random_seed_is_stored_and_reused_on_resume(tmp_path, synthetic_datasets):
    cfg = trainer_cfg(tmp_path, [synthetic_datasets["semantic_train"]],
                   **{"SEED": -1, "SOLVER.CHECKPOINT_PERIOD": 1})
    first = _train(cfg)
    seed = first.cfg.SEED
    assert seed >= 0 and first._trainer.data_loader.loader.dataset.schedule.seed == seed
    cfg2 = trainer_cfg(tmp_path, [synthetic_datasets["semantic_train"]],
                    **{"SEED": -1, "SOLVER.MAX_ITER": 3})
    resumed = DaTaSegTrainer(cfg2)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2 and resumed.cfg.SEED == seed
    stream = resumed._trainer.data_loader.loader.dataset
    assert stream.schedule.seed == seed and stream.start_iter == 2
