"""Named prompt-template sets for text embeddings.

A class name is rarely a good sentence for a text encoder trained on captions, so each synonym
is embedded inside several templates and the (L2-normalised) results are averaged: the mean
direction keeps what the templates share, the class, and cancels each template's own bias.
The paper does not publish its templates; these lists are ours.

Sets:
    ``"imagenet_short"`` (default): a few CLIP-style photo templates, incl. one scene template
        so that stuff classes ("sky", "grass") read naturally.
    ``"scene"``: region/scene-centric templates, an ablation for stuff-heavy vocabularies.
    ``"single"``: ``"a photo of a {}."`` only.
    ``"none"``: the bare name ``"{}"`` (what sentence encoders such as MiniLM saw in training).

Register more with :func:`register_template_set`.
"""

from typing import Dict, List, Sequence, Tuple, Union

__all__ = [
    "TEMPLATE_SETS",
    "register_template_set",
    "get_templates",
    "fill_template",
    "list_template_sets",
]

PLACEHOLDER = "{}"

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {
    "imagenet_short": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a close-up photo of a {}.",
        "a cropped photo of the {}.",
        "a photo of a small {}.",
        "a photo of a large {}.",
        "there is a {} in the scene.",
    ),
    "scene": (
        "a photo of a {}.",
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "a region of {} in a photo.",
        "a photo showing {}.",
    ),
    "single": ("a photo of a {}.",),
    "none": ("{}",),
}


def _check(templates: Sequence[str]) -> Tuple[str, ...]:
    templates = tuple(templates)
    if not templates:
        raise ValueError("A template set needs at least one template.")
    for t in templates:
        if not isinstance(t, str) or t.count(PLACEHOLDER) != 1:
            raise ValueError(f"Template {t!r} must be a str with exactly one '{{}}' placeholder.")
    return templates


def register_template_set(name: str, templates: Sequence[str]) -> None:
    """Make ``templates`` selectable as ``MODEL.DATASEG.TEXT.TEMPLATES name``."""
    if name in TEMPLATE_SETS:
        raise ValueError(f"Template set {name!r} already exists.")
    TEMPLATE_SETS[name] = _check(templates)


def get_templates(templates: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Resolve a template-set name (or pass an explicit list through, validated)."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise KeyError(
                f"Unknown prompt-template set {templates!r}; known: {sorted(TEMPLATE_SETS)}. "
                "Set MODEL.DATASEG.TEXT.TEMPLATES to one of them or call "
                "dataseg.text.register_template_set()."
            )
        return TEMPLATE_SETS[templates]
    return _check(templates)


def fill_template(template: str, name: str) -> str:
    """Insert ``name`` at the placeholder (not ``str.format``: names may contain braces)."""
    return template.replace(PLACEHOLDER, name, 1)


def list_template_sets() -> List[str]:
    return sorted(TEMPLATE_SETS)
