"""The DaTaSeg trainer: detectron2's ``DefaultTrainer`` with DaTaSeg's builders.

Reliability policy (what a multi-day job on a shared cluster can count on):

* Bad input fails before the first iteration: the config's per-dataset lists, every training
  dataset's files (loaded and sample-validated by ``build_train_loader``), its task, its
  vocabulary and the text encoder's weights (every training vocabulary is embedded up front).
* Unreadable or inconsistent single training images are skipped with a warning and replaced;
  the running count is the ``data/skipped_images`` metric, and more than
  ``INPUT.DATASEG.MAX_SKIPPED_IMAGES`` stops training.
* A non-finite loss stops training with the dataset, iteration and loss terms involved.
* Kill and ``--resume`` continue the same run: checkpoints are written atomically (the
  temporary file of a save the kill interrupted is removed when training starts), the data
  seed is stored in them, the data stream is a function of (seed, iteration) and torch's RNG
  is re-seeded from (seed, iteration, rank) before every step.
"""

import logging
import weakref
from collections import OrderedDict

import torch
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import build_dataseg_test_loader, build_dataseg_train_loader
from ..data.builtin import adopt_detectron2_registration
from ..evaluation import build_dataseg_evaluator
from .checkpoint import DaTaSegCheckpointer
from .optimizer import build_dataseg_optimizer
from .preflight import check_test_datasets, check_train_config, prepare_train_vocabularies
from .results_table import format_results_table
from .step_trainer import DaTaSegStepTrainer
from .training_guards import SkippedImagesMonitor
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
    return _d2_create_ddp_model(model, **kwargs)


def _with_seed(cfg, seed: int):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = int(seed)
    cfg.freeze()
    return cfg


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
        else model


class DaTaSegTrainer(DefaultTrainer):
    """``DefaultTrainer`` that builds DaTaSeg's multi-dataset loader, evaluators and optimizer.

    Everything else (hooks, ETA/JSON/tensorboard writers, evaluation schedule) is
    detectron2's. The training iteration is :class:`DaTaSegStepTrainer`'s ``run_step`` (step
    seeding, mixed precision, non-finite check and per-dataset loss curves, in order);
    checkpoints go through :class:`DaTaSegCheckpointer` (atomic). See the module docstring
    for the reliability policy.
    """

    def __init__(self, cfg):
        check_train_config(cfg)
        check_test_datasets(cfg)
        if cfg.SEED < 0:
            # The data stream and the per-step RNG derive from the seed; a random one is drawn
            # once (same on every rank) and stored in checkpoints so --resume reuses it.
            seed = comm.shared_random_seed()
            logger.info(f"SEED is {cfg.SEED}: using seed {seed} for this run.")
            cfg = _with_seed(cfg, seed)

        # DefaultTrainer.__init__, written out with DaTaSeg's parts: its DDP wrapper rejects
        # CPU models, its step trainer is SimpleTrainer / AMPTrainer and its checkpointer is
        # not atomic. The construction order is detectron2's (the model draws its initial
        # weights from torch's RNG first).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # setup_logger was not called for detectron2
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = DaTaSegStepTrainer(model, data_loader, optimizer, seed=cfg.SEED,
                                           mixed_precision=cfg.SOLVER.AMP.ENABLED)
        if self._trainer.autocast_dtype == torch.bfloat16:
            logger.info("SOLVER.AMP.ENABLED on CPU: the forward runs under bfloat16 autocast "
                        "(no loss scaling needed).")
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DaTaSegCheckpointer(
            # Checkpoints are saved with the logs and metrics.
            model, cfg.OUTPUT_DIR,
            min_backbone_fraction=cfg.MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION,
            trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

        if comm.is_main_process():
            # A job killed while saving leaves a temporary file of its checkpoint: the next
            # run in the folder removes it (only now: no save of this run is in flight).
            self.checkpointer.remove_stale_temporary_files()
        # Before the first step: loads the text encoder, so absent weights fail now.
        prepare_train_vocabularies(_unwrap(model), cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
        self._monitor_train_loader(self._trainer.data_loader)

    def _monitor_train_loader(self, loader):
        self._trainer.reset_data_loader(lambda: SkippedImagesMonitor(
            loader, self.cfg.INPUT.DATASEG.MAX_SKIPPED_IMAGES))

    @property
    def skipped_images(self) -> int:
        """Training images skipped so far in this process."""
        return self._trainer.data_loader.skipped

    def state_dict(self):
        ret = super().state_dict()
        ret["seed"] = int(self.cfg.SEED)
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._checkpoint_seed = state_dict.get("seed", None)

    def train(self):
        """Train, then return the results of the final evaluation ({} when none ran)."""
        super().train()
        return getattr(self, "_last_eval_results", {})

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
        seed = getattr(self, "_checkpoint_seed", None)
        seed_changed = seed is not None and int(seed) != self.cfg.SEED
        if seed_changed:
            logger.info(f"Resuming with the checkpoint's seed {seed} (config: {self.cfg.SEED}).")
            self.cfg = _with_seed(self.cfg, seed)
            self._trainer.seed = int(seed)
        if self.start_iter > 0 or seed_changed:
            # The loader was built before the checkpoint told us where training stopped; the
            # multi-dataset stream is a function of (seed, iteration), so rebuild it from there.
            self._monitor_train_loader(self.build_train_loader(self.cfg, self.start_iter))

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
        for name in cfg.DATASETS.TEST:  # detectron2's names of the benchmarks (--eval-only)
            adopt_detectron2_registration(name)
        results = super().test(cfg, model, evaluators)
        if len(cfg.DATASETS.TEST) == 1:
            # detectron2 unwraps a single dataset's results; keep one shape for callers.
            results = OrderedDict([(cfg.DATASETS.TEST[0], results)])
        if comm.is_main_process() and results:
            logger.info("DaTaSeg results:\n" + format_results_table(results))
        return results
