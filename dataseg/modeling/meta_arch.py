"""The DaTaSeg meta-architecture: one network, one set of weights, many datasets and tasks."""

import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import BitMasks, ImageList, PolygonMasks
from detectron2.utils.events import get_event_storage

from ..tasks import TASKS, get_task, resolve_test_outputs
from .criterion import CriterionContext, build_criterion
from .fast_paths import check_fast_paths
from .fast_paths.pointwise_conv import convert_pointwise_convs
from .pixel_decoder import build_pixel_decoder
from .postprocessing import image_outputs
from .text_classifier import build_classifier
from .transformer_decoder import build_transformer_decoder

__all__ = ["DaTaSeg", "default_vocabulary_name", "inference_settings"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class DaTaSeg(nn.Module):
    """Universal multi-dataset, multi-task segmentation model (Gu et al., NeurIPS 2023).

    backbone -> pixel decoder (stride-4 mask features + 3 scales) -> masked-attention query
    decoder -> per query: a mask (dot product with the mask features) and class logits over
    the batch's dataset vocabulary (text-embedding classifier, background last).

    Everything dataset-specific comes from ``MetadataCatalog.get(dataset_name)``:
    ``dataseg_task`` (training merge rule and losses), ``dataseg_classes`` (vocabulary),
    ``dataseg_isthing`` and ``dataseg_test_outputs`` (what inference produces). Vocabularies
    are embedded lazily the first time a dataset is seen; :meth:`set_vocabulary` replaces or
    adds one (open-vocabulary inference).

    Args:
        backbone: detectron2 ``Backbone``.
        pixel_decoder: module ``features -> (mask_features, multi_scale_features)``.
        transformer_decoder: module ``(multi_scale_features, mask_features) -> predictions``
            (list of dicts with ``query_features`` and ``pred_masks``, last = final).
        classifier: ``TextEmbeddingClassifier``-like module.
        criterion: called as ``criterion(outputs, targets, CriterionContext)``.
        pixel_mean, pixel_std: per-channel normalisation, in the input format's order.
        size_divisibility: pad batched images to a multiple of this.
        object_mask_threshold, overlap_threshold: panoptic inference thresholds.
        panoptic_merge_stuff: judge the overlap of stuff per merged class segment
            (``postprocessing.panoptic_inference``).
        instances_per_image: top-k of instance inference.
        fast_paths: ``MODEL.DATASEG.FAST_PATHS``; "auto" also runs the model's 1x1
            convolutions as matrix products on CPU (``fast_paths.pointwise_conv``; same
            outputs and state dict). The other parts read the key themselves.
        default_vocabulary: dataset whose vocabulary inference uses for inputs without a
            ``dataset_name`` (detectron2's ``DefaultPredictor`` sends none); "" = none.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        classifier: nn.Module,
        criterion: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        object_mask_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
        panoptic_merge_stuff: bool = True,
        instances_per_image: int = 100,
        fast_paths: str = "off",
        default_vocabulary: str = "",
    ):
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.classifier = classifier
        self.criterion = criterion
        if check_fast_paths(fast_paths) == "auto":
            convert_pointwise_convs(self)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        backbone_div = getattr(backbone, "size_divisibility", 0) or 0
        self.size_divisibility = max(int(size_divisibility), int(backbone_div))
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.panoptic_merge_stuff = panoptic_merge_stuff
        self.instances_per_image = instances_per_image
        self.default_vocabulary = default_vocabulary
        # Vocabularies set through set_vocabulary(): name -> {classes, task, isthing, outputs}.
        self._custom_vocabularies: Dict[str, dict] = {}

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DATASEG
        backbone = build_backbone(cfg)
        pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
        classifier = build_classifier(cfg, hidden_dim=d.DECODER.HIDDEN_DIM)
        transformer_decoder = build_transformer_decoder(
            cfg, d.PIXEL_DECODER.CONVS_DIM, classifier.text_dim)
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": transformer_decoder,
            "classifier": classifier,
            "criterion": build_criterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": d.SIZE_DIVISIBILITY,
            **inference_settings(cfg),
            "fast_paths": d.FAST_PATHS,
            "default_vocabulary": default_vocabulary_name(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- datasets and vocabularies ------------------------------------------------------
    def set_vocabulary(self, name: str, class_names: Sequence[str], task: Optional[str] = None,
                       isthing: Optional[Sequence[bool]] = None,
                       test_outputs: Optional[Sequence[str]] = None) -> None:
        """Use ``class_names`` as the vocabulary of ``name`` (e.g. custom names at inference).

        For a dataset registered in ``MetadataCatalog``, omitted ``task`` / ``isthing`` /
        ``test_outputs`` come from its metadata (when the class count still matches). For an
        ad-hoc name the task defaults to "panoptic" when ``isthing`` is given and to
        "semantic" otherwise. Inputs then select it with ``"dataset_name": name``.

        Raises:
            ValueError: unknown task, ``isthing`` of the wrong length, a panoptic vocabulary
                without a thing/stuff split, or unknown test outputs.
        """
        class_names = list(class_names)
        meta = self.registered_metadata(name)
        if meta is not None:
            task = task or meta.get("dataseg_task")
            if isthing is None and len(meta.get("dataseg_isthing", [])) == len(class_names):
                isthing = meta.get("dataseg_isthing")
            test_outputs = test_outputs or meta.get("dataseg_test_outputs", None)
        if task is None:
            task = "panoptic" if isthing is not None else "semantic"
        info = self.make_info(name, class_names, task, isthing, test_outputs)
        self._custom_vocabularies[name] = info
        self.classifier.set_vocabulary(name, class_names)

    @staticmethod
    def registered_metadata(name: str):
        """The metadata of ``name`` when it is a dataset registered with DaTaSeg keys, else None."""
        if name in MetadataCatalog.list():
            meta = MetadataCatalog.get(name)
            if meta.get("dataseg_classes", None) is not None:
                return meta
        return None

    @staticmethod
    def make_info(name, classes, task, isthing, test_outputs) -> dict:
        """The checked description of a vocabulary: ``classes``, ``task``, one ``isthing``
        flag per class (the task's default when None) and ``test_outputs`` (the task's
        default when empty).

        Raises:
            ValueError: an unknown task or output, or flags that do not fit the classes.
        """
        if task not in TASKS:
            raise ValueError(
                f"Dataset {name!r} has task {task!r}; DaTaSeg knows {list(TASKS)} (set the "
                "metadata key 'dataseg_task' or the task= argument)."
            )
        spec = get_task(task)
        if isthing is None:
            if spec.default_isthing is None:
                raise ValueError(
                    f"{task.capitalize()} dataset {name!r} needs a thing/stuff split: set "
                    "metadata 'dataseg_isthing' (one bool per class) or pass isthing=.")
            isthing = [spec.default_isthing] * len(classes)
        isthing = [bool(t) for t in isthing]
        if len(isthing) != len(classes):
            raise ValueError(
                f"Dataset {name!r}: {len(isthing)} isthing flags for {len(classes)} classes.")
        return {"classes": list(classes), "task": task, "isthing": isthing,
                "test_outputs": resolve_test_outputs(task, test_outputs, name)}

    def dataset_info(self, name: str) -> dict:
        """Task, vocabulary, thing flags and test outputs the model uses for ``name``."""
        if name in self._custom_vocabularies:
            return self._custom_vocabularies[name]
        meta = self.registered_metadata(name)
        if meta is None:
            raise ValueError(
                f"Dataset {name!r} has no DaTaSeg metadata: register it with "
                "MetadataCatalog.get(name).set(dataseg_task=..., dataseg_classes=[...], "
                "dataseg_isthing=[...], dataseg_test_outputs=(...)) (see docs/interfaces.md) "
                "or call model.set_vocabulary(name, class_names, task=..., isthing=...)."
            )
        return self.make_info(
            name, meta.dataseg_classes, meta.get("dataseg_task", None),
            meta.get("dataseg_isthing", None), meta.get("dataseg_test_outputs", None))

    def _ensure_vocabulary(self, name: str, classes: List[str]) -> None:
        if not self.classifier.has_vocabulary(name):
            self.classifier.set_vocabulary(name, classes)

    @staticmethod
    def batch_dataset_name(batched_inputs: List[dict], default: Optional[str] = None) -> str:
        """The one dataset of a batch; raises ValueError for mixed or unnamed batches.

        Inputs without ``dataset_name`` take ``default`` when given (inference with the
        config's default vocabulary, e.g. through detectron2's ``DefaultPredictor``)."""
        names = [x.get("dataset_name") or default for x in batched_inputs]
        if any(n is None for n in names):
            raise ValueError(
                "Every input dict must carry 'dataset_name' (DaTaSeg picks the vocabulary, task "
                "and outputs from it); the DaTaSeg mappers add it. For ad-hoc inference set "
                "inputs[i]['dataset_name'] to a registered dataset or to a name given to "
                "model.set_vocabulary(), name a default vocabulary in the config "
                "(MODEL.DATASEG.TEST.DEFAULT_VOCABULARY or DATASETS.TEST), or use "
                "dataseg.engine.DaTaSegPredictor(cfg, classes=[...]).")
        unique = sorted(set(names))
        if len(unique) > 1:
            raise ValueError(
                f"A DaTaSeg batch must come from ONE dataset, got {unique}. Use the "
                "multi-dataset loader (one dataset per iteration) or run datasets separately.")
        return unique[0]

    # ---- forward ------------------------------------------------------------------------
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: mapped dicts (docs/interfaces.md), all from one dataset.

        Returns:
            training: dict of weighted losses. Inference: one dict per input with the
            outputs listed in the dataset's ``dataseg_test_outputs``.
        """
        # Training inputs always come from a mapper: a missing name there is a bug, not a default.
        default = None if self.training else (self.default_vocabulary or None)
        name = self.batch_dataset_name(batched_inputs, default)
        info = self.dataset_info(name)
        self._ensure_vocabulary(name, info["classes"])
        images = self.preprocess_image(batched_inputs)
        predictions = self.predict(images.tensor)
        if self.training:
            return self._losses(batched_inputs, images, predictions, name, info)
        logits = self.classifier(predictions[-1]["query_features"], vocabulary=name)
        return self.inference(logits, predictions[-1]["pred_masks"], images, batched_inputs,
                              info)

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        """Normalise and pad the batch to ``size_divisibility``."""
        images = [(x["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(
            images, self.size_divisibility,
            padding_constraints=getattr(self.backbone, "padding_constraints", None))

    def predict(self, images: torch.Tensor) -> List[Dict[str, torch.Tensor]]:
        """Backbone -> pixel decoder -> query decoder on normalised padded images."""
        features = self.backbone(images)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.transformer_decoder(multi_scale_features, mask_features)

    def _losses(self, batched_inputs, images, predictions, name, info):
        # One classifier call for all layers: (layers, B, Q, D) -> (layers, B, Q, C+1).
        feats = torch.stack([p["query_features"] for p in predictions])
        logits = self.classifier(feats, vocabulary=name)
        outputs = {
            "pred_logits": logits[-1],
            "pred_masks": predictions[-1]["pred_masks"],
            "aux_outputs": [
                {"pred_logits": logits[i], "pred_masks": predictions[i]["pred_masks"]}
                for i in range(len(predictions) - 1)
            ],
        }
        targets = self.prepare_targets(batched_inputs, images, info["task"])
        context = CriterionContext(
            dataset_name=name,
            task=info["task"],
            is_thing=torch.tensor(info["isthing"], dtype=torch.bool, device=self.device),
            images=images.tensor,
            image_sizes=list(images.image_sizes),
            iteration=_current_iteration(),
        )
        return self.criterion(outputs, targets, context)

    def prepare_targets(self, batched_inputs, images: ImageList, task: str) -> List[dict]:
        """Per image ``labels``, bool ``masks`` padded to the batch size (None for box data)
        and XYXY pixel ``boxes`` (None when the data has none)."""
        H, W = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            if "instances" not in x:
                raise ValueError(
                    f"Training input from {x.get('dataset_name')!r} has no 'instances'; use a "
                    "DaTaSeg training mapper.")
            inst = x["instances"].to(self.device)
            labels = inst.gt_classes.to(torch.int64)
            masks = None
            box_supervised = get_task(task).box_supervised
            if not box_supervised:
                if not inst.has("gt_masks"):
                    raise ValueError(
                        f"Task {task!r} trains on masks but the instances of "
                        f"{x.get('dataset_name')!r} have no gt_masks.")
                m = inst.gt_masks
                h, w = inst.image_size
                if isinstance(m, PolygonMasks):
                    m = BitMasks.from_polygon_masks(m, h, w)
                m = m.tensor if isinstance(m, BitMasks) else m
                masks = torch.zeros((m.shape[0], H, W), dtype=torch.bool, device=self.device)
                masks[:, : m.shape[1], : m.shape[2]] = m.bool()
            boxes = inst.gt_boxes.tensor.float() if inst.has("gt_boxes") else None
            if box_supervised and boxes is None:
                raise ValueError(
                    f"Box-supervised dataset {x.get('dataset_name')!r} has no gt_boxes.")
            targets.append({"labels": labels, "masks": masks, "boxes": boxes})
        return targets

    def inference(self, logits, mask_logits, images: ImageList, batched_inputs, info):
        """Per-image post-processing into the outputs ``info['test_outputs']`` asks for."""
        stride = images.tensor.shape[-2] // mask_logits.shape[-2]
        results = []
        for i, x in enumerate(batched_inputs):
            image_size = images.image_sizes[i]
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            results.append(image_outputs(
                logits[i], mask_logits[i], stride, image_size, out_size, info["test_outputs"],
                info["isthing"], self.object_mask_threshold, self.overlap_threshold,
                self.panoptic_merge_stuff, self.instances_per_image))
        return results


def default_vocabulary_name(cfg) -> str:
    """Vocabulary for inputs without a ``dataset_name``: ``MODEL.DATASEG.TEST.DEFAULT_VOCABULARY``,
    else ``DATASETS.TEST[0]``, else "" (none)."""
    return cfg.MODEL.DATASEG.TEST.DEFAULT_VOCABULARY or (
        cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "")


def inference_settings(cfg) -> dict:
    """The post-processing settings of ``cfg``, named as :class:`DaTaSeg` and
    :func:`~dataseg.modeling.postprocessing.image_outputs` take them (one reading of the
    config for the model and for the exported network's predictor)."""
    d = cfg.MODEL.DATASEG.TEST
    return {
        "object_mask_threshold": d.OBJECT_MASK_THRESHOLD,
        "overlap_threshold": d.OVERLAP_THRESHOLD,
        "panoptic_merge_stuff": d.PANOPTIC_MERGE_STUFF,
        "instances_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
    }


def _current_iteration() -> int:
    # Outside a detectron2 trainer (unit tests, scripts) there is no event storage.
    try:
        return get_event_storage().iter
    except AssertionError:
        return 0
