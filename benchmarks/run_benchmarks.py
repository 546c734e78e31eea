#!/usr/bin/env python
"""DaTaSeg CPU benchmark suite: size, FLOPs, latency, training step, memory, scaling.

    python benchmarks/run_benchmarks.py [--sizes 384 512 768] [--output out.json] [--quick]

Measures, for one config (default: the paper's R50 recipe, random weights, random 768-d
text embeddings; nothing is downloaded):

* parameters (total and per part) and FLOPs per forward (fvcore, multiply-add = 2 FLOP,
  with handlers for the ops fvcore does not know: the deformable-attention op, attention
  kernels, embedding_bag);
* the machine's fp32 matmul GFLOP/s, measured in the same run, and the fraction of it the
  model's forward achieves;
* inference latency per image size, end to end and per stage (backbone, pixel decoder,
  deformable-attention sampling alone, transformer decoder, text classifier, post-processing
  per task);
* one training step (batch 2, forward + criterion + backward + AdamW step) and its split;
* the criterion (merge + matching + losses, forward + backward) for 10 / 100 / 300
  ground-truth segments, and the classifier + post-processing for 150 / 365 / 1203 classes;
* peak RSS of inference and of training, each in a fresh subprocess (``ru_maxrss``).

Times are medians of ``--runs`` repetitions after warm-up. On a shared machine compare the
ratios within one run; the load average at start and end is recorded.
"""

import argparse
import contextlib
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    BENCH_DATASET,
    DEFAULT_CONFIG,
    bench_cfg,
    build_bench_model,
    median_time,
    random_image,
    register_bench_dataset,
    train_batch,
    voronoi_masks,
)

from dataseg.engine.optimizer import build_dataseg_optimizer  # noqa: E402
from dataseg.modeling.criterion import CriterionContext  # noqa: E402
from dataseg.modeling.fast_paths.malloc import tune_malloc  # noqa: E402

# The module (not the function of the same name re-exported by the package) whose
# ms_deform_attn the benchmark wraps to time the sampling alone.
msda_module = importlib.import_module("dataseg.modeling.ops.ms_deform_attn")

# ------------------------------------------------------------------------------------------
# Machine
# ------------------------------------------------------------------------------------------


def matmul_gflops(n: int = 2048, runs: int = 5) -> float:
    """fp32 GFLOP/s of an n x n matmul (2 n^3 FLOP), median after warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    t = median_time(lambda: torch.mm(a, b, out=out), runs, warmup=2)
    return 2 * n**3 / t / 1e9


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------


def _shape(value):
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _python_op_macs(inputs, outputs):
    """The deformable-attention autograd Function (traced as ``prim::PythonOp``).

    Counted like fvcore counts ``grid_sampler`` (bilinear: 4 multiply-adds per output value
    and point), plus the attention-weighted sum: B*Q*M*L*P*4*Dh.
    """
    shapes = [_shape(v) for v in inputs]
    value = next((s for s in shapes if s is not None and len(s) == 4), None)
    locations = next((s for s in shapes if s is not None and len(s) == 6), None)
    if value is None or locations is None:
        return 0
    B, Q, M, L, P, _ = locations
    return B * Q * M * L * P * 4 * value[3]


def _sdpa_macs(inputs, outputs):
    """scaled_dot_product_attention: Q K^T and A V, (B, H, Lq, D) x (B, H, Lk, D)."""
    q, k = _shape(inputs[0]), _shape(inputs[1])
    lk = k[-2]
    return 2 * _prod(q) * lk


def _embedding_bag_macs(inputs, outputs):
    """embedding_bag with per-sample weights: one multiply-add per index and channel."""
    weight, indices = _shape(inputs[0]), _shape(inputs[1])
    return _prod(indices) * weight[-1]


def _matmul_macs(inputs, outputs):
    """matmul with any ranks (fvcore's handler rejects matrix @ vector)."""
    a, out = _shape(inputs[0]), _shape(outputs[0])
    return _prod(out) * a[-1]


def _baddbmm_macs(inputs, outputs):
    """baddbmm(bias, (B, n, k), (B, k, m)): the 1x1 convolutions run as GEMMs on CPU."""
    a, out = _shape(inputs[1]), _shape(outputs[0])
    return _prod(out) * a[-1]


EXTRA_FLOP_HANDLES = {
    "aten::matmul": _matmul_macs,
    "aten::baddbmm": _baddbmm_macs,
    "prim::PythonOp._MSDeformAttnEmbeddingBag": _python_op_macs,
    "prim::PythonOp": _python_op_macs,
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "aten::embedding_bag": _embedding_bag_macs,
    "aten::_embedding_bag": _embedding_bag_macs,
}


class _ForwardForFlops(torch.nn.Module):
    """backbone -> pixel decoder -> decoder -> classifier on a normalised image tensor."""

    def __init__(self, model, vocabulary):
        super().__init__()
        self.model = model
        self.vocabulary = vocabulary

    def forward(self, images):
        preds = self.model.predict(images)
        logits = self.model.classifier(preds[-1]["query_features"], vocabulary=self.vocabulary)
        return logits, preds[-1]["pred_masks"]


def count_flops(model, size: int) -> dict:
    """GFLOP (multiply-add = 2 FLOP) of one forward, total and per part."""
    from fvcore.nn import FlopCountAnalysis

    images = model.preprocess_image([{"image": random_image(size)}]).tensor
    analysis = FlopCountAnalysis(_ForwardForFlops(model, BENCH_DATASET), (images,))
    analysis.set_op_handle(**EXTRA_FLOP_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        by_module = analysis.by_module()
        total = analysis.total()
    parts = {k: 2 * by_module.get(f"model.{k}", 0) / 1e9
             for k in ("backbone", "pixel_decoder", "transformer_decoder", "classifier")}
    msda = sum(v for k, v in analysis.by_operator().items() if k.startswith("PythonOp"))
    return {
        "gflop": 2 * total / 1e9,
        "by_part_gflop": parts,
        "deformable_sampling_gflop": 2 * msda / 1e9,
        "unsupported_ops": dict(analysis.unsupported_ops()),
    }


# ------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timed_msda(acc: List[float]):
    """Accumulate the wall time of every deformable-attention sampling call into acc[0]."""
    original = msda_module.ms_deform_attn

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        acc[0] += time.perf_counter() - start
        return out

    msda_module.ms_deform_attn = wrapper
    try:
        yield
    finally:
        msda_module.ms_deform_attn = original


def inference_stages(model, inputs, dataset=BENCH_DATASET) -> Dict[str, float]:
    """One forward split into stages (seconds), through the model's own pieces."""
    info = model.dataset_info(dataset)
    model._ensure_vocabulary(dataset, info["classes"])
    t = {}
    msda = [0.0]
    start = time.perf_counter()
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    t["backbone"] = time.perf_counter() - start
    start = time.perf_counter()
    with timed_msda(msda):
        mask_features, multi_scale = model.pixel_decoder(features)
    t["pixel_decoder"] = time.perf_counter() - start
    t["deformable_sampling"] = msda[0]
    start = time.perf_counter()
    preds = model.transformer_decoder(multi_scale, mask_features)
    t["transformer_decoder"] = time.perf_counter() - start
    start = time.perf_counter()
    logits = model.classifier(preds[-1]["query_features"], vocabulary=dataset)
    t["text_classifier"] = time.perf_counter() - start
    for output in info["test_outputs"]:
        start = time.perf_counter()
        model.inference(logits, preds[-1]["pred_masks"], images, inputs,
                        {**info, "test_outputs": (output,)})
        t[f"postprocess_{output}"] = time.perf_counter() - start
    t["postprocess_total"] = sum(v for k, v in t.items() if k.startswith("postprocess_"))
    return t


def median_dict(rows: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def confident_logits(num_queries: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(1, Q, C+1) logits of a trained-looking model: every query sure of one class.

    A random-init model's class distributions are nearly uniform, so panoptic inference
    keeps no segment and would be timed doing nothing; these make it keep all queries.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, num_queries, num_classes + 1, generator=g)
    best = torch.randint(0, num_classes, (num_queries,), generator=g)
    logits[0, torch.arange(num_queries), best] += 12.0
    return logits


def bench_inference(model, size: int, runs: int, warmup: int) -> dict:
    inputs = [{"image": random_image(size), "height": size, "width": size,
               "dataset_name": BENCH_DATASET}]
    with torch.no_grad():
        end_to_end = median_time(lambda: model(inputs), runs, warmup)
        stages = median_dict([inference_stages(model, inputs) for _ in range(runs)])
        info = model.dataset_info(BENCH_DATASET)
        images = model.preprocess_image(inputs)
        masks = model.predict(images.tensor)[-1]["pred_masks"]
        logits = confident_logits(masks.shape[1], len(info["classes"])).to(masks.device)
        for output in info["test_outputs"]:
            sub = {**info, "test_outputs": (output,)}
            stages[f"postprocess_confident_{output}"] = median_time(
                lambda: model.inference(logits, masks, images, inputs, sub), runs, warmup)
    return {"end_to_end_s": end_to_end, "stages_s": stages}


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------


class _CriterionSpy:
    """Times the criterion's forward and keeps its last inputs (for the scaling runs)."""

    def __init__(self, criterion):
        self.elapsed = 0.0
        self.args = None
        self._start = None
        self._handles = [
            criterion.register_forward_pre_hook(self._pre),
            criterion.register_forward_hook(self._post),
        ]

    def _pre(self, module, args):
        self.args = args
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.elapsed += time.perf_counter() - self._start

    def remove(self):
        for h in self._handles:
            h.remove()


def train_warmup(args) -> int:
    """Untimed training steps: at least 2. The allocator's heap reaches its steady size only
    after the second step; until then a step page-faults in fresh memory (measured: ~250 k
    faults and +2 s of system time in step 2, none from step 3 on), which a long training
    run never pays again."""
    return max(2, args.warmup)


def bench_train_step(model, cfg, size: int, segments: int, runs: int, warmup: int):
    """Median training step and its split; returns (result, captured criterion inputs)."""
    num_classes = len(model.dataset_info(BENCH_DATASET)["classes"])
    batch = train_batch(size, segments, num_classes)
    optimizer = build_dataseg_optimizer(cfg, model)
    spy = _CriterionSpy(model.criterion)
    model.train()
    rows = []
    try:
        for i in range(warmup + runs):
            spy.elapsed = 0.0
            usage = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            losses = model(batch)
            t1 = time.perf_counter()
            loss = sum(losses.values())
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            after = resource.getrusage(resource.RUSAGE_SELF)
            if i >= warmup:
                rows.append({
                    "step": t3 - t0,
                    "forward_without_criterion": (t1 - t0) - spy.elapsed,
                    "criterion_forward": spy.elapsed,
                    "backward": t2 - t1,
                    "optimizer": t3 - t2,
                    # Load-independent evidence of allocator behaviour (see malloc.py).
                    "system_cpu": after.ru_stime - usage.ru_stime,
                    "minor_page_faults": float(after.ru_minflt - usage.ru_minflt),
                })
    finally:
        spy.remove()
        model.eval()
    del optimizer
    return {"batch": len(batch), "size": size, "gt_segments": segments,
            "median_s": median_dict(rows)}, spy.args


def _detached_outputs(outputs):
    def leaf(x):
        return x.detach().clone().requires_grad_(True)

    out = {k: leaf(v) for k, v in outputs.items() if k != "aux_outputs"}
    out["aux_outputs"] = [{k: leaf(v) for k, v in a.items()} for a in outputs["aux_outputs"]]
    return out


def bench_criterion(model, captured, segments: List[int], runs: int, warmup: int) -> dict:
    """Criterion forward + backward on the model's real output shapes, per GT count."""
    outputs, _, context = captured
    B = outputs["pred_logits"].shape[0]
    H, W = context.images.shape[-2:]
    C = outputs["pred_logits"].shape[-1] - 1
    result = {}
    for k in segments:
        g = torch.Generator().manual_seed(k)
        targets = [{"labels": torch.randint(0, C, (k,), generator=g),
                    "masks": voronoi_masks(k, max(H, W), seed=k + b)[:, :H, :W].contiguous(),
                    "boxes": None} for b in range(B)]

        def step():
            leaves = _detached_outputs(outputs)
            losses = model.criterion(leaves, targets, context)
            sum(losses.values()).backward()

        result[str(k)] = median_time(step, runs, warmup)
    return result


# ------------------------------------------------------------------------------------------
# Vocabulary scaling
# ------------------------------------------------------------------------------------------


def bench_vocabularies(model, size: int, vocab_sizes: List[int], runs: int,
                       warmup: int) -> dict:
    """Classifier and per-task post-processing time for several vocabulary sizes."""
    inputs = [{"image": random_image(size), "height": size, "width": size}]
    result = {}
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        preds = model.predict(images.tensor)
        feats, masks = preds[-1]["query_features"], preds[-1]["pred_masks"]
        for n in vocab_sizes:
            name = register_bench_dataset(f"{BENCH_DATASET}_{n}", n)
            info = model.dataset_info(name)
            model._ensure_vocabulary(name, info["classes"])
            row = {"text_classifier": median_time(
                lambda: model.classifier(feats, vocabulary=name), max(runs, 5), warmup + 2)}
            logits = model.classifier(feats, vocabulary=name)
            for output in info["test_outputs"]:
                sub = {**info, "test_outputs": (output,)}
                row[f"postprocess_{output}"] = median_time(
                    lambda: model.inference(logits, masks, images, inputs, sub), runs, warmup)
            result[str(n)] = row
    return result


# ------------------------------------------------------------------------------------------
# Peak memory (fresh subprocesses)
# ------------------------------------------------------------------------------------------


def peak_rss_gib() -> float:
    """This process's peak resident memory (GiB).

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec; ``ru_maxrss`` would
    carry over the (large) peak of the benchmark process that spawned this one.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def rss_worker(args) -> dict:
    """Run in a fresh process: build, run ``mode`` twice, report the peak RSS (GiB)."""
    register_bench_dataset(num_classes=args.num_classes)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_cfg(args.config, tmp, args.opts)
        model = build_bench_model(cfg)
        base = peak_rss_gib()
        if args.rss_worker == "inference":
            inputs = [{"image": random_image(args.rss_size), "height": args.rss_size,
                       "width": args.rss_size, "dataset_name": BENCH_DATASET}]
            with torch.no_grad():
                for _ in range(2):
                    model(inputs)
        else:
            bench_train_step(model, cfg, args.rss_size, args.train_segments, 1, train_warmup(args))
    return {"peak_rss_gib": peak_rss_gib(), "after_build_rss_gib": base}


def measure_rss(args, mode: str, size: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--rss-worker", mode,
           "--rss-size", str(size), "--config", args.config, "--threads", str(args.threads),
           "--num-classes", str(args.num_classes),
           "--train-segments", str(args.train_segments)]
    if args.no_malloc_tuning:
        cmd.append("--no-malloc-tuning")
    if args.opts:
        cmd += ["--opts", *args.opts]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"RSS worker '{mode}' failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------

TARGETS = {  # from the CPU performance issue, R50 at 512x512, 2 threads
    "inference_512_s": 1.2,
    "train_step_s": 6.5,
    "train_peak_rss_gib": 4.5,
    "criterion_share_100": 0.10,
    "classifier_share_max_vocab": 0.02,
}


def summarize(r: dict) -> List[str]:
    ms = lambda s: f"{s * 1e3:8.1f} ms"  # noqa: E731
    lines = [
        f"config {r['config']}  threads {r['threads']}  malloc tuned {r['malloc_tuned']}  "
        f"load avg start {r['load_average_start']} end {r['load_average_end']}",
        f"parameters {r['parameters']['total'] / 1e6:.2f} M  ("
        + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in r["parameters"]["by_part"].items()) + ")",
        f"fp32 matmul {r['matmul_gflops']:.1f} GFLOP/s ({r['matmul_size']}^2 sgemm)",
        "",
        "size | GFLOP | end-to-end | achieved GFLOP/s (% of matmul) | backbone | pixel dec "
        "| (deform. sampling) | transf. dec | classifier | post-proc (sem / pan / inst)",
    ]
    for size, row in r["inference"].items():
        st = row["stages_s"]
        fl = r["flops"].get(size, {}).get("gflop")
        ach = fl / row["end_to_end_s"] if fl else None
        post = " / ".join(f"{st.get('postprocess_' + o, 0) * 1e3:.0f}"
                          for o in ("sem_seg", "panoptic_seg", "instances"))
        confident = " / ".join(f"{st.get('postprocess_confident_' + o, 0) * 1e3:.0f}"
                               for o in ("sem_seg", "panoptic_seg", "instances"))
        lines.append(
            f"{size} | {fl if fl is None else round(fl, 1)} | {ms(row['end_to_end_s'])} | "
            + (f"{ach:.1f} ({100 * ach / r['matmul_gflops']:.0f} %)" if ach else "-")
            + f" | {ms(st['backbone'])} | {ms(st['pixel_decoder'])} | "
            f"{ms(st['deformable_sampling'])} | {ms(st['transformer_decoder'])} | "
            f"{ms(st['text_classifier'])} | {post} ms (confident queries: {confident} ms)")
    if "train" in r:
        t = r["train"]["median_s"]
        lines += ["", f"training step (batch {r['train']['batch']}, {r['train']['size']}^2, "
                  f"{r['train']['gt_segments']} GT segments/image): {t['step']:.2f} s = "
                  f"forward {t['forward_without_criterion']:.2f} + criterion fwd "
                  f"{t['criterion_forward']:.2f} + backward {t['backward']:.2f} + optimizer "
                  f"{t['optimizer']:.2f}; system CPU {t['system_cpu']:.2f} s, "
                  f"{t['minor_page_faults'] / 1e3:.0f} k minor page faults"]
    if "criterion_s" in r:
        lines.append("criterion fwd+bwd by GT segments: " + ", ".join(
            f"{k}: {ms(v).strip()} ({100 * v / r['train']['median_s']['step']:.1f} % of step)"
            for k, v in r["criterion_s"].items()))
    if "vocabulary" in r:
        lines.append("by vocabulary size (classifier | post-proc per task): " + "; ".join(
            f"{n}: {v['text_classifier'] * 1e3:.2f} ms | " + " / ".join(
                f"{v[k] * 1e3:.0f}" for k in v if k.startswith("postprocess_")) + " ms"
            for n, v in r["vocabulary"].items()))
    if "peak_rss" in r:
        lines.append("peak RSS: " + ", ".join(
            f"{k} {v['peak_rss_gib']:.2f} GiB (after build {v['after_build_rss_gib']:.2f})"
            for k, v in r["peak_rss"].items()))
    if r.get("targets"):
        lines += ["", "targets:"] + [
            f"  {k}: {v['value']:.3f} (target <= {v['target']}) "
            + ("MET" if v["met"] else "NOT MET") for k, v in r["targets"].items()]
    return lines


def check_targets(r: dict) -> dict:
    out = {}

    def add(key, value):
        if value is not None:
            out[key] = {"value": value, "target": TARGETS[key], "met": value <= TARGETS[key]}

    inf = r["inference"].get("512")
    add("inference_512_s", inf["end_to_end_s"] if inf else None)
    if "train" in r and r["train"]["size"] == 512:
        step = r["train"]["median_s"]["step"]
        add("train_step_s", step)
        if "100" in r.get("criterion_s", {}):
            add("criterion_share_100", r["criterion_s"]["100"] / step)
    if "train" in r.get("peak_rss", {}):
        add("train_peak_rss_gib", r["peak_rss"]["train"]["peak_rss_gib"])
    if inf and r.get("vocabulary"):
        biggest = max(r["vocabulary"], key=int)
        add("classifier_share_max_vocab",
            r["vocabulary"][biggest]["text_classifier"] / inf["end_to_end_s"])
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="inference image sizes (default 384 512 768; --quick: 64)")
    p.add_argument("--train-size", type=int, default=None, help="default 512 (--quick: 64)")
    p.add_argument("--segments", type=int, nargs="+", default=None,
                   help="GT segments per image for the criterion runs (default 10 100 300)")
    p.add_argument("--train-segments", type=int, default=100)
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=None,
                   help="vocabulary sizes (default 150 365 1203)")
    p.add_argument("--num-classes", type=int, default=133, help="main vocabulary (COCO: 133)")
    p.add_argument("--runs", type=int, default=None, help="timed repetitions (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions (default 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes, 1 repetition, small matmul")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["flops", "train", "criterion", "vocabulary", "rss"])
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's allocator defaults (for before/after comparisons)")
    p.add_argument("--rss-worker", choices=["inference", "train"], help=argparse.SUPPRESS)
    p.add_argument("--rss-size", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides, KEY VALUE pairs (last on the command line)")
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {"sizes": [64] if quick else [384, 512, 768],
                "train_size": 64 if quick else 512,
                "segments": [2, 8] if quick else [10, 100, 300],
                "vocab_sizes": [16, 64] if quick else [150, 365, 1203],
                "runs": 1 if quick else 5,
                "warmup": 1}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if quick and args.train_segments == 100:
        args.train_segments = 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    torch.set_num_threads(args.threads)
    if args.rss_worker:
        print(json.dumps(rss_worker(args)))
        return {}
    register_bench_dataset(num_classes=args.num_classes)
    r = {"config": args.config, "opts": args.opts, "threads": args.threads,
         "malloc_tuned": malloc_tuned, "quick": args.quick, "torch": torch.__version__,
         "machine": platform.machine(), "cpu_count": os.cpu_count(),
         "load_average_start": load_average()}
    r["matmul_size"] = 256 if args.quick else 2048
    r["matmul_gflops"] = matmul_gflops(r["matmul_size"], 3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_cfg(args.config, tmp, args.opts)
        model = build_bench_model(cfg)
        r["parameters"] = {
            "total": sum(p.numel() for p in model.parameters()),
            "by_part": {k: sum(p.numel() for p in getattr(model, k).parameters())
                        for k in ("backbone", "pixel_decoder", "transformer_decoder",
                                  "classifier")}}
        model._ensure_vocabulary(BENCH_DATASET, model.dataset_info(BENCH_DATASET)["classes"])
        r["flops"] = {}
        if "flops" not in args.skip:
            for size in args.sizes:
                r["flops"][str(size)] = count_flops(model, size)
        r["inference"] = {}
        for size in args.sizes:
            r["inference"][str(size)] = bench_inference(model, size, args.runs, args.warmup)
            print(f"inference {size}: {r['inference'][str(size)]['end_to_end_s'] * 1e3:.0f} ms",
                  flush=True)
        if "train" not in args.skip:
            train_runs = max(1, (args.runs + 1) // 2)
            r["train"], captured = bench_train_step(
                model, cfg, args.train_size, args.train_segments, train_runs,
                train_warmup(args))
            print(f"training step: {r['train']['median_s']['step']:.2f} s", flush=True)
            if "criterion" not in args.skip:
                r["criterion_s"] = bench_criterion(
                    model, captured, args.segments, args.runs, args.warmup)
            del captured
        if "vocabulary" not in args.skip:
            size = 512 if 512 in args.sizes else args.sizes[0]
            r["vocabulary"] = bench_vocabularies(
                model, size, args.vocab_sizes, args.runs, args.warmup)
        del model
    if "rss" not in args.skip:
        r["peak_rss"] = {"inference": measure_rss(args, "inference", args.train_size)}
        if "train" not in args.skip:
            r["peak_rss"]["train"] = measure_rss(args, "train", args.train_size)
    r["load_average_end"] = load_average()
    r["targets"] = check_targets(r) if not args.quick else {}
    print("\n".join(summarize(r)))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
