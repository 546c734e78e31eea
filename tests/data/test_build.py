"""Train/test loaders: one dataset per batch, iteration order across workers, resume."""

import pytest

from detectron2.data import DatasetCatalog

from dataseg.data import MultiDatasetBatchStream, MultiDatasetSchedule, build_dataseg_test_loader, \
    build_dataseg_train_loader


def _cfg(cfg, synthetic_datasets, workers):
    cfg.DATASETS.TRAIN = tuple(synthetic_datasets[k] for k in
                               ("panoptic_train", "semantic_train", "box_train"))
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.DATASEG.SAMPLING_RATIOS = [0.4, 0.4, 0.2]
    cfg.DATALOADER.DATASEG.BATCH_SIZES = [2, 3, 2]
    return cfg


def _signature(batch):
    return [(d["dataset_name"], d["file_name"], tuple(d["image"].shape),
             int(d["image"].float().sum())) for d in batch]


def test_loader_order_with_workers_and_resume(synthetic_datasets, dataseg_cfg):
    cfg = _cfg(dataseg_cfg, synthetic_datasets, workers=2)
    loader = build_dataseg_train_loader(cfg)
    stream = loader.dataset
    it = iter(loader)
    got = [_signature(next(it)) for _ in range(6)]
    # Same batches (incl. augmentation) as computing each iteration directly, in order.
    assert got == [_signature(stream.batch(t)) for t in range(6)]
    for batch, t in zip(got, range(6)):
        names = {name for name, *_ in batch}
        assert names == {cfg.DATASETS.TRAIN[stream.schedule.dataset_at(t)]}
        assert len(batch) == cfg.DATALOADER.DATASEG.BATCH_SIZES[stream.schedule.dataset_at(t)]
    resumed = iter(build_dataseg_train_loader(_cfg(dataseg_cfg, synthetic_datasets, 0),
                                              start_iter=3))
    assert [_signature(next(resumed)) for _ in range(3)] == got[3:]


def test_unreadable_images_are_replaced_then_fail():
    calls = []

    def mapper(d):
        calls.append(d)
        if d == "bad":
            raise OSError("cannot identify image file 'bad'")
        return {"file_name": d}

    schedule = MultiDatasetSchedule([2], [1.0], [1], seed=0, shuffle=False)
    stream = MultiDatasetBatchStream([["bad", "good"]], [mapper], schedule,
                                     max_skipped_images=5)
    batch = stream.batch(0)  # index 0 -> "bad", replaced by a random other draw
    assert batch[0]["file_name"] in ("good", "bad") and calls[0] == "bad"
    stream_strict = MultiDatasetBatchStream([["bad"]], [mapper],
                                            MultiDatasetSchedule([1], [1.0], [1]),
                                            max_skipped_images=2)
    with pytest.raises(RuntimeError, match="MAX_SKIPPED_IMAGES"):
        stream_strict.batch(0)


def test_batch_size_defaults_to_ims_per_batch(synthetic_datasets, dataseg_cfg):
    cfg = _cfg(dataseg_cfg, synthetic_datasets, workers=0)
    cfg.DATALOADER.DATASEG.BATCH_SIZES = []
    cfg.DATALOADER.DATASEG.SAMPLING_RATIOS = []
    cfg.SOLVER.IMS_PER_BATCH = 3
    loader = build_dataseg_train_loader(cfg)
    assert loader.dataset.schedule.batch_sizes == [3, 3, 3]
    assert len(next(iter(loader))) == 3
    sizes = [len(DatasetCatalog.get(n)) for n in cfg.DATASETS.TRAIN]
    expected = [s ** 0.5 / sum(x ** 0.5 for x in sizes) for s in sizes]
    assert loader.dataset.schedule.ratios == pytest.approx(expected)


def test_misaligned_lists_fail(synthetic_datasets, dataseg_cfg):
    cfg = _cfg(dataseg_cfg, synthetic_datasets, workers=0)
    cfg.DATALOADER.DATASEG.SAMPLING_RATIOS = [1.0]
    with pytest.raises(ValueError, match="SAMPLING_RATIOS"):
        build_dataseg_train_loader(cfg)


def test_test_loader(synthetic_datasets, dataseg_cfg):
    name = synthetic_datasets["semantic_val"]
    batches = list(build_dataseg_test_loader(dataseg_cfg, name))
    assert len(batches) == 4 and all(len(b) == 1 for b in batches)
    d = batches[0][0]
    assert d["dataset_name"] == name and (d["height"], d["width"]) == (64, 64)
    assert "sem_seg_file_name" in d
