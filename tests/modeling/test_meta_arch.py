"""DaTaSeg meta-architecture: training losses/gradients, inference outputs, vocabularies."""

import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances

from helpers import BOX, INS, PAN, SEM, make_inputs, model_cfg, register_model_metadata


@pytest.fixture(scope="module", autouse=True)
def metadata():
    register_model_metadata()


@pytest.fixture
def model(tmp_path):
    torch.manual_seed(0)
    return build_model(model_cfg(tmp_path))


def test_train_forward_losses_and_gradients(model):
    model.train()
    losses = model(make_inputs(PAN))
    assert {"loss_ce", "loss_focal", "loss_dice"} <= set(losses)
    assert any(k.endswith("_0") for k in losses)  # deep supervision
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert has_grad(model.backbone)
    assert has_grad(model.pixel_decoder)
    assert has_grad(model.transformer_decoder)
    assert has_grad(model.classifier.class_head)
    assert model.classifier.background_embedding.grad is not None
    assert model.classifier.background_embedding.grad.abs().sum() > 0
    # Text embeddings are frozen buffers: not parameters, never receive gradients.
    param_ids = {id(p) for p in model.parameters()}
    for name, buf in model.classifier.named_buffers():
        if name.startswith("_vocab_weights"):
            assert id(buf) not in param_ids and not buf.requires_grad and buf.grad is None


@pytest.mark.parametrize("dataset,task", [(SEM, "semantic"), (BOX, "box"), (INS, "instance")])
def test_train_forward_other_tasks(model, dataset, task):
    model.train()
    losses = model(make_inputs(dataset, task=task))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    if task == "box":
        assert "loss_projection" in losses and "loss_focal" not in losses


def test_targets_are_padded_bool_masks_and_none_for_boxes(model):
    inputs = make_inputs(PAN, sizes=((50, 60),))
    images = model.preprocess_image(inputs)
    assert images.tensor.shape[-2:] == (64, 64)
    (t,) = model.prepare_targets(inputs, images, "panoptic")
    assert t["masks"].dtype == torch.bool and t["masks"].shape == (2, 64, 64)
    assert not t["masks"][:, 50:].any() and t["boxes"].shape == (2, 4)
    (t,) = model.prepare_targets(make_inputs(BOX, sizes=((50, 60),), task="box"), images, "box")
    assert t["masks"] is None and t["boxes"].dtype == torch.float32


def test_inference_outputs_per_task(model):
    model.eval()
    sizes = ((64, 64), (40, 56))
    inputs = make_inputs(PAN, sizes=sizes, with_targets=False)
    inputs[1]["height"], inputs[1]["width"] = 80, 112  # original size != network input size
    with torch.no_grad():
        results = model(inputs)
    for r, (h, w) in zip(results, [(64, 64), (80, 112)]):
        assert set(r) == {"sem_seg", "panoptic_seg", "instances"}
        sem = r["sem_seg"]
        assert sem.shape == (4, h, w) and sem.min() >= 0 and torch.isfinite(sem).all()
        pan, segments = r["panoptic_seg"]
        assert pan.shape == (h, w) and pan.dtype == torch.int32
        ids = {s["id"] for s in segments}
        assert set(pan.unique().tolist()) <= ids | {0}
        for s in segments:
            assert 0 <= s["category_id"] < 4 and s["isthing"] == (s["category_id"] < 2)
        inst = r["instances"]
        assert inst.image_size == (h, w)
        assert inst.pred_masks.shape[1:] == (h, w) and inst.pred_masks.dtype == torch.bool
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert (inst.pred_classes < 2).all()  # instances only for thing classes
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 2] <= w).all()
        assert (boxes[:, 3] <= h).all()

    with torch.no_grad():
        (sem_only,) = model(make_inputs(SEM, sizes=((64, 48),), with_targets=False))
        (box_only,) = model(make_inputs(BOX, sizes=((64, 48),), with_targets=False))
    assert set(sem_only) == {"sem_seg"} and sem_only["sem_seg"].shape == (3, 64, 48)
    assert set(box_only) == {"instances"} and len(box_only["instances"]) == 20


def test_vocabulary_change_changes_class_dimension(model):
    model.eval()
    with torch.no_grad():
        (before,) = model(make_inputs(SEM, sizes=((32, 32),), with_targets=False))
        model.set_vocabulary(SEM, ["a", "b", "c", "d", "e", "f", "g"])
        (after,) = model(make_inputs(SEM, sizes=((32, 32),), with_targets=False))
        model.set_vocabulary("my_custom_names", ["zebra", "road"], task="panoptic",
                             isthing=[True, False], test_outputs=("panoptic_seg", "sem_seg"))
        (custom,) = model(make_inputs("my_custom_names", sizes=((32, 32),), with_targets=False))
        model.set_vocabulary("default_outputs", ["zebra", "road"], task="panoptic",
                             isthing=[True, False])
        (default,) = model(make_inputs("default_outputs", sizes=((32, 32),), with_targets=False))
    assert before["sem_seg"].shape[0] == 3 and after["sem_seg"].shape[0] == 7
    assert custom["sem_seg"].shape[0] == 2 and "panoptic_seg" in custom
    assert set(default) == {"panoptic_seg"}  # the task table's default outputs
    feats = model.transformer_decoder.query_feat.weight[None]
    assert model.classifier(feats, vocabulary="my_custom_names").shape[-1] == 3


def test_mixed_or_unnamed_batch_raises(model):
    batch = make_inputs(PAN)[:1] + make_inputs(SEM)[:1]
    with pytest.raises(ValueError, match=f"{PAN}.*{SEM}|{SEM}.*{PAN}"):
        model(batch)
    batch = make_inputs(PAN)
    del batch[0]["dataset_name"]
    with pytest.raises(ValueError, match="dataset_name"):
        model(batch)


def test_unknown_task_or_unregistered_dataset_raises(model):
    MetadataCatalog.get("test_modeling_bad_task").set(
        dataseg_task="depth", dataseg_classes=["x"], dataseg_isthing=[False])
    with pytest.raises(ValueError, match="depth"):
        model(make_inputs("test_modeling_bad_task"))
    with pytest.raises(ValueError, match="no DaTaSeg metadata"):
        model(make_inputs("test_modeling_never_registered"))
    with pytest.raises(ValueError, match="task"):
        model.set_vocabulary("adhoc", ["a"], task="keypoints")


def test_image_without_annotations_trains(model):
    model.train()
    batch = make_inputs(PAN)
    empty = Instances(batch[1]["instances"].image_size)
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros(0, 48, 64, dtype=torch.bool))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    batch[1]["instances"] = empty
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
