"""Shared pytest fixtures.

Generated datasets are written once per test session into a temporary folder (tiny images so
the whole data suite stays fast) and registered under a private name prefix, so tests never
depend on $DETECTRON2_DATASETS nor clash with the default registrations.
"""

import pytest

SYNTH_PREFIX = "pytest_synth"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Root of a small generated copy of every synthetic dataset (6 train / 4 val, 64 px)."""
    from dataseg.data.synthetic import generate_synthetic_datasets

    root = tmp_path_factory.mktemp("dataseg_synthetic")
    return generate_synthetic_datasets(str(root), num_train=6, num_val=4, image_size=64, seed=0)


@pytest.fixture(scope="session")
def synthetic_datasets(synthetic_root):
    """dict: short name ("panoptic_train", "box_val", ...) -> registered dataset name."""
    from dataseg.data.synthetic import SYNTHETIC_DATASET_NAMES, register_synthetic_datasets

    register_synthetic_datasets(synthetic_root, prefix=SYNTH_PREFIX, replace=True)
    return {short: f"{SYNTH_PREFIX}_{short}" for short in SYNTHETIC_DATASET_NAMES}


@pytest.fixture
def dataseg_cfg():
    """A detectron2 config with DaTaSeg's keys and CPU-friendly tiny data settings."""
    from detectron2.config import get_cfg

    from dataseg.config import add_dataseg_config

    cfg = add_dataseg_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.DATASEG.IMAGE_SIZES = [64]
    cfg.INPUT.MIN_SIZE_TEST = 96
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEED = 7
    return cfg
