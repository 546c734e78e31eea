"""ONNX export (dataseg.tools.export): the file written by the command line, run by
``OnnxPredictor`` with onnxruntime, gives ``DaTaSegPredictor``'s outputs with any vocabulary;
files, configs and images that do not fit are refused with the fix.

The network is exported ONCE (module fixture, through the command line, ~30 s): every test
reuses that file.
"""

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from detectron2.modeling import build_model

from dataseg.engine import DaTaSegCheckpointer, DaTaSegPredictor, get_dataseg_cfg
from dataseg.text import build_text_embedding_provider
from dataseg.tools import export as export_tool
from dataseg.tools.export import OnnxPredictor, check_onnx_metadata, export_onnx
from helpers import TINY_CONFIG, TINY_OPTS

# Test resizes: 120 x 90 -> 128 x 96, 70 x 200 -> 56 x 160 (padded to 64 x 160); a panoptic
# threshold the random network passes for a few queries.
OPTS = TINY_OPTS + ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "160",
                    "MODEL.DATASEG.TEST.OBJECT_MASK_THRESHOLD", "0.4"]
TASKS = ["panoptic", "semantic", "instance"]
# With the random text encoder, vocabularies whose outputs hold several classes, segments
# and instances on the test images.
VOCABULARIES = {
    3: (["dog", "tree", "grass"], [True, False, False]),
    7: (["dog", "tree", "grass", "table", "water", "wall", "window, pane"],
        [True, True, False, False, False, True, False]),
}


def cfg_with(weights, *opts):
    return get_dataseg_cfg(TINY_CONFIG, OPTS + ["MODEL.WEIGHTS", weights] + list(opts))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Seeded tiny weights, sharpened so that the outputs hold several classes, segments
    and instances: the query decoder's residual branches damped (queries stay distinct),
    larger mask logits, the classifier's temperature at its clamp."""
    out = tmp_path_factory.mktemp("export_weights")
    torch.manual_seed(0)
    model = build_model(get_dataseg_cfg(TINY_CONFIG, TINY_OPTS))
    with torch.no_grad():
        decoder = model.transformer_decoder
        for block in list(decoder.cross_attn) + list(decoder.self_attn):
            block.attn.out_proj.weight.mul_(0.2)
        for block in decoder.ffn:
            block.linear2.weight.mul_(0.2)
        decoder.mask_embed.layers[-1].weight.mul_(4)
        model.classifier.logit_scale.fill_(float(np.log(100)))
    DaTaSegCheckpointer(model, save_dir=str(out)).save("model")
    return str(out / "model.pth")


@pytest.fixture(scope="module")
def onnx_file(weights, tmp_path_factory):
    """The tiny network exported by the command line, as a user runs it."""
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    written = export_tool.main(["--config-file", TINY_CONFIG, "--output", str(path)]
                               + OPTS + ["MODEL.WEIGHTS", weights])
    assert written == str(path)
    return str(path)


def image_of(height, width, seed=0):
    """A BGR image of three colour regions with noise (masks follow the regions)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2] = (200, 30, 30)
    img[height // 2:, : width // 2] = (20, 200, 40)
    img[:, 2 * width // 3:] = (10, 10, 220)
    noise = np.random.default_rng(seed).integers(0, 40, img.shape)
    return (img + noise).astype(np.uint8)


def assert_same_outputs(eager, exported):
    assert set(eager) == set(exported) == {"sem_seg", "panoptic_seg", "instances"}
    sem_a, sem_b = eager["sem_seg"], exported["sem_seg"]
    assert sem_a.shape == sem_b.shape
    assert (sem_a.argmax(0) == sem_b.argmax(0)).float().mean() >= 0.999
    torch.testing.assert_close(sem_b, sem_a, rtol=0, atol=1e-4)
    (ids_a, segs_a), (ids_b, segs_b) = eager["panoptic_seg"], exported["panoptic_seg"]
    assert segs_a == segs_b
    assert (ids_a == ids_b).float().mean() >= 0.999
    ins_a, ins_b = eager["instances"], exported["instances"]
    assert ins_a.image_size == ins_b.image_size and len(ins_a) == len(ins_b)
    assert torch.equal(ins_a.pred_classes, ins_b.pred_classes)
    torch.testing.assert_close(ins_b.scores, ins_a.scores, rtol=0, atol=1e-4)
    assert (ins_a.pred_masks == ins_b.pred_masks).float().mean() >= 0.999
    torch.testing.assert_close(ins_b.pred_boxes.tensor, ins_a.pred_boxes.tensor, rtol=0, atol=1)


# ---- the file ----------------------------------------------------------------------------


def test_file_has_dynamic_inputs_outputs_and_the_metadata_it_is_checked_against(onnx_file):
    model = onnx.load(onnx_file)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert list(dims) == ["image", "text_embeddings", "class_logits", "mask_logits"]
    # Fixed: batch 1, 3 channels, text width 64, 20 queries; the rest are symbols.
    assert dims["image"][:2] == [1, 3] and all(isinstance(d, str) for d in dims["image"][2:])
    assert isinstance(dims["text_embeddings"][0], str) and dims["text_embeddings"][1] == 64
    assert dims["class_logits"][0] == 20 and isinstance(dims["class_logits"][1], str)
    assert dims["mask_logits"][0] == 20
    assert {o.domain: o.version for o in model.opset_import}[""] == 20
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["dataseg.config"]) == {
        "MODEL.DATASEG.DECODER.NUM_QUERIES": 20, "MODEL.DATASEG.DECODER.HIDDEN_DIM": 64,
        "MODEL.DATASEG.SIZE_DIVISIBILITY": 32, "MODEL.DATASEG.PIXEL_DECODER.COMMON_STRIDE": 4,
        "INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}
    assert (meta["dataseg.text_dim"], meta["dataseg.size_divisibility"],
            meta["dataseg.mask_stride"], meta["dataseg.opset"]) == ("64", "32", "4", "20")
    assert meta["dataseg.exporter"].startswith("torch.onnx.export(dynamo=True)")



def test_export_writes_the_plain_computations_and_leaves_the_model_as_it_was(onnx_file,
                                                                             weights):
    from dataseg.engine.predictor import build_inference_model
    from dataseg.modeling.fast_paths import plain_computations
    from dataseg.modeling.fast_paths.pointwise_conv import PointwiseConv2d
    from dataseg.modeling.ops import MSDeformAttn

    graph = onnx.load(onnx_file).graph
    model = build_inference_model(cfg_with(weights))  # as the command line built it
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    attention = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    assert any(isinstance(m, PointwiseConv2d) for m in convs)  # the CPU GEMM path is on
    # Every convolution is an ONNX Conv (not a MatMul), each deformable attention samples
    # its 3 levels with GridSample (not the embedding-bag path).
    assert sum(n.op_type == "Conv" for n in graph.node) == len(convs)
    assert sum(n.op_type == "GridSample" for n in graph.node) == 3 * len(attention)
    switched = [m for m in model.modules() if isinstance(getattr(m, "fast_paths", None), str)]
    assert {type(m) for m in switched} >= {PointwiseConv2d, MSDeformAttn}
    assert {m.fast_paths for m in switched} == {"auto"}
    with plain_computations(model):
        assert {m.fast_paths for m in switched} == {"off"}
    assert {m.fast_paths for m in switched} == {"auto"}


def test_network_matches_pytorch_at_sizes_other_than_the_traced_one(onnx_file, weights):
    from dataseg.engine.predictor import build_inference_model

    model = build_inference_model(cfg_with(weights))
    for height, width, classes in ((32, 32, 1), (96, 160, 5), (160, 64, 12)):
        diffs = export_tool.compare_with_pytorch(model, onnx_file, height, width, classes)
        assert diffs["class_logits_max_abs_diff"] < 1e-4 * max(1, diffs["class_logits_max_abs"])
        assert diffs["mask_logits_max_abs_diff"] < 1e-4 * max(1, diffs["mask_logits_max_abs"])


# ---- OnnxPredictor vs DaTaSegPredictor ---------------------------------------------------


@pytest.mark.parametrize("num_classes", sorted(VOCABULARIES))
@pytest.mark.parametrize("size", [(120, 90), (70, 200)])
def test_onnx_predictor_gives_the_predictors_outputs(onnx_file, weights, size, num_classes):
    classes, isthing = VOCABULARIES[num_classes]
    cfg = cfg_with(weights)
    image = image_of(*size)
    eager = DaTaSegPredictor(cfg, classes=classes, task=TASKS, isthing=isthing)(image)
    exported = OnnxPredictor(onnx_file, cfg, classes=classes, task=TASKS, isthing=isthing)(image)
    # The outputs hold something to compare (several classes, segments, instances).
    assert len(eager["sem_seg"].argmax(0).unique()) >= 2
    assert len(eager["panoptic_seg"][1]) >= 1 and len(eager["instances"]) >= 3
    assert_same_outputs(eager, exported)


def test_max_synonym_reduction_and_vocabulary_switch(onnx_file, weights):
    cfg = cfg_with(weights, "MODEL.DATASEG.TEXT.SYNONYM_REDUCTION", "max")
    classes, isthing = VOCABULARIES[7]
    predictor = OnnxPredictor(onnx_file, cfg, classes=["ocean"], task="semantic")
    # Under "max" the graph scores every synonym and the predictor keeps each class's best.
    predictor.set_vocabulary(classes=classes, task=TASKS, isthing=isthing)
    assert predictor.text_embeddings.shape == (8, 64)  # "window, pane": two rows
    assert predictor.class_index.tolist() == [0, 1, 2, 3, 4, 5, 6, 6]
    assert predictor.class_names == classes
    assert set(predictor.outputs) == {"panoptic_seg", "sem_seg", "instances"}
    image = image_of(90, 120, seed=1)
    eager = DaTaSegPredictor(cfg, classes=classes, task=TASKS, isthing=isthing)(image)
    assert_same_outputs(eager, predictor(image))


def test_embeds_once_per_vocabulary_and_serves_a_precomputed_file(onnx_file, weights, tmp_path,
                                                                   monkeypatch):
    classes, isthing = VOCABULARIES[3]
    cfg = cfg_with(weights)
    calls = []
    embed = type(build_text_embedding_provider(cfg)).embed
    monkeypatch.setattr(type(build_text_embedding_provider(cfg)), "embed",
                        lambda self, names: calls.append(list(names)) or embed(self, names))
    predictor = OnnxPredictor(onnx_file, cfg, classes=classes, task="semantic")
    image = image_of(120, 90)
    first = predictor(image)
    predictor(image_of(70, 200))
    assert calls == [classes]  # at set_vocabulary, not per image
    # The same rows from a file (python -m dataseg.text --output writes this format): the
    # Precomputed encoder needs no text model at serving time.
    path = tmp_path / "vocab.pt"
    rows = build_text_embedding_provider(cfg).embed(classes).class_embeddings()
    torch.save({"class_names": classes, "embeddings": rows}, path)
    cfg_file = cfg_with(weights, "MODEL.DATASEG.TEXT.ENCODER", "Precomputed",
                        "MODEL.DATASEG.TEXT.PRECOMPUTED_PATH", str(path))
    from_file = OnnxPredictor(onnx_file, cfg_file, classes=classes, task="semantic")(image)
    torch.testing.assert_close(from_file["sem_seg"], first["sem_seg"])


def test_sixteen_bit_images_are_read_as_the_predictor_reads_them(onnx_file, weights):
    cfg = cfg_with(weights)
    classes, _ = VOCABULARIES[3]
    predictor = OnnxPredictor(onnx_file, cfg, classes=classes, task="semantic")
    image = image_of(120, 90)
    wide = image.astype(np.uint16) << 8 | 0x7F
    torch.testing.assert_close(predictor(wide)["sem_seg"], predictor(image)["sem_seg"])


# ---- bad input -----------------------------------------------------------------------------


def test_a_file_of_another_config_or_text_width_is_refused(onnx_file, weights):
    with pytest.raises(ValueError, match=r"NUM_QUERIES is 20 in the file and 10 in the "
                                         r"config.*export this config"):
        OnnxPredictor(onnx_file, cfg_with(weights, "MODEL.DATASEG.DECODER.NUM_QUERIES", "10"))
    with pytest.raises(ValueError, match=r"INPUT.FORMAT is 'RGB' in the file and 'BGR'"):
        OnnxPredictor(onnx_file, cfg_with(weights, "INPUT.FORMAT", "BGR"))
    with pytest.raises(ValueError, match=r"width 64 .*'Random'.* gives width 32"):
        OnnxPredictor(onnx_file, cfg_with(weights, "MODEL.DATASEG.TEXT.RANDOM_DIM", "32"))
    with pytest.raises(ValueError, match="not written by dataseg.tools.export"):
        check_onnx_metadata({}, cfg_with(weights), "other.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxPredictor(onnx_file + ".missing.onnx", cfg_with(weights))


def test_missing_packages_name_the_extra(onnx_file, weights, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install dataseg\[deploy\]"):
        OnnxPredictor(onnx_file, cfg_with(weights))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"onnxscript.*pip install dataseg\[deploy\]"):
        export_onnx(cfg_with(weights), str(tmp_path / "x.onnx"))


def test_images_the_graph_cannot_take_are_refused(onnx_file, weights, tmp_path):
    cfg = cfg_with(weights)
    predictor = OnnxPredictor(onnx_file, cfg, classes=["a", "b"], task="semantic")
    for bad in (np.zeros((40, 50), np.uint8), np.zeros((40, 50, 4), np.uint8),
                np.zeros((0, 50, 3), np.uint8), torch.zeros(40, 50, 3)):
        with pytest.raises(ValueError, match=r"one \(H, W, 3\) BGR numpy image"):
            predictor(bad)
    with pytest.raises(ValueError, match="multiples of 32.*Pad at the bottom"):
        predictor.run_network(np.zeros((1, 3, 40, 64), np.float32))
    with pytest.raises(ValueError, match=r"text_embeddings must be \(K >= 1, 64\)"):
        predictor.run_network(np.zeros((1, 3, 64, 64), np.float32), np.zeros((3, 32)))
    # A graph fixed to one size (another exporter's) names the size and the fix.
    fixed = onnx.load(onnx_file)
    for dim, value in zip(fixed.graph.input[0].type.tensor_type.shape.dim[2:], (128, 96)):
        dim.dim_value = value
    onnx.save(fixed, tmp_path / "fixed.onnx")
    predictor = OnnxPredictor(str(tmp_path / "fixed.onnx"), cfg, classes=["a"], task="semantic")
    assert predictor(image_of(120, 90))["sem_seg"].shape == (1, 120, 90)  # 128 x 96: fits
    with pytest.raises(ValueError, match=r"exactly 128x96 and cannot take 64x160.*export"):
        predictor(image_of(70, 200))


# ---- the benchmark -------------------------------------------------------------------------


def test_export_speed_benchmark_quick_run(onnx_file, weights, tmp_path):
    """benchmarks/export_speed.py in its quick mode on the tiny export (no second export)."""
    import export_speed as bench  # benchmarks/, on the path through pytest.ini

    out = tmp_path / "export_speed.json"
    result = bench.main(["--quick", "--config", TINY_CONFIG, "--onnx", onnx_file, "--classes",
                         "7", "--text-dim", "64", "--output", str(out), "--opts"]
                        + OPTS[2:] + ["MODEL.WEIGHTS", weights])
    saved = json.loads(out.read_text())
    assert saved["network_ratio"] == pytest.approx(
        saved["network_s"]["onnxruntime"] / saved["network_s"]["eager"])
    assert saved["file_mib"] > 1 and saved["session_load_s"] > 0
    assert result["network_parity"]["mask_sign_agreement_pct"] > 99.9
    assert result["output_parity"]["semantic_argmax_agreement_pct"] >= 99.9
    assert result["output_parity"]["panoptic_segments_identical"]
    assert result["output_parity"]["instance_classes_identical"]
