"""Every DaTaSeg config key, documented in one place.

``add_dataseg_config(cfg)`` extends a detectron2 ``CfgNode`` with the keys below. Values the
paper does not publish are OUR defaults (mostly Mask2Former's, where the architecture is the
same); they are marked "not in the paper" so ablations know what is a choice and what is a
fact. docs/configs.md lists the published values next to ours.

Per-dataset lists (``DATALOADER.DATASEG.SAMPLING_RATIOS``, ``...BATCH_SIZES``,
``INPUT.DATASEG.*`` and ``MODEL.DATASEG.CRITERION.DATASET_LOSS_WEIGHTS``) are aligned with
``DATASETS.TRAIN`` (same order, same length) or empty for "same for all", the convention
Detic/UniDet users know from ``DATALOADER.DATASET_RATIO``.
"""

from detectron2.config import CfgNode as CN

DATASEG_META_ARCHITECTURE = "DaTaSeg"

__all__ = [
    "add_dataseg_config",
    "check_dataseg_config",
    "check_per_dataset_list",
    "merge_dataseg_config_file",
    "DATASEG_META_ARCHITECTURE",
]


# Keys of earlier versions: a config that sets one fails with what replaces it.
_RENAMED_KEYS = {
    "MODEL.DATASEG.CRITERION.MERGE_ENABLED": (
        "MODEL.DATASEG.CRITERION.MERGE", 'MERGE_ENABLED False is now MERGE "none"'),
    "MODEL.DATASEG.CRITERION.MERGE_MODE": (
        "MODEL.DATASEG.CRITERION.MERGE",
        'the log-sum-exp arithmetic is MERGE "anchored"; MERGE_MODE clamped_sum with '
        'MERGE_MATCHING unit is MERGE "first_design"; "max" and "soft_union" are removed'),
    "MODEL.DATASEG.CRITERION.MERGE_MATCHING": (
        "MODEL.DATASEG.CRITERION.MERGE", 'MERGE_MATCHING unit is MERGE "first_design"'),
}
for _key in ("MODEL.DATASEG.CPU_POINTWISE_GEMM", "MODEL.DATASEG.PIXEL_DECODER.MSDA_IMPL",
             "MODEL.DATASEG.PIXEL_DECODER.RECOMPUTE_FFN", "MODEL.DATASEG.CRITERION.POINT_SAMPLER",
             "MODEL.DATASEG.CRITERION.GT_SAMPLE_MODE",
             "MODEL.DATASEG.CRITERION.COMPILE_POINT_LOSSES"):
    _RENAMED_KEYS[_key] = (
        "MODEL.DATASEG.FAST_PATHS",
        'every CPU fast path is now chosen by FAST_PATHS ("auto" on CPU, "off" = the plain '
        "computations); the torch.compile option is removed")


def add_dataseg_config(cfg):
    """Add the DaTaSeg keys to a detectron2 config (in place) and return it."""
    _C = cfg
    # Marker read by ``check_dataseg_config``: a yaml written for DaTaSeg sets it to True so
    # that loading it into a non-DaTaSeg model (or without these keys) fails loudly.
    _C.DATASEG_CONFIG = False

    _C.MODEL.DATASEG = CN()
    D = _C.MODEL.DATASEG
    # Padding of the batched image; masked attention needs strides 4..32 to tile exactly.
    D.SIZE_DIVISIBILITY = 32
    # The CPU fast paths (dataseg/modeling/fast_paths: 1x1 convolutions as GEMMs, embedding-bag
    # deformable attention, encoder FFNs recomputed in backward, head-broadcast attention
    # masks, loss points on ground-truth pixels, fused point losses): "auto" runs them on CPU
    # tensors and the plain computations (Mask2Former's) on every other device; "off" runs
    # the plain computations everywhere.
    D.FAST_PATHS = "auto"
    # Loading MODEL.WEIGHTS fails when it fills less than this share of the backbone trunk's
    # parameters (a state dict of another format or backbone would silently train from random
    # weights); 0 disables the check. See dataseg/engine/checkpoint.py.
    D.MIN_LOADED_BACKBONE_FRACTION = 0.5

    # ---- pixel decoder (not in the paper: Mask2Former's MSDeformAttn design) -------------
    D.PIXEL_DECODER = CN()
    D.PIXEL_DECODER.NAME = "MSDeformAttnPixelDecoder"
    # Backbone features consumed, fine to coarse. ResNet: res2..res5; ViTDet: p2..p5.
    D.PIXEL_DECODER.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # The coarsest three go through the deformable encoder (I_multi of the paper).
    D.PIXEL_DECODER.DEFORMABLE_IN_FEATURES = ["res3", "res4", "res5"]
    D.PIXEL_DECODER.CONVS_DIM = 256
    D.PIXEL_DECODER.MASK_DIM = 256  # D_F of the paper
    D.PIXEL_DECODER.NORM = "GN"
    D.PIXEL_DECODER.NUM_ENCODER_LAYERS = 6
    D.PIXEL_DECODER.NHEADS = 8
    D.PIXEL_DECODER.NUM_POINTS = 4
    D.PIXEL_DECODER.DIM_FEEDFORWARD = 1024
    D.PIXEL_DECODER.DROPOUT = 0.0
    D.PIXEL_DECODER.COMMON_STRIDE = 4  # stride of the per-pixel mask features F

    # ---- transformer (query) decoder (not in the paper: Mask2Former masked attention) -----
    D.DECODER = CN()
    D.DECODER.NAME = "MaskedAttentionDecoder"
    D.DECODER.NUM_QUERIES = 100
    D.DECODER.HIDDEN_DIM = 256
    D.DECODER.NHEADS = 8
    D.DECODER.DIM_FEEDFORWARD = 2048
    D.DECODER.NUM_LAYERS = 9  # R=3 repeats over 3 scales
    D.DECODER.PRE_NORM = False
    D.DECODER.DROPOUT = 0.0
    D.DECODER.MASK_HEAD_LAYERS = 3  # MLP depth of the mask head
    D.DECODER.CLASS_HEAD_LAYERS = 1  # 1 = linear projection to the text dimension
    D.DECODER.ENFORCE_INPUT_PROJECT = False

    # ---- text-embedding classifier (paper: frozen CLIP ViT-L/14 text embeddings) ---------
    D.CLASSIFIER = CN()
    D.CLASSIFIER.NAME = "TextEmbeddingClassifier"
    # Cosine similarity times a learnable logit scale (not in the paper: CLIP-style init 1/0.07,
    # clamped so training cannot blow it up).
    D.CLASSIFIER.LOGIT_SCALE_INIT = 1.0 / 0.07
    D.CLASSIFIER.LOGIT_SCALE_MAX = 100.0
    D.CLASSIFIER.LEARN_LOGIT_SCALE = True

    D.TEXT = CN()
    # Registered text encoder: "OpenCLIP" (paper), "MiniLM" (offline, real weights),
    # "Precomputed" (embeddings from a file), "Random" (unit tests of mechanics only).
    D.TEXT.ENCODER = "OpenCLIP"
    D.TEXT.OPENCLIP_MODEL = "ViT-L-14"
    # open_clip pretrained tag ("openai", "laion2b_s32b_b82k", ...) or a local checkpoint file.
    D.TEXT.OPENCLIP_PRETRAINED = "openai"
    # .pt/.pth/.npz file with {"class_names": [...], "embeddings": (C, D)} for "Precomputed".
    D.TEXT.PRECOMPUTED_PATH = ""
    # Name of a registered prompt-template set, e.g. "imagenet_short", "single", "none".
    D.TEXT.TEMPLATES = "imagenet_short"
    # How synonyms of one class ("tv, television, monitor") are reduced: "mean" | "max".
    D.TEXT.SYNONYM_REDUCTION = "mean"
    # Embedding cache folder; "" = $DATASEG_CACHE/text_embeddings, else
    # ~/.cache/dataseg/text_embeddings.
    D.TEXT.CACHE_DIR = ""
    D.TEXT.RANDOM_DIM = 64  # output width of the "Random" encoder
    D.TEXT.DEVICE = "cpu"  # where the text model runs while embeddings are computed

    # ---- criterion: MERGE -> Hungarian matching -> losses ---------------------------------
    D.CRITERION = CN()
    D.CRITERION.NAME = "MergeCriterion"
    # MERGE (the rule per task is the paper's, dataseg/tasks.py; the rest is not in the paper;
    # docs/merge.md): "anchored" = every segment gets an anchor proposal by one-by-one
    # Hungarian matching, then the other proposals predicting its (semantic / stuff) class
    # join its unit, whose mask logit is log(sum_i exp(x_i)) of its members'. Two ablations:
    # "none" = no MERGE for any task (proposals matched one by one, as in Mask2Former);
    # "first_design" = the first design (units grouped by argmax and matched freely, masks
    # merged as min(1, sum p_i): collapses from scratch and inflates losses 10-100x).
    D.CRITERION.MERGE = "anchored"
    D.CRITERION.DEEP_SUPERVISION = True
    D.CRITERION.NO_OBJECT_WEIGHT = 0.1
    # Loss weights (not in the paper).
    D.CRITERION.CLASS_WEIGHT = 2.0
    D.CRITERION.FOCAL_WEIGHT = 20.0
    D.CRITERION.DICE_WEIGHT = 5.0
    D.CRITERION.PROJECTION_WEIGHT = 5.0
    D.CRITERION.FOCAL_ALPHA = 0.25
    D.CRITERION.FOCAL_GAMMA = 2.0
    # Matching cost weights (not in the paper; box data uses the projection cost).
    D.CRITERION.COST_CLASS = 2.0
    D.CRITERION.COST_FOCAL = 20.0
    D.CRITERION.COST_DICE = 5.0
    D.CRITERION.COST_PROJECTION = 5.0
    # Point-sampled mask losses (Mask2Former).
    D.CRITERION.TRAIN_NUM_POINTS = 12544
    D.CRITERION.OVERSAMPLE_RATIO = 3.0
    D.CRITERION.IMPORTANCE_SAMPLE_RATIO = 0.75
    # BoxInst pairwise colour-affinity term for box data (off: not drawn in the paper).
    D.CRITERION.PAIRWISE = CN()
    D.CRITERION.PAIRWISE.ENABLED = False
    D.CRITERION.PAIRWISE.WEIGHT = 1.0
    D.CRITERION.PAIRWISE.SIZE = 3
    D.CRITERION.PAIRWISE.DILATION = 2
    D.CRITERION.PAIRWISE.COLOR_THRESH = 0.3
    D.CRITERION.PAIRWISE.WARMUP_ITERS = 10000
    # Multiplier of every loss of a dataset, aligned with DATASETS.TRAIN; [] = all 1.0.
    D.CRITERION.DATASET_LOSS_WEIGHTS = []

    # ---- inference (not in the paper: MaskFormer post-processing) -------------------------
    D.TEST = CN()
    D.TEST.OBJECT_MASK_THRESHOLD = 0.8
    D.TEST.OVERLAP_THRESHOLD = 0.8
    # Panoptic inference judges the overlap of each stuff CLASS segment (the union of its
    # queries, as the training MERGE sees it) instead of each query (MaskFormer).
    D.TEST.PANOPTIC_MERGE_STUFF = True
    # Dataset whose vocabulary (classes, task, outputs) inference uses for inputs without a
    # "dataset_name" (detectron2's DefaultPredictor sends none); "" = DATASETS.TEST[0], and
    # no default when DATASETS.TEST is empty too (such inputs then fail with a message).
    D.TEST.DEFAULT_VOCABULARY = ""
    # Inference (DaTaSegPredictor, the demo, train_net.py --eval-only) refuses MODEL.WEIGHTS
    # that leave a model tensor unfilled or of another shape, or hold tensors the model lacks
    # (a checkpoint of another NUM_QUERIES, HIDDEN_DIM, ... would run partly random); True
    # loads such weights on purpose, with detectron2's report of the keys. Training always
    # loads partial weights (fine-tuning from a backbone or another checkpoint).
    D.TEST.ALLOW_PARTIAL_WEIGHTS = False

    # Prediction drawings written after training for this many images of every test dataset
    # (OUTPUT_DIR/visualizations/<dataset>/); 0 = none.
    _C.TEST.DATASEG = CN()
    _C.TEST.DATASEG.NUM_VISUALIZATIONS = 0

    # ---- data -----------------------------------------------------------------------------
    _C.DATALOADER.DATASEG = CN()
    # Probability of drawing each dataset per iteration, aligned with DATASETS.TRAIN.
    # [] = derived from dataset sizes: p_i proportional to size_i ** SIZE_EXPONENT.
    _C.DATALOADER.DATASEG.SAMPLING_RATIOS = []
    _C.DATALOADER.DATASEG.SIZE_EXPONENT = 0.5
    # Total (all ranks) batch size per dataset, aligned with DATASETS.TRAIN;
    # [] = SOLVER.IMS_PER_BATCH for every dataset.
    _C.DATALOADER.DATASEG.BATCH_SIZES = []

    _C.INPUT.DATASEG = CN()
    # Large-scale jitter + fixed-size crop, per dataset (aligned lists) or one value for all.
    _C.INPUT.DATASEG.IMAGE_SIZES = [1024]  # crop side and LSJ target size
    _C.INPUT.DATASEG.MIN_SCALES = [0.1]
    _C.INPUT.DATASEG.MAX_SCALES = [2.0]
    # Test resolution (shortest edge / longest edge) per test dataset, aligned with
    # DATASETS.TEST; [] = the dataset's own standard (metadata "dataseg_test_size": ADE20k and
    # Pascal Context 512/2048, COCO 800/1333, Cityscapes 1024/2048), else INPUT.MIN/MAX_SIZE_TEST.
    _C.INPUT.DATASEG.MIN_SIZES_TEST = []
    _C.INPUT.DATASEG.MAX_SIZES_TEST = []
    # Corrupt/unreadable training images: skip with a warning up to this many, then stop.
    _C.INPUT.DATASEG.MAX_SKIPPED_IMAGES = 100

    # ---- ViTDet backbone (detectron2's ViT + SimpleFeaturePyramid) -------------------------
    _C.MODEL.VIT = CN()
    _C.MODEL.VIT.IMG_SIZE = 1024
    _C.MODEL.VIT.PATCH_SIZE = 16
    _C.MODEL.VIT.EMBED_DIM = 768
    _C.MODEL.VIT.DEPTH = 12
    _C.MODEL.VIT.NUM_HEADS = 12
    _C.MODEL.VIT.MLP_RATIO = 4.0
    _C.MODEL.VIT.DROP_PATH_RATE = 0.1
    _C.MODEL.VIT.WINDOW_SIZE = 14
    # Blocks with global attention (ViTDet-B: 2, 5, 8, 11; ViTDet-L: 5, 11, 17, 23).
    _C.MODEL.VIT.GLOBAL_ATTN_INDEXES = [2, 5, 8, 11]
    _C.MODEL.VIT.USE_REL_POS = True
    _C.MODEL.VIT.OUT_CHANNELS = 256
    _C.MODEL.VIT.SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]  # p2..p5
    _C.MODEL.VIT.NORM = "LN"

    # ---- optimiser (Mask2Former-style AdamW with a backbone multiplier) -------------------
    _C.SOLVER.OPTIMIZER = "ADAMW"
    _C.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # ViTDet's layer-wise learning-rate decay for ViT backbones (detectron2's
    # get_vit_lr_decay_rate): block N of MODEL.VIT.DEPTH gets rate ** (DEPTH - N), the patch
    # embedding rate ** (DEPTH + 1), on top of BACKBONE_MULTIPLIER. 1.0 = off. ViTDet: 0.7
    # for ViT-B, 0.8 for ViT-L (set in configs/coco_ade_o365/DaTaSeg_ViTDet-*.yaml).
    _C.SOLVER.VIT_LAYER_DECAY_RATE = 1.0

    for old, (new, note) in _RENAMED_KEYS.items():
        _C.register_renamed_key(old, new, note)
    return cfg


def check_dataseg_config(cfg):
    """Refuse configs that would silently train the wrong model.

    Raises:
        ValueError: when a DaTaSeg yaml (``DATASEG_CONFIG: True``) selects another
            meta-architecture, or a per-dataset list does not align with DATASETS.TRAIN.
    """
    if not cfg.get("DATASEG_CONFIG", False):
        raise ValueError(
            "This config was not written for DaTaSeg (DATASEG_CONFIG is not True). Start from "
            "configs/Base-DaTaSeg.yaml (add `_BASE_: Base-DaTaSeg.yaml`) so every DaTaSeg key "
            "has its documented default."
        )
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch != DATASEG_META_ARCHITECTURE:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE is {arch!r} but this is a DaTaSeg config; DaTaSeg's "
            f"train_net.py only trains {DATASEG_META_ARCHITECTURE!r}. Remove the override or "
            "use the train_net.py of the project that owns that architecture."
        )
    num_train = len(cfg.DATASETS.TRAIN)
    # DATALOADER.DATASEG.SAMPLING_RATIOS: dataseg.data.sampler.check_sampling_ratios, run by
    # the trainer's pre-flight with the dataset sizes.
    check_per_dataset_list("DATALOADER.DATASEG.BATCH_SIZES", cfg.DATALOADER.DATASEG.BATCH_SIZES,
                           cfg.DATASETS.TRAIN)
    check_per_dataset_list("MODEL.DATASEG.CRITERION.DATASET_LOSS_WEIGHTS",
                           cfg.MODEL.DATASEG.CRITERION.DATASET_LOSS_WEIGHTS, cfg.DATASETS.TRAIN)
    for key in ("IMAGE_SIZES", "MIN_SCALES", "MAX_SCALES"):
        values = cfg.INPUT.DATASEG[key]
        if len(values) not in (1, num_train):
            raise ValueError(
                f"INPUT.DATASEG.{key} has {len(values)} entries; give one value for all "
                f"training datasets or one per dataset of DATASETS.TRAIN ({num_train})."
            )
    num_test = len(cfg.DATASETS.TEST)
    for key in ("MIN_SIZES_TEST", "MAX_SIZES_TEST"):
        values = cfg.INPUT.DATASEG[key]
        if len(values) not in (0, num_test):
            raise ValueError(
                f"INPUT.DATASEG.{key} has {len(values)} entries but DATASETS.TEST has "
                f"{num_test} ({list(cfg.DATASETS.TEST)}); give one per test dataset, in the "
                "same order, or leave it empty.")
    if bool(cfg.INPUT.DATASEG.MIN_SIZES_TEST) != bool(cfg.INPUT.DATASEG.MAX_SIZES_TEST):
        raise ValueError("Give INPUT.DATASEG.MIN_SIZES_TEST and MAX_SIZES_TEST together.")


def check_per_dataset_list(key: str, values, train_datasets) -> None:
    """Refuse a per-dataset list (``key``) that is neither empty nor aligned with
    ``DATASETS.TRAIN`` (one value per training dataset, in the same order)."""
    names = list(train_datasets)
    if len(values) not in (0, len(names)):
        raise ValueError(
            f"{key} has {len(values)} entries but DATASETS.TRAIN has {len(names)} ({names}); "
            "give one value per training dataset, in the same order, or leave it empty."
        )


def merge_dataseg_config_file(cfg, config_file: str):
    """``cfg.merge_from_file`` with an actionable message when DaTaSeg keys are missing.

    Loading a DaTaSeg yaml into a config that ``add_dataseg_config`` never extended fails in
    yacs with a bare ``KeyError: 'Non-existent config key: MODEL.DATASEG'``.
    """
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        if "DATASEG" in str(e) and "DATASEG" not in cfg.MODEL:
            raise KeyError(
                f"{config_file} is a DaTaSeg config but this config object has no DaTaSeg keys. "
                "Call `dataseg.add_dataseg_config(cfg)` (after `get_cfg()`) before "
                "`merge_from_file`, or launch DaTaSeg's train_net.py."
            ) from e
        raise KeyError(f"{config_file}: {e.args[0] if e.args else e}") from e
    return cfg
