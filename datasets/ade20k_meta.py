"""ADE20k-150 categories for the panoptic and instance conversions.

The thing/stuff split is the one of the ADE20k instance-segmentation challenge (SceneParsing
2017, ``annotations_instance.tar``): its 100 instance classes are 100 of the 150 semantic
classes. ``INSTANCE_TO_SEMANTIC[k - 1]`` is the 1-based semantic class of instance class ``k``
(the challenge's category mapping table, also shipped by Mask2Former as
``ade20k_instance_catid_mapping.txt``); it happens to be increasing.

Category ids in the written jsons are the 0-based semantic ids (0 = wall ... 149 = flag), as
Mask2Former's ``prepare_ade20k_{pan,ins}_seg.py`` write them, so files written by either
tool are interchangeable.
"""

from typing import Dict, List

INSTANCE_TO_SEMANTIC = [
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38,
    39, 40, 42, 43, 44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68,
    70, 71, 72, 73, 74, 75, 76, 77, 79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93,
    94, 96, 98, 99, 103, 104, 105, 108, 109, 111, 112, 113, 116, 117, 119, 120, 121, 122, 124,
    125, 126, 127, 128, 130, 131, 133, 134, 135, 136, 137, 138, 139, 140, 143, 144, 145, 147,
    148, 149, 150,
]
assert len(INSTANCE_TO_SEMANTIC) == 100

NUM_SEMANTIC = 150


def ade20k_categories() -> List[Dict]:
    """The 150 categories (``id`` 0..149, ``name``, ``isthing``) in semantic id order."""
    # detectron2's names, so that panoptic evaluation embeds the same words as semantic
    # training on dataseg_ade20k_sem_seg_* does.
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    things = {s - 1 for s in INSTANCE_TO_SEMANTIC}
    return [dict(id=i, name=name.strip(), isthing=int(i in things))
            for i, name in enumerate(ADE20K_SEM_SEG_CATEGORIES)]
