"""Class-name lists ("vocabularies"): normalisation, synonyms and validation.

A vocabulary is the list of a dataset's class names in contiguous-id order. One entry may hold
several synonyms separated by commas (``"tv, television, monitor"``); every synonym is embedded
and the results are reduced to one class (see ``dataseg.text.ensemble``). Commas are the only
separator: ``"AC/DC"`` is one name, embedded as written.
"""

import re
import unicodedata
from collections import Counter, defaultdict
from typing import List, Optional, Sequence

__all__ = [
    "clean_class_name",
    "class_name_warning",
    "match_class_names",
    "parse_classes",
    "normalize_class_name",
    "split_synonyms",
    "validate_class_names",
    "dataset_class_names",
    "embedding_text_key",
]


def parse_classes(spec: str) -> List[str]:
    """Parse a vocabulary typed on a command line.

    ``"a,b,c"`` -> 3 classes; ``"tv, television;cat"`` -> 2 classes (the first with synonyms):
    when the string holds a ";", classes are separated by ";" and commas separate synonyms.
    """
    sep = ";" if ";" in spec else ","
    return [c.strip() for c in spec.split(sep) if c.strip()]


def match_class_names(classes: Sequence[str], names: Sequence[str]) -> List[bool]:
    """Which of ``classes`` the ``names`` designate: one flag per class.

    A name designates a class when it equals the class (synonyms included, ``"tv, monitor"``)
    or any one of its synonyms, ignoring case and spaces around commas, so ``--things`` can
    say ``"TV"`` or ``"tv, monitor"`` for the class ``"tv, monitor"``.

    Raises:
        ValueError: a name designates no class (the message lists the classes).
    """
    keys = [normalize_class_name(c) for c in classes]
    synonyms = [set(k.split(", ")) for k in keys]
    flags = [False] * len(classes)
    unknown = []
    for name in names:
        key = normalize_class_name(name)
        hits = [i for i, (k, syn) in enumerate(zip(keys, synonyms))
                if key == k or key in syn or set(key.split(", ")) <= syn]
        if not hits:
            unknown.append(name)
        for i in hits:
            flags[i] = True
    if unknown:
        raise ValueError(f"{unknown} name no class of {list(classes)}")
    return flags


# Dataset-internal suffixes (COCO-stuff's "-merged", "-other", "-stuff") and words run
# together (Pascal VOC / Context) that a text encoder would embed as written.
_ID_SUFFIX = re.compile(r"-(merged|other|stuff)$")
_RUN_TOGETHER = {"tvmonitor": "tv, monitor", "pottedplant": "potted plant",
                 "diningtable": "dining table"}
# COCO-stuff names a material after its kind ("wall-brick"): in words, "brick wall".
_KIND_FIRST = ("wall", "floor")


def clean_class_name(name: str) -> str:
    """The words a text encoder should see for a dataset's raw class name.

    ``"sky-other-merged"`` -> ``"sky"``, ``"door-stuff"`` -> ``"door"``, ``"wall-brick"`` ->
    ``"brick wall"``, ``"window-blind"`` -> ``"window blind"``, ``"tvmonitor"`` ->
    ``"tv, monitor"``, ``"window "`` -> ``"window"``; ordinary names are returned stripped.
    """
    text = name.strip()
    if text.lower() in _RUN_TOGETHER:
        return _RUN_TOGETHER[text.lower()]
    stripped = False
    while _ID_SUFFIX.search(text):
        text, stripped = _ID_SUFFIX.sub("", text), True
    if "," not in text and text.count("-") == 1:
        first, second = text.split("-")
        if first in _KIND_FIRST:
            return f"{second} {first}"
        if stripped or first == "window":
            return f"{first} {second}"
    return text


def class_name_warning(name: str) -> Optional[str]:
    """Why ``name`` looks like a dataset id rather than words (None when it looks fine)."""
    cleaned = clean_class_name(name)
    if cleaned != name.strip():
        return (f"class name {name!r} looks like a dataset id, not words; the text encoder "
                f"embeds it as written. Consider {cleaned!r}.")
    return None


def split_synonyms(class_name: str) -> List[str]:
    """Split ``"tv, television, monitor"`` into ``["tv", "television", "monitor"]``.

    Empty pieces (``"road,"``) are dropped; a name without commas is its own single synonym.
    """
    synonyms = [part.strip() for part in class_name.split(",")]
    synonyms = [s for s in synonyms if s]
    if not synonyms:
        raise ValueError(f"Class name {class_name!r} is empty after stripping whitespace/commas.")
    return synonyms


def normalize_class_name(class_name: str) -> str:
    """Canonical form used to compare names: lowercase, stripped, synonyms joined by ", "."""
    return ", ".join(s.lower() for s in split_synonyms(class_name))


def embedding_text_key(class_name: str) -> tuple:
    """What a text encoder sees of a class: its synonyms once unicode forms, accents, case and
    spacing are normalised away (MiniLM's uncased tokenizer strips accents, CLIP's lowercases
    and cleans whitespace), as a sorted tuple (synonym order does not change the average).

    ``"Café"``, ``"cafe"`` and ``"ｃａｆｅ"`` (full-width) have the same key.
    """
    text = unicodedata.normalize("NFKD", class_name)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return tuple(sorted({" ".join(s.casefold().split()) for s in split_synonyms(text)}))


def validate_class_names(class_names: Sequence[str]) -> List[str]:
    """Check a vocabulary and return it as a list of str.

    Raises:
        ValueError: if the list is empty, holds a non-string or empty name, or two names are
            equal after :func:`normalize_class_name` or have the same
            :func:`embedding_text_key` (``"cafe"`` and ``"café"``): two columns would then
            compete for the same concept with (nearly) identical embeddings and the classifier
            could never separate them.
    """
    if isinstance(class_names, str):
        raise ValueError(
            f"Expected a list of class names, got the string {class_names!r}; wrap it in a list."
        )
    names = list(class_names)
    if not names:
        raise ValueError("The class-name list is empty; a vocabulary needs at least one class.")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise ValueError(f"Class name #{i} is {type(name).__name__} {name!r}, expected str.")
    counts = Counter(normalize_class_name(n) for n in names)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    if duplicates:
        raise ValueError(
            "Duplicate class names after normalisation (lowercase, strip): "
            f"{duplicates}. Rename or merge them so every class has a distinct name."
        )
    by_key = defaultdict(list)
    for name in names:
        by_key[embedding_text_key(name)].append(name)
    collisions = [group for group in by_key.values() if len(group) > 1]
    if collisions:
        raise ValueError(
            f"Class names {collisions[:5]} differ only by accents, unicode form, case, spacing "
            "or synonym order: a text encoder sees the same text for each and gives them "
            "(nearly) identical embeddings, so the classifier cannot tell them apart. Rename "
            "them with different words, or merge them into one class."
        )
    return names


def dataset_class_names(dataset_name: str) -> List[str]:
    """Vocabulary of a dataset registered in detectron2's ``MetadataCatalog``.

    Reads ``dataseg_classes`` when present, else ``stuff_classes`` (which for detectron2's
    panoptic and semantic datasets lists every class), else ``thing_classes``.
    """
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(dataset_name)
    for key in ("dataseg_classes", "stuff_classes", "thing_classes"):
        names = metadata.get(key, None)
        if names:
            return list(names)
    raise KeyError(
        f"Dataset {dataset_name!r} has no class names in MetadataCatalog (looked for "
        "dataseg_classes, stuff_classes, thing_classes). Is it registered? `import dataseg` "
        "registers the DaTaSeg datasets."
    )
