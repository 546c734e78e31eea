"""The multi-dataset schedule: which dataset each iteration uses, and which images each rank reads.

DaTaSeg trains on ONE dataset per iteration and takes the whole batch from it. This module is
a pure function of (seed, iteration, rank): no state, no processes, so it is identical on every
rank, can be simulated for many ranks in a test, and resumes at any iteration.

Dataset choice. Iteration ``t`` draws dataset ``i`` with probability ``p_i``: the configured
``DATALOADER.DATASEG.SAMPLING_RATIOS`` (normalised), or if empty
``p_i = size_i ** a / sum_j size_j ** a`` with ``a = DATALOADER.DATASEG.SIZE_EXPONENT``
(``a = 1``: proportional to size, ``a = 0``: uniform; the default 0.5 favours small datasets).
Draws are made in blocks of ``block_size`` iterations from a generator seeded by
``(seed, block)``, so iteration ``t`` needs only its own block.

Images. Each dataset has an endless stream of epochs, each a permutation of its images seeded
by ``(seed, dataset, epoch)``. The ``k``-th batch drawn from dataset ``i`` covers stream
positions ``[k * B_i, (k + 1) * B_i)`` (``B_i`` the total batch size over all ranks); rank ``r``
reads the ``r``-th slice of ``B_i / world_size`` of them. An epoch holds ``floor(N_i / B_i)``
whole batches (the remainder, different each epoch, is dropped), so ranks read disjoint images
and no image repeats within an epoch.
"""

from functools import lru_cache
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["MultiDatasetSchedule", "check_sampling_ratios", "sampling_ratios_from_sizes"]

# Separate the seed spaces of the two kinds of draws.
_CHOICE_STREAM, _PERMUTATION_STREAM = 0, 1


def sampling_ratios_from_sizes(sizes: Sequence[int], exponent: float) -> List[float]:
    """``p_i = size_i ** exponent / sum_j size_j ** exponent``."""
    weights = np.asarray(sizes, dtype=np.float64) ** float(exponent)
    return (weights / weights.sum()).tolist()


def check_sampling_ratios(ratios, train_datasets, dataset_sizes=None):
    """Validate ``DATALOADER.DATASEG.SAMPLING_RATIOS`` against ``DATASETS.TRAIN``.

    The one check of the sampling ratios, with one set of messages: the trainer's pre-flight
    and ``MultiDatasetSchedule`` both call it.

    Empty means "derived from dataset sizes". Otherwise one finite, non-negative value per
    training dataset, in the same order, at least one of them positive, and (when
    ``dataset_sizes`` is given) none positive for a dataset without images.

    Args:
        ratios: the ratios (any non-negative scale; they are normalised where used).
        train_datasets: the names of the training datasets, for the messages.
        dataset_sizes: optional number of images of each dataset.

    Raises:
        ValueError: naming the offending entries and their datasets.
    """
    ratios, names = list(ratios), list(train_datasets)
    if not ratios:
        return
    key = "DATALOADER.DATASEG.SAMPLING_RATIOS"
    if len(ratios) != len(names):
        raise ValueError(
            f"{key} has {len(ratios)} entries but DATASETS.TRAIN has {len(names)} ({names}); "
            "give one ratio per training dataset, in the same order, or leave it empty to "
            "derive the ratios from the dataset sizes."
        )
    bad = [f"{name}={r}" for name, r in zip(names, ratios)
           if not (float(r) >= 0 and float(r) != float("inf"))]
    if bad:
        raise ValueError(f"{key} must be finite and >= 0; got {', '.join(bad)}.")
    if sum(float(r) for r in ratios) <= 0:
        raise ValueError(
            f"{key} are all zero ({dict(zip(names, ratios))}): no dataset could ever be drawn. "
            "Give at least one training dataset a positive ratio (remove a dataset from "
            "DATASETS.TRAIN rather than giving it 0 if it should not be trained on)."
        )
    if dataset_sizes is not None:
        empty = [f"{name}={r}" for name, r, size in zip(names, ratios, dataset_sizes)
                 if size <= 0 and float(r) > 0]
        if empty:
            raise ValueError(
                f"{key} gives a positive ratio to empty datasets ({', '.join(empty)}): they "
                "have no image to draw. Fix their registration or remove them from "
                "DATASETS.TRAIN."
            )


class MultiDatasetSchedule:
    """Seedable, stateless iteration -> (dataset, per-rank image indices) schedule.

    Args:
        dataset_sizes: number of images of each dataset.
        ratios: sampling probability per dataset (normalised here).
        batch_sizes: TOTAL batch size of each dataset over all ranks.
        world_size: number of ranks; every batch size must be divisible by it.
        seed: shared seed (identical on every rank).
        shuffle: permute images each epoch (False: read in order, for debugging).
        block_size: iterations per dataset-choice block (an implementation detail).
        dataset_names: names of the datasets in error messages (default "dataset <i>").
    """

    def __init__(self, dataset_sizes: Sequence[int], ratios: Sequence[float],
                 batch_sizes: Sequence[int], world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, block_size: int = 1024,
                 dataset_names: Optional[Sequence[str]] = None):
        n = len(dataset_sizes)
        if n == 0:
            raise ValueError("MultiDatasetSchedule needs at least one dataset.")
        names = list(dataset_names) if dataset_names is not None else \
            [f"dataset {i}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"Got {n} datasets but {len(names)} dataset names.")
        if len(batch_sizes) != n:
            raise ValueError(f"Got {n} datasets but {len(batch_sizes)} batch sizes.")
        # The same validation (and messages) as the config's SAMPLING_RATIOS; empty ratios
        # have no meaning here, the caller derives them from the sizes.
        check_sampling_ratios(ratios, names, dataset_sizes)
        if len(ratios) == 0:
            raise ValueError(f"Got {n} datasets but no sampling ratios.")
        ratios = np.asarray(ratios, dtype=np.float64)
        for i, (size, bs) in enumerate(zip(dataset_sizes, batch_sizes)):
            if bs % world_size != 0 or bs <= 0:
                raise ValueError(
                    f"Batch size {bs} of dataset {i} must be a positive multiple of the "
                    f"number of ranks ({world_size})."
                )
        self.dataset_names = names
        self.dataset_sizes = [int(s) for s in dataset_sizes]
        self.ratios = (ratios / ratios.sum()).tolist()
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.block_size = int(block_size)
        # Lazily extended prefix counts: _counts[b, i] = #iterations < b * block_size that
        # drew dataset i.
        self._counts = np.zeros((1, n), dtype=np.int64)
        self._block = lru_cache(maxsize=8)(self._block_uncached)
        self._permutation = lru_cache(maxsize=16)(self._permutation_uncached)

    @property
    def num_datasets(self) -> int:
        return len(self.dataset_sizes)

    def _block_uncached(self, block: int):
        """(dataset choice per iteration of the block, draws of each dataset before each)."""
        rng = np.random.default_rng([self.seed, _CHOICE_STREAM, block])
        choices = rng.choice(self.num_datasets, size=self.block_size, p=self.ratios)
        one_hot = np.eye(self.num_datasets, dtype=np.int64)[choices]
        return choices, np.cumsum(one_hot, axis=0) - one_hot

    def _permutation_uncached(self, dataset: int, epoch: int) -> np.ndarray:
        size = self.dataset_sizes[dataset]
        if not self.shuffle:
            return np.arange(size)
        return np.random.default_rng([self.seed, _PERMUTATION_STREAM, dataset, epoch]).permutation(
            size
        )

    def dataset_at(self, iteration: int) -> int:
        """Index of the dataset the whole batch of ``iteration`` comes from."""
        block, offset = divmod(int(iteration), self.block_size)
        return int(self._block(block)[0][offset])

    def datasets_between(self, start: int, stop: int) -> np.ndarray:
        """Dataset indices of iterations ``start..stop-1`` (vectorised :meth:`dataset_at`)."""
        out = [self._block(b)[0] for b in range(start // self.block_size,
                                             (stop - 1) // self.block_size + 1)]
        first = (start // self.block_size) * self.block_size
        return np.concatenate(out)[start - first: stop - first]

    def _draws_before(self, iteration: int, dataset: int) -> int:
        """How many iterations before ``iteration`` drew ``dataset``."""
        block, offset = divmod(int(iteration), self.block_size)
        while self._counts.shape[0] <= block:
            b = self._counts.shape[0] - 1
            add = np.bincount(self._block(b)[0], minlength=self.num_datasets)
            self._counts = np.vstack([self._counts, self._counts[-1] + add])
        return int(self._counts[block, dataset] + self._block(block)[1][offset, dataset])

    def batch_indices(self, iteration: int, rank: int = 0) -> List[int]:
        """Image indices (into the chosen dataset) that ``rank`` reads at ``iteration``."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside 0..{self.world_size - 1}")
        dataset = self.dataset_at(iteration)
        total = self.batch_sizes[dataset]
        per_rank = total // self.world_size
        first = self._draws_before(iteration, dataset) * total + rank * per_rank
        size = self.dataset_sizes[dataset]
        # Each epoch uses a whole number of batches (the last partial batch is dropped; a
        # different remainder each epoch), so a batch never straddles two epochs and never
        # holds an image twice, on any rank. Datasets smaller than a batch must repeat images.
        epoch_len = (size // total) * total if size >= total else size
        out = []
        for pos in range(first, first + per_rank):
            epoch, i = divmod(pos, epoch_len)
            out.append(int(self._permutation(dataset, epoch)[i]))
        return out

    def __call__(self, iteration: int, rank: int = 0):
        """``(dataset index, image indices of rank)`` of ``iteration``."""
        return self.dataset_at(iteration), self.batch_indices(iteration, rank)

    def describe(self, names: Optional[Sequence[str]] = None) -> str:
        names = names or self.dataset_names
        rows = [f"{n}: p={p:.3f} size={s} batch={b}" for n, p, s, b in
                zip(names, self.ratios, self.dataset_sizes, self.batch_sizes)]
        return "; ".join(rows)
