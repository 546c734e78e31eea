"""One DaTaSeg training iteration, written out: :class:`DaTaSegStepTrainer`."""

import contextlib
import re
import time

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .training_guards import check_finite_losses, seed_step

__all__ = ["DaTaSegStepTrainer"]

# Deep-supervision copies of a loss (``loss_ce_0``, ...): not repeated per dataset.
_AUX_LOSS = re.compile(r"_\d+$")


class DaTaSegStepTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` / ``AMPTrainer`` step with DaTaSeg's guards in it.

    :meth:`run_step` does, in this order:

    1. fetch the batch (timed: the ``data_time`` metric);
    2. re-seed torch from (seed, iteration, rank), so the randomness of the step (loss point
       sampling, dropout) depends on the iteration alone and a resumed run repeats the
       uninterrupted one;
    3. forward the model, under autocast when mixed precision is on;
    4. stop on a non-finite loss, naming the dataset, the iteration and the bad terms;
    5. zero the gradients and backward the sum of the losses (scaled on CUDA);
    6. write the losses to the event storage, once as detectron2 does (``loss_ce``, ...) and
       once more under the batch's dataset (``<dataset>/loss_ce``, ...);
    7. step the optimizer (through the gradient scaler on CUDA).

    Mixed precision (``SOLVER.AMP.ENABLED``) depends on where the model is:

    * CUDA: detectron2's ``AMPTrainer`` recipe: float16 autocast and a ``GradScaler``, whose
      state is saved in checkpoints under the same ``grad_scaler`` key.
    * CPU: bfloat16 autocast. Its exponent is as wide as float32's, so gradients do not
      underflow and no loss scaling is needed: the scaler is built disabled, and a disabled
      ``GradScaler`` hands the loss back unchanged and calls ``optimizer.step()`` itself.
      That keeps one step for every mode instead of a second copy of it.

    Only the model call is under autocast; backward and the optimizer step are outside it, as
    autocast prescribes. The criterion computes in float32 whatever the model's precision
    (``MergeCriterion``), so the losses summed outside the region are float32 either way.

    Args:
        model, data_loader, optimizer: as ``SimpleTrainer``; the model returns a dict of losses
            in training.
        seed: the run's seed (``cfg.SEED``), the first part of every step seed. ``--resume``
            may replace it with the checkpoint's (the attribute ``seed``).
        mixed_precision: ``SOLVER.AMP.ENABLED``.
    """

    def __init__(self, model, data_loader, optimizer, *, seed: int,
                 mixed_precision: bool = False):
        super().__init__(model, data_loader, optimizer)
        self.seed = int(seed)
        device = next(model.parameters()).device.type
        if not mixed_precision:
            self.autocast_dtype = None
        elif device == "cpu":
            self.autocast_dtype = torch.bfloat16
        elif device == "cuda":
            self.autocast_dtype = torch.float16  # AMPTrainer's default precision
        else:
            raise ValueError(f"SOLVER.AMP.ENABLED needs a CUDA or CPU model, not {device!r}.")
        self.autocast_device = device
        # Enabled only for float16: float32 and bfloat16 training need no loss scaling.
        self.grad_scaler = torch.amp.GradScaler(
            device, enabled=self.autocast_dtype == torch.float16)

    def _forward_precision(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.autocast_device, dtype=self.autocast_dtype)

    def run_step(self):
        """One training iteration (steps 1-7 of the class docstring)."""
        assert self.model.training, "[DaTaSegStepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        # Every batch comes from one dataset (the multi-dataset loader's schedule).
        dataset = data[0].get("dataset_name") if data else None

        # After the fetch, not before: creating the loader's iterator (the first step of every
        # process, resumed ones included) draws from torch's RNG too.
        seed_step(self.seed, self.iter, comm.get_rank())

        with self._forward_precision():
            loss_dict = self.model(data)
        # Before backward: detectron2's own check comes after it and names neither the
        # dataset nor the iteration.
        check_finite_losses(loss_dict, dataset, self.iter)
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()

        self._write_metrics(loss_dict, data_time)
        self._write_dataset_losses(dataset, loss_dict)

        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _write_dataset_losses(self, dataset, loss_names):
        """Write the losses ``_write_metrics`` just wrote a second time under the dataset of
        the batch: ``<dataset>/loss_ce``, ``<dataset>/total_loss``, ...

        One dataset per iteration makes the mixed curves a blend of tasks (a box-only
        dataset's classification loss is not a panoptic one's); the per-dataset curves show
        which dataset diverges. The values are read back from the storage, so they are
        detectron2's (averaged over ranks, which all draw the same dataset) and reach
        metrics.json and tensorboard through the usual writers, with the same smoothing. Only
        the final decoder layer's terms are repeated: the deep-supervision copies
        (``loss_ce_0``...) would triple the log line. Nothing is written where the losses
        were not (ranks other than 0, iterations skipped by ``gather_metric_period``).
        """
        if dataset is None:
            return
        storage = get_event_storage()
        latest = storage.latest()
        values = {}
        for key in tuple(loss_names) + ("total_loss",):
            written = latest.get(key)
            if written is not None and written[1] == self.iter and not _AUX_LOSS.search(key):
                values[f"{dataset}/{key}"] = written[0]
        if values:
            storage.put_scalars(cur_iter=self.iter, **values)

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler.is_enabled():  # AMPTrainer's key, for CUDA AMP checkpoints
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler.is_enabled():
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
