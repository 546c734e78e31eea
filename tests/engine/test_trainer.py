"""The trainer end to end: co-training on three tasks, evaluation of every test dataset with
its own evaluator, one results table, metrics and prediction drawings on disk."""

import json
import logging
import os

from helpers import trainer_cfg

from dataseg.engine import DaTaSegTrainer


def test_cotrain_evaluate_and_visualize(tmp_path, synthetic_datasets, caplog):
    d = synthetic_datasets
    train = [d["panoptic_train"], d["semantic_train"], d["box_train"]]
    test = [d["panoptic_val"], d["semantic_val"], d["box_val"]]
    caplog.set_level(logging.INFO, logger="dataseg")
    out = tmp_path / "run"
    cfg = trainer_cfg(out, train, test, **{"SOLVER.MAX_ITER": 3,
                                        "TEST.DATASEG.NUM_VISUALIZATIONS": 1})
    trainer = DaTaSegTrainer(cfg)
    # Every vocabulary is embedded up front and the text model is released before step 1.
    classifier = trainer.model.classifier
    assert all(classifier.has_vocabulary(name) for name in train + test)
    assert not classifier.embedding_provider.encoder_loaded
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert not classifier.embedding_provider.encoder_loaded  # evaluation did not reload it

    assert list(results) == test  # one entry per test dataset, each with its own metrics
    assert "PQ" in results[d["panoptic_val"]]["panoptic_seg"]
    assert "mIoU" in results[d["semantic_val"]]["sem_seg"]
    assert {"bbox", "segm"} <= set(results[d["box_val"]])
    assert "DaTaSeg results" in caplog.text and "mask AP" in caplog.text

    with open(out / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert f"{d['semantic_val']}/sem_seg/mIoU" in last
    assert os.path.exists(out / "model_final.pth")
    for name, output in ((d["panoptic_val"], "panoptic_seg"), (d["semantic_val"], "sem_seg"),
                         (d["box_val"], "instances")):
        drawings = os.listdir(out / "visualizations" / name)
        assert len(drawings) == 1 and drawings[0].endswith(f"_{output}.png")
