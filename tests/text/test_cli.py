import torch

from dataseg.text import Precomputed
from dataseg.text import parse_classes
from dataseg.text.__main__ import main, nearest_classes


def test_parse_classes():
    assert parse_classes("a, b,c") == ["a", "b", "c"]
    assert parse_classes("tv, television; cat") == ["tv, television", "cat"]


def test_nearest_classes_excludes_own_vocabulary():
    vocabs = {"x": ["a", "b"], "y": ["c"]}
    emb = {"x": torch.eye(3)[:2], "y": torch.tensor([[0.6, 0.8, 0.0]])}
    out = nearest_classes(vocabs, emb, topk=5)
    assert [n for _, n in out["x/a"]] == ["y/c"]
    assert [n for _, n in out["y/c"]] == ["x/b", "x/a"]
    single = nearest_classes({"x": ["a", "b"]}, {"x": torch.eye(2)}, topk=3)
    assert [n for _, n in single["x/a"]] == ["x/b"]


def test_cli_datasets_classes_output(tmp_path, capsys):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("_test_text_cli_ds").set(stuff_classes=["cilantro", "truck"])
    out = tmp_path / "vocab.pt"
    main(
        [
            "--encoder",
            "MiniLM",
            "--templates",
            "none",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--datasets",
            "_test_text_cli_ds",
            "--classes",
            "lorry;coriander",
            "--topk",
            "1",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "_test_text_cli_ds/cilantro" in printed and "-> classes/coriander" in printed
    assert "_test_text_cli_ds/truck" in printed and "-> classes/lorry" in printed
    # The saved file is what the Precomputed encoder reads.
    enc = Precomputed(path=str(out))
    saved = torch.load(out, weights_only=True)
    assert saved["vocabularies"]["classes"] == ["lorry", "coriander"]
    assert enc.encode(["coriander"]).shape == (1, 384)
