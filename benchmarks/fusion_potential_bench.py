#!/usr/bin/env python
"""How much fusing the criterion's element-wise chains would save: eager vs ``torch.compile``.

    python benchmarks/fusion_potential_bench.py [--runs 9] [--threads 2]

At the R50 criterion's shapes (one decoder layer: 200 matched units x 12,544 points for the
losses, 100 units x 12,544 points x 100 ground-truth masks per image for the matching cost),
times the project's own functions eagerly and compiled by inductor:

* focal + dice of point logits (the fused fast path of ``sigmoid_focal_dice_loss``), forward
  + backward;
* the matching cost (``sigmoid_with_logs`` + ``focal_cost`` + ``dice_cost``), no grad.

It measures headroom only: the model runs neither compiled (compiling needs a C++ compiler at
run time and seconds per graph). The script fails with a clear message where
``torch.compile`` cannot build a CPU kernel.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import median_time  # noqa: E402

from dataseg.modeling.criterion.losses import sigmoid_focal_dice_loss  # noqa: E402
from dataseg.modeling.criterion.matcher import dice_cost, focal_cost  # noqa: E402
from dataseg.modeling.criterion.merge import PointProbs, sigmoid_with_logs  # noqa: E402
from dataseg.modeling.fast_paths.malloc import tune_malloc  # noqa: E402


def loss_step(x, targets):
    focal, dice = sigmoid_focal_dice_loss(x, targets, fast=True)
    (focal.sum() + dice.sum()).backward()


def matching_cost(x, gt):
    pred = PointProbs(*sigmoid_with_logs(x))
    return 20.0 * focal_cost(pred, gt, 0.25, 2.0) + 5.0 * dice_cost(pred.prob, gt)


def timed_pair(name, eager, inputs, runs):
    compiled = torch.compile(eager, dynamic=True)
    start = time.perf_counter()
    try:
        compiled(*inputs)
    except Exception as e:  # inductor reports a missing or broken compiler in many ways
        raise SystemExit(
            f"torch.compile could not build the CPU kernel for {name} ({type(e).__name__}: "
            f"{e}). It needs a working C++ compiler (g++ or clang) on PATH.") from e
    compile_s = time.perf_counter() - start
    t_eager = median_time(lambda: eager(*inputs), runs, warmup=2)
    t_compiled = median_time(lambda: compiled(*inputs), runs, warmup=2)
    print(f"{name:42s} eager {t_eager * 1e3:7.2f} ms   compiled {t_compiled * 1e3:7.2f} ms   "
          f"x{t_eager / t_compiled:4.1f}   (compile {compile_s:.0f} s)")
    return {"eager_s": t_eager, "compiled_s": t_compiled, "compile_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(200, 12544, generator=g) * 3).requires_grad_()
    targets = (torch.rand(200, 12544, generator=g) > 0.6).to(torch.uint8)

    def loss(x, t):
        x.grad = None
        loss_step(x, t)

    timed_pair("focal + dice, fwd + bwd, 200 x 12544", loss, (logits, targets), args.runs)
    unit_logits = torch.randn(100, 12544, generator=g) * 3
    gt = (torch.rand(100, 12544, generator=g) > 0.6).float()
    with torch.no_grad():
        timed_pair("matching cost, 100 units x 100 GT x 12544", matching_cost,
                   (unit_logits, gt), args.runs)


if __name__ == "__main__":
    main()
