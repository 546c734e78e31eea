"""Criterion benchmark: the criterion sections of ``run_benchmarks.py``.

MergeCriterion (merge + matching + losses, forward + backward) on the R50 model's real output
shapes (100 queries, final + 9 auxiliary layers, 133 classes, batch 2, 512x512) for several
ground-truth segment counts, next to the training step it belongs to.

    python benchmarks/criterion_bench.py [--runs 5] [--threads 2] [--segments 10 100 300]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_benchmarks  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--segments", type=int, nargs="+", default=[10, 100, 300])
    args = parser.parse_args()
    run_benchmarks.main(["--sizes", "512", "--runs", str(args.runs), "--threads",
                         str(args.threads), "--segments", *map(str, args.segments),
                         "--skip", "flops", "vocabulary", "rss"])


if __name__ == "__main__":
    main()
