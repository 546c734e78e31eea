#!/usr/bin/env python
"""Check DaTaSeg's claims at small scale on generated data, with controls, in one command.

    python projects/small_scale_claims/run_claims.py [--iters-per-dataset N] [--seeds 0 1 2]
        [--jobs 2] [--quick]

Every arm trains the tiny config from scratch on data generated for this experiment (its own
copy, ``--image-size`` / ``--num-train``) and is evaluated on every test set. Per seed:

* separate models, one per dataset (panoptic / semantic / box-only);
* DaTaSeg co-trained on all three for 3N iterations with equal sampling ratios. Each
  separate model trains for exactly the number of iterations its dataset drew in the
  co-trained schedule of the same seed (the schedule is a pure function of the seed), so
  both arms give every dataset the same number of updates and images;
* the same co-trained model with MERGE off, and with the first MERGE design (clamped sum,
  units matched freely): the MERGE ablation, everything else equal;
* DaTaSeg co-trained for N iterations in all (equal TOTAL iterations with one separate model);
* a reference stand-in on the panoptic data alone: MERGE off and Mask2Former's losses and
  weights (CE 2 with no-object 0.1, mask BCE 5 + dice 5, matching costs 2 / 5 / 5), same
  budget as the separate panoptic model; and the two mixed arms (our losses without MERGE,
  Mask2Former's losses with MERGE) that say which of the two differences matters.

An arm whose output folder already holds its result (``claims_arm.json``, same iterations and
overrides) is not trained again, so an interrupted run continues where it stopped.

Test sets: the panoptic and semantic val sets, the box dataset's held-out MASKS (weak
box->mask transfer) and two held-out sets whose classes carry names no training set uses,
evaluated by swapping the vocabulary only (open vocabulary). The table (mean +- standard
deviation over seeds, wall time per arm) and the verdict on each claim go to stdout and to
OUTPUT/claims.md (+ claims.json with every seed's numbers).
"""

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "tiny", "DaTaSeg-tiny.yaml")
PREFIX = "dataseg_claims"
PANOPTIC, SEMANTIC, BOX = (f"{PREFIX}_{k}_train" for k in ("panoptic", "semantic", "box"))
TRAIN_SETS = (PANOPTIC, SEMANTIC, BOX)

# (column, test dataset, evaluator task, metric)
COLUMNS = (
    ("panoptic PQ", f"{PREFIX}_panoptic_val", "panoptic_seg", "PQ"),
    ("PQ things", f"{PREFIX}_panoptic_val", "panoptic_seg", "PQ_th"),
    ("PQ stuff", f"{PREFIX}_panoptic_val", "panoptic_seg", "PQ_st"),
    ("semantic mIoU", f"{PREFIX}_semantic_val", "sem_seg", "mIoU"),
    ("box AP", f"{PREFIX}_box_val", "bbox", "AP"),
    ("box->mask AP (weak)", f"{PREFIX}_box_val", "segm", "AP"),
    ("held-out PQ (open vocab)", f"{PREFIX}_heldout_panoptic_val", "panoptic_seg", "PQ"),
    ("held-out mIoU (open vocab)", f"{PREFIX}_heldout_semantic_val", "sem_seg", "mIoU"),
)
TEST_SETS = tuple(OrderedDict.fromkeys(c[1] for c in COLUMNS))

MERGE_OFF = ["MODEL.DATASEG.CRITERION.MERGE", "none"]
FIRST_MERGE = ["MODEL.DATASEG.CRITERION.MERGE", "first_design"]
# Mask2Former's criterion: sigmoid BCE (focal with gamma 0, no alpha) 5, dice 5, CE 2.
REFERENCE = MERGE_OFF + [
    "MODEL.DATASEG.CRITERION.FOCAL_GAMMA", "0.0", "MODEL.DATASEG.CRITERION.FOCAL_ALPHA", "-1.0",
    "MODEL.DATASEG.CRITERION.FOCAL_WEIGHT", "5.0", "MODEL.DATASEG.CRITERION.DICE_WEIGHT", "5.0",
    "MODEL.DATASEG.CRITERION.CLASS_WEIGHT", "2.0", "MODEL.DATASEG.CRITERION.NO_OBJECT_WEIGHT",
    "0.1", "MODEL.DATASEG.CRITERION.COST_CLASS", "2.0", "MODEL.DATASEG.CRITERION.COST_FOCAL",
    "5.0", "MODEL.DATASEG.CRITERION.COST_DICE", "5.0",
]

# (row, training datasets, iterations as a function of (N, co-trained counts), overrides)
ARMS = (
    ("separate: panoptic only", (PANOPTIC,), lambda n, c: c[0], []),
    ("separate: semantic only", (SEMANTIC,), lambda n, c: c[1], []),
    ("separate: box only", (BOX,), lambda n, c: c[2], []),
    ("DaTaSeg co-trained (equal updates per dataset)", TRAIN_SETS, lambda n, c: 3 * n, []),
    ("co-trained, MERGE off", TRAIN_SETS, lambda n, c: 3 * n, MERGE_OFF),
    ("co-trained, first MERGE design (clamped sum, free matching)", TRAIN_SETS,
     lambda n, c: 3 * n, FIRST_MERGE),
    ("DaTaSeg co-trained (equal total iterations)", TRAIN_SETS, lambda n, c: n, []),
    ("reference stand-in: panoptic only, Mask2Former losses", (PANOPTIC,),
     lambda n, c: c[0], REFERENCE),
    # Attribution of the gap between the two panoptic-only rows: MERGE or the losses?
    ("panoptic only, MERGE off (our losses)", (PANOPTIC,), lambda n, c: c[0], MERGE_OFF),
    ("panoptic only, Mask2Former losses with MERGE", (PANOPTIC,), lambda n, c: c[0],
     REFERENCE[2:]),
)


def cotrained_counts(iters: int, seed: int):
    """Iterations each training dataset gets in ``iters`` co-trained iterations of ``seed``."""
    import numpy as np

    from dataseg.data.sampler import MultiDatasetSchedule

    schedule = MultiDatasetSchedule([1] * 3, [1.0] * 3, [2] * 3, seed=seed)
    return np.bincount(schedule.datasets_between(0, iters), minlength=3).tolist()


def _setup_worker(threads: int, data_root: str):
    import torch

    torch.set_num_threads(threads)
    from dataseg.data.synthetic import register_synthetic_datasets

    register_synthetic_datasets(data_root, prefix=PREFIX, replace=True)


def _arm_record(iters, extra_opts, seed, image_size):
    return {"iterations": iters, "opts": list(extra_opts), "seed": seed, "image_size": image_size}


def cached_arm(output_dir, iters, extra_opts, seed, image_size):
    """(metrics, seconds) of a finished arm in ``output_dir``, or None."""
    path = os.path.join(output_dir, "claims_arm.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    if saved.get("arm") != _arm_record(iters, extra_opts, seed, image_size):
        return None
    return saved["metrics"], saved["seconds"]


def train_and_evaluate(train_sets, iters, extra_opts, output_dir, seed, image_size):
    """One arm: train from scratch, evaluate every test set; returns (metrics, seconds)."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from dataseg.engine import DaTaSegTrainer, get_dataseg_cfg

    start = time.perf_counter()
    opts = [
        "DATASETS.TRAIN", repr(tuple(train_sets)),
        "DATASETS.TEST", repr(TEST_SETS),
        "DATALOADER.DATASEG.SAMPLING_RATIOS", repr([1.0] * len(train_sets)),
        "DATALOADER.DATASEG.BATCH_SIZES", repr([2] * len(train_sets)),
        "INPUT.DATASEG.IMAGE_SIZES", f"[{image_size}]",
        "INPUT.MIN_SIZE_TEST", str(image_size), "INPUT.MAX_SIZE_TEST", str(image_size),
        "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", str(10 * iters + 10),  # only the final checkpoint
        "TEST.DATASEG.NUM_VISUALIZATIONS", "0",
        "SEED", str(seed),
        "OUTPUT_DIR", output_dir,
    ] + list(extra_opts)
    cfg = get_dataseg_cfg(CONFIG, opts)
    cfg.freeze()
    os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, name="detectron2")
    setup_logger(output_dir, name="dataseg")
    seed_all_rng(seed)  # model initialisation, as train_net.py's default_setup does
    trainer = DaTaSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = _plain(trainer.train())
    metrics = [metric(results, d, t, k) for _, d, t, k in COLUMNS]
    seconds = time.perf_counter() - start
    with open(os.path.join(output_dir, "claims_arm.json"), "w") as f:
        json.dump({"arm": _arm_record(iters, extra_opts, seed, image_size), "metrics": metrics,
                   "seconds": seconds, "results": results}, f, indent=2)
    return metrics, seconds


def _plain(results):
    """Nested OrderedDicts of numpy floats -> plain dicts of floats (picklable, JSON-able)."""
    if isinstance(results, dict):
        return {k: _plain(v) for k, v in results.items()}
    return float(results)


def metric(results, dataset, task, key):
    value = results.get(dataset, {}).get(task, {}).get(key)
    return float(value) if value is not None else float("nan")


def mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def format_table(rows):
    header = "| model | iterations | " + " | ".join(c[0] for c in COLUMNS) + " | wall time |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 3)]
    for name, row in rows.items():
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in row["metrics"]]
        lines.append(f"| {name} | {row['iterations']} | " + " | ".join(cells)
                     + f" | {row['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def verdicts(rows):
    """Each claim as (claim, measured, holds) from the per-arm means."""
    col = {c[0]: i for i, c in enumerate(COLUMNS)}

    def m(arm, column):
        return rows[arm]["metrics"][col[column]][0]

    co, off = ARMS[3][0], ARMS[4][0]
    out = []
    for column in ("panoptic PQ", "semantic mIoU"):
        out.append((f"MERGE on >= MERGE off ({column})",
                    f"{m(co, column):.1f} vs {m(off, column):.1f}", m(co, column) >= m(off, column)))
    for sep, column in ((ARMS[0][0], "panoptic PQ"), (ARMS[1][0], "semantic mIoU"),
                        (ARMS[2][0], "box AP")):
        out.append((f"co-trained >= separate at equal updates ({column})",
                    f"{m(co, column):.1f} vs {m(sep, column):.1f}", m(co, column) >= m(sep, column)))
    out.append(("weak box->mask AP above zero", f"{m(co, 'box->mask AP (weak)'):.1f}",
                m(co, "box->mask AP (weak)") > 0.5))
    out.append(("open-vocabulary held-out PQ above zero",
                f"{m(co, 'held-out PQ (open vocab)'):.1f}", m(co, "held-out PQ (open vocab)") > 0))
    ref = ARMS[7][0]
    for column in ("panoptic PQ", "PQ things", "PQ stuff"):
        out.append((f"our panoptic recipe >= reference stand-in ({column})",
                    f"{m(ARMS[0][0], column):.1f} vs {m(ref, column):.1f}",
                    m(ARMS[0][0], column) >= m(ref, column)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--iters-per-dataset", type=int, default=700)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=2,
                        help="arms trained at once, each with cores / jobs threads")
    parser.add_argument("--arms", type=int, nargs="+", default=None,
                        help="indices of the arms to run (default: all)")
    parser.add_argument("--output-dir", default=os.path.join("output", "claims"))
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 iterations per dataset, one seed, tiny data")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters_per_dataset, args.seeds = 2, args.seeds[:1]
        args.image_size, args.num_train, args.num_val = 64, 4, 2

    from dataseg.data.synthetic import generate_synthetic_datasets

    data_root = os.path.join(os.path.abspath(args.output_dir), "data")
    generate_synthetic_datasets(data_root, num_train=args.num_train, num_val=args.num_val,
                                image_size=args.image_size)
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    arms = [ARMS[i] for i in (args.arms if args.arms is not None else range(len(ARMS)))]
    n = args.iters_per_dataset
    counts = {seed: cotrained_counts(3 * n, seed) for seed in args.seeds}

    jobs = []
    for name, train_sets, iters_fn, opts in arms:
        for seed in args.seeds:
            slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
            out = os.path.join(args.output_dir, f"{slug}_seed{seed}")
            jobs.append((name, seed, (train_sets, iters_fn(n, counts[seed]), opts, out, seed,
                                      args.image_size)))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn"),
                             initializer=_setup_worker, initargs=(threads, data_root)) as pool:
        futures = []
        for name, seed, job in jobs:
            cached = cached_arm(job[3], job[1], job[2], job[4], job[5])
            futures.append((name, seed, job, cached if cached is not None else
                            pool.submit(train_and_evaluate, *job)))
        per_arm = OrderedDict()
        for name, seed, job, future in futures:
            metrics, seconds = future if isinstance(future, tuple) else future.result()
            entry = per_arm.setdefault(name, {"iterations": [], "seconds": 0.0, "seeds": {}})
            entry["iterations"].append(job[1])
            entry["seconds"] += seconds / len(args.seeds)
            entry["seeds"][seed] = metrics
            print(f"claims: {name} seed {seed}: {job[1]} iterations, {seconds / 60:.1f} min, "
                  f"{dict(zip((c[0] for c in COLUMNS), entry['seeds'][seed]))}", flush=True)

    rows = OrderedDict()
    for name, entry in per_arm.items():
        its = sorted(set(entry["iterations"]))
        rows[name] = {
            "iterations": "/".join(str(i) for i in its),
            "seconds": entry["seconds"],
            "metrics": [mean_std(v) for v in zip(*entry["seeds"].values())],
            "seeds": entry["seeds"],
        }
    table = format_table(rows)
    header = (
        f"Generated data ({args.num_train} training images per dataset at {args.image_size} px), "
        f"tiny config from scratch, N = {n} iterations per dataset (co-trained: {3 * n}), "
        f"seeds {args.seeds}: mean ± standard deviation over seeds. Co-trained draws per "
        f"dataset (panoptic/semantic/box) by seed: {counts}. Wall time of all arms together "
        f"{sum(r['seconds'] for r in rows.values()) * len(args.seeds) / 60:.1f} min "
        f"({args.jobs} at once; this invocation {(time.perf_counter() - start) / 60:.1f} min, "
        "arms already finished are read back). PQ with the default panoptic inference "
        "(MODEL.DATASEG.TEST.PANOPTIC_MERGE_STUFF True).\n\n")
    text = header + table + "\n"
    if len(arms) == len(ARMS):
        text += "\n| claim | measured (mean) | holds |\n| --- | --- | --- |\n" + "\n".join(
            f"| {c} | {v} | {'yes' if ok else 'NO'} |" for c, v, ok in verdicts(rows)) + "\n"
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "claims.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.output_dir, "claims.json"), "w") as f:
        json.dump({"columns": [c[0] for c in COLUMNS], "rows": rows, "counts": counts,
                   "args": vars(args)}, f, indent=2)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
