"""DaTaSeg data: dataset registration (builtin + generated), task mappers, multi-dataset loader.

Importing this package registers the builtin datasets under ``$DETECTRON2_DATASETS`` and the
generated ones under ``$DETECTRON2_DATASETS/dataseg_synthetic`` (no file is needed to
register; loading a missing dataset says what to download or generate).
"""

from .build import (
    MultiDatasetBatchStream,
    build_dataseg_test_loader,
    build_dataseg_train_loader,
    build_train_schedule,
)
from .builtin import load_vocabulary, register_all_builtin
from ..tasks import TASKS, check_task
from .catalog import (
    DatasetValidationError,
    get_dataset_task,
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from .mappers import (
    MAPPER_REGISTRY,
    BoxDatasetMapper,
    DaTaSegDatasetMapper,
    InstanceDatasetMapper,
    PanopticDatasetMapper,
    SemanticDatasetMapper,
    build_dataseg_mapper,
    get_mapper_class,
    register_mapper,
)
from .sampler import MultiDatasetSchedule, sampling_ratios_from_sizes
from .synthetic import generate_synthetic_datasets, register_synthetic_datasets

from detectron2.data import DatasetCatalog as _DatasetCatalog

__all__ = [
    "TASKS", "DatasetValidationError", "check_task", "get_dataset_task",
    "register_panoptic_dataset", "register_semantic_dataset", "register_instance_dataset",
    "register_box_dataset", "register_all_builtin", "load_vocabulary",
    "generate_synthetic_datasets", "register_synthetic_datasets",
    "MAPPER_REGISTRY", "register_mapper", "get_mapper_class", "build_dataseg_mapper",
    "DaTaSegDatasetMapper", "PanopticDatasetMapper", "SemanticDatasetMapper",
    "InstanceDatasetMapper", "BoxDatasetMapper",
    "MultiDatasetSchedule", "sampling_ratios_from_sizes", "MultiDatasetBatchStream",
    "build_dataseg_train_loader", "build_dataseg_test_loader", "build_train_schedule",
]

register_all_builtin()
# Keep an earlier registration (e.g. a user's own under the default names).
if "dataseg_synth_panoptic_train" not in _DatasetCatalog:
    register_synthetic_datasets()
