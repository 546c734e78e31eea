"""Train and test data loaders for DaTaSeg.

The train loader yields one batch (list of mapped dicts, all from ONE dataset) per iteration,
following :class:`~dataseg.data.sampler.MultiDatasetSchedule`. Workers split iterations
round-robin (worker ``w`` of ``W`` maps iterations ``start + w, start + w + W, ...``), which is
exactly the order in which a torch ``DataLoader`` collects their outputs, so the loader yields
batches in iteration order with no sample produced twice. Augmentation randomness is re-seeded
from ``(seed, iteration, rank)`` so a resumed run sees the same stream.
"""

import logging
from typing import List, Optional, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from .catalog import DatasetValidationError
from .columnar import is_columnar
from .mappers import build_dataseg_mapper, get_mapper_class
from .sampler import MultiDatasetSchedule, sampling_ratios_from_sizes

__all__ = [
    "MappedBatch",
    "MultiDatasetBatchStream",
    "build_dataseg_train_loader",
    "build_dataseg_test_loader",
    "build_train_schedule",
    "resolve_sampling_ratios",
    "resolve_batch_sizes",
]

logger = logging.getLogger(__name__)


def _identity(batch):
    return batch


def resolve_sampling_ratios(cfg, sizes: Sequence[int]) -> List[float]:
    """``DATALOADER.DATASEG.SAMPLING_RATIOS`` as given, or ``p_i ∝ size_i ** SIZE_EXPONENT``.

    Not validated nor normalised here: :class:`MultiDatasetSchedule` does both (with
    ``sampler.check_sampling_ratios``, the one check of the ratios).
    """
    ratios = [float(r) for r in cfg.DATALOADER.DATASEG.SAMPLING_RATIOS]
    if not ratios:
        return sampling_ratios_from_sizes(sizes, cfg.DATALOADER.DATASEG.SIZE_EXPONENT)
    return ratios


def resolve_batch_sizes(cfg, num_datasets: int) -> List[int]:
    """Total (all ranks) batch size per dataset: ``BATCH_SIZES`` or ``SOLVER.IMS_PER_BATCH``."""
    sizes = list(cfg.DATALOADER.DATASEG.BATCH_SIZES)
    if not sizes:
        return [int(cfg.SOLVER.IMS_PER_BATCH)] * num_datasets
    if len(sizes) != num_datasets:
        raise ValueError(
            f"DATALOADER.DATASEG.BATCH_SIZES has {len(sizes)} entries but DATASETS.TRAIN has "
            f"{num_datasets}; give one total batch size per training dataset or leave it empty."
        )
    return [int(s) for s in sizes]


def _load_train_dicts(cfg, name: str):
    dicts = DatasetCatalog.get(name)
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS and get_mapper_class(name).filter_empty_annotations:
        dicts = (dicts.without_crowd_only_images() if is_columnar(dicts)
                 else filter_images_with_only_crowd_annotations(dicts))
    if not dicts:
        raise ValueError(f"Training dataset {name!r} has no usable images.")
    return dicts


def _as_dataset(dicts):
    # DatasetFromList pickles every dict into one buffer (no copy-on-read in workers); a
    # columnar cache is already memory-mapped and would only be materialised by it.
    return dicts if is_columnar(dicts) else DatasetFromList(dicts, copy=False)


def build_train_schedule(cfg, sizes: Sequence[int], world_size: Optional[int] = None,
                         seed: Optional[int] = None) -> MultiDatasetSchedule:
    """The schedule the train loader follows (identical on every rank)."""
    world_size = comm.get_world_size() if world_size is None else world_size
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    names = list(cfg.DATASETS.TRAIN)
    return MultiDatasetSchedule(
        sizes, resolve_sampling_ratios(cfg, sizes), resolve_batch_sizes(cfg, len(sizes)),
        world_size=world_size, seed=seed,
        dataset_names=names if len(names) == len(sizes) else None,
    )


class MappedBatch(list):
    """A batch (list of mapped dicts) plus ``skipped_images``: how many unreadable images were
    replaced while producing it. An attribute rather than a dict key keeps the model's input
    contract unchanged; it survives the trip from a loader worker (list subclasses pickle
    their attributes)."""

    skipped_images: int = 0


class MultiDatasetBatchStream(IterableDataset):
    """Endless stream of mapped batches of one rank, in iteration order.

    Args:
        datasets: per dataset, an indexable list of dataset dicts.
        mappers: per dataset, the callable mapping a dict to model input.
        schedule: the shared :class:`MultiDatasetSchedule`.
        rank: this process's rank.
        start_iter: first iteration to produce (resume point).
        max_skipped_images: replacements tried for ONE batch before it fails (a dataset
            whose images are all unreadable would otherwise retry forever). The limit on the
            run's total is the trainer's (``engine.training_guards.SkippedImagesMonitor``,
            which counts over every data worker), from the same
            ``INPUT.DATASEG.MAX_SKIPPED_IMAGES``.
    """

    def __init__(self, datasets: Sequence, mappers: Sequence, schedule: MultiDatasetSchedule,
                 rank: int = 0, start_iter: int = 0, max_skipped_images: int = 100):
        self.datasets = list(datasets)
        self.mappers = list(mappers)
        self.schedule = schedule
        self.rank = rank
        self.start_iter = int(start_iter)
        self.max_skipped_images = max_skipped_images

    def _map(self, dataset: int, index: int, iteration: int, state: dict):
        attempt = 0
        while True:
            record = self.datasets[dataset][index]
            try:
                return self.mappers[dataset](record)
            # Unreadable/corrupt files (PIL and cv2 raise OSError, truncated JPEGs included) and
            # annotations inconsistent with their image: one bad file among millions should
            # not end a multi-day run. The loader already validated a sample of every dataset,
            # so systematic problems fail before training instead.
            except (OSError, DatasetValidationError) as e:
                state["skipped"] += 1
                state["batch_skipped"] += 1
                file_name = record.get("file_name", "?") if isinstance(record, dict) else record
                if state["batch_skipped"] > self.max_skipped_images:
                    raise RuntimeError(
                        f"More than {self.max_skipped_images} unreadable training images in "
                        "one batch (INPUT.DATASEG.MAX_SKIPPED_IMAGES): no readable replacement "
                        f"found; the last one was {file_name!r}: {e}"
                    ) from e
                logger.warning(
                    f"Skipping training image {file_name!r} ({type(e).__name__}: {e}); using "
                    f"another image of the same dataset ({state['skipped']} skipped so far).")
                attempt += 1
                rng = np.random.default_rng([self.schedule.seed, iteration, self.rank, attempt])
                index = int(rng.integers(len(self.datasets[dataset])))

    def batch(self, iteration: int) -> "MappedBatch":
        """The mapped batch of this rank at ``iteration`` (deterministic)."""
        dataset, indices = self.schedule(iteration, self.rank)
        seed_state = np.random.SeedSequence([self.schedule.seed, iteration, self.rank])
        state = getattr(self, "_skip_state", None) or {"skipped": 0}
        self._skip_state = state
        state["batch_skipped"] = 0
        # detectron2 augmentations draw from numpy's global generator: seed it per iteration
        # (resumable, identical for any worker count) and leave the caller's state untouched.
        saved = np.random.get_state()
        np.random.seed(seed_state.generate_state(1)[0])
        try:
            batch = MappedBatch(self._map(dataset, i, iteration, state) for i in indices)
        finally:
            np.random.set_state(saved)
        batch.skipped_images = state["batch_skipped"]
        return batch

    def __iter__(self):
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        iteration = self.start_iter + worker_id
        while True:
            yield self.batch(iteration)
            iteration += num_workers


def build_dataseg_train_loader(cfg, start_iter: int = 0, mappers: Optional[Sequence] = None):
    """Build the multi-dataset train loader (one dataset per iteration).

    Args:
        cfg: config with DATASETS.TRAIN and the DATALOADER.DATASEG/INPUT.DATASEG keys.
        start_iter: first iteration of the stream; pass the trainer's resume iteration so a
            resumed run continues the same stream.
        mappers: optional per-dataset mappers (default: the registered task mapper of each).

    Returns:
        an endless ``torch.utils.data.DataLoader`` yielding ``list[dict]`` batches of this
        rank; ``loader.dataset.schedule`` is the shared schedule.
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty.")
    datasets = [_as_dataset(_load_train_dicts(cfg, n)) for n in names]
    if mappers is None:
        mappers = [build_dataseg_mapper(cfg, n, is_train=True) for n in names]
    schedule = build_train_schedule(cfg, [len(d) for d in datasets])
    logger.info("DaTaSeg multi-dataset schedule: " + schedule.describe(names))
    stream = MultiDatasetBatchStream(
        datasets, mappers, schedule, rank=comm.get_rank(), start_iter=start_iter,
        max_skipped_images=cfg.INPUT.DATASEG.MAX_SKIPPED_IMAGES,
    )
    num_workers = int(cfg.DATALOADER.NUM_WORKERS)
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
        persistent_workers=num_workers > 0,
    )


def build_dataseg_test_loader(cfg, dataset_name: str, mapper=None, batch_size: int = 1):
    """detectron2's test loader over ``dataset_name`` with its task's test mapper."""
    dicts = DatasetCatalog.get(dataset_name)
    if len(dicts) == 0:
        # An empty loader would hand the evaluators nothing and report a meaningless score.
        raise ValueError(
            f"Test dataset {dataset_name!r} has no images; remove it from DATASETS.TEST or fix "
            "its registration.")
    if mapper is None:
        mapper = build_dataseg_mapper(cfg, dataset_name, is_train=False)
    return build_detection_test_loader(
        dicts, mapper=mapper,
        num_workers=int(cfg.DATALOADER.NUM_WORKERS), batch_size=batch_size,
    )

