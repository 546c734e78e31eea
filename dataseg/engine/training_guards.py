"""Guards a long training run relies on: per-step seeding, skipped-image accounting and a
non-finite-loss check that names the dataset. :class:`~.step_trainer.DaTaSegStepTrainer`
calls the first and the last in its step; the trainer wraps its loader in the second."""

import math

import numpy as np
import torch
from detectron2.utils.events import get_event_storage

__all__ = ["seed_step", "SkippedImagesMonitor", "check_finite_losses"]


def seed_step(seed: int, iteration: int, rank: int) -> None:
    """Re-seed torch from (seed, iteration, rank), right before a training forward pass.

    The randomness a step consumes (point sampling, dropout) then depends on nothing but the
    iteration, so a resumed run repeats the uninterrupted one; each rank draws its own.
    """
    key = [int(seed), int(iteration), int(rank)]
    torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))


class SkippedImagesMonitor:
    """Wraps the train loader: counts the images the stream skipped (``skipped_images`` of
    each batch), reports the total as the ``data/skipped_images`` metric and stops training
    once it exceeds ``max_skipped`` (the count over all data workers of this rank)."""

    def __init__(self, loader, max_skipped: int):
        self.loader = loader
        self.max_skipped = int(max_skipped)
        self.skipped = 0

    def __iter__(self):
        for batch in self.loader:
            self.skipped += int(getattr(batch, "skipped_images", 0))
            get_event_storage().put_scalar("data/skipped_images", self.skipped,
                                           smoothing_hint=False)
            if self.skipped > self.max_skipped:
                raise RuntimeError(
                    f"{self.skipped} training images were unreadable or inconsistent and "
                    f"skipped, more than INPUT.DATASEG.MAX_SKIPPED_IMAGES={self.max_skipped}; "
                    "see the 'Skipping' warnings in the log for the files. Repair or re-download "
                    "the dataset, or raise the limit."
                )
            yield batch


def check_finite_losses(loss_dict, dataset, iteration) -> None:
    """Raise ``FloatingPointError`` when a training loss is NaN or infinite, naming the
    dataset of the batch (``None``: unknown), the iteration and the offending loss terms
    (detectron2's own check names none of the first two and runs after ``backward``)."""
    values = [v.detach().float().reshape(()) for v in loss_dict.values()]
    if not values or bool(torch.isfinite(torch.stack(values)).all()):
        return
    bad = {k: float(v) for k, v in zip(loss_dict, values) if not math.isfinite(float(v))}
    dataset = "?" if dataset is None else dataset
    raise FloatingPointError(
        f"Non-finite loss at iteration {iteration} on dataset {dataset!r}: "
        + ", ".join(f"{k}={v}" for k, v in bad.items())
        + ". Resume from the last checkpoint with a lower SOLVER.BASE_LR or "
        "SOLVER.CLIP_GRADIENTS.ENABLED True, and check this dataset's annotations "
        "(degenerate boxes or masks)."
    )
