"""Micro-benchmark of MergeCriterion: forward + backward of the criterion alone.

Setting (DESIGN.md targets): 100 queries, final + 9 auxiliary decoder layers, 133 classes
(80 things / 53 stuff), masks 128 x 128 (512 x 512 input), batch 2, and 10 / 100 / 300
ground-truth segments, for the panoptic (mask) and box tasks. Prints medians after warm-up.
If the DaTaSeg meta-architecture is importable, also times one model forward + backward at
the same size and prints the criterion's share of it.

    python benchmarks/criterion_bench.py [--repeats 5] [--threads 2] [--no-model]
"""

import argparse
import statistics
import time

import torch

from dataseg.modeling.criterion import CriterionContext, HungarianMatcher, MergeCriterion

NUM_CLASSES = 133
NUM_THINGS = 80
QUERIES = 100
AUX_LAYERS = 9
BATCH = 2
IMAGE = 512
MASK = IMAGE // 4


def make_outputs(gen):
    def layer():
        return {
            "pred_logits": torch.randn(BATCH, QUERIES, NUM_CLASSES + 1, generator=gen)
            .mul_(3.0)
            .requires_grad_(),
            "pred_masks": torch.randn(BATCH, QUERIES, MASK, MASK, generator=gen)
            .mul_(4.0)
            .requires_grad_(),
        }

    out = layer()
    out["aux_outputs"] = [layer() for _ in range(AUX_LAYERS)]
    return out


def make_targets(num_segments, task, gen):
    """Non-overlapping segments (a random Voronoi partition) or random boxes."""
    targets = []
    for _ in range(BATCH):
        labels = torch.randint(0, NUM_CLASSES, (num_segments,), generator=gen)
        if task == "box":
            xy = torch.rand(num_segments, 2, generator=gen) * (IMAGE - 16)
            wh = 8 + torch.rand(num_segments, 2, generator=gen) * (IMAGE / 3)
            boxes = torch.cat([xy, (xy + wh).clamp(max=IMAGE)], dim=1)
            targets.append({"labels": labels, "masks": None, "boxes": boxes})
            continue
        seeds = torch.rand(num_segments, 2, generator=gen) * IMAGE
        ys, xs = torch.meshgrid(torch.arange(IMAGE), torch.arange(IMAGE), indexing="ij")
        pix = torch.stack([xs, ys], -1).view(-1, 2).float()
        owner = torch.cdist(pix, seeds).argmin(1).view(IMAGE, IMAGE)
        masks = owner[None] == torch.arange(num_segments)[:, None, None]
        targets.append({"labels": labels, "masks": masks, "boxes": None})
    return targets


def time_criterion(criterion, task, num_segments, repeats, warmup=2):
    gen = torch.Generator().manual_seed(0)
    is_thing = torch.arange(NUM_CLASSES) < NUM_THINGS
    targets = make_targets(num_segments, task, gen)
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)
    context = CriterionContext("bench", task, is_thing, images, [(IMAGE, IMAGE)] * BATCH, 0)
    times = []
    for i in range(warmup + repeats):
        outputs = make_outputs(gen)
        start = time.perf_counter()
        losses = criterion(outputs, targets, context)
        sum(losses.values()).backward()
        elapsed = time.perf_counter() - start
        if i >= warmup:
            times.append(elapsed)
    return statistics.median(times)


def time_model(repeats, warmup=1):
    """Median forward + backward of DaTaSeg (R50, random init) at the same size, without the
    criterion (a surrogate loss sums the outputs), or None if the model is unavailable."""
    try:
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        from dataseg.config import add_dataseg_config
        from dataseg.modeling.meta_arch import DaTaSeg  # noqa: F401
    except ImportError as e:
        print(f"(model not timed: {e})")
        return None
    import os

    cfg = get_cfg()
    add_dataseg_config(cfg)
    base = os.path.join(os.path.dirname(__file__), "..", "configs", "Base-DaTaSeg.yaml")
    cfg.merge_from_file(base)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.CACHE_DIR = os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "dataseg_bench_text_cache"
    )
    cfg.MODEL.DATASEG.DECODER.NUM_QUERIES = QUERIES
    model = build_model(cfg)
    model.train()
    names = [c["name"] for c in COCO_CATEGORIES][:NUM_CLASSES]
    model.classifier.set_vocabulary("bench", names)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, IMAGE, IMAGE, generator=gen)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        predictions = model.predict(images)
        feats = torch.stack([p["query_features"] for p in predictions])
        logits = model.classifier(feats, vocabulary="bench")
        loss = logits.sum() + sum(p["pred_masks"].sum() for p in predictions)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--segments", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--tasks", nargs="+", default=["panoptic", "box"])
    parser.add_argument("--gt-sample-mode", default="nearest", choices=["bilinear", "nearest"])
    parser.add_argument("--no-model", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    criterion = MergeCriterion(matcher=HungarianMatcher(), gt_sample_mode=args.gt_sample_mode)

    rows = []
    for task in args.tasks:
        for k in args.segments:
            t = time_criterion(criterion, task, k, args.repeats)
            rows.append((task, k, t))
            print(f"{task:9s} K={k:4d}  {t * 1000:8.1f} ms", flush=True)

    model_time = None if args.no_model else time_model(args.repeats)
    print()
    header = "| task | GT segments | criterion fwd+bwd (ms, median) |"
    if model_time:
        header += " criterion / model fwd+bwd | criterion share of step |"
    print(header)
    print("| --- | --- | --- |" + (" --- | --- |" if model_time else ""))
    for task, k, t in rows:
        line = f"| {task} | {k} | {t * 1000:.1f} |"
        if model_time:
            line += f" {100 * t / model_time:.1f} % | {100 * t / (model_time + t):.1f} % |"
        print(line)
    if model_time:
        print(f"\nmodel forward+backward without criterion (R50, batch {BATCH}, "
              f"{IMAGE}x{IMAGE}, median): {model_time:.2f} s")


if __name__ == "__main__":
    main()
