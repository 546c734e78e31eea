#!/usr/bin/env python
"""One-command GPU check: CUDA tests, a short bf16 training, inference speed, ONNX parity.

    python benchmarks/gpu_check.py                        # one CUDA GPU, at most 8 minutes
    python benchmarks/gpu_check.py --device cpu --quick   # the same sections on CPU (the suite)

Sections, each timed and guarded (a failure is recorded and the next section still runs;
once the time budget, ``--budget-s``, is spent the remaining sections are skipped with the
reason):

* ``cuda_tests``: the test files that skip without CUDA (found by their
  ``skipif(not torch.cuda.is_available(), ...)`` marks), run with pytest in a subprocess:
  passed / failed / skipped counts. Skipped on CPU.
* ``training``: the R50 recipe (``configs/coco_ade_o365/DaTaSeg_R50.yaml``) trained for 50
  iterations on generated data (``dataseg.data.synthetic``: a panoptic, a semantic and a box
  dataset standing in for COCO, ADE20k and Objects365, with the recipe's crops) at the
  recipe's per-GPU batch (its total over 8 GPUs), random weights and the "Random" text
  encoder, with ``SOLVER.AMP`` in bfloat16. Checks: every loss finite, the loss falls (mean of
  the last 10 iterations below the first 10's), the backbone ran in bfloat16 and the
  deformable attention's sampling in float32. Reports the median step time after warm-up,
  the data wait and the peak GPU memory.
* ``inference``: ``DaTaSegPredictor`` images/s on 1024x1024 images (COCO's 133 classes,
  panoptic), float32 and under bfloat16 autocast, timed with ``torch.cuda.synchronize``.
* ``export_parity``: ``dataseg.tools.export`` writes the ONNX graph of the trained weights and
  ``OnnxPredictor`` (onnxruntime's CUDA provider when it has one, else the CPU one) is
  compared with ``DaTaSegPredictor`` on a generated image: semantic argmax agreement,
  panoptic segments, instance classes and scores.

It prints one JSON object (and writes it with ``--output``; on a GPU without ``--output``, to
``benchmarks/results/gpu_check_<device>.json``) with every result, the device, the versions,
the git commit and ``"ok"``: false when a section failed or raised. The exit status is 0 when
``ok``. ``--quick`` runs the tiny config (``configs/tiny/DaTaSeg-tiny.yaml``) on small images
for a few iterations: the suite runs it on CPU (``tests/benchmarks/test_gpu_check.py``).
"""

import argparse
import contextlib
import gc
import glob
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, median_time, random_image, vocabulary  # noqa: E402

R50_CONFIG = "configs/coco_ade_o365/DaTaSeg_R50.yaml"
TINY_CONFIG = "configs/tiny/DaTaSeg-tiny.yaml"
# docs/configs.md trains the R50 recipe with --num-gpus 8: its BATCH_SIZES (totals over all
# GPUs) divided by 8 are what one GPU holds.
RECIPE_GPUS = 8
SYNTH_PREFIX = "gpu_check_synth"
# The generated datasets standing in for the recipe's COCO panoptic, ADE20k semantic and
# Objects365 boxes (same tasks, same order as its DATASETS.TRAIN and IMAGE_SIZES).
SYNTH_TRAIN = ("panoptic_train", "semantic_train", "box_train")
SECTIONS = ("cuda_tests", "training", "inference", "export_parity")
# Parity thresholds of the export's CPU tests: argmax equal on >= 99.9 % of pixels, scores
# equal up to float tolerance.
MIN_AGREEMENT_PCT = 99.9
MAX_SCORE_DIFF = 1e-3
MAX_LOGIT_DIFF = 1e-3  # relative to the largest logit (at least 1)

# What --quick changes: the tiny config on small images, a few iterations and timed runs.
FULL = dict(config=R50_CONFIG, recipe_gpus=RECIPE_GPUS, iters=50, warmup_iters=5,
            loss_window=10, synth_size=640, synth_train=16, infer_size=1024, infer_warmup=3,
            infer_runs=10, parity_size=512)
QUICK = dict(config=TINY_CONFIG, recipe_gpus=1, iters=12, warmup_iters=2, loss_window=4,
             synth_size=128, synth_train=6, infer_size=128, infer_warmup=1, infer_runs=2,
             parity_size=128, train_size=128)


class Check:
    """State shared by the sections: options, device, scratch folder, deadline, results."""

    def __init__(self, args, scratch: str):
        self.args = args
        self.device = args.device
        self.settings = dict(QUICK if args.quick else FULL)
        if args.config:
            self.settings["config"] = args.config
        if args.iters:
            self.settings["iters"] = args.iters
        self.scratch = scratch
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.synthetic_root: Optional[str] = None
        self.trained_weights: Optional[str] = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def synchronize(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def cfg(self, opts: Dict[str, object]):
        """The check's config: random weights, the Random text encoder, no test datasets."""
        from dataseg.engine import get_dataseg_cfg

        base = {
            "MODEL.DEVICE": self.device, "MODEL.WEIGHTS": "",
            "MODEL.DATASEG.TEXT.ENCODER": "Random", "MODEL.DATASEG.TEXT.RANDOM_DIM": 768,
            "MODEL.DATASEG.TEXT.CACHE_DIR": os.path.join(self.scratch, "text_cache"),
            "DATASETS.TEST": (), "TEST.DATASEG.NUM_VISUALIZATIONS": 0, "SEED": 0,
        }
        base.update(opts)
        flat = []
        for key, value in base.items():
            flat += [key, value if isinstance(value, str) else repr(value)]
        return get_dataseg_cfg(os.path.join(ROOT, self.settings["config"]), flat)

    def synthetic_data(self) -> str:
        """Generate (once) and register the synthetic datasets under the scratch folder."""
        if self.synthetic_root is None:
            from dataseg.data.synthetic import generate_synthetic_datasets, \
                register_synthetic_datasets

            root = generate_synthetic_datasets(
                os.path.join(self.scratch, "datasets", "dataseg_synthetic"),
                num_train=self.settings["synth_train"], num_val=1,
                image_size=self.settings["synth_size"], seed=0)
            register_synthetic_datasets(root, prefix=SYNTH_PREFIX, replace=True)
            self.synthetic_root = root
        return self.synthetic_root


# ------------------------------------------------------------------------------------------
# Section runner
# ------------------------------------------------------------------------------------------


def run_section(check: Check, name: str, fn: Callable[[Check], dict]) -> dict:
    """``fn(check)`` timed; an exception becomes status "error", checks become "failed"."""
    if check.remaining() <= 0:
        return {"status": "skipped", "budget_spent": True, "seconds": 0.0,
                "reason": f"the time budget of {check.args.budget_s:.0f} s was spent before "
                          "this section (raise --budget-s)"}
    start = time.perf_counter()
    try:
        result = fn(check)
    except Exception as e:  # noqa: BLE001 - one section's failure must not stop the others
        result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()[-4000:]}
    result.setdefault("status", "ok")
    if result["status"] == "ok" and not all(result.get("checks", {}).values()):
        result["status"] = "failed"
    result["seconds"] = time.perf_counter() - start
    # The next section starts from a clean slate: the trainer's loader workers and cached
    # GPU blocks of this one are released.
    gc.collect()
    if check.device == "cuda":
        torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------------------
# (a) CUDA tests
# ------------------------------------------------------------------------------------------


# A test that skips without CUDA: ``pytest.mark.skipif(not torch.cuda.is_available(), ...)``.
_CUDA_SKIP = re.compile(r"skipif\(\s*not\s+torch\.cuda\.is_available\(\)")


def cuda_test_files() -> List[str]:
    """The test files holding tests that skip without CUDA (never this check's own test)."""
    files = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "**", "test_*.py"), recursive=True)):
        if os.path.basename(path) == "test_gpu_check.py":  # it runs this script
            continue
        with open(path, encoding="utf-8") as f:
            if _CUDA_SKIP.search(f.read()):
                files.append(os.path.relpath(path, ROOT))
    return files


def junit_counts(path: str) -> dict:
    """passed / failed / errors / skipped counts and the failing and skipped test ids."""
    failed, skipped, passed = [], {}, 0
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(test_id)
        elif case.find("skipped") is not None:
            skipped[test_id] = case.find("skipped").get("message", "")
        else:
            passed += 1
    return {"passed": passed, "failed": len(failed), "skipped": len(skipped),
            "failed_tests": failed, "skipped_tests": skipped}


def section_cuda_tests(check: Check) -> dict:
    files = cuda_test_files()
    if check.device != "cuda":
        return {"status": "skipped", "files": files,
                "reason": "no CUDA device (--device cpu): these tests skip without one"}
    junit = os.path.join(check.scratch, "cuda_tests.xml")
    log = os.path.join(check.scratch, "cuda_tests.log")
    timeout = max(30.0, min(check.remaining(), 300.0))
    with open(log, "w") as out:
        # Its own process group: on time-out pytest and anything it started are ended.
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
             f"--junitxml={junit}", *files],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with open(log) as f:
        tail = f.read()[-3000:]
    if not os.path.isfile(junit):
        return {"status": "error", "files": files, "returncode": proc.returncode,
                "error": f"pytest wrote no report (ended after at most {timeout:.0f} s)",
                "log_tail": tail}
    counts = junit_counts(junit)
    cuda_skips = {k: v for k, v in counts["skipped_tests"].items() if "CUDA" in v}
    result = {"files": files, "returncode": proc.returncode, **counts,
              "checks": {"none_failed": counts["failed"] == 0 and proc.returncode in (0, 5),
                         "cuda_tests_ran": not cuda_skips and counts["passed"] > 0}}
    if not all(result["checks"].values()):
        result["log_tail"] = tail
    return result


# ------------------------------------------------------------------------------------------
# (b) Training
# ------------------------------------------------------------------------------------------


class _StepTimer:
    """Trainer hook: wall time of every step, the device synchronised at its end."""

    def __init__(self, check: Check):
        from detectron2.engine import HookBase

        class Hook(HookBase):
            def before_step(hook):
                check.synchronize()
                hook.start = time.perf_counter()

            def after_step(hook):
                check.synchronize()
                self.times.append(time.perf_counter() - hook.start)

        self.times: List[float] = []
        self.hook = Hook()


@contextlib.contextmanager
def _recorded_msda_dtypes(records: set):
    """Record (value, locations, weights, output) dtypes of every deformable-attention call."""
    import importlib

    module = importlib.import_module("dataseg.modeling.ops.ms_deform_attn")
    original = module.ms_deform_attn

    def wrapper(value, shapes, locations, weights, *args, **kwargs):
        out = original(value, shapes, locations, weights, *args, **kwargs)
        records.add(tuple(str(t.dtype) for t in (value, locations, weights, out)))
        return out

    module.ms_deform_attn = wrapper
    try:
        yield
    finally:
        module.ms_deform_attn = original


def _bf16_autocast(trainer) -> str:
    """Make the trainer's forward run under bfloat16 autocast; returns the step's class name.

    On CUDA ``SOLVER.AMP.ENABLED`` makes ``DaTaSegStepTrainer`` follow detectron2's
    ``AMPTrainer``: float16 autocast with a loss scaler; bfloat16's float32-wide exponent needs
    no scaling, so the scaler is disabled. On CPU the step trainer already uses bfloat16.
    """
    inner = trainer._trainer
    if getattr(inner, "autocast_dtype", None) is None:
        raise RuntimeError(f"{type(inner).__name__} does not train under autocast "
                           "(SOLVER.AMP.ENABLED is off).")
    if inner.autocast_dtype != torch.bfloat16:
        inner.autocast_dtype = torch.bfloat16
        inner.grad_scaler = torch.amp.GradScaler(inner.autocast_device, enabled=False)
    return type(inner).__name__


def _mean(values):
    return float(statistics.fmean(values)) if values else float("nan")


def section_training(check: Check) -> dict:
    from dataseg.engine import DaTaSegTrainer

    s = check.settings
    check.synthetic_data()
    out_dir = os.path.join(check.scratch, "train")
    # The recipe's model, solver, crops and per-GPU batch; the schedule shortened to the
    # iterations run (its 1,500 warm-up iterations would keep the rate near zero throughout).
    probe = check.cfg({})
    per_gpu = [max(1, int(b) // s["recipe_gpus"])
               for b in (probe.DATALOADER.DATASEG.BATCH_SIZES or [probe.SOLVER.IMS_PER_BATCH] * 3)]
    opts = {
        "DATASETS.TRAIN": tuple(f"{SYNTH_PREFIX}_{n}" for n in SYNTH_TRAIN),
        "DATALOADER.DATASEG.BATCH_SIZES": per_gpu,
        "SOLVER.AMP.ENABLED": True,
        "SOLVER.MAX_ITER": s["iters"],
        "SOLVER.WARMUP_ITERS": max(1, s["iters"] // 10),
        "SOLVER.CHECKPOINT_PERIOD": 10 * s["iters"],  # only the final save
        "OUTPUT_DIR": out_dir,
    }
    if "train_size" in s:
        opts["INPUT.DATASEG.IMAGE_SIZES"] = [s["train_size"]]
    if check.device == "cpu":
        opts["DATALOADER.NUM_WORKERS"] = 0
    cfg = check.cfg(opts)

    if check.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = DaTaSegTrainer(cfg)
    step_class = _bf16_autocast(trainer)
    trainer.resume_or_load(resume=False)
    timer = _StepTimer(check)
    trainer.register_hooks([timer.hook])
    backbone_dtypes = set()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    handle = model.backbone.register_forward_hook(
        lambda m, a, out: backbone_dtypes.update(str(v.dtype) for v in out.values()))
    msda = set()
    try:
        with _recorded_msda_dtypes(msda):
            trainer.train()
    finally:
        handle.remove()

    losses = [float(v) for v, _ in trainer.storage.history("total_loss").values()]
    per_dataset = {}
    for name in cfg.DATASETS.TRAIN:
        key = f"{name}/total_loss"
        if key in trainer.storage.histories():
            per_dataset[name] = [float(v) for v, _ in trainer.storage.history(key).values()]
    w = min(s["loss_window"], max(1, len(losses) // 2))
    first, last = _mean(losses[:w]), _mean(losses[-w:])
    # Wall time per iteration (the trainer's hooks included), without the warm-up steps.
    warm = s["warmup_iters"] if len(timer.times) > s["warmup_iters"] else 0
    steps = timer.times[warm:]
    data_times = [float(v) for v, _ in trainer.storage.history("data_time").values()]
    final = os.path.join(out_dir, "model_final.pth")
    check.trained_weights = final if os.path.isfile(final) else None
    result = {
        "config": s["config"],
        "iterations": len(losses),
        "datasets": list(cfg.DATASETS.TRAIN),
        "crop_sizes": list(cfg.INPUT.DATASEG.IMAGE_SIZES),
        "batch_per_dataset": per_gpu,
        "schedule": {"base_lr": cfg.SOLVER.BASE_LR, "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
                     "max_iter": cfg.SOLVER.MAX_ITER},
        "trainer_step": step_class,
        "autocast_dtype": str(trainer._trainer.autocast_dtype),
        "backbone_output_dtypes": sorted(backbone_dtypes),
        "msda_dtypes_value_locations_weights_output": sorted(list(t) for t in msda),
        "losses": losses,
        "loss_first_mean": first,
        "loss_last_mean": last,
        "loss_window": w,
        "per_dataset_losses": per_dataset,
        "step_time_median_s": statistics.median(steps) if steps else None,
        "step_time_excluded_warmup_iters": warm,
        "data_time_median_s": statistics.median(data_times) if data_times else None,
        "images_per_s": (sum(per_gpu) / len(per_gpu)) / statistics.median(steps)
        if steps else None,
    }
    result.update(_peak_memory(check))
    result["checks"] = {
        "ran_all_iterations": len(losses) == s["iters"],
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "loss_falls": last < first,
        "backbone_in_bfloat16": backbone_dtypes == {"torch.bfloat16"},
        "msda_in_float32": bool(msda) and all(set(t) == {"torch.float32"} for t in msda),
    }
    return result


def _peak_memory(check: Check) -> dict:
    if check.device == "cuda":
        return {"peak_gpu_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "peak_gpu_memory_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}
    # ru_maxrss: KiB on Linux; the process's peak so far, not this section's alone.
    return {"peak_process_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------------------------------
# (c) Inference
# ------------------------------------------------------------------------------------------


def _timed_images_per_s(check: Check, fn, runs: int, warmup: int) -> float:
    def call():
        fn()
        check.synchronize()

    check.synchronize()
    return 1.0 / median_time(call, runs, warmup=warmup)


def section_inference(check: Check) -> dict:
    from dataseg.engine import DaTaSegPredictor

    s = check.settings
    size = s["infer_size"]
    cfg = check.cfg({"INPUT.MIN_SIZE_TEST": size, "INPUT.MAX_SIZE_TEST": size})
    names, isthing = vocabulary(133)
    torch.manual_seed(0)
    predictor = DaTaSegPredictor(cfg, classes=names, isthing=isthing, task="panoptic")
    image = random_image(size).permute(1, 2, 0).numpy().copy()  # (H, W, 3) "BGR"
    if check.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    fp32 = _timed_images_per_s(check, lambda: predictor(image), s["infer_runs"],
                               s["infer_warmup"])
    with torch.autocast(check.device, dtype=torch.bfloat16):
        bf16 = _timed_images_per_s(check, lambda: predictor(image), s["infer_runs"],
                                   s["infer_warmup"])
        out = predictor(image)
    ids, segments = out["panoptic_seg"]
    result = {
        "config": s["config"], "image_size": [size, size], "classes": len(names),
        "outputs": list(predictor.outputs), "runs": s["infer_runs"],
        "warmup": s["infer_warmup"],
        "images_per_s_float32": fp32, "images_per_s_bfloat16_autocast": bf16,
        "bfloat16_panoptic_segments": len(segments),
    }
    result.update(_peak_memory(check))
    result["checks"] = {"positive_speed": fp32 > 0 and bf16 > 0,
                        "bfloat16_output_shape": tuple(ids.shape) == (size, size)}
    return result


# ------------------------------------------------------------------------------------------
# (d) Export parity
# ------------------------------------------------------------------------------------------


def _cpu(x):
    return x.cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _segment_key(segments):
    """Segments without their float fields (scores), for an exact comparison."""
    return [{k: v for k, v in d.items() if not isinstance(v, float)} for d in segments]


def compare_outputs(ref: dict, got: dict) -> dict:
    """Agreement of two predictor outputs (``DaTaSegPredictor``'s dict) and the checks."""
    metrics, checks = {}, {}
    if "sem_seg" in ref:
        a, b = _cpu(ref["sem_seg"]).argmax(0), _cpu(got["sem_seg"]).argmax(0)
        pct = 100.0 * float((a == b).float().mean()) if a.shape == b.shape else 0.0
        metrics["semantic_argmax_agreement_pct"] = pct
        checks["semantic_argmax_agreement"] = pct >= MIN_AGREEMENT_PCT
    if "panoptic_seg" in ref:
        (ids_a, seg_a), (ids_b, seg_b) = ref["panoptic_seg"], got["panoptic_seg"]
        ids_a, ids_b = _cpu(ids_a), _cpu(ids_b)
        pct = 100.0 * float((ids_a == ids_b).float().mean()) if ids_a.shape == ids_b.shape \
            else 0.0
        metrics["panoptic_segments"] = [len(seg_a), len(seg_b)]
        metrics["panoptic_pixel_agreement_pct"] = pct
        checks["panoptic_segments_identical"] = _segment_key(seg_a) == _segment_key(seg_b)
        checks["panoptic_pixel_agreement"] = pct >= MIN_AGREEMENT_PCT
    if "instances" in ref:
        a, b = ref["instances"].to("cpu"), got["instances"].to("cpu")
        same = len(a) == len(b) and bool(torch.equal(a.pred_classes, b.pred_classes))
        metrics["instances"] = [len(a), len(b)]
        score_diff, mask_pct = (0.0, 100.0) if same else (None, None)
        if same and len(a):
            score_diff = float((a.scores - b.scores).abs().max())
            mask_pct = 100.0 * float((a.pred_masks == b.pred_masks).float().mean())
        metrics["instance_score_max_abs_diff"] = score_diff
        metrics["instance_mask_agreement_pct"] = mask_pct
        checks["instance_classes_identical"] = same
        checks["instance_scores_close"] = same and score_diff <= MAX_SCORE_DIFF
        checks["instance_masks_agree"] = same and mask_pct >= MIN_AGREEMENT_PCT
    return {**metrics, "checks": checks}


def _network_checks(diffs: dict) -> dict:
    """The graph's logits equal the eager network's up to float tolerance."""
    return {
        "network_class_logits_close": diffs["class_logits_max_abs_diff"]
        <= MAX_LOGIT_DIFF * max(1.0, diffs["class_logits_max_abs"]),
        "network_mask_logits_close": diffs["mask_logits_max_abs_diff"]
        <= MAX_LOGIT_DIFF * max(1.0, diffs["mask_logits_max_abs"]),
        "network_mask_signs_agree": diffs["mask_sign_agreement_pct"] >= MIN_AGREEMENT_PCT,
    }


def section_export_parity(check: Check) -> dict:
    import cv2

    try:
        from dataseg.tools.export import OnnxPredictor, compare_with_pytorch, export_onnx
    except ImportError as e:
        return {"status": "unavailable",
                "reason": f"dataseg.tools.export (export_onnx, OnnxPredictor, "
                          f"compare_with_pytorch) cannot be imported: {e}"}
    try:
        import onnxruntime
    except ImportError as e:
        return {"status": "unavailable",
                "reason": f"onnxruntime is not installed ({e}): pip install dataseg[deploy]"}
    from dataseg.data.synthetic import STUFF_CONCEPTS, SYNTHETIC_VOCABULARIES
    from dataseg.engine import DaTaSegPredictor

    s = check.settings
    size = s["parity_size"]
    root = check.synthetic_data()
    image_path = sorted(glob.glob(os.path.join(root, "panoptic", "images", "val", "*")))[0]
    image = cv2.resize(cv2.imread(image_path, cv2.IMREAD_COLOR), (size, size),
                       interpolation=cv2.INTER_LINEAR)
    # The vocabulary the training section trained on, its weights when it saved them.
    vocab = SYNTHETIC_VOCABULARIES["panoptic"]
    classes = list(vocab.values())
    isthing = [concept not in STUFF_CONCEPTS for concept in vocab]
    tasks = ["semantic", "panoptic", "instance"]
    kwargs = dict(classes=classes, isthing=isthing, task=tasks)
    weights = check.trained_weights or ""
    queries = check.cfg({}).MODEL.DATASEG.DECODER.NUM_QUERIES
    # Every (query, thing class) pair becomes an instance: instances are compared even when
    # a briefly trained network's best scores are all stuff.
    cfg = check.cfg({"MODEL.WEIGHTS": weights, "INPUT.MIN_SIZE_TEST": size,
                     "INPUT.MAX_SIZE_TEST": size,
                     "TEST.DETECTIONS_PER_IMAGE": queries * len(classes)})

    available = onnxruntime.get_available_providers()
    provider = ("CUDAExecutionProvider" if check.device == "cuda"
                and "CUDAExecutionProvider" in available else "CPUExecutionProvider")
    # Full float32 on both sides: TF32 convolutions would differ from the graph's by ~1e-3.
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        predictor = DaTaSegPredictor(cfg, **kwargs)
        eager = predictor(image)
        torch_s = 1.0 / _timed_images_per_s(check, lambda: predictor(image), 2, 0)
        path = os.path.join(check.scratch, "model.onnx")
        start = time.perf_counter()
        export_onnx(cfg, path, model=predictor.model)
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        onnx_predictor = OnnxPredictor(path, cfg, providers=[provider], **kwargs)
        load_s = time.perf_counter() - start
        exported = onnx_predictor(image)
        onnx_s = median_time(lambda: onnx_predictor(image), 2, warmup=0)
        # The network alone on a random padded image and random class rows: its logits
        # are compared whatever the post-processing keeps.
        network = compare_with_pytorch(predictor.model, path, size, size,
                                       num_classes=len(classes), providers=[provider])
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    comparison = compare_outputs(eager, exported)
    result = {
        "weights": "trained in the training section" if weights else "random (seed 0)",
        "image": os.path.relpath(image_path, root), "image_size": [size, size],
        "tasks": tasks, "classes": len(classes),
        "compared": {"semantic_classes": int(_cpu(eager["sem_seg"]).argmax(0).unique().numel()),
                     "panoptic_segments": len(eager["panoptic_seg"][1]),
                     "instances": len(eager["instances"])},
        "onnxruntime": onnxruntime.__version__, "providers_available": available,
        "provider_requested": provider, "providers_used": onnx_predictor.providers,
        "export_s": export_s, "onnx_file_mib": os.path.getsize(path) / 2**20,
        "onnx_load_s": load_s, "torch_s_per_image": torch_s, "onnx_s_per_image": onnx_s,
        "network": network,
    }
    result["checks"] = {**_network_checks(network), **comparison.pop("checks")}
    result.update(comparison)
    return result


# ------------------------------------------------------------------------------------------
# Run
# ------------------------------------------------------------------------------------------

SECTION_FUNCTIONS = {
    "cuda_tests": section_cuda_tests,
    "training": section_training,
    "inference": section_inference,
    "export_parity": section_export_parity,
}


def _git() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError) as e:
        return {"commit": None, "error": f"{type(e).__name__}: {e}"}


def environment(device: str) -> dict:
    import detectron2

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "detectron2": detectron2.__version__}
    for name in ("onnx", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        versions["cudnn"] = torch.backends.cudnn.version()
        versions["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                            "cudnn": torch.backends.cudnn.allow_tf32}
        dev = {"type": "cuda", "name": props.name, "memory_gib": props.total_memory / 2**30,
               "capability": f"{props.major}.{props.minor}",
               "count": torch.cuda.device_count()}
    else:
        dev = {"type": "cpu", "name": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads()}
    return {"device": dev, "versions": versions, "git": _git(), "host": platform.node()}


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3' (a file-name part)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


def _json_safe(value):
    """NaN / inf as strings: the output stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_check(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="dataseg_gpu_check_") as scratch:
        check = Check(args, scratch)
        report = {"ok": False, "quick": bool(args.quick), "config": check.settings["config"],
                  "budget_s": args.budget_s}
        report.update(environment(args.device))
        sections = {}
        # The generated datasets are written (and found) under the scratch folder only.
        with _environ(DETECTRON2_DATASETS=os.path.join(scratch, "datasets")):
            for name in args.sections:
                sections[name] = run_section(check, name, SECTION_FUNCTIONS[name])
                print(f"[gpu_check] {name}: {sections[name]['status']} "
                      f"({sections[name]['seconds']:.1f} s)", file=sys.stderr, flush=True)
        report["sections"] = sections
        report["failed"] = [n for n, r in sections.items() if r["status"] in ("failed", "error")]
        report["ok"] = not report["failed"]
        report["skipped_by_budget"] = [n for n, r in sections.items() if r.get("budget_spent")]
        report["complete"] = not report["skipped_by_budget"]
        report["total_s"] = time.monotonic() - check.start
    return _json_safe(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="tiny config, small images, a few iterations (CPU smoke run)")
    parser.add_argument("--output", default=None,
                        help="also write the JSON here (on a GPU, default "
                             "benchmarks/results/gpu_check_<device>.json)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="time budget; sections starting after it are skipped")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--config", default=None, help="config to train and time instead")
    parser.add_argument("--iters", type=int, default=None, help="training iterations")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "--device cuda but torch sees no CUDA device; "
                          "run on a GPU machine, or `--device cpu --quick` for the CPU run."}))
        return 2
    # Library logs (detectron2 logs to stdout) go to stderr: stdout holds the JSON alone.
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        report = run_check(args)
    text = json.dumps(report, indent=1, allow_nan=False)
    output = args.output
    if output is None and args.device == "cuda" and not args.quick:
        output = os.path.join(ROOT, "benchmarks", "results",
                              f"gpu_check_{device_slug(report['device']['name'])}.json")
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            f.write(text + "\n")
    print(text, file=stdout, flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
