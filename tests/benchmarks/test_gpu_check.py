"""benchmarks/gpu_check.py: its CPU run (``--device cpu --quick``) and the parts a GPU run uses.

The GPU check answers in one run on a machine lent for minutes, so it must not rot between
runs: the suite runs every section on CPU with the tiny config and checks the JSON's values,
and checks the pieces that only a GPU run reaches (bfloat16 on detectron2's AMPTrainer, the
pytest report parsing, the parity comparison) on their own.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from detectron2.structures import Instances

from helpers import REPO

ROOT = str(REPO)
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--quick", "--output",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    return proc, out


def test_quick_cpu_run_prints_one_json_with_every_section(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)  # stdout holds the JSON alone (logs go to stderr)
    assert json.loads(out.read_text()) == report
    assert report["ok"] is True and report["failed"] == [] and report["complete"] is True
    assert list(report["sections"]) == ["cuda_tests", "training", "inference", "export_parity"]
    assert report["device"]["type"] == "cpu"
    assert report["versions"]["torch"] == torch.__version__
    assert "commit" in report["git"]
    assert 0 < report["total_s"] < report["budget_s"]
    for section in report["sections"].values():
        assert section["seconds"] >= 0


def test_quick_cpu_run_skips_the_cuda_tests_with_the_reason(quick_run):
    cuda = json.loads(quick_run[0].stdout)["sections"]["cuda_tests"]
    assert cuda["status"] == "skipped" and "CUDA" in cuda["reason"]
    assert "tests/modeling/test_gpu_paths.py" in cuda["files"]


def test_quick_cpu_run_trains_in_bfloat16_with_falling_finite_loss(quick_run):
    train = json.loads(quick_run[0].stdout)["sections"]["training"]
    assert train["status"] == "ok", train
    assert train["checks"] and all(train["checks"].values())
    assert train["config"] == "configs/tiny/DaTaSeg-tiny.yaml"
    assert train["iterations"] == len(train["losses"]) == 12
    assert all(isinstance(v, float) and math.isfinite(v) for v in train["losses"])
    w = train["loss_window"]
    assert train["loss_first_mean"] == pytest.approx(sum(train["losses"][:w]) / w)
    assert train["loss_last_mean"] == pytest.approx(sum(train["losses"][-w:]) / w)
    assert train["loss_last_mean"] < train["loss_first_mean"]
    # The forward ran under bfloat16 autocast, the deformable sampling in float32.
    assert train["backbone_output_dtypes"] == ["torch.bfloat16"]
    assert train["msda_dtypes_value_locations_weights_output"] == [["torch.float32"] * 4]
    assert train["batch_per_dataset"] == [2, 2, 2]
    assert train["step_time_median_s"] > 0 and train["images_per_s"] > 0
    assert train["peak_process_rss_mib"] > 0


def test_quick_cpu_run_times_inference(quick_run):
    infer = json.loads(quick_run[0].stdout)["sections"]["inference"]
    assert infer["status"] == "ok", infer
    assert infer["images_per_s_float32"] > 0 and infer["images_per_s_bfloat16_autocast"] > 0
    assert infer["image_size"] == [128, 128] and infer["classes"] == 133


def test_quick_cpu_run_compares_the_onnx_export(quick_run):
    parity = json.loads(quick_run[0].stdout)["sections"]["export_parity"]
    if importlib.util.find_spec("dataseg.tools.export") is None:
        assert parity["status"] == "unavailable" and "dataseg.tools.export" in parity["reason"]
        return
    assert parity["status"] == "ok", parity
    assert parity["checks"] and all(parity["checks"].values())
    assert parity["provider_requested"] == "CPUExecutionProvider"
    assert parity["providers_used"][0] == "CPUExecutionProvider"
    assert parity["weights"] == "trained in the training section"
    assert parity["semantic_argmax_agreement_pct"] >= 99.9
    # Every (query, thing class) pair is an instance: 20 queries x 3 thing classes.
    assert parity["compared"]["instances"] == 60 and parity["instances"] == [60, 60]
    assert parity["instance_score_max_abs_diff"] <= 1e-3
    network = parity["network"]
    assert network["class_logits_max_abs"] > 0 and network["mask_sign_agreement_pct"] >= 99.9
    assert network["class_logits_max_abs_diff"] < 1e-3
    assert parity["onnx_file_mib"] > 0 and parity["export_s"] > 0


# ---- the pieces a GPU run reaches ---------------------------------------------------------
def test_a_failing_section_is_recorded_and_the_others_still_run(gpu_check, monkeypatch):
    def boom(check):
        raise RuntimeError("broken path")

    monkeypatch.setattr(gpu_check, "SECTION_FUNCTIONS", {
        "cuda_tests": boom,
        "training": lambda check: {"checks": {"loss_falls": False}},
        "inference": lambda check: {"images_per_s_float32": 2.0, "checks": {"ok": True}},
        "export_parity": lambda check: {"status": "unavailable", "reason": "not written"},
    })
    args = gpu_check.build_parser().parse_args(["--device", "cpu", "--quick"])
    datasets = os.environ.get("DETECTRON2_DATASETS")
    report = gpu_check.run_check(args)
    assert os.environ.get("DETECTRON2_DATASETS") == datasets  # restored
    sections = report["sections"]
    assert sections["cuda_tests"]["status"] == "error"
    assert "RuntimeError: broken path" in sections["cuda_tests"]["error"]
    assert sections["training"]["status"] == "failed"
    assert sections["inference"]["status"] == "ok"
    assert sections["inference"]["images_per_s_float32"] == 2.0
    assert sections["export_parity"]["status"] == "unavailable"
    assert report["failed"] == ["cuda_tests", "training"] and report["ok"] is False


def test_sections_past_the_time_budget_are_skipped_with_the_reason(gpu_check, monkeypatch):
    ran = []
    monkeypatch.setattr(gpu_check, "SECTION_FUNCTIONS", {
        name: (lambda check, name=name: ran.append(name) or {}) for name in gpu_check.SECTIONS})
    args = gpu_check.build_parser().parse_args(["--device", "cpu", "--quick", "--budget-s", "0"])
    report = gpu_check.run_check(args)
    assert ran == []
    for section in report["sections"].values():
        assert section["status"] == "skipped" and "time budget" in section["reason"]
    assert report["complete"] is False and report["skipped_by_budget"] == list(gpu_check.SECTIONS)


def test_bfloat16_on_the_cuda_amp_step(gpu_check):
    """On CUDA SOLVER.AMP gives the step trainer detectron2's AMPTrainer recipe (float16 +
    loss scaler): the check switches it to bfloat16 without scaling."""
    from dataseg.engine import DaTaSegStepTrainer

    model = torch.nn.Linear(2, 2)
    inner = DaTaSegStepTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), seed=0,
                               mixed_precision=True)
    with warnings.catch_warnings():  # without CUDA, GradScaler warns that it is disabled
        warnings.simplefilter("ignore")
        inner.autocast_dtype = torch.float16  # as on a CUDA model
        inner.autocast_device = "cuda"

    class Trainer:
        _trainer = inner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert gpu_check._bf16_autocast(Trainer) == "DaTaSegStepTrainer"
    assert inner.autocast_dtype == torch.bfloat16
    assert not inner.grad_scaler.is_enabled()
    loss = torch.tensor(3.0)
    assert inner.grad_scaler.scale(loss) is loss  # no scaling


def test_cuda_test_files_are_the_ones_guarded_by_cuda(gpu_check):
    files = gpu_check.cuda_test_files()
    assert "tests/modeling/test_gpu_paths.py" in files
    assert "tests/benchmarks/test_gpu_check.py" not in files and "tests/engine/test_amp.py" not in files


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_cuda_tests_section_fails_when_the_cuda_tests_skip(gpu_check, tmp_path):
    """The pytest run and its report, as on a GPU: here the CUDA tests skip, which fails."""
    args = gpu_check.build_parser().parse_args(["--device", "cpu", "--quick"])
    check = gpu_check.Check(args, str(tmp_path))
    check.device = "cuda"  # what a GPU run does; this machine has none
    result = gpu_check.run_section(check, "cuda_tests", gpu_check.section_cuda_tests)
    assert result["files"] == gpu_check.cuda_test_files()
    assert result["passed"] > 0 and result["failed"] == 0 and result["skipped"] > 0
    assert all("CUDA" in reason for reason in result["skipped_tests"].values())
    assert result["checks"] == {"none_failed": True, "cuda_tests_ran": False}
    assert result["status"] == "failed" and "log_tail" in result


def test_junit_counts(gpu_check, tmp_path):
    path = tmp_path / "report.xml"
    path.write_text(
        '<testsuites><testsuite name="pytest" tests="4">'
        '<testcase classname="tests.test_gpu_paths" name="test_a"/>'
        '<testcase classname="tests.test_gpu_paths" name="test_b"><failure message="x"/>'
        '</testcase>'
        '<testcase classname="tests.test_gpu_paths" name="test_c">'
        '<skipped message="needs a CUDA device"/></testcase>'
        '<testcase classname="tests.test_gpu_paths" name="test_d"/>'
        '</testsuite></testsuites>')
    counts = gpu_check.junit_counts(str(path))
    assert (counts["passed"], counts["failed"], counts["skipped"]) == (2, 1, 1)
    assert counts["failed_tests"] == ["tests.test_gpu_paths::test_b"]
    assert counts["skipped_tests"] == {"tests.test_gpu_paths::test_c": "needs a CUDA device"}


def _outputs(seed=0, n=3, c=5, h=6, w=7):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((h, w))
    inst.pred_classes = torch.tensor([1, 4, 0])[:n]
    inst.scores = torch.tensor([0.9, 0.5, 0.25])[:n]
    inst.pred_masks = torch.rand(n, h, w, generator=g) > 0.5
    ids = torch.randint(0, 3, (h, w), generator=g, dtype=torch.int32)
    segments = [{"id": 1, "isthing": True, "category_id": 2, "score": 0.7},
                {"id": 2, "isthing": False, "category_id": 3}]
    return {"sem_seg": torch.rand(c, h, w, generator=g), "panoptic_seg": (ids, segments),
            "instances": inst}


def test_compare_outputs_of_identical_predictions(gpu_check):
    result = gpu_check.compare_outputs(_outputs(), _outputs())
    assert result["semantic_argmax_agreement_pct"] == 100.0
    assert result["panoptic_pixel_agreement_pct"] == 100.0
    assert result["instance_score_max_abs_diff"] == 0.0
    assert result["instance_mask_agreement_pct"] == 100.0
    assert all(result["checks"].values()) and len(result["checks"]) == 6


def test_compare_outputs_finds_each_difference(gpu_check):
    ref, got = _outputs(), _outputs()
    got["sem_seg"][:, 0, 0] = -got["sem_seg"][:, 0, 0]  # pixel (0, 0): argmax -> argmin
    got["panoptic_seg"][1][1]["category_id"] = 4
    got["instances"].scores = got["instances"].scores + torch.tensor([0.0, 0.002, 0.0])
    result = gpu_check.compare_outputs(ref, got)
    assert result["semantic_argmax_agreement_pct"] == pytest.approx(100 * 41 / 42)  # 6 x 7
    assert result["instance_score_max_abs_diff"] == pytest.approx(0.002, abs=1e-6)
    checks = result["checks"]
    assert not checks["semantic_argmax_agreement"]
    assert not checks["panoptic_segments_identical"] and checks["panoptic_pixel_agreement"]
    assert checks["instance_classes_identical"] and not checks["instance_scores_close"]
    assert checks["instance_masks_agree"]
    # One panoptic pixel of 42 and one instance mask pixel of 126 differ: below 99.9 %.
    got = _outputs()
    got["panoptic_seg"][0][0, 0] += 1
    got["instances"].pred_masks[0, 0, 0] ^= True
    checks = gpu_check.compare_outputs(ref, got)["checks"]
    assert not checks["panoptic_pixel_agreement"] and not checks["instance_masks_agree"]
    assert checks["panoptic_segments_identical"] and checks["instance_scores_close"]
    # Different instance classes: nothing else of the instances compares.
    got = _outputs()
    got["instances"].pred_classes = torch.tensor([1, 4, 2])
    result = gpu_check.compare_outputs(ref, got)
    assert result["instance_score_max_abs_diff"] is None
    assert not any(v for k, v in result["checks"].items() if k.startswith("instance"))
    # A score-only difference in a segment (float field) does not count as a new segment.
    got = _outputs()
    got["panoptic_seg"][1][0]["score"] = 0.1
    assert gpu_check.compare_outputs(ref, got)["checks"]["panoptic_segments_identical"]


def test_network_checks_are_relative_to_the_logits_scale(gpu_check):
    diffs = {"class_logits_max_abs_diff": 0.004, "class_logits_max_abs": 10.0,
             "mask_logits_max_abs_diff": 0.0005, "mask_logits_max_abs": 0.5,
             "mask_sign_agreement_pct": 99.95}
    assert all(gpu_check._network_checks(diffs).values())
    diffs.update(class_logits_max_abs_diff=0.02, mask_logits_max_abs_diff=0.002,
                 mask_sign_agreement_pct=99.8)
    assert not any(gpu_check._network_checks(diffs).values())


def test_device_slug(gpu_check):
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
