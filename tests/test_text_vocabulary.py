import pytest

from dataseg.text.vocabulary import (
    dataset_class_names,
    normalize_class_name,
    split_synonyms,
    validate_class_names,
)


def test_split_synonyms_strips_and_drops_empty():
    assert split_synonyms("tv, television ,monitor") == ["tv", "television", "monitor"]
    assert split_synonyms("window ") == ["window"]
    assert split_synonyms("road,") == ["road"]
    with pytest.raises(ValueError):
        split_synonyms(" , ")


def test_normalize_class_name():
    assert normalize_class_name("  TV,Television ") == "tv, television"


def test_validate_rejects_empty_and_duplicates():
    with pytest.raises(ValueError, match="empty"):
        validate_class_names([])
    with pytest.raises(ValueError, match=r"\['cat'\]"):
        validate_class_names(["cat", "dog", " Cat "])
    with pytest.raises(ValueError, match="list"):
        validate_class_names("cat")
    assert validate_class_names(("a", "b")) == ["a", "b"]


def test_dataset_class_names_prefers_dataseg_classes():
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("_test_text_vocab_a").set(
        dataseg_classes=["x", "y"], stuff_classes=["s"], thing_classes=["t"]
    )
    MetadataCatalog.get("_test_text_vocab_b").set(thing_classes=["t1", "t2"])
    assert dataset_class_names("_test_text_vocab_a") == ["x", "y"]
    assert dataset_class_names("_test_text_vocab_b") == ["t1", "t2"]
    with pytest.raises(KeyError, match="registered"):
        dataset_class_names("_test_text_vocab_missing")
