"""Checks that run before the first training iteration, so bad input fails in seconds.

Dataset files are checked where they are loaded (``build_train_loader`` loads every training
dataset and validates a sample of its files, see ``dataseg.data.catalog``); this module covers
what the loader cannot: names, per-dataset config lists, vocabularies and the text encoder.
"""

import difflib
import logging
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.builtin import adopt_detectron2_registration
from ..data.sampler import check_sampling_ratios
from ..evaluation import check_evaluator
from ..text.vocabulary import validate_class_names

__all__ = ["check_train_config", "check_test_datasets", "prepare_train_vocabularies"]

logger = logging.getLogger(__name__)


def check_train_config(cfg) -> None:
    """Config-level checks of a training run (cheap; no file is read).

    Raises:
        ValueError: DATASETS.TRAIN is empty, or the sampling ratios are misaligned, negative
            or all zero.
        KeyError: a training dataset is not registered (with the closest registered names).
    """
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty; list the datasets to train on.")
    registered = DatasetCatalog.list()
    for name in names:
        _require_registered(name, "Training", "DATASETS.TRAIN", registered)
    for name in cfg.DATASETS.TEST:
        # Found now rather than at the first evaluation, possibly days later.
        _require_registered(name, "Test", "DATASETS.TEST", registered)
    check_sampling_ratios(cfg.DATALOADER.DATASEG.SAMPLING_RATIOS, names)


def check_test_datasets(cfg) -> None:
    """What the final evaluation needs, checked before the first iteration.

    Without this, a test dataset without DaTaSeg metadata, with missing files, or whose
    evaluator lacks a package fails only when the run evaluates, possibly days in.
    detectron2's own names of the builtin benchmarks (``ade20k_sem_seg_val``) are accepted:
    they get the metadata of their ``dataseg_`` twin (``adopt_detectron2_registration``).

    Raises:
        KeyError: a test dataset has no DaTaSeg metadata.
        ImportError: its evaluator needs a package that is not installed.
        FileNotFoundError, DatasetValidationError: its files are missing or inconsistent
            (the loader's own checks, run now).
    """
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if not adopt_detectron2_registration(name) or meta.get("dataseg_task", None) is None:
            raise KeyError(
                f"Test dataset {name!r} (DATASETS.TEST) has no DaTaSeg metadata (dataseg_task, "
                "dataseg_classes): it was registered without dataseg.data.register_*_dataset; "
                "register it with one of those helpers (detectron2's own names of the builtin "
                "benchmarks get them from their dataseg_ registration)."
            )
        check_evaluator(name)  # unknown evaluator type, missing package
        if not DatasetCatalog.get(name):
            raise ValueError(f"Test dataset {name!r} has no images.")


def _require_registered(name: str, role: str, key: str, registered: Sequence[str]) -> None:
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        raise KeyError(
            f"{role} dataset {name!r} ({key}) is not registered"
            + (f"; did you mean {close}?" if close else ".")
            + " `import dataseg` registers the builtin and synthetic datasets; register your "
            "own with dataseg.data.register_*_dataset before building the trainer."
        )


def prepare_train_vocabularies(model, dataset_names: Sequence[str],
                               test_dataset_names: Sequence[str] = ()) -> None:
    """Validate and embed the vocabulary of every training dataset now.

    The model would embed each vocabulary lazily at the first batch of its dataset, possibly
    hours into training; doing it up front surfaces an unknown task, an empty vocabulary,
    duplicate class names and absent text-encoder weights before the first step. Test
    vocabularies known from metadata are embedded too, so that evaluation needs no text model,
    and the text model is then released: CLIP ViT-L/14's text tower would otherwise stay in
    memory for the whole run (a vocabulary seen later loads it again on demand).
    """
    if not hasattr(model, "dataset_info") or not hasattr(model, "classifier"):
        return  # not a DaTaSeg model (custom meta-architecture)
    for name in test_dataset_names:
        classes = MetadataCatalog.get(name).get("dataseg_classes", None)
        if classes is not None:
            try:
                validate_class_names(classes)
            except ValueError as e:
                raise ValueError(f"Test dataset {name!r}: {e}") from e
    vocabularies = {}  # name -> classes, training datasets first
    for name in dataset_names:
        info = model.dataset_info(name)  # raises on a missing/unknown task
        try:
            classes = validate_class_names(info["classes"])
        except ValueError as e:
            raise ValueError(f"Training dataset {name!r}: {e}") from e
        vocabularies[name] = classes
    for name in test_dataset_names:
        if name not in vocabularies and \
                MetadataCatalog.get(name).get("dataseg_classes", None) is not None:
            vocabularies[name] = model.dataset_info(name)["classes"]
    for name, classes in vocabularies.items():
        if not model.classifier.has_vocabulary(name):
            model.classifier.set_vocabulary(name, classes)
    logger.info(f"Embedded the vocabularies of {list(vocabularies)}.")
    provider = getattr(model.classifier, "embedding_provider", None)
    if provider is not None and hasattr(provider, "release_encoder"):
        provider.release_encoder()
