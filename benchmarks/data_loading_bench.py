"""Data-loading throughput (images/s) of each DaTaSeg task mapper on generated data.

Runs the real train loader (multi-dataset stream, 2 workers, 512x512 large-scale-jitter crops)
over one generated dataset per task, then over all of them mixed, and prints images/s.

    python benchmarks/data_loading_bench.py [--workers 2] [--crop 512] [--batches 40]
"""

import argparse
import os
import tempfile
import time

from detectron2.config import get_cfg

from dataseg.config import add_dataseg_config
from dataseg.data import build_dataseg_train_loader, generate_synthetic_datasets, \
    register_synthetic_datasets


def measure(cfg, train, batches, warmup=3):
    cfg = cfg.clone()
    cfg.DATASETS.TRAIN = tuple(train)
    it = iter(build_dataseg_train_loader(cfg))
    for _ in range(warmup):  # worker start-up and first reads
        next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += len(next(it))
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=640, help="generated image side")
    parser.add_argument("--root", default="", help="generated data folder (default: temp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dataseg_bench_") as tmp:
        root = args.root or os.path.join(tmp, "synthetic")
        t = time.perf_counter()
        generate_synthetic_datasets(root, num_train=32, num_val=4, image_size=args.image_size)
        print(f"generated data at {args.image_size}px in {time.perf_counter() - t:.1f}s")
        register_synthetic_datasets(root, prefix="bench_synth", replace=True)

        cfg = add_dataseg_config(get_cfg())
        cfg.INPUT.DATASEG.IMAGE_SIZES = [args.crop]
        cfg.DATALOADER.NUM_WORKERS = args.workers
        cfg.SOLVER.IMS_PER_BATCH = args.batch
        cfg.SEED = 0
        runs = {
            "panoptic": ["bench_synth_panoptic_train"],
            "semantic": ["bench_synth_semantic_train"],
            "instance": ["bench_synth_instance_train"],
            "box": ["bench_synth_box_train"],
            "mixed (pan+sem+box)": ["bench_synth_panoptic_train", "bench_synth_semantic_train",
                                    "bench_synth_box_train"],
        }
        print(f"workers={args.workers} crop={args.crop} batch={args.batch} "
              f"batches={args.batches} cpus={os.cpu_count()}")
        for task, train in runs.items():
            print(f"{task:>20s}: {measure(cfg, train, args.batches):7.1f} images/s")


if __name__ == "__main__":
    main()
