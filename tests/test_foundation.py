"""The package skeleton: registration, config handling, entry point, CPU DDP."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY

import dataseg
from dataseg.config import add_dataseg_config, check_dataseg_config, merge_dataseg_config_file
from dataseg.engine import get_dataseg_cfg
from dataseg.engine.results_table import format_results_table, summarize_results
from dataseg.modeling import CLASSIFIER_REGISTRY, CRITERION_REGISTRY
from dataseg.tasks import TASK_SPECS

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_import_registers_parts():
    assert "DaTaSeg" in META_ARCH_REGISTRY
    assert "TextEmbeddingClassifier" in CLASSIFIER_REGISTRY
    assert "MergeCriterion" in CRITERION_REGISTRY
    assert set(TASK_SPECS) == {"panoptic", "semantic", "instance", "box"}
    assert hasattr(dataseg, "add_dataseg_config")


def test_base_inheritance(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(
        f"_BASE_: {CONFIGS / 'Base-DaTaSeg.yaml'}\n"
        "MODEL:\n  DATASEG:\n    DECODER:\n      NUM_QUERIES: 7\n"
    )
    cfg = get_dataseg_cfg(str(child))
    assert cfg.MODEL.DATASEG.DECODER.NUM_QUERIES == 7
    assert cfg.MODEL.META_ARCHITECTURE == "DaTaSeg"  # from the base
    assert cfg.DATASEG_CONFIG


def test_every_shipped_config_loads():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert files
    for path in files:
        get_dataseg_cfg(str(path))


def test_missing_dataseg_keys_message():
    cfg = get_cfg()  # add_dataseg_config was not called
    with pytest.raises(KeyError, match="add_dataseg_config"):
        merge_dataseg_config_file(cfg, str(CONFIGS / "Base-DaTaSeg.yaml"))


def test_wrong_meta_architecture_is_refused():
    cfg = get_dataseg_cfg(str(CONFIGS / "Base-DaTaSeg.yaml"))
    cfg.MODEL.META_ARCHITECTURE = "MaskFormer"
    with pytest.raises(ValueError, match="META_ARCHITECTURE is 'MaskFormer'"):
        check_dataseg_config(cfg)


def test_non_dataseg_config_is_refused():
    cfg = add_dataseg_config(get_cfg())
    with pytest.raises(ValueError, match="not written for DaTaSeg"):
        check_dataseg_config(cfg)


def test_per_dataset_lists_must_align():
    cfg = get_dataseg_cfg(str(CONFIGS / "Base-DaTaSeg.yaml"))
    cfg.DATASETS.TRAIN = ("a", "b")
    cfg.DATALOADER.DATASEG.BATCH_SIZES = [1, 2, 3]
    with pytest.raises(ValueError, match="BATCH_SIZES has 3 entries"):
        check_dataseg_config(cfg)
    cfg.DATALOADER.DATASEG.BATCH_SIZES = []
    cfg.INPUT.DATASEG.IMAGE_SIZES = []
    with pytest.raises(ValueError, match="IMAGE_SIZES"):
        check_dataseg_config(cfg)


@pytest.mark.parametrize("old,value,new", [
    ("MODEL.DATASEG.CRITERION.MERGE_ENABLED", "False", "MODEL.DATASEG.CRITERION.MERGE"),
    ("MODEL.DATASEG.CRITERION.MERGE_MODE", "clamped_sum", "MODEL.DATASEG.CRITERION.MERGE"),
    ("MODEL.DATASEG.PIXEL_DECODER.MSDA_IMPL", "grid_sample", "MODEL.DATASEG.FAST_PATHS"),
    ("MODEL.DATASEG.CRITERION.COMPILE_POINT_LOSSES", "True", "MODEL.DATASEG.FAST_PATHS"),
])
def test_keys_of_earlier_versions_name_what_replaces_them(old, value, new):
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        get_dataseg_cfg(str(CONFIGS / "Base-DaTaSeg.yaml"), [old, value])


def test_train_net_help():
    out = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), "--help"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--config-file", "--eval-only", "--resume", "--num-gpus", "--dist-url"):
        assert flag in out.stdout


def test_results_table():
    results = {
        "pan": {"panoptic_seg": {"PQ": 12.5, "SQ": 50.0}},
        "sem": {"sem_seg": {"mIoU": 33.0}},
        "box": {"bbox": {"AP": 1.0}, "segm": {"AP": 2.0}},
    }
    summary = summarize_results(results)
    assert summary["pan"] == {"PQ": 12.5}
    assert summary["box"] == {"mask AP": 2.0, "box AP": 1.0}
    table = format_results_table(results)
    assert "12.50" in table and "33.00" in table and "mask AP" in table


def _ddp_worker(queue):
    from detectron2.utils import comm

    from dataseg.engine.trainer import create_ddp_model

    torch.manual_seed(comm.get_rank())  # different init: DDP must broadcast rank 0's weights
    model = create_ddp_model(torch.nn.Linear(3, 1, bias=False), broadcast_buffers=False)
    x = torch.full((1, 3), float(comm.get_rank() + 1))
    model(x).sum().backward()
    # Plain lists: shared-memory tensors would die with this process before being read.
    queue.put((comm.get_rank(), model.module.weight.grad.tolist(), model.module.weight.tolist()))


def test_cpu_ddp_averages_gradients():
    """Two CPU processes (gloo): device_ids must be None, gradients are averaged."""
    from detectron2.engine import launch

    queue = torch.multiprocessing.get_context("spawn").Queue()
    launch(_ddp_worker, 2, dist_url="auto", args=(queue,))
    got = {rank: (grad, weight) for rank, grad, weight in (queue.get(timeout=30) for _ in range(2))}
    # grad of sum(w.x) is x; ranks used x=1 and x=2, so the average is 1.5 everywhere.
    for grad, _ in got.values():
        assert grad == [[1.5, 1.5, 1.5]]
    assert got[0][1] == got[1][1]
