"""What each DaTaSeg task means, in one table.

A dataset's task (metadata ``dataseg_task``) decides everything that differs between datasets
besides the vocabulary: which proposals the MERGE combines before matching, which kind of
ground truth the criterion supervises with, what inference produces for evaluation by default,
and the thing flag its classes get when the metadata gives none. The data mappers, the
criterion and the meta-architecture all read this table; nothing else tests task names.

=========  ===========================  ===========  ==============  ===============
task       MERGE rule (before matching)  supervision  default outputs  classes are
=========  ===========================  ===========  ==============  ===============
panoptic   same-class STUFF proposals    masks        panoptic_seg    as registered
semantic   same-class proposals (all)    masks        sem_seg         stuff
instance   none                          masks        instances       things
box        none                          boxes        instances       things
=========  ===========================  ===========  ==============  ===============

The mapper of each task is registered by the mappers themselves
(``dataseg.data.mappers.MAPPER_REGISTRY``, keyed by these names).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["TaskSpec", "TASK_SPECS", "TASKS", "TEST_OUTPUTS", "get_task", "check_task",
           "resolve_test_outputs"]

MERGE_RULES = ("all", "stuff", "none")
SUPERVISIONS = ("masks", "boxes")
# Everything inference can produce for evaluation (detectron2's output keys).
TEST_OUTPUTS = ("sem_seg", "panoptic_seg", "instances")


@dataclass(frozen=True)
class TaskSpec:
    """One row of the task table.

    Attributes:
        name: the ``dataseg_task`` value.
        merge: which proposals MERGE combines: "all" classes, "stuff" classes only, or "none".
        supervision: "masks" (focal + dice on sampled points) or "boxes" (projection loss).
        default_test_outputs: what inference produces when the metadata does not say.
        default_isthing: the thing flag of every class when the metadata gives none (None:
            the task needs an explicit thing/stuff split).
    """

    name: str
    merge: str
    supervision: str
    default_test_outputs: Tuple[str, ...]
    default_isthing: Optional[bool]

    def __post_init__(self):
        if self.merge not in MERGE_RULES:
            raise ValueError(f"Task {self.name!r}: merge must be one of {MERGE_RULES}.")
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"Task {self.name!r}: supervision must be one of {SUPERVISIONS}.")

    @property
    def box_supervised(self) -> bool:
        return self.supervision == "boxes"


TASK_SPECS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("panoptic", "stuff", "masks", ("panoptic_seg",), None),
        TaskSpec("semantic", "all", "masks", ("sem_seg",), False),
        TaskSpec("instance", "none", "masks", ("instances",), True),
        TaskSpec("box", "none", "boxes", ("instances",), True),
    )
}

TASKS = tuple(TASK_SPECS)


def get_task(task: str) -> TaskSpec:
    """The table row of ``task``; an unknown task is a ValueError listing the known ones."""
    spec = TASK_SPECS.get(task)
    if spec is None:
        raise ValueError(f"Unknown DaTaSeg task {task!r}; valid tasks are {list(TASKS)}.")
    return spec


def check_task(task: str) -> str:
    """Return ``task`` if it is in the table, else raise a ValueError listing the tasks."""
    return get_task(task).name


def resolve_test_outputs(task: str, outputs: Optional[Sequence[str]] = None,
                         where: str = "") -> tuple:
    """What inference produces for a dataset of ``task``: ``outputs`` when given (a box
    dataset with held-out masks is evaluated on instance masks, for example), else the
    task's default; unknown outputs are a ValueError naming ``where`` (the dataset)."""
    chosen = tuple(outputs) if outputs else get_task(task).default_test_outputs
    unknown = [o for o in chosen if o not in TEST_OUTPUTS]
    if unknown:
        prefix = f"Dataset {where!r}: " if where else ""
        raise ValueError(f"{prefix}unknown test outputs {unknown}; choose from {TEST_OUTPUTS}.")
    return chosen
