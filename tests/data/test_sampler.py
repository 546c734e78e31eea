"""The multi-dataset schedule: same dataset on every rank, ratios, resume, disjoint shards."""

import numpy as np
import pytest

from dataseg.data.sampler import check_sampling_ratios
from dataseg.data import MultiDatasetSchedule, sampling_ratios_from_sizes

SIZES = [50, 300, 20]
RATIOS = [0.5, 0.3, 0.2]
BATCH = [4, 2, 6]
N_ITERS = 10_000


def _ranks(seed=11):
    return [MultiDatasetSchedule(SIZES, RATIOS, BATCH, world_size=2, seed=seed) for _ in range(2)]


def test_same_dataset_on_every_rank_and_ratios():
    r0, r1 = _ranks()
    d0 = [r0.dataset_at(t) for t in range(N_ITERS)]
    d1 = [r1.dataset_at(t) for t in range(N_ITERS)]
    assert d0 == d1
    freq = np.bincount(d0, minlength=3) / N_ITERS
    assert np.abs(freq - RATIOS).max() < 0.02
    assert np.array_equal(r0.datasets_between(123, 4567), np.asarray(d0[123:4567]))


def test_ranks_read_disjoint_images_covering_each_epoch():
    r0, r1 = _ranks()
    per_dataset = {i: [] for i in range(3)}
    for t in range(N_ITERS):
        a, b = r0.batch_indices(t, rank=0), r1.batch_indices(t, rank=1)
        assert len(a) == len(b) == BATCH[r0.dataset_at(t)] // 2
        assert set(a).isdisjoint(b)
        per_dataset[r0.dataset_at(t)] += a + b
    for i, stream in per_dataset.items():
        epoch = SIZES[i] // BATCH[i] * BATCH[i]  # whole batches per epoch
        for e in range(0, len(stream) // epoch * epoch, epoch):  # no repeat within an epoch
            assert len(set(stream[e:e + epoch])) == epoch


def test_resume_reproduces_stream():
    ref = MultiDatasetSchedule(SIZES, RATIOS, BATCH, world_size=2, seed=3)
    stream = [ref(t, rank=1) for t in range(N_ITERS)]
    k = 6_789
    resumed = MultiDatasetSchedule(SIZES, RATIOS, BATCH, world_size=2, seed=3)
    assert [resumed(t, rank=1) for t in range(k, N_ITERS)] == stream[k:]


def test_seed_changes_stream():
    a = MultiDatasetSchedule(SIZES, RATIOS, BATCH, seed=0)
    b = MultiDatasetSchedule(SIZES, RATIOS, BATCH, seed=1)
    assert [a(t) for t in range(50)] != [b(t) for t in range(50)]


def test_size_exponent_formula():
    assert sampling_ratios_from_sizes([100, 400], 0.5) == pytest.approx([1 / 3, 2 / 3])
    assert sampling_ratios_from_sizes([100, 400], 0.0) == pytest.approx([0.5, 0.5])
    assert sampling_ratios_from_sizes([100, 400], 1.0) == pytest.approx([0.2, 0.8])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="multiple"):
        MultiDatasetSchedule([10], [1.0], [3], world_size=2)
    with pytest.raises(ValueError):
        MultiDatasetSchedule([10, 5], [1.0], [2, 2])
    with pytest.raises(ValueError, match="empty"):
        MultiDatasetSchedule([0, 5], [0.5, 0.5], [2, 2])


@pytest.mark.parametrize("ratios", [[1.0, -0.5], [0.0, 0.0], [1.0], [1.0, float("nan")]])
def test_ratio_errors_are_the_config_check(ratios):
    """One check of the ratios: the schedule raises the config check's message, naming the
    datasets."""
    names = ["coco", "ade"]
    with pytest.raises(ValueError) as config_error:
        check_sampling_ratios(ratios, names)
    with pytest.raises(ValueError) as schedule_error:
        MultiDatasetSchedule([10, 10], ratios, [2, 2], dataset_names=names)
    assert str(schedule_error.value) == str(config_error.value)
    assert "DATALOADER.DATASEG.SAMPLING_RATIOS" in str(config_error.value)


def test_empty_dataset_with_a_ratio_is_named():
    with pytest.raises(ValueError, match=r"empty datasets \(ade=0.5\)"):
        MultiDatasetSchedule([5, 0], [0.5, 0.5], [2, 2], dataset_names=["coco", "ade"])
    # A zero ratio keeps an empty dataset out of the draws: allowed.
    assert MultiDatasetSchedule([5, 0], [1.0, 0.0], [2, 2]).dataset_at(7) == 0
