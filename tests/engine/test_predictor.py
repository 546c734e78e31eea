"""dataseg.engine.DaTaSegPredictor and plain detectron2 DefaultPredictor on a DaTaSeg config."""

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.colormap import colormap

from dataseg.engine import DaTaSegCheckpointer, DaTaSegPredictor, get_dataseg_cfg
from dataseg.utils import draw_predictions, visualization_metadata
from helpers import TINY_CONFIG, TINY_OPTS


def tiny_cfg(*opts):
    return get_dataseg_cfg(TINY_CONFIG, TINY_OPTS + list(opts))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised tiny model saved by the project's checkpointer."""
    out = tmp_path_factory.mktemp("predictor_weights")
    torch.manual_seed(0)
    DaTaSegCheckpointer(build_model(tiny_cfg()), save_dir=str(out)).save("model")
    return str(out / "model.pth")


@pytest.fixture
def image():
    """A 48x64 BGR image (shortest edge 48)."""
    return np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)


def record_inputs(model):
    """The image tensors the model receives, appended at every call."""
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0][0]["image"].clone()))
    return seen


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_predictor_converts_bgr_and_resizes_like_the_config(fmt, weights, image):
    cfg = tiny_cfg("INPUT.FORMAT", fmt, "INPUT.MIN_SIZE_TEST", "32", "MODEL.WEIGHTS", weights)
    predictor = DaTaSegPredictor(cfg, classes=["circle", "block", "meadow"], task="semantic")
    seen = record_inputs(predictor.model)
    out = predictor(image)
    assert set(out) == {"sem_seg"}
    assert tuple(out["sem_seg"].shape) == (3, 48, 64)  # back at the original size
    # shortest edge 48 -> 32: 64 * 32 / 48 = 42.67 -> 43 columns, in the config's channel order
    assert tuple(seen[0].shape) == (3, 32, 43)
    # Channel order: a BGR image with one constant per channel reaches the model in INPUT.FORMAT.
    bgr = np.empty((48, 64, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 120, 230
    predictor(bgr)
    expected = [10, 120, 230] if fmt == "BGR" else [230, 120, 10]
    assert [int(c) for c in seen[1][:, 0, 0]] == expected and bool((seen[1] == seen[1][:, :1, :1]).all())
    # The same model run by hand on the hand-resized image gives the same scores.
    from detectron2.data import transforms as T

    x = image if fmt == "BGR" else image[:, :, ::-1]
    resized = T.ResizeShortestEdge(32, 64).get_transform(x).apply_image(x)
    by_hand = predictor.model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()),
                                "height": 48, "width": 64,
                                "dataset_name": "dataseg_predictor"}])[0]
    torch.testing.assert_close(out["sem_seg"], by_hand["sem_seg"])


def test_set_vocabulary_switches_classes_without_reloading(weights, image, monkeypatch):
    loads = []
    original = DaTaSegCheckpointer.load
    monkeypatch.setattr(DaTaSegCheckpointer, "load",
                        lambda self, *a, **k: loads.append(a) or original(self, *a, **k))
    cfg = tiny_cfg("MODEL.WEIGHTS", weights)
    predictor = DaTaSegPredictor(cfg, classes=["circle", "block", "meadow"], task="semantic")
    model = predictor.model
    assert predictor(image)["sem_seg"].shape[0] == 3
    predictor.set_vocabulary(classes=["ocean", "meadow, lawn"], task="semantic")
    switched = predictor(image)
    assert predictor.model is model and len(loads) == 1
    assert switched["sem_seg"].shape[0] == 2 and predictor.class_names == ["ocean", "meadow, lawn"]
    fresh = DaTaSegPredictor(cfg, classes=["ocean", "meadow, lawn"], task="semantic")(image)
    torch.testing.assert_close(switched["sem_seg"], fresh["sem_seg"])


def test_registered_vocabulary_gives_its_test_size_outputs_and_palette(
        weights, image, synthetic_datasets):
    pan, sem = synthetic_datasets["panoptic_val"], synthetic_datasets["semantic_val"]
    cfg = tiny_cfg("MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{pan}', '{sem}')",
                   "INPUT.DATASEG.MIN_SIZES_TEST", "[32, 40]",
                   "INPUT.DATASEG.MAX_SIZES_TEST", "[64, 64]")
    predictor = DaTaSegPredictor(cfg, vocabulary=sem)
    seen = record_inputs(predictor.model)
    out = predictor(image)
    assert set(out) == {"sem_seg"}  # what the semantic dataset is evaluated with
    assert out["sem_seg"].shape[0] == len(MetadataCatalog.get(sem).dataseg_classes)
    assert seen[0].shape[-2] == 40  # INPUT.DATASEG.MIN_SIZES_TEST of that dataset

    predictor.set_vocabulary(vocabulary=pan)
    out = predictor(image)
    meta = MetadataCatalog.get(pan)
    assert set(out) == {"panoptic_seg"} and seen[-1].shape[-2] == 32
    assert predictor.isthing == list(meta.dataseg_isthing)
    assert predictor.metadata.stuff_colors == meta.stuff_colors  # the dataset's own palette


def test_union_of_a_registered_vocabulary_and_extra_classes_with_several_tasks(
        weights, image, synthetic_datasets):
    pan = synthetic_datasets["panoptic_val"]
    meta = MetadataCatalog.get(pan)
    predictor = DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", weights), vocabulary=pan,
                                 classes=["kite", "Disk"], task=["panoptic", "semantic"])
    n = len(meta.dataseg_classes)
    # "Disk" is already the dataset's "disk": not repeated
    assert predictor.class_names == list(meta.dataseg_classes) + ["kite"]
    assert predictor.isthing == list(meta.dataseg_isthing) + [True]
    out = predictor(image)
    assert set(out) == {"panoptic_seg", "sem_seg"} and out["sem_seg"].shape[0] == n + 1
    # the dataset's colours, then detectron2's fixed colormap for the extra class
    assert predictor.metadata.stuff_colors[:n] == meta.stuff_colors
    assert predictor.metadata.stuff_colors[n] == [int(v) for v in colormap(rgb=True)[n]]


def test_plain_default_predictor_uses_the_default_vocabulary(weights, image,
                                                             synthetic_datasets):
    pan, sem = synthetic_datasets["panoptic_val"], synthetic_datasets["semantic_val"]
    cfg = tiny_cfg("MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{pan}', '{sem}')",
                   "MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD", "0.0")
    plain = DefaultPredictor(cfg)(image)  # detectron2's, inputs without dataset_name
    ours = DaTaSegPredictor(cfg)(image)   # no vocabulary given: the same default
    assert set(plain) == set(ours) == {"panoptic_seg"}  # DATASETS.TEST[0] is panoptic
    assert len(ours["panoptic_seg"][1]) > 0
    assert torch.equal(plain["panoptic_seg"][0], ours["panoptic_seg"][0])
    assert plain["panoptic_seg"][1] == ours["panoptic_seg"][1]

    cfg.MODEL.DATASEG.TEST.DEFAULT_VOCABULARY = sem
    out = DefaultPredictor(cfg)(image)
    assert set(out) == {"sem_seg"}
    assert out["sem_seg"].shape[0] == len(MetadataCatalog.get(sem).dataseg_classes)


def test_default_predictor_without_any_vocabulary_says_how_to_name_one(weights, image):
    cfg = tiny_cfg("MODEL.WEIGHTS", weights, "DATASETS.TEST", "()")
    with pytest.raises(ValueError, match="MODEL.DATASEG.TEST.DEFAULT_VOCABULARY"):
        DefaultPredictor(cfg)(image)
    with pytest.raises(ValueError, match="No vocabulary.*classes="):
        DaTaSegPredictor(cfg)


def test_bad_arguments_fail_with_a_message(weights, tmp_path):
    cfg = tiny_cfg("MODEL.WEIGHTS", weights)
    with pytest.raises(ValueError, match="'no_such_dataset' is not a dataset registered"):
        DaTaSegPredictor(cfg, vocabulary="no_such_dataset")
    with pytest.raises(ValueError, match="Unknown task 'depth'"):
        DaTaSegPredictor(cfg, classes=["a"], task="depth")
    with pytest.raises(ValueError, match="isthing has 1 flags for 2 classes"):
        DaTaSegPredictor(cfg, classes=["a", "b"], task="panoptic", isthing=[True])
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "nope.pth")), classes=["a"])
    with pytest.raises(FileNotFoundError, match=r"nope.pth'"):  # the query is not the file
        DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "nope.pth?matching_heuristics=True")),
                         classes=["a"])
    predictor = DaTaSegPredictor(cfg, classes=["a"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) BGR numpy image"):
        predictor(np.zeros((4, 4), np.uint8))


def test_predictor_loads_with_the_project_checkpointer(tmp_path):
    model = build_model(tiny_cfg("MODEL.DATASEG.TEXT.RANDOM_DIM", "32"))
    DaTaSegCheckpointer(model, save_dir=str(tmp_path)).save("other_width")
    with pytest.raises(ValueError, match="text dimension 32"):
        DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "other_width.pth")),
                         classes=["a", "b"])


def test_drawings_use_the_dataset_palette(synthetic_datasets):
    """Semantic drawing over a black image: each region is alpha 0.8 of its class colour."""
    meta = MetadataCatalog.get(synthetic_datasets["panoptic_val"])
    scores = torch.zeros(len(meta.dataseg_classes), 64, 64)
    scores[0, :, :32] = 1.0  # left half: class 0 ("disk", crimson)
    scores[4, :, 32:] = 1.0  # right half: class 4 ("water", blue)
    drawing = draw_predictions(
        np.zeros((64, 64, 3), np.uint8), {"sem_seg": scores}, meta.dataseg_classes, "sem_seg",
        metadata=visualization_metadata(meta.dataseg_classes, meta))
    for (row, col), k in (((8, 8), 0), ((8, 56), 4)):
        expected = 0.8 * np.array(meta.stuff_colors[k])
        assert np.abs(drawing[row, col].astype(float) - expected).max() <= 3, (k, drawing[row, col])


def test_repeated_class_names_are_one_class(weights):
    predictor = DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", weights + "?matching_heuristics=True"),
                                 classes=["dog", "Dog ", "cat", "dog"], task="semantic")
    assert predictor.class_names == ["dog", "cat"]


@pytest.mark.parametrize("key, value", [("HIDDEN_DIM", 32), ("NUM_QUERIES", 30)])
def test_predictor_refuses_weights_of_another_architecture(tmp_path, image, monkeypatch, caplog,
                                                           key, value):
    """A checkpoint of another decoder width / query count would run partly random."""
    torch.manual_seed(0)
    trained = build_model(tiny_cfg(f"MODEL.DATASEG.DECODER.{key}", str(value)))
    DaTaSegCheckpointer(trained, save_dir=str(tmp_path)).save("other")
    path = str(tmp_path / "other.pth")
    default = tiny_cfg().MODEL.DATASEG.DECODER[key]
    with pytest.raises(ValueError, match=rf"MODEL.DATASEG.DECODER.{key} is {default} in the "
                                         rf"config, {value} in the file"):
        DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", path), classes=["a", "b"], task="semantic")
    # On purpose: what fits is loaded, detectron2 reports what is skipped.
    import logging

    monkeypatch.setattr(logging.getLogger("fvcore"), "propagate", True)
    caplog.set_level(logging.WARNING)
    predictor = DaTaSegPredictor(
        tiny_cfg("MODEL.WEIGHTS", path, "MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS", "True"),
        classes=["a", "b"], task="semantic")
    assert "Skip loading parameter 'transformer_decoder.query_feat.weight'" in caplog.text
    got, saved = predictor.model.state_dict(), trained.state_dict()
    torch.testing.assert_close(got["backbone.stem.conv1.weight"],
                               saved["backbone.stem.conv1.weight"])
    assert got["transformer_decoder.query_feat.weight"].shape == (20, 64)
    assert tuple(predictor(image)["sem_seg"].shape) == (2, 48, 64)


def test_predictor_loads_every_tensor_of_a_matching_checkpoint(weights):
    predictor = DaTaSegPredictor(tiny_cfg("MODEL.WEIGHTS", weights), classes=["a"])
    saved = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    got = predictor.model.state_dict()
    assert got.keys() == saved.keys()
    for key, value in got.items():
        torch.testing.assert_close(value, saved[key])
