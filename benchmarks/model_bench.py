"""Model benchmark (kept for ``make bench``): the model sections of ``run_benchmarks.py``.

Parameters, FLOPs, CPU inference latency with its per-stage split and, with ``--train``, one
training step, for the R50 recipe at one image size. The full suite (sizes, criterion and
vocabulary scaling, peak memory) is ``benchmarks/run_benchmarks.py``.

    python benchmarks/model_bench.py [--runs 5] [--size 512] [--threads 2] [--train]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_benchmarks  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    args = parser.parse_args()
    skip = ["criterion", "vocabulary", "rss"] + ([] if args.train else ["train"])
    argv = ["--sizes", str(args.size), "--train-size", str(args.size), "--runs", str(args.runs),
            "--threads", str(args.threads), "--skip", *skip]
    if args.no_malloc_tuning:
        argv.append("--no-malloc-tuning")
    run_benchmarks.main(argv)


if __name__ == "__main__":
    main()
