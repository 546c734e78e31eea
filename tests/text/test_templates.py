import pytest

from dataseg.text.templates import (
    TEMPLATE_SETS,
    fill_template,
    get_templates,
    register_template_set,
)


def test_builtin_sets():
    assert get_templates("single") == ("a photo of a {}.",)
    assert get_templates("none") == ("{}",)
    assert 3 <= len(get_templates("imagenet_short")) <= 10
    for templates in TEMPLATE_SETS.values():
        assert all(t.count("{}") == 1 for t in templates)


def test_unknown_set_lists_known():
    with pytest.raises(KeyError, match="imagenet_short"):
        get_templates("nope")


def test_explicit_list_and_register():
    assert get_templates(["{} here"]) == ("{} here",)
    with pytest.raises(ValueError):
        get_templates(["no placeholder"])
    register_template_set("_test_text_templates", ["itap of a {}."])
    assert get_templates("_test_text_templates") == ("itap of a {}.",)
    with pytest.raises(ValueError):
        register_template_set("_test_text_templates", ["{}"])


def test_fill_template_keeps_braces_in_names():
    assert fill_template("a photo of a {}.", "x{y}") == "a photo of a x{y}."
