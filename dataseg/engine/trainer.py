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

import contextlib
import logging
import re
from collections import OrderedDict

import torch
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.engine import SimpleTrainer
from detectron2.engine import defaults as d2_defaults
from detectron2.utils import comm

from ..data import build_dataseg_test_loader, build_dataseg_train_loader
from ..data.builtin import adopt_detectron2_registration
from ..evaluation import build_dataseg_evaluator
from .checkpoint import DaTaSegCheckpointer
from .optimizer import build_dataseg_optimizer
from .preflight import check_test_datasets, check_train_config, prepare_train_vocabularies
from .results_table import format_results_table
from .training_guards import NonFiniteLossCheck, SkippedImagesMonitor, StepSeeder
from .visualization_hook import PredictionVisualizationHook

__all__ = ["CPUAutocastTrainer", "DaTaSegTrainer", "PerDatasetLosses", "create_ddp_model"]

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


class CPUAutocastTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose training forward (model and losses) runs under CPU autocast.

    detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``) requires CUDA. On CPU autocast
    computes in bfloat16, whose float32-wide exponent needs no loss scaling, so the step is
    ``SimpleTrainer``'s with only the model call under ``torch.autocast("cpu")`` (backward and
    the optimizer step outside it, as autocast prescribes). The criterion computes in
    float32 whatever the model's precision (``MergeCriterion``).

    Args:
        model, data_loader, optimizer, kwargs: as ``SimpleTrainer``.
        precision: the autocast dtype.
    """

    def __init__(self, model, data_loader, optimizer, precision=torch.bfloat16, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision
        self._autocast = []
        # A pre-hook enters autocast, a hook that runs even when forward raises leaves it:
        # the model call (and nothing else of the step) is the autocast region.
        model.register_forward_pre_hook(self._enter_autocast)
        model.register_forward_hook(self._exit_autocast, always_call=True)

    def _enter_autocast(self, module, args):
        region = torch.autocast("cpu", dtype=self.precision, enabled=module.training)
        region.__enter__()
        self._autocast.append(region)

    def _exit_autocast(self, module, args, output):
        self._autocast.pop().__exit__(None, None, None)


def _with_seed(cfg, seed: int):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.SEED = int(seed)
    cfg.freeze()
    return cfg


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
        else model


class PerDatasetLosses(HookBase):
    """Writes every loss of an iteration a second time under the dataset it was drawn from:
    ``<dataset>/loss_ce``, ``<dataset>/total_loss``, ... next to detectron2's ``loss_ce``.

    One dataset per iteration makes the mixed curves a blend of tasks (a box-only dataset's
    classification loss is not a panoptic one's); the per-dataset curves show which dataset
    diverges. The values are the ones detectron2's trainer wrote for the iteration (averaged
    over ranks; every rank draws the same dataset), with the same smoothing, so they reach
    metrics.json and tensorboard through the usual writers. Only the final decoder layer's
    terms are repeated: the deep-supervision copies (``loss_ce_0``...) would triple the log
    line. Iterations whose metrics are not written (``gather_metric_period``) are skipped.
    """

    _AUX_LOSS = re.compile(r"_\d+$")

    def __init__(self):
        self._batch = None
        self._handle = None

    def before_train(self):
        self._handle = _unwrap(self.trainer.model).register_forward_hook(self._record)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, module, args, output):
        # The model's forward knows both the batch's dataset and the loss names.
        if module.training and isinstance(output, dict) and args and args[0]:
            self._batch = (args[0][0].get("dataset_name"), tuple(output))

    def after_step(self):
        batch, self._batch = self._batch, None
        if batch is None or batch[0] is None:
            return
        dataset, keys = batch
        storage, iteration = self.trainer.storage, self.trainer.iter
        latest = storage.latest()
        values = {}
        for key in keys + ("total_loss",):
            written = latest.get(key)
            if written is not None and written[1] == iteration and not self._AUX_LOSS.search(key):
                values[f"{dataset}/{key}"] = written[0]
        if values:
            storage.put_scalars(cur_iter=iteration, **values)


class DaTaSegTrainer(DefaultTrainer):
    """``DefaultTrainer`` that builds DaTaSeg's multi-dataset loader, evaluators and optimizer.

    Everything else (hooks, ETA/JSON/tensorboard writers, evaluation schedule) is
    detectron2's; checkpoints go through :class:`DaTaSegCheckpointer` (atomic) and every loss
    is also logged per dataset (:class:`PerDatasetLosses`). See the module docstring for the
    reliability policy.
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
        with _cpu_aware_ddp():
            super().__init__(cfg)
        if comm.is_main_process():
            # A job killed while saving leaves a temporary file of its checkpoint: the next
            # run in the folder removes it (only now: no save of this run is in flight).
            self.checkpointer.remove_stale_temporary_files()
        if cfg.SOLVER.AMP.ENABLED and next(self.model.parameters()).device.type == "cpu":
            # DefaultTrainer built detectron2's CUDA-only AMPTrainer; same parts, CPU autocast.
            t = self._trainer
            self._trainer = CPUAutocastTrainer(t.model, t.data_loader, t.optimizer)
            logger.info("SOLVER.AMP.ENABLED on CPU: the forward runs under bfloat16 autocast "
                        "(no loss scaling needed: detectron2's GradScaler warning about CUDA can be "
                        "ignored).")
        # Before the first step: loads the text encoder, so absent weights fail now.
        prepare_train_vocabularies(_unwrap(self.model), cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)
        self._step_seeder = StepSeeder(self.cfg.SEED)
        _unwrap(self.model).register_forward_pre_hook(self._step_seeder)
        _unwrap(self.model).register_forward_hook(NonFiniteLossCheck())
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
            self._step_seeder.seed = int(seed)
        if self.start_iter > 0 or seed_changed:
            # The loader was built before the checkpoint told us where training stopped; the
            # multi-dataset stream is a function of (seed, iteration), so rebuild it from there.
            self._monitor_train_loader(self.build_train_loader(self.cfg, self.start_iter))

    def build_hooks(self):
        # DefaultTrainer.__init__ builds a plain DetectionCheckpointer just before calling this;
        # swap it here so the PeriodicCheckpointer hook holds the atomic one.
        self.checkpointer = DaTaSegCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR,
            min_backbone_fraction=self.cfg.MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION,
            **self.checkpointer.checkpointables)
        hooks = super().build_hooks()
        # Before the last hook (the metrics writer): the writer then sees this step's values.
        hooks.insert(len(hooks) - 1, PerDatasetLosses())
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
