"""Training/evaluation glue around detectron2's engine."""

from .checkpoint import DaTaSegCheckpointer  # noqa: F401
from .optimizer import build_dataseg_optimizer  # noqa: F401
from .results_table import format_results_table, summarize_results  # noqa: F401
from .setup import get_dataseg_cfg, setup  # noqa: F401
from .step_trainer import DaTaSegStepTrainer  # noqa: F401
from .trainer import DaTaSegTrainer, create_ddp_model  # noqa: F401
from .predictor import DaTaSegPredictor  # noqa: F401
