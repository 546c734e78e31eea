"""Helpers shared by the benchmark scripts: model building, synthetic inputs, timing.

Models are built with random weights and the "Random" text encoder (nothing is downloaded);
its width defaults to CLIP ViT-L/14's (768) so the classifier has the paper's shape.
"""

import os
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from any directory
    sys.path.insert(0, ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Instances  # noqa: E402

from dataseg.config import add_dataseg_config  # noqa: E402

__all__ = [
    "ROOT",
    "BENCH_DATASET",
    "DEFAULT_CONFIG",
    "bench_cfg",
    "build_bench_model",
    "register_bench_dataset",
    "vocabulary",
    "median_time",
    "random_image",
    "voronoi_masks",
    "train_batch",
]

BENCH_DATASET = "dataseg_bench_coco_like"
DEFAULT_CONFIG = "configs/coco_ade_o365/DaTaSeg_R50.yaml"


def vocabulary(num_classes: int):
    """``num_classes`` names and thing flags: COCO panoptic's 133 first, then synthetic names.

    Synthetic extra names ("class 134", ...) only matter for the shapes: the benchmark's
    text encoder is random.
    """
    names = [c["name"] for c in COCO_CATEGORIES][:num_classes]
    isthing = [bool(c["isthing"]) for c in COCO_CATEGORIES][:num_classes]
    for i in range(len(names), num_classes):
        names.append(f"class {i + 1}")
        isthing.append(True)
    return names, isthing


def register_bench_dataset(name: str = BENCH_DATASET, num_classes: int = 133,
                           outputs: Sequence[str] = ("sem_seg", "panoptic_seg", "instances")):
    """Register (or overwrite) a COCO-like panoptic dataset's DaTaSeg metadata."""
    names, isthing = vocabulary(num_classes)
    meta = MetadataCatalog.get(name)
    # MetadataCatalog refuses to change a key to a different value: start from a clean entry.
    if meta.get("dataseg_classes", None) is not None and len(meta.dataseg_classes) != num_classes:
        MetadataCatalog.remove(name)
        meta = MetadataCatalog.get(name)
    meta.set(dataseg_task="panoptic", dataseg_classes=names, dataseg_isthing=isthing,
             dataseg_test_outputs=tuple(outputs))
    return name


def bench_cfg(config: str = DEFAULT_CONFIG, cache_dir: Optional[str] = None,
              opts: Sequence[str] = (), text_dim: int = 768):
    """A frozen CPU config of ``config`` (relative to the repo root) with random weights."""
    cfg = add_dataseg_config(get_cfg())
    cfg.merge_from_file(config if os.path.isabs(config) else os.path.join(ROOT, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.RANDOM_DIM = text_dim
    if cache_dir is not None:
        cfg.MODEL.DATASEG.TEXT.CACHE_DIR = cache_dir
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def build_bench_model(cfg, seed: int = 0):
    """Random-init model of ``cfg`` in eval mode."""
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def median_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall time (seconds) of ``fn()`` over ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_image(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)


def voronoi_masks(num_segments: int, size: int, seed: int = 0) -> torch.Tensor:
    """Non-overlapping bool masks (K, size, size) covering the image (a random partition)."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.rand(num_segments, 2, generator=g) * size
    coords = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    owner = torch.cdist(pix, seeds).argmin(1).view(size, size)
    return owner[None] == torch.arange(num_segments)[:, None, None]


def train_batch(size: int, num_segments: int, num_classes: int, batch: int = 2,
                dataset: str = BENCH_DATASET, seed: int = 1) -> List[dict]:
    """Mapped panoptic training dicts with ``num_segments`` ground-truth segments each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        inst = Instances((size, size))
        inst.gt_masks = BitMasks(voronoi_masks(num_segments, size, seed + i))
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        inst.gt_classes = torch.randint(0, num_classes, (num_segments,), generator=g)
        out.append({"image": random_image(size, seed + i), "height": size, "width": size,
                    "dataset_name": dataset, "instances": inst})
    return out
