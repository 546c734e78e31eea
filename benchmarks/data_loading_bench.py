"""Data-loading throughput (images/s) of each DaTaSeg task mapper on generated data, and
the share of a training step spent waiting for data.

Throughput: runs the real train loader (multi-dataset stream, 2 workers, 512x512
large-scale-jitter crops) over one generated dataset per task, then over all of them mixed,
and prints images/s.

Data time (``--step``): trains the tiny config and the R50 recipe (random weights, "Random"
text encoder, the recipe's crop sizes, 2 images per rank and dataset) on the mixed generated
datasets with ``DATALOADER.NUM_WORKERS`` 0 and 2, and prints data time (time blocked in
``next(loader)``, detectron2's ``data_time``) / step time against the 5 % target.

    python benchmarks/data_loading_bench.py [--workers 2] [--crop 512] [--batches 40]
    python benchmarks/data_loading_bench.py --step [--step-iters 6] [--r50-iters 2]
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench_cfg  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from dataseg.config import add_dataseg_config  # noqa: E402
from dataseg.data import build_dataseg_train_loader, generate_synthetic_datasets, \
    register_synthetic_datasets  # noqa: E402
from dataseg.engine.optimizer import build_dataseg_optimizer  # noqa: E402

TARGET_DATA_SHARE = 0.05
MIXED = ("bench_synth_panoptic_train", "bench_synth_semantic_train", "bench_synth_box_train")
STEP_CONFIGS = {  # name: (config, per-dataset crop sizes)
    "tiny": ("configs/tiny/DaTaSeg-tiny.yaml", [256]),
    "R50": ("configs/coco_ade_o365/DaTaSeg_R50.yaml", [1024, 512, 1024]),
}


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


def measure_steps(config, crops, workers, iters, warmup=2, seed=0):
    """(mean data time, mean step time) over ``iters`` training iterations after ``warmup``."""
    cfg = bench_cfg(config, opts=[
        "DATASETS.TRAIN", str(MIXED), "DATASETS.TEST", "()",
        "DATALOADER.NUM_WORKERS", str(workers),
        "DATALOADER.DATASEG.SAMPLING_RATIOS", "[1.0, 1.0, 1.0]",
        "DATALOADER.DATASEG.BATCH_SIZES", "[2, 2, 2]", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.DATASEG.IMAGE_SIZES", str(crops), "SEED", str(seed),
    ])
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    optimizer = build_dataseg_optimizer(cfg, model)
    it = iter(build_dataseg_train_loader(cfg))
    data = steps = 0.0
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss = sum(model(batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= warmup:
            data += t1 - t0
            steps += t2 - t0
    del it  # stops the workers
    return data / iters, steps / iters


def step_report(args):
    print(f"data time / step time (target < {TARGET_DATA_SHARE:.0%} with NUM_WORKERS > 0), "
          f"{torch.get_num_threads()} torch threads, cpus={os.cpu_count()}")
    print("| model | NUM_WORKERS | data s/iter | step s/iter | data / step |")
    print("|---|---|---|---|---|")
    verdicts = []
    for name in args.models:
        config, crops = STEP_CONFIGS[name]
        iters = args.step_iters if name == "tiny" else args.r50_iters
        for workers in (0, 2):
            # One untimed R50 step is enough: its steps are long against the loader's start.
            data, step = measure_steps(config, crops, workers, iters,
                                       warmup=2 if name == "tiny" else 1)
            share = data / step
            print(f"| {name} | {workers} | {data:.3f} | {step:.3f} | {share:.1%} |", flush=True)
            if workers:
                verdicts.append(f"  {name}, NUM_WORKERS {workers}: data / step {share:.1%} / "
                                f"{TARGET_DATA_SHARE:.0%} "
                                f"{'OK' if share < TARGET_DATA_SHARE else 'MISSED'}")
            else:  # with no workers, data time is the mapping cost of one batch
                verdicts.append(f"  {name}: mapping one batch costs {data:.3f} s (NUM_WORKERS "
                                f"0); a step of T s is kept fed by NUM_WORKERS >= {data:.3f} / T "
                                "free cores")
    print("targets (measured / target):")
    print("\n".join(v for v in verdicts if "NUM_WORKERS" in v))
    print("\n".join(v for v in verdicts if "NUM_WORKERS" not in v))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", action="store_true", help="data time / step time instead")
    parser.add_argument("--step-iters", type=int, default=6, help="tiny iterations timed")
    parser.add_argument("--r50-iters", type=int, default=2, help="R50 iterations timed")
    parser.add_argument("--models", nargs="+", default=list(STEP_CONFIGS),
                        choices=list(STEP_CONFIGS))
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
        if args.step:
            return step_report(args)

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
