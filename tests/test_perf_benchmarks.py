"""Smoke test of the benchmark command (tiny config, tiny sizes) and its FLOP handlers."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/tiny/DaTaSeg-tiny.yaml"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "run_benchmarks", os.path.join(ROOT, "benchmarks", "run_benchmarks.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_every_section(bench, tmp_path):
    out = tmp_path / "bench.json"
    result = bench.main(["--quick", "--config", TINY, "--sizes", "64", "--skip", "rss",
                         "--output", str(out), "--opts", "MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS",
                         "256"])
    saved = json.loads(out.read_text())
    assert saved["parameters"]["total"] == result["parameters"]["total"] > 0
    assert saved["matmul_gflops"] > 0
    assert saved["flops"]["64"]["gflop"] > 0
    assert saved["flops"]["64"]["deformable_sampling_gflop"] > 0
    stages = saved["inference"]["64"]["stages_s"]
    for key in ("backbone", "pixel_decoder", "deformable_sampling", "transformer_decoder",
                "text_classifier", "postprocess_total"):
        assert key in stages
    assert set(saved["train"]["median_s"]) == {
        "step", "forward_without_criterion", "criterion_forward", "backward", "optimizer",
        "system_cpu", "minor_page_faults"}
    assert set(saved["criterion_s"]) == {"2", "8"}
    assert set(saved["vocabulary"]) == {"16", "64"}


def test_deformable_flops_equal_grid_sample_count(bench):
    """The handler for the fast op counts what fvcore counts for the grid_sample path."""
    counts = {}
    for impl in ("embedding_bag", "grid_sample"):
        cfg = bench.bench_cfg(TINY, opts=["MODEL.DATASEG.PIXEL_DECODER.MSDA_IMPL", impl])
        model = bench.build_bench_model(cfg)
        bench.register_bench_dataset(num_classes=133)
        model._ensure_vocabulary(bench.BENCH_DATASET,
                                 model.dataset_info(bench.BENCH_DATASET)["classes"])
        counts[impl] = bench.count_flops(model, 64)["by_part_gflop"]["pixel_decoder"]
    assert counts["embedding_bag"] == pytest.approx(counts["grid_sample"], rel=1e-6)


def test_pointwise_gemm_flops_equal_convolution_count(bench):
    """1x1 convolutions run as (b)addbmm count what fvcore counts for the convolutions."""
    counts = {}
    for gemm in (True, False):
        cfg = bench.bench_cfg(TINY, opts=["MODEL.DATASEG.CPU_POINTWISE_GEMM", str(gemm)])
        model = bench.build_bench_model(cfg)
        bench.register_bench_dataset(num_classes=133)
        model._ensure_vocabulary(bench.BENCH_DATASET,
                                 model.dataset_info(bench.BENCH_DATASET)["classes"])
        result = bench.count_flops(model, 64)
        assert not any("bmm" in op for op in result["unsupported_ops"])
        counts[gemm] = result["gflop"]
    assert counts[True] == pytest.approx(counts[False], rel=1e-6)
