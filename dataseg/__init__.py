"""DaTaSeg: one universal multi-dataset multi-task segmentation model, as a detectron2 extension.

``import dataseg`` registers the meta-architecture, its parts, the datasets and the evaluators
with detectron2's registries and catalogs.
"""

from .config import add_dataseg_config, check_dataseg_config  # noqa: F401
from . import text, modeling, data, evaluation  # noqa: F401  (registration side effects)

__version__ = "0.1.0"
