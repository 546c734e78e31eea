#!/usr/bin/env python
"""Losses and gradients of the tiny model on every task x MERGE combination, to keep a
refactor bit-exact.

    python scripts/losses_and_grads.py --save before.pt      # on the commit before
    python scripts/losses_and_grads.py --compare before.pt   # on the commit after

One forward + backward of the tiny config (random text embeddings, 2 images at 96x96 and
64x96, fixed seeds) per combination: panoptic, semantic, instance and box data with
DaTaSeg's MERGE, box data with the pairwise term, the first MERGE design on panoptic and
semantic data, and semantic data without MERGE; on CPU, so with the CPU fast paths. The
comparison is ``torch.equal`` on every loss and every parameter gradient; it prints
``BIT-EXACT`` or each tensor that differs, and exits 1 when one does.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from detectron2.modeling import build_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny model and hand-made batches

import helpers  # noqa: E402

FIRST = [("MODEL.DATASEG.CRITERION.MERGE", "first_design")]
COMBINATIONS = {
    "panoptic": (helpers.PAN, "panoptic", []),
    "semantic": (helpers.SEM, "semantic", []),
    "instance": (helpers.INS, "instance", []),
    "box": (helpers.BOX, "box", []),
    "box_pairwise": (helpers.BOX, "box", [("MODEL.DATASEG.CRITERION.PAIRWISE.ENABLED", True),
                                          ("MODEL.DATASEG.CRITERION.PAIRWISE.WARMUP_ITERS", 1)]),
    "panoptic_first_design": (helpers.PAN, "panoptic", FIRST),
    "semantic_first_design": (helpers.SEM, "semantic", FIRST),
    "semantic_without_merge": (helpers.SEM, "semantic",
                               [("MODEL.DATASEG.CRITERION.MERGE", "none")]),
}


def losses_and_grads() -> dict:
    """{combination: {"losses": {name: tensor}, "grads": {parameter: tensor}}}."""
    torch.set_num_threads(1)  # the same reduction order on every machine
    helpers.register_model_metadata()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dataset, task, opts) in COMBINATIONS.items():
            cfg = helpers.model_cfg(Path(tmp))
            cfg.merge_from_list([str(v) for kv in opts for v in kv])
            torch.manual_seed(0)
            model = build_model(cfg).train()
            torch.manual_seed(1)
            losses = model(helpers.make_inputs(dataset, sizes=((96, 96), (64, 96)), task=task))
            sum(losses.values()).backward()
            results[name] = {
                "losses": {k: v.detach().clone() for k, v in losses.items()},
                "grads": {k: p.grad.clone() for k, p in model.named_parameters()
                          if p.grad is not None}}
    return results


def differences(before: dict, after: dict) -> list:
    """Every combination, loss or gradient that is missing or not equal to the bit."""
    found = []
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            found.append(f"{name}: only in the {'second' if name in after else 'first'} run")
            continue
        for kind in ("losses", "grads"):
            a, b = before[name][kind], after[name][kind]
            for key in sorted(set(a) ^ set(b)):
                found.append(f"{name} {kind} {key}: in one run only")
            for key in sorted(set(a) & set(b)):
                if not torch.equal(a[key], b[key]):
                    diff = (a[key].double() - b[key].double()).abs().max().item()
                    found.append(f"{name} {kind} {key}: max difference {diff:.3g}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", metavar="FILE", help="write this commit's values")
    action.add_argument("--compare", metavar="FILE", help="compare with the values in FILE")
    args = parser.parse_args(argv)
    results = losses_and_grads()
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} combinations to {args.save}")
        return 0
    found = differences(torch.load(args.compare), results)
    print("\n".join(found) if found else "BIT-EXACT")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
