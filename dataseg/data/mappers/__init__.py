"""Task mappers, looked up by a dataset's ``dataseg_task`` metadata (never by its name)."""

from typing import Dict, Type

from ...tasks import check_task
from ..catalog import get_dataset_task
from .base import DaTaSegDatasetMapper, build_lsj_augmentation, per_dataset_value, test_image_size
from .box import BoxDatasetMapper
from .instance import InstanceDatasetMapper
from .panoptic import PanopticDatasetMapper
from .semantic import SemanticDatasetMapper

__all__ = [
    "MAPPER_REGISTRY",
    "register_mapper",
    "get_mapper_class",
    "build_dataseg_mapper",
    "DaTaSegDatasetMapper",
    "PanopticDatasetMapper",
    "SemanticDatasetMapper",
    "InstanceDatasetMapper",
    "BoxDatasetMapper",
    "build_lsj_augmentation",
    "per_dataset_value",
    "test_image_size",
]

# task -> mapper class. Projects can swap the mapper of a task with ``register_mapper``.
MAPPER_REGISTRY: Dict[str, Type[DaTaSegDatasetMapper]] = {}


def register_mapper(task: str, mapper_cls: Type[DaTaSegDatasetMapper]):
    """Use ``mapper_cls`` for every dataset whose ``dataseg_task`` is ``task``."""
    MAPPER_REGISTRY[check_task(task)] = mapper_cls
    return mapper_cls


for _cls in (PanopticDatasetMapper, SemanticDatasetMapper, InstanceDatasetMapper,
             BoxDatasetMapper):
    register_mapper(_cls.task, _cls)


def get_mapper_class(dataset_name: str) -> Type[DaTaSegDatasetMapper]:
    """The mapper class for a registered dataset, from its ``dataseg_task``."""
    return MAPPER_REGISTRY[get_dataset_task(dataset_name)]


def build_dataseg_mapper(cfg, dataset_name: str, is_train: bool = True):
    """Build the training or test mapper of ``dataset_name`` from the config."""
    return get_mapper_class(dataset_name)(cfg, is_train=is_train, dataset_name=dataset_name)
