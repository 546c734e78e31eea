"""What the criterion needs to know about a batch besides predictions and targets."""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

__all__ = ["CriterionContext"]


@dataclass
class CriterionContext:
    """Per-batch context of ``MergeCriterion`` (a batch always comes from one dataset).

    Attributes:
        dataset_name: the batch's training dataset (selects the per-dataset loss multiplier).
        task: a row of the task table ``dataseg.tasks`` (metadata ``dataseg_task``): selects
            the MERGE rule and the supervision.
        is_thing: bool (C,) thing/stuff split of the dataset's vocabulary (metadata
            ``dataseg_isthing``); None means every class is a thing.
        images: (B, 3, H, W) normalised padded images; only the pairwise colour term uses them.
        image_sizes: unpadded (h, w) of each image.
        iteration: training iteration (warm-up of the pairwise term).
    """

    dataset_name: str
    task: str
    is_thing: Optional[torch.Tensor] = None
    images: Optional[torch.Tensor] = None
    image_sizes: List[Tuple[int, int]] = field(default_factory=list)
    iteration: int = 0

