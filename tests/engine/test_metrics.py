"""Per-dataset training curves: a short co-training run logs every loss a second time under
the dataset of its iteration, in the EventStorage and in metrics.json."""

import json

import numpy as np
from helpers import trainer_cfg

from dataseg.data import build_train_schedule
from dataseg.engine import DaTaSegTrainer


def test_losses_are_logged_per_dataset(tmp_path, synthetic_datasets):
    d = synthetic_datasets
    train = [d["panoptic_train"], d["semantic_train"], d["box_train"]]
    out = tmp_path / "run"
    iters = 4
    # Seed 4 draws box, semantic, box, panoptic: every task, one dataset twice.
    cfg = trainer_cfg(out, train, **{"SOLVER.MAX_ITER": iters, "SEED": 4})
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    # Which dataset each iteration drew, from the schedule the loader follows (6 images each).
    schedule = build_train_schedule(cfg, [6, 6, 6])
    drawn = {it: train[schedule(it, 0)[0]] for it in range(iters)}
    assert sorted(set(drawn.values())) == sorted(train)  # the run really mixes datasets

    storage = trainer.storage
    histories = storage.histories()
    for key in ("total_loss", "loss_ce"):
        mixed = dict((it, v) for v, it in histories[key].values())
        assert sorted(mixed) == list(range(iters))
        for name in train:
            per_dataset = dict((it, v) for v, it in histories[f"{name}/{key}"].values()) \
                if f"{name}/{key}" in histories else {}
            # Exactly the iterations of that dataset, with the mixed curve's value there.
            assert per_dataset == {it: mixed[it] for it in mixed if drawn[it] == name}, name
    # Task-specific terms only under the datasets of that task.
    assert f"{d['box_train']}/loss_projection" in histories
    assert f"{d['box_train']}/loss_dice" not in histories
    assert f"{d['panoptic_train']}/loss_projection" not in histories
    # Deep-supervision copies stay mixed-only.
    assert any(k.startswith("loss_ce_") for k in histories)
    assert not any("/loss_ce_" in k for k in histories)

    # metrics.json: the writer's median over the last 20 iterations, here of that dataset's
    # iterations only.
    rows = [json.loads(line) for line in open(out / "metrics.json")]
    written = {k: v for row in rows for k, v in row.items()}
    mixed = dict((it, v) for v, it in histories["loss_ce"].values())
    for name in set(drawn.values()):
        expected = np.median([mixed[it] for it in range(iters) if drawn[it] == name])
        assert written[f"{name}/loss_ce"] == expected
