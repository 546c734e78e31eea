"""Pretrained weights: conversion of the formats users have, and loads that fill nothing fail.

The state dicts are built here with torchvision's and timm's own model definitions (random
weights; no download), converted with ``dataseg.tools.convert_weights`` and loaded through
the project's checkpointer into DaTaSeg models of the same backbone.
"""

import logging
import pickle

import pytest
import torch
from detectron2.modeling import build_model

from dataseg.engine import DaTaSegCheckpointer, get_dataseg_cfg
from dataseg.tools.convert_weights import convert_state_dict, main as convert_main
from helpers import REPO, TINY_CONFIG as CONFIG, TINY_OPTS as TINY

R18 = TINY + ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
              "MODEL.RESNETS.WIDTH_PER_GROUP", "64", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64"]
VITDET = str(REPO / "configs" / "tiny" / "DaTaSeg-tiny-ViTDet.yaml")


def _load(cfg_file, opts, path):
    model = build_model(get_dataseg_cfg(cfg_file, opts))
    DaTaSegCheckpointer(model, min_backbone_fraction=0.5).load(path)
    return model


def _save_converted(state, fmt, tmp_path):
    path = tmp_path / f"{fmt}.pkl"
    with open(path, "wb") as f:
        pickle.dump(convert_state_dict(state, fmt), f)
    return str(path)


def _assert_resnet_loaded(model, state):
    got = model.state_dict()
    pairs = {"backbone.stem.conv1.weight": "conv1.weight",
             "backbone.stem.conv1.norm.running_mean": "bn1.running_mean",
             "backbone.res2.0.conv1.weight": "layer1.0.conv1.weight",
             "backbone.res3.0.shortcut.weight": "layer2.0.downsample.0.weight",
             "backbone.res3.0.shortcut.norm.weight": "layer2.0.downsample.1.weight",
             "backbone.res5.1.conv2.norm.bias": "layer4.1.bn2.bias"}
    for ours, theirs in pairs.items():
        torch.testing.assert_close(got[ours], state[theirs])


def test_torchvision_resnet_converts_and_loads(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dataseg")
    torchvision = pytest.importorskip("torchvision")
    state = torchvision.models.resnet18(weights=None).state_dict()
    model = _load(CONFIG, R18, _save_converted(state, "torchvision-resnet", tmp_path))
    _assert_resnet_loaded(model, state)
    assert "Loaded 100.0 % of the backbone trunk" in caplog.text


def test_timm_resnet_converts_and_loads(tmp_path):
    timm = pytest.importorskip("timm")
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    model = _load(CONFIG, R18, _save_converted(state, "timm-resnet", tmp_path))
    _assert_resnet_loaded(model, state)


def test_mae_vit_converts_and_loads_into_vitdet(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="dataseg")
    timm = pytest.importorskip("timm")
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=0)
    state = {**vit.state_dict(), "mask_token": torch.zeros(1, 1, 64),
             "decoder_embed.weight": torch.zeros(32, 64)}  # MAE's decoder part
    path = tmp_path / "mae.pth"
    torch.save({"model": state}, path)
    out = tmp_path / "mae_converted.pkl"
    assert convert_main(["--format", "mae-vit", str(path), str(out)]) == 0
    model = _load(VITDET, TINY, str(out))
    got = model.state_dict()
    torch.testing.assert_close(got["backbone.net.patch_embed.proj.weight"],
                               state["patch_embed.proj.weight"])
    torch.testing.assert_close(got["backbone.net.blocks.1.attn.qkv.weight"],
                               state["blocks.1.attn.qkv.weight"])
    assert "of the backbone trunk (backbone.net.*)" in caplog.text


def test_raw_torchvision_state_dict_fills_nothing_and_fails(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"filled only 0.0 % of the backbone.*convert_weights"):
        _load(CONFIG, R18, str(path))


def test_checkpoint_of_another_backbone_fails(tmp_path):
    model = build_model(get_dataseg_cfg(CONFIG, R18))
    DaTaSegCheckpointer(model, save_dir=str(tmp_path)).save("resnet_dataseg")
    with pytest.raises(ValueError, match="not a checkpoint of this backbone"):
        _load(VITDET, TINY, str(tmp_path / "resnet_dataseg.pth"))


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_junk_weights_file_gives_a_message(tmp_path, content):
    for suffix in (".pkl", ".pth"):
        path = tmp_path / f"junk{suffix}"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="is not a checkpoint DaTaSeg can read"):
            _load(CONFIG, TINY, str(path))


def test_checkpoint_missing_the_class_head_warns(tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    DaTaSegCheckpointer(model, save_dir=str(tmp_path)).save("full")
    data = torch.load(tmp_path / "full.pth", weights_only=False)
    data["model"] = {k: v for k, v in data["model"].items() if "class_head" not in k}
    torch.save(data, tmp_path / "no_head.pth")
    with caplog.at_level(logging.WARNING, logger="dataseg"):
        _load(CONFIG, TINY, str(tmp_path / "no_head.pth"))
    assert "does not fill the text classifier" in caplog.text
    assert "classifier.class_head.layers.0.weight" in caplog.text


# ---- inference refuses weights of another architecture ----------------------------------
def _save_with(tmp_path, *opts):
    """A tiny model built with ``opts`` (seed 0), saved; returns (model, path)."""
    torch.manual_seed(0)
    model = build_model(get_dataseg_cfg(CONFIG, TINY + list(opts)))
    DaTaSegCheckpointer(model, save_dir=str(tmp_path)).save("other")
    return model, str(tmp_path / "other.pth")


@pytest.mark.parametrize("key, value, config_value, tensor", [
    ("DECODER.NUM_QUERIES", 30, 20, "transformer_decoder.query_feat.weight"),
    ("DECODER.HIDDEN_DIM", 32, 64, "transformer_decoder.cross_attn.0.attn.in_proj_weight"),
    ("PIXEL_DECODER.CONVS_DIM", 32, 64, "pixel_decoder.level_embed"),
    ("DECODER.CLASS_HEAD_LAYERS", 2, 1, "classifier.class_head.layers.1.weight"),
    ("DECODER.NUM_LAYERS", 6, 3, "transformer_decoder.cross_attn.3.attn.in_proj_weight"),
])
def test_inference_refuses_weights_of_another_architecture(tmp_path, key, value, config_value,
                                                           tensor):
    trained, path = _save_with(tmp_path, f"MODEL.DATASEG.{key}", str(value))
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    with pytest.raises(ValueError) as info:
        DaTaSegCheckpointer(model, allow_partial=False).load(path)
    message = str(info.value)
    assert f"MODEL.DATASEG.{key} is {config_value} in the config, {value} in the file" in message
    assert tensor in message and "other.pth" in message
    assert "MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS True" in message
    # Training (fine-tuning) loads what fits: the backbone is the file's.
    DaTaSegCheckpointer(model).load(path)
    torch.testing.assert_close(model.state_dict()["backbone.stem.conv1.weight"],
                               trained.state_dict()["backbone.stem.conv1.weight"])


def test_inference_loads_a_matching_checkpoint_completely(tmp_path):
    trained, path = _save_with(tmp_path)
    torch.manual_seed(1)
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    DaTaSegCheckpointer(model, allow_partial=False).load(path)
    expected = trained.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_eval_only_refuses_weights_of_another_architecture(tmp_path, monkeypatch):
    import train_net
    from detectron2.engine import default_argument_parser

    _, path = _save_with(tmp_path / "ckpt", "MODEL.DATASEG.DECODER.NUM_QUERIES", "30")
    args = default_argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only"] + TINY
        + ["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "eval")])
    # train_net.main's eval-only branch as is; without detectron2's logging set-up (it would
    # stop later tests' caplog) and with an evaluation that records its call.
    monkeypatch.setattr(train_net, "setup", lambda a: get_dataseg_cfg(a.config_file, a.opts))
    evaluated = []
    monkeypatch.setattr(train_net.Trainer, "test",
                        classmethod(lambda cls, cfg, model: evaluated.append(model) or {}))
    with pytest.raises(ValueError, match="DECODER.NUM_QUERIES is 20 in the config, 30 in "
                                         "the file"):
        train_net.main(args)
    assert not evaluated  # refused before the first image
    args.opts += ["MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS", "True"]
    train_net.main(args)
    assert len(evaluated) == 1  # on purpose: evaluated with what fits


# ---- weights-only reading ----------------------------------------------------------------
class _RunsCode:
    """Unpickling it creates ``marker`` (what a crafted checkpoint could do instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(tmp_path, layout):
    marker = tmp_path / "code_ran"
    state = {"conv1.weight": torch.ones(2, 3, 1, 1), "bn1.weight": torch.ones(2)}
    path = tmp_path / "crafted.pth"
    torch.save({**layout(state), "payload": _RunsCode(str(marker))}, path)
    return path, marker


def test_convert_weights_refuses_a_pickle_that_runs_code(tmp_path):
    path, marker = _crafted(tmp_path, lambda state: state)
    out = tmp_path / "out.pkl"
    with pytest.raises(SystemExit, match=r"crafted.pth.*\(io.open\).*--trust-pickle"):
        convert_main(["--format", "torchvision-resnet", str(path), str(out)])
    assert not marker.exists() and not out.exists()
    # Opted in for a file the user trusts: it is unpickled (the payload runs) and converted.
    assert convert_main(["--format", "torchvision-resnet", "--trust-pickle", str(path),
                         str(out)]) == 0
    assert marker.exists()
    with open(out, "rb") as f:
        converted = pickle.load(f)["model"]
    assert sorted(converted) == ["stem.conv1.norm.weight", "stem.conv1.weight"]
    assert (converted["stem.conv1.weight"] == 1).all()


def test_checkpointer_reads_pth_weights_only(tmp_path):
    path, marker = _crafted(tmp_path, lambda state: {"model": state})
    model = build_model(get_dataseg_cfg(CONFIG, TINY))
    with pytest.raises(ValueError, match=r"crafted.pth.*pickles Python objects.*\(io.open\)"):
        DaTaSegCheckpointer(model).load(str(path))
    assert not marker.exists()
