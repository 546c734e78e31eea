"""The DaTaSeg trainer: detectron2's ``DefaultTrainer`` with DaTaSeg's builders."""

import contextlib
import logging
from collections import OrderedDict

import torch
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

from ..data import build_dataseg_test_loader, build_dataseg_train_loader
from ..evaluation import build_dataseg_evaluator
from .optimizer import build_dataseg_optimizer
from .results_table import format_results_table
from .visualization_hook import PredictionVisualizationHook

__all__ = ["DaTaSegTrainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model``, correct for CPU models.

    detectron2 passes ``device_ids=[local_rank]``, which DistributedDataParallel rejects for a
    module on the CPU; CPU (gloo) training needs ``device_ids=None``.
    """
    if "device_ids" not in kwargs and comm.get_world_size() > 1:
        if next(model.parameters()).device.type == "cpu":
            kwargs["device_ids"] = None
    return _D2_CREATE_DDP_MODEL(model, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def _cpu_aware_ddp():
    # DefaultTrainer.__init__ calls the module-level create_ddp_model; routing that one call
    # through the CPU-aware version avoids copying the whole constructor.
    d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL


class DaTaSegTrainer(DefaultTrainer):
    """``DefaultTrainer`` that builds DaTaSeg's multi-dataset loader, evaluators and optimizer.

    Everything else (hooks, checkpointing, ETA/JSON/tensorboard writers, evaluation schedule)
    is detectron2's.
    """

    def __init__(self, cfg):
        with _cpu_aware_ddp():
            super().__init__(cfg)

    def resume_or_load(self, resume=True):
        weights = self.cfg.MODEL.WEIGHTS
        try:
            super().resume_or_load(resume=resume)
        except (OSError, RuntimeError) as e:
            if "://" not in weights or (resume and self.checkpointer.has_checkpoint()):
                raise
            raise RuntimeError(
                f"Could not fetch MODEL.WEIGHTS={weights!r} ({e}). Download the file on a "
                "machine with internet access and pass its local path: "
                "`MODEL.WEIGHTS /path/to/file.pkl`, or train from scratch with `MODEL.WEIGHTS \"\"`."
            ) from e
        if self.start_iter > 0:
            # The loader was built before the checkpoint told us where training stopped; the
            # multi-dataset stream is a function of the iteration, so rebuild it from there.
            self._trainer.data_loader = self.build_train_loader(self.cfg, self.start_iter)
            self._trainer._data_loader_iter_obj = None

    def build_hooks(self):
        hooks = super().build_hooks()
        # Before the last hook (the metrics writer) so its log lines are flushed with the rest.
        hooks.insert(len(hooks) - 1, PredictionVisualizationHook(
            self.cfg, self.build_test_loader, self.cfg.TEST.DATASEG.NUM_VISUALIZATIONS))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        return build_dataseg_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_dataseg_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_dataseg_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_dataseg_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            # detectron2 unwraps a single dataset's results; keep one shape for callers.
            results = OrderedDict([(cfg.DATASETS.TEST[0], results)])
        if comm.is_main_process() and results:
            logger.info("DaTaSeg results:\n" + format_results_table(results))
        return results

    def run_step(self):
        # Keep the criterion's notion of the iteration (pairwise-loss warm-up) in sync.
        model = self._trainer.model
        model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else model
        if hasattr(model, "iteration"):
            model.iteration = self.iter
        super().run_step()
