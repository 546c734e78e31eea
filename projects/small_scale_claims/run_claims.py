#!/usr/bin/env python
"""Check DaTaSeg's claims at small scale on the generated datasets, with one command.

    python projects/small_scale_claims/run_claims.py [--iters-per-dataset 200] [--seeds 0]

Trains, with the tiny config and identical settings:
  * three separate single-dataset models (panoptic / semantic / box-only data), N iterations each;
  * the co-trained DaTaSeg model on all three, 3N iterations with equal sampling ratios, so
    every dataset gets N iterations in expectation (claim a);
  * the same co-trained model with MERGE switched off (ablation d).
Every model is evaluated on every test set: the panoptic and semantic val sets, the box
dataset's held-out MASKS (weak box->mask transfer, claim b) and the held-out datasets whose
classes carry names no training set uses, evaluated by swapping the vocabulary only (open
vocabulary, claim c). The table goes to stdout and to OUTPUT/claims.md (+ claims.json).
"""

import argparse
import json
import logging
import os
import sys
from collections import OrderedDict

from detectron2.utils.logger import setup_logger

import dataseg  # noqa: F401  (registers datasets and the model)
from dataseg.data.synthetic import default_synthetic_root, generate_synthetic_datasets
from dataseg.engine import DaTaSegTrainer, get_dataseg_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "tiny", "DaTaSeg-tiny.yaml")

PANOPTIC, SEMANTIC, BOX = (
    "dataseg_synth_panoptic_train", "dataseg_synth_semantic_train", "dataseg_synth_box_train")

# (column, test dataset, evaluator task, metric)
COLUMNS = (
    ("panoptic PQ", "dataseg_synth_panoptic_val", "panoptic_seg", "PQ"),
    ("semantic mIoU", "dataseg_synth_semantic_val", "sem_seg", "mIoU"),
    ("box->mask AP (weak)", "dataseg_synth_box_val", "segm", "AP"),
    ("box AP", "dataseg_synth_box_val", "bbox", "AP"),
    ("held-out PQ (open vocab)", "dataseg_synth_heldout_panoptic_val", "panoptic_seg", "PQ"),
    ("held-out mIoU (open vocab)", "dataseg_synth_heldout_semantic_val", "sem_seg", "mIoU"),
)


def experiments(iters_per_dataset):
    """(row name, training datasets, iterations, extra config overrides)."""
    n = iters_per_dataset
    return (
        ("separate: panoptic only", (PANOPTIC,), n, []),
        ("separate: semantic only", (SEMANTIC,), n, []),
        ("separate: box only", (BOX,), n, []),
        ("DaTaSeg co-trained", (PANOPTIC, SEMANTIC, BOX), 3 * n, []),
        ("DaTaSeg co-trained, MERGE off", (PANOPTIC, SEMANTIC, BOX), 3 * n,
         ["MODEL.DATASEG.CRITERION.MERGE_ENABLED", "False"]),
    )


def train_and_evaluate(train_sets, iters, extra_opts, output_dir, seed):
    test_sets = tuple(OrderedDict.fromkeys(c[1] for c in COLUMNS))
    opts = [
        "DATASETS.TRAIN", repr(tuple(train_sets)),
        "DATASETS.TEST", repr(test_sets),
        "DATALOADER.DATASEG.SAMPLING_RATIOS", repr([1.0] * len(train_sets)),
        "DATALOADER.DATASEG.BATCH_SIZES", repr([2] * len(train_sets)),
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", str(10 * iters),  # only the final checkpoint
        "SEED", str(seed),
        "OUTPUT_DIR", output_dir,
    ] + list(extra_opts)
    cfg = get_dataseg_cfg(CONFIG, opts)
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer.train()


def metric(results, dataset, task, key):
    value = results.get(dataset, {}).get(task, {}).get(key)
    return float(value) if value is not None else float("nan")


def format_table(rows):
    header = "| model | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 1)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--iters-per-dataset", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output-dir", default=os.path.join("output", "claims"))
    args = parser.parse_args(argv)

    setup_logger(name="dataseg")
    setup_logger(name="detectron2")
    generate_synthetic_datasets(default_synthetic_root())  # no-op when it is already there

    rows = OrderedDict()
    for name, train_sets, iters, opts in experiments(args.iters_per_dataset):
        per_seed = []
        for seed in args.seeds:
            slug = name.lower().replace(" ", "_").replace(":", "").replace(",", "")
            out = os.path.join(args.output_dir, f"{slug}_seed{seed}")
            results = train_and_evaluate(train_sets, iters, opts, out, seed)
            per_seed.append([metric(results, d, t, k) for _, d, t, k in COLUMNS])
        rows[name] = [sum(v) / len(v) for v in zip(*per_seed)]
        logging.getLogger("dataseg").info("claims: %s -> %s", name, rows[name])

    table = format_table(rows)
    header = (f"Generated data, tiny config, {args.iters_per_dataset} iterations per dataset "
              f"(co-trained: {3 * args.iters_per_dataset} in all), seeds {args.seeds}.\n\n")
    with open(os.path.join(args.output_dir, "claims.md"), "w") as f:
        f.write(header + table + "\n")
    with open(os.path.join(args.output_dir, "claims.json"), "w") as f:
        json.dump({"columns": [c[0] for c in COLUMNS], "rows": rows,
                   "iters_per_dataset": args.iters_per_dataset, "seeds": args.seeds}, f, indent=2)
    print(header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
