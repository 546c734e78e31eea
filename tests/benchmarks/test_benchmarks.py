"""Smoke test of the benchmark command (tiny config, tiny sizes) and its FLOP handlers."""

import json

import pytest
import torch

TINY = "configs/tiny/DaTaSeg-tiny.yaml"


@pytest.fixture(scope="module")
def bench():
    import run_benchmarks  # benchmarks/, on the path through pytest.ini

    return run_benchmarks


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


def test_fast_path_flops_equal_the_plain_count(bench):
    """The handlers of the fast ops (embedding-bag attention, 1x1 convolutions as (b)addbmm)
    count what fvcore counts for the plain computations."""
    counts = {}
    for setting in ("auto", "off"):
        cfg = bench.bench_cfg(TINY, opts=["MODEL.DATASEG.FAST_PATHS", setting])
        model = bench.build_bench_model(cfg)
        bench.register_bench_dataset(num_classes=133)
        model._ensure_vocabulary(bench.BENCH_DATASET,
                                 model.dataset_info(bench.BENCH_DATASET)["classes"])
        result = bench.count_flops(model, 64)
        assert not any("bmm" in op for op in result["unsupported_ops"])
        counts[setting] = (result["gflop"], result["by_part_gflop"]["pixel_decoder"])
    assert counts["auto"] == pytest.approx(counts["off"], rel=1e-6)


# ------------------------------------------------------------------------------------------
# The reference arm (benchmarks/compare_reference.py, benchmarks/reference_arm.py)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compare():
    import compare_reference  # benchmarks/, on the path through pytest.ini

    return compare_reference


def _result(ref_inf=4.0, ds_inf=1.8, ref_step=17.0, ds_step=10.0):
    """A compare_reference result with hand-chosen numbers."""
    return {
        "size": 512, "train_segments": 10, "criterion_segments": 100,
        "gflop": 130.0, "matmul_gflops": 200.0,
        "inference": {"reference": {"s": ref_inf}, "dataseg": {"s": ds_inf}},
        "train_step": {"reference": {"s": ref_step}, "dataseg": {"s": ds_step}},
        "criterion_at_100": {"step": {"reference": {"s": 20.0}, "dataseg": {"s": 12.0}},
                             "criterion": {"reference": {"s": 5.0}, "dataseg": {"s": 1.2}}},
        "train_peak_rss_gib": {"reference": [5.0, 6.0, 5.5], "dataseg": [3.0, 3.3, 3.3]},
    }


def test_table_ratios_targets_and_verdicts(compare):
    table = compare.build_table(_result())
    rows = {row.get("target_key", row["measure"]): row for row in table}
    inf = rows["inference_ratio"]
    assert inf["ratio"] == pytest.approx(0.45)
    assert inf["measured_over_target"] == pytest.approx(0.45 / 0.40)
    assert inf["met"] is False
    step = rows["train_step_ratio"]
    assert step["ratio"] == pytest.approx(10 / 17) and step["met"] is False
    assert rows["criterion fwd+bwd, 100 GT/image"]["ratio"] == pytest.approx(1.2 / 5)
    share = rows["criterion_share"]
    assert share["reference"] == pytest.approx(0.25) and share["dataseg"] == pytest.approx(0.1)
    assert share["met"] is True  # 0.1 <= 0.10
    rate = rows["flop_rate_share"]
    assert rate["dataseg"] == pytest.approx(130 / 1.8 / 200)  # 0.361
    assert rate["measured_over_target"] == pytest.approx(130 / 1.8 / 200 / 0.65)
    assert rate["met"] is False
    rss = rows["train_peak_rss_ratio"]
    assert rss["ratio"] == pytest.approx(3.3 / 5.5) and rss["met"] is True
    spread = rows["train_peak_rss_spread"]
    assert spread["dataseg"] == pytest.approx(0.3 / 3.3) and spread["met"] is False
    # A faster dataseg arm meets the ratio targets.
    fast = {r.get("target_key"): r for r in compare.build_table(_result(ds_inf=1.2, ds_step=8.0))}
    assert fast["inference_ratio"]["met"] and fast["train_step_ratio"]["met"]
    assert fast["flop_rate_share"]["value"] == pytest.approx(130 / 1.2 / 200)


def test_quick_comparison_runs_both_arms_and_writes_the_table(compare, tmp_path):
    out = tmp_path / "results" / "compare.json"
    result = compare.main(["--quick", "--config", TINY, "--rss-repeats", "1",
                           "--output", str(out)])
    saved = json.loads(out.read_text())
    assert [row["measure"] for row in saved["table"]] == [
        row["measure"] for row in result["table"]]
    keys = {row["target_key"] for row in saved["table"] if "target_key" in row}
    assert keys == set(compare.TARGETS)
    for row in saved["table"]:
        assert row["reference"] > 0 or row["unit"] == "share"
        if row["ratio"] is not None:
            assert row["ratio"] == pytest.approx(row["dataseg"] / row["reference"])
    for arm in ("reference", "dataseg"):
        assert saved["inference"][arm]["s"] > 0
        assert saved["criterion_at_100"]["criterion"][arm]["s"] > 0
        assert len(saved["train_peak_rss_gib"][arm]) == 1
    assert saved["gflop"] > 0 and saved["matmul_gflops"] > 0


def _reference_arm():
    import reference_arm  # benchmarks/, on the path through pytest.ini

    return reference_arm


def test_reference_costs_equal_the_matcher_costs():
    from dataseg.modeling.criterion.matcher import dice_cost, focal_cost
    from dataseg.modeling.criterion.merge import PointProbs, sigmoid_with_logs

    reference_arm = _reference_arm()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(4, 50, generator=g) > 0.5).double()
    pp = PointProbs(*sigmoid_with_logs(logits))
    torch.testing.assert_close(reference_arm._batch_focal_cost(logits, targets, 0.25, 2.0),
                               focal_cost(pp, targets, 0.25, 2.0))
    torch.testing.assert_close(reference_arm._batch_dice_cost(logits, targets),
                               dice_cost(pp.prob, targets))


def test_reference_criterion_equals_merge_criterion_without_merge(monkeypatch):
    """Same matches, losses and gradients as MergeCriterion with MERGE off and the
    detectron2 point sampler, when both draw the same loss points."""
    from detectron2.projects.point_rend import point_features

    from dataseg.modeling.criterion import CriterionContext, build_criterion, mask_supervision

    reference_arm = _reference_arm()
    original = point_features.get_uncertain_point_coords_with_randomness

    def seeded(*args):  # the same points for the same (pair, layer) in both criteria
        torch.manual_seed(int(args[0].shape[0]) * 7 + len(calls))
        calls.append(1)
        return original(*args)

    cfg = bench_cfg_with([
        "MODEL.DATASEG.CRITERION.MERGE", "none", "MODEL.DATASEG.FAST_PATHS", "off",
        # Matching by class alone: both criteria then match the same pairs whatever their
        # (differently drawn) matching points (the point costs are tested above).
        "MODEL.DATASEG.CRITERION.COST_FOCAL", "0.0", "MODEL.DATASEG.CRITERION.COST_DICE", "0.0",
        "MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS", "300"])
    g = torch.Generator().manual_seed(2)
    B, Q, C, K = 2, 6, 5, 3
    labels = [torch.tensor([4, 1, 2]), torch.tensor([0, 3, 1])]
    base = []
    for _ in range(3):
        logits = torch.randn(B, Q, C + 1, generator=g)
        for b in range(B):
            logits[b, torch.arange(K) + 2, labels[b]] += 10.0  # query k+2 predicts target k
        base.append({"pred_logits": logits,
                     "pred_masks": torch.randn(B, Q, 8, 8, generator=g) * 3})
    targets = [{"labels": labels[b], "masks": torch.rand(K, 32, 32, generator=g) > 0.5,
                "boxes": None} for b in range(B)]
    context = CriterionContext("x", "panoptic", torch.zeros(C, dtype=torch.bool))
    results = []
    for crit in (build_criterion(cfg), reference_arm.ReferenceCriterion(cfg)):
        calls = []
        monkeypatch.setattr(mask_supervision, "get_uncertain_point_coords_with_randomness",
                            seeded)
        monkeypatch.setattr(reference_arm, "get_uncertain_point_coords_with_randomness", seeded)
        leaves = [{k: v.clone().requires_grad_(True) for k, v in layer.items()}
                  for layer in base]
        outputs = dict(leaves[0], aux_outputs=leaves[1:])
        losses = crit(outputs, targets, context)
        sum(losses.values()).backward()
        results.append((losses, [layer["pred_masks"].grad for layer in leaves],
                        [layer["pred_logits"].grad for layer in leaves]))
    (l0, m0, c0), (l1, m1, c1) = results
    assert set(l0) == set(l1) and len(l0) == 9
    for k in l0:
        torch.testing.assert_close(l0[k], l1[k], rtol=1e-5, atol=1e-6)
    for a, b in zip(m0 + c0, m1 + c1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def bench_cfg_with(opts):
    from _common import bench_cfg  # benchmarks/, on the path through pytest.ini

    return bench_cfg(TINY, opts=opts)


def test_reference_repo_that_is_not_a_checkout_names_the_expected_file(tmp_path):
    reference_arm = _reference_arm()
    with pytest.raises(FileNotFoundError, match="mask2former/modeling/criterion.py"):
        reference_arm.checkout_criterion(str(tmp_path), bench_cfg_with([]), 133)


def test_reference_repo_criterion_is_imported_without_the_package_init(tmp_path, monkeypatch):
    """--reference-repo: SetCriterion + HungarianMatcher come from the checkout's modules
    (its mask2former/__init__.py, which needs the compiled CUDA op, must not run), are built
    with the config's weights and return weighted losses."""
    import sys

    reference_arm = _reference_arm()
    pkg = tmp_path / "mask2former"
    (pkg / "modeling").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('compiled op missing')\n")
    (pkg / "modeling" / "__init__.py").write_text("raise ImportError('compiled op missing')\n")
    (pkg / "modeling" / "matcher.py").write_text(
        "class HungarianMatcher:\n"
        "    def __init__(self, cost_class=1, cost_mask=1, cost_dice=1, num_points=0):\n"
        "        self.costs = (cost_class, cost_mask, cost_dice, num_points)\n")
    (pkg / "modeling" / "criterion.py").write_text(
        "import torch\n"
        "from .matcher import HungarianMatcher\n"
        "class SetCriterion(torch.nn.Module):\n"
        "    def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses,\n"
        "                 num_points, oversample_ratio, importance_sample_ratio):\n"
        "        super().__init__()\n"
        "        assert isinstance(matcher, HungarianMatcher)\n"
        "        self.matcher, self.weight_dict = matcher, weight_dict\n"
        "        self.num_classes = num_classes\n"
        "    def forward(self, outputs, targets):\n"
        "        n = float(len(outputs['aux_outputs']))\n"
        "        return {'loss_ce': torch.tensor(1.0), 'loss_dice_0': torch.tensor(n),\n"
        "                'loss_unweighted': torch.tensor(3.0)}\n")
    for name in ("mask2former", "mask2former.modeling", "mask2former.modeling.criterion",
                 "mask2former.modeling.matcher"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        cfg = bench_cfg_with(["MODEL.DATASEG.CRITERION.CLASS_WEIGHT", "2.5"])
        crit = reference_arm.checkout_criterion(str(tmp_path), cfg, 133)
        assert crit.criterion.num_classes == 133
        assert crit.criterion.matcher.costs == (2.0, 20.0, 5.0, 1024)
        assert set(crit.criterion.weight_dict) == {
            f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ["", "_0", "_1", "_2"]}
        losses = crit({"aux_outputs": [{}, {}]}, [], None)
        assert {k: float(v) for k, v in losses.items()} == {"loss_ce": 2.5, "loss_dice_0": 10.0}
    finally:
        for name in list(sys.modules):
            if name.startswith("mask2former"):
                del sys.modules[name]
