"""Model benchmark: parameter counts (R50, ViTDet-B) and CPU inference latency of R50.

Builds the paper-recipe models with random weights (nothing is downloaded; the text encoder
is replaced by "Random" embeddings of CLIP ViT-L/14's width), then times one 512x512 image
through the R50 model: median of N runs after warm-up, split into backbone / pixel decoder /
query decoder (+ classifier) / post-processing (semantic + panoptic + instances, COCO's 133
classes).

    python benchmarks/model_bench.py [--runs 5] [--size 512] [--threads 2] [--tune-malloc]

``--tune-malloc`` raises glibc's mmap/trim thresholds first (DESIGN.md section 4: large
temporaries otherwise page-fault on every call on this class of machine).
"""

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from dataseg.config import add_dataseg_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DATASET = "model_bench_coco_like"


def tune_malloc():
    """Keep freed memory in the heap instead of returning it to the OS (glibc only)."""
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)
    libc.mallopt(m_top_pad, 1 << 28)


def build(config, tmp, msda_impl="auto"):
    cfg = add_dataseg_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.RANDOM_DIM = 768  # CLIP ViT-L/14 text width
    cfg.MODEL.DATASEG.TEXT.CACHE_DIR = tmp
    cfg.MODEL.DATASEG.PIXEL_DECODER.MSDA_IMPL = msda_impl
    torch.manual_seed(0)
    return build_model(cfg).eval()


def count(module):
    return sum(p.numel() for p in module.parameters())


def stage_times(model, inputs):
    """One forward, timed per stage (seconds)."""
    info = model.dataset_info(BENCH_DATASET)
    model._ensure_vocabulary(BENCH_DATASET, info["classes"])
    t = [time.perf_counter()]
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    t.append(time.perf_counter())
    mask_features, multi_scale = model.pixel_decoder(features)
    t.append(time.perf_counter())
    preds = model.transformer_decoder(multi_scale, mask_features)
    logits = model.classifier(preds[-1]["query_features"], vocabulary=BENCH_DATASET)
    t.append(time.perf_counter())
    model.inference(logits, preds[-1]["pred_masks"], images, inputs, info)
    t.append(time.perf_counter())
    return [b - a for a, b in zip(t[:-1], t[1:])]


def train_step_times(model, size, runs):
    """Forward + backward of a batch of 2 images with 4 random panoptic segments each."""
    from detectron2.structures import BitMasks, Instances

    g = torch.Generator().manual_seed(1)
    batch = []
    for _ in range(2):
        inst = Instances((size, size))
        masks = torch.zeros(4, size, size, dtype=torch.bool)
        for k in range(4):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            masks[k, y:y + size // 2, x:x + size // 2] = True
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        inst.gt_classes = torch.tensor([0, 1, 100, 120])  # two things, two stuff classes
        batch.append({"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8,
                                             generator=g),
                      "height": size, "width": size, "dataset_name": BENCH_DATASET,
                      "instances": inst})
    model.train()
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        losses = model(batch)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step is warm-up
            times.append(time.perf_counter() - start)
    model.eval()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tune-malloc", action="store_true")
    parser.add_argument("--train", action="store_true",
                        help="also time an R50 training step (batch 2, forward+backward)")
    parser.add_argument("--msda-impl", default="auto",
                        help="MODEL.DATASEG.PIXEL_DECODER.MSDA_IMPL for the latency run")
    args = parser.parse_args()
    if args.tune_malloc:
        tune_malloc()
    torch.set_num_threads(args.threads)
    MetadataCatalog.get(BENCH_DATASET).set(
        dataseg_task="panoptic", dataseg_classes=[c["name"] for c in COCO_CATEGORIES],
        dataseg_isthing=[bool(c["isthing"]) for c in COCO_CATEGORIES],
        dataseg_test_outputs=("sem_seg", "panoptic_seg", "instances"))

    with tempfile.TemporaryDirectory() as tmp:
        print("== parameters (random init, text embeddings excluded: frozen buffers)")
        for name, config in [("R50", "configs/coco_ade_o365/DaTaSeg_R50.yaml"),
                             ("ViTDet-B", "configs/coco_ade_o365/DaTaSeg_ViTDet-B.yaml")]:
            model = build(config, tmp)
            parts = {k: count(getattr(model, k)) for k in
                     ("backbone", "pixel_decoder", "transformer_decoder", "classifier")}
            print(f"{name:9s} total {count(model) / 1e6:7.2f} M | " + " | ".join(
                f"{k} {v / 1e6:.2f} M" for k, v in parts.items()))
            if name != "R50":
                del model

        model = build("configs/coco_ade_o365/DaTaSeg_R50.yaml", tmp, args.msda_impl)
        g = torch.Generator().manual_seed(0)
        image = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8, generator=g)
        inputs = [{"image": image, "height": args.size, "width": args.size,
                   "dataset_name": BENCH_DATASET}]
        with torch.no_grad():
            model(inputs)  # warm-up: vocabulary embedding, oneDNN kernels, allocator
            totals, cpu, stages = [], [], []
            for _ in range(args.runs):
                start, start_cpu = time.perf_counter(), time.process_time()
                model(inputs)
                totals.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            for _ in range(args.runs):
                stages.append(stage_times(model, inputs))
        med = [statistics.median(s[i] for s in stages) for i in range(4)]
        print(f"== R50 CPU inference, {args.size}x{args.size}, {args.threads} threads, "
              f"malloc tuned: {args.tune_malloc}, MSDA_IMPL {args.msda_impl}")
        print(f"end-to-end median of {args.runs}: {statistics.median(totals) * 1e3:.0f} ms "
              f"(min {min(totals) * 1e3:.0f}, max {max(totals) * 1e3:.0f}); process CPU time "
              f"{statistics.median(cpu) * 1e3:.0f} ms (all threads; robust to other load)")
        for name, sec in zip(["backbone", "pixel decoder", "query decoder + classifier",
                              "post-processing"], med):
            print(f"  {name:28s} {sec * 1e3:7.0f} ms ({100 * sec / sum(med):4.1f} %)")
        if args.train:
            times = train_step_times(model, args.size, max(1, args.runs // 2))
            print(f"== R50 training step, batch 2 at {args.size}x{args.size}: median "
                  f"{statistics.median(times):.2f} s over {len(times)} steps")


if __name__ == "__main__":
    main()
