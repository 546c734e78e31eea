#!/usr/bin/env python
"""DaTaSeg against the reference implementation of the same architecture, in one run.

    python benchmarks/compare_reference.py [--output out.json] [--quick]
        [--reference-repo PATH_TO_MASK2FORMER_CHECKOUT]

Two arms of the same config (default: the R50 paper recipe, random weights, 100 queries,
6 deformable encoder and 9 decoder layers): ``dataseg`` (the project as configured) and
``reference`` (every CPU fast path switched to the plain computation it is tested against,
a Mask2Former-style criterion without MERGE and glibc's allocator defaults; see
``reference_arm.py``). Each arm lives in its own worker process (its own allocator settings
and patches), and the parent alternates single measurements between them, so both see the
same machine load. Printed, and written as JSON with ``--output``, as a table of
``measure | reference | dataseg | ratio | target | measured / target | met``:

* inference latency of one image (``--size``, default 512);
* one training step (batch 2, ``--train-segments`` ground-truth segments, default 10);
* the criterion's share of a training step at ``--criterion-segments`` (default 100)
  ground-truth segments per image: criterion forward + backward on the step's own outputs
  and targets over the median step at that count;
* achieved inference FLOP rate (fvcore count of the forward / latency) as a share of this
  machine's fp32 matmul rate, measured before and after the arms;
* training peak RSS, each repeat in a fresh process (``--rss-repeats``, arms alternating),
  and its spread over the repeats.

Times are medians of ``--runs`` (training: ``--train-runs``) after warm-up.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run_benchmarks as rb  # noqa: E402
from dataseg.modeling.fast_paths.malloc import tune_malloc  # noqa: E402
from _common import (  # noqa: E402
    BENCH_DATASET,
    DEFAULT_CONFIG,
    bench_cfg,
    build_bench_model,
    random_image,
    register_bench_dataset,
    train_batch,
)

ARMS = ("reference", "dataseg")
# Targets of the CPU performance issue (ratios are dataseg / reference).
TARGETS = {
    "inference_ratio": ("<=", 0.40),
    "train_step_ratio": ("<=", 0.50),
    "criterion_share": ("<=", 0.10),
    "flop_rate_share": (">=", 0.65),
    "train_peak_rss_ratio": ("<=", 0.60),
    "train_peak_rss_spread": ("<=", 0.05),
}
_REPLY = "@@reply "

# ------------------------------------------------------------------------------------------
# Arms (inside a worker process)
# ------------------------------------------------------------------------------------------


def arm_setup(arm: str, threads: int):
    """Process-wide settings of an arm (the allocator follows its config, ``build_arm``)."""
    torch.set_num_threads(threads)


def build_arm(arm: str, args, tmp: str):
    register_bench_dataset(num_classes=args.num_classes)
    opts = list(args.opts)
    if arm == "reference":
        import reference_arm

        cfg = bench_cfg(args.config, tmp, reference_arm.REFERENCE_OPTS + opts)
        tune_malloc(cfg.MODEL.DATASEG.FAST_PATHS, cfg.MODEL.DEVICE)  # no-op: fast paths off
        model = reference_arm.apply_reference(build_bench_model(cfg), cfg, args.num_classes,
                                              args.reference_repo)
    else:
        cfg = bench_cfg(args.config, tmp, opts)
        tune_malloc(cfg.MODEL.DATASEG.FAST_PATHS, cfg.MODEL.DEVICE)
        model = build_bench_model(cfg)
    model._ensure_vocabulary(BENCH_DATASET, model.dataset_info(BENCH_DATASET)["classes"])
    return cfg, model


class _ArmState:
    """A worker's model, optimizer, training batches and last criterion inputs."""

    def __init__(self, arm, args, tmp):
        from dataseg.engine.optimizer import build_dataseg_optimizer

        self.cfg, self.model = build_arm(arm, args, tmp)
        self.optimizer = build_dataseg_optimizer(self.cfg, self.model)
        self.num_classes = len(self.model.dataset_info(BENCH_DATASET)["classes"])
        self.batches = {}
        self.captured = None

    def inference(self, size):
        inputs = [{"image": random_image(size), "height": size, "width": size,
                   "dataset_name": BENCH_DATASET}]
        self.model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            self.model(inputs)
            return {"s": time.perf_counter() - start}

    def train(self, size, segments):
        key = (size, segments)
        if key not in self.batches:
            self.batches[key] = train_batch(size, segments, self.num_classes)
        spy = rb._CriterionSpy(self.model.criterion)
        self.model.train()
        try:
            start = time.perf_counter()
            losses = self.model(self.batches[key])
            sum(losses.values()).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            step = time.perf_counter() - start
        finally:
            spy.remove()
            self.model.eval()
        self.captured = spy.args
        return {"s": step, "criterion_forward_s": spy.elapsed}

    def criterion(self):
        """Criterion forward + backward on the last training step's outputs and targets."""
        outputs, targets, context = self.captured
        start = time.perf_counter()
        leaves = rb._detached_outputs(outputs)
        losses = self.model.criterion(leaves, targets, context)
        sum(losses.values()).backward()
        return {"s": time.perf_counter() - start}

    def flops(self, size):
        return {"gflop": rb.count_flops(self.model, size)["gflop"]}


def worker_main(args):
    """Serve one JSON command per stdin line, answer one ``_REPLY`` line each."""
    arm_setup(args.worker, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        state = _ArmState(args.worker, args, tmp)
        print(_REPLY + json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                break
            print(_REPLY + json.dumps(getattr(state, op)(**cmd)), flush=True)


def rss_worker_main(args):
    """Fresh process: build the arm, run warm-up + one training step, print the peak RSS."""
    arm_setup(args.rss_worker, args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        state = _ArmState(args.rss_worker, args, tmp)
        for _ in range(2 if args.quick else 3):  # the heap settles after two steps
            state.train(args.train_size, args.train_segments)
    print(_REPLY + json.dumps({"peak_rss_gib": rb.peak_rss_gib()}), flush=True)


# ------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------


def _worker_cmd(args, flag, arm):
    cmd = [sys.executable, os.path.abspath(__file__), flag, arm, "--config", args.config,
           "--threads", str(args.threads), "--num-classes", str(args.num_classes),
           "--train-size", str(args.train_size), "--train-segments", str(args.train_segments)]
    if args.reference_repo:
        cmd += ["--reference-repo", args.reference_repo]
    if args.quick:
        cmd.append("--quick")
    if args.opts:
        cmd += ["--opts", *args.opts]
    return cmd


class Worker:
    """One arm's worker process and its command channel."""

    def __init__(self, arm, args):
        self.arm = arm
        self.proc = subprocess.Popen(_worker_cmd(args, "--worker", arm), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        raise RuntimeError(
            f"The {self.arm} worker exited (code {self.proc.wait()}) before answering; its "
            "error is printed above.")

    def __call__(self, op, **kwargs):
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self, kill: bool = False):
        """Let the worker finish and exit; ``kill`` (after an error or Ctrl-C) stops it now."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.wait()


def interleaved(workers, op, runs, warmup, **kwargs):
    """Median of ``runs`` single calls per arm, arms alternating (first arm swaps each round)."""
    rows = {arm: [] for arm in workers}
    for i in range(warmup + runs):
        order = list(workers) if i % 2 == 0 else list(workers)[::-1]
        for arm in order:
            out = workers[arm](op, **kwargs)
            if i >= warmup:
                rows[arm].append(out)
    return {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            for arm, rs in rows.items()}


def measure_rss(args):
    peaks = {arm: [] for arm in ARMS}
    for i in range(args.rss_repeats):
        for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):
            proc = subprocess.run(_worker_cmd(args, "--rss-worker", arm), capture_output=True,
                                  text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_REPLY)]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"RSS worker '{arm}' failed:\n{proc.stderr[-4000:]}")
            peaks[arm].append(json.loads(lines[-1][len(_REPLY):])["peak_rss_gib"])
    return peaks


def _row(name, unit, ref, ds, ratio=None, target=None, value=None):
    """One table row; ``target`` names a TARGETS key judged on ``value`` (default: ratio)."""
    row = {"measure": name, "unit": unit, "reference": ref, "dataseg": ds, "ratio": ratio}
    if target is not None:
        op, bound = TARGETS[target]
        value = ratio if value is None else value
        row.update({"target_key": target, "target": f"{op} {bound}", "value": value,
                    "measured_over_target": value / bound,
                    "met": value <= bound if op == "<=" else value >= bound})
    return row


def build_table(r):
    inf = r["inference"]
    step, crit = r["train_step"], r["criterion_at_100"]
    ref_rate = r["gflop"] / inf["reference"]["s"] / r["matmul_gflops"]
    ds_rate = r["gflop"] / inf["dataseg"]["s"] / r["matmul_gflops"]
    share = {a: crit["criterion"][a]["s"] / crit["step"][a]["s"] for a in ARMS}
    rss = {a: statistics.median(v) for a, v in r["train_peak_rss_gib"].items()}
    spread = {a: (max(v) - min(v)) / statistics.median(v)
              for a, v in r["train_peak_rss_gib"].items()}
    ratio = lambda d: d["dataseg"]["s"] / d["reference"]["s"]  # noqa: E731
    return [
        _row(f"inference, one image {r['size']}x{r['size']}", "s", inf["reference"]["s"],
             inf["dataseg"]["s"], ratio(inf), "inference_ratio"),
        _row(f"training step, batch 2, {r['train_segments']} GT/image", "s",
             step["reference"]["s"], step["dataseg"]["s"], ratio(step), "train_step_ratio"),
        _row(f"criterion fwd+bwd, {r['criterion_segments']} GT/image", "s",
             crit["criterion"]["reference"]["s"], crit["criterion"]["dataseg"]["s"],
             ratio(crit["criterion"])),
        _row(f"training step, {r['criterion_segments']} GT/image", "s",
             crit["step"]["reference"]["s"], crit["step"]["dataseg"]["s"], ratio(crit["step"])),
        _row(f"criterion share of the step at {r['criterion_segments']} GT", "share",
             share["reference"], share["dataseg"], target="criterion_share",
             value=share["dataseg"]),
        _row("achieved inference FLOP rate / fp32 matmul rate", "share", ref_rate, ds_rate,
             target="flop_rate_share", value=ds_rate),
        _row(f"training peak RSS (median of {len(r['train_peak_rss_gib']['dataseg'])} fresh "
             "processes)", "GiB", rss["reference"], rss["dataseg"],
             rss["dataseg"] / rss["reference"], "train_peak_rss_ratio"),
        _row("training peak RSS spread (max - min) / median", "share", spread["reference"],
             spread["dataseg"], target="train_peak_rss_spread", value=spread["dataseg"]),
    ]


def format_table(r):
    def num(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"config {r['config']}  threads {r['threads']}  fp32 matmul {r['matmul_gflops']:.1f} "
        f"GFLOP/s (start {r['matmul_gflops_start']:.1f}, end {r['matmul_gflops_end']:.1f})  "
        f"{r['gflop']:.1f} GFLOP per forward  load avg start {r['load_average_start']} end "
        f"{r['load_average_end']}  reference criterion: {r['reference_criterion']}",
        "",
        "| measure | unit | reference | dataseg | ratio | target | measured / target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["table"]:
        met = "" if "met" not in row else ("yes" if row["met"] else "NO")
        lines.append(
            f"| {row['measure']} | {row['unit']} | {num(row['reference'])} | "
            f"{num(row['dataseg'])} | {num(row['ratio'])} | {row.get('target', '')} | "
            f"{num(row.get('measured_over_target'))} | {met} |")
    busy = [v[0] for v in (r["load_average_start"], r["load_average_end"]) if v]
    if busy and max(busy) > 0.5 * r["cpu_count"] + r["threads"]:
        lines.append(f"WARNING: the machine was busy (1-min load average up to {max(busy):.1f} on "
                     f"{r['cpu_count']} CPUs besides this run's {r['threads']} threads); "
                     "oversubscribed cores slow both arms unevenly, rerun on an idle machine.")
    peaks = r["train_peak_rss_gib"]
    lines.append("training peak RSS per run (GiB): " + "; ".join(
        f"{a} " + ", ".join(f"{v:.2f}" for v in peaks[a]) for a in ARMS))
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--size", type=int, default=None, help="inference size (default 512)")
    p.add_argument("--train-size", type=int, default=None, help="default 512")
    p.add_argument("--train-segments", type=int, default=None, help="default 10")
    p.add_argument("--criterion-segments", type=int, default=None, help="default 100")
    p.add_argument("--num-classes", type=int, default=133)
    p.add_argument("--runs", type=int, default=None, help="inference repetitions (default 5)")
    p.add_argument("--train-runs", type=int, default=None,
                   help="timed training steps per arm and GT count (default 3)")
    p.add_argument("--rss-repeats", type=int, default=None, help="default 3")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference-repo", default="",
                   help="a Mask2Former checkout: the reference arm uses its SetCriterion")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 64x64 images, few GT segments, one repetition")
    p.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--rss-worker", choices=ARMS, help=argparse.SUPPRESS)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="config overrides for both arms, KEY VALUE pairs (last)")
    args = p.parse_args(argv)
    defaults = {"size": 64 if args.quick else 512, "train_size": 64 if args.quick else 512,
                "train_segments": 2 if args.quick else 10,
                "criterion_segments": 8 if args.quick else 100,
                "runs": 1 if args.quick else 5, "train_runs": 1 if args.quick else 3,
                "rss_repeats": 2 if args.quick else 3}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.reference_repo:
        args.reference_repo = os.path.abspath(args.reference_repo)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args) or {}
    if args.rss_worker:
        return rss_worker_main(args) or {}
    torch.set_num_threads(args.threads)
    matmul_n = 256 if args.quick else 2048
    r = {"config": args.config, "opts": args.opts, "threads": args.threads,
         "quick": args.quick, "torch": torch.__version__, "machine": platform.machine(),
         "cpu_count": os.cpu_count(), "load_average_start": rb.load_average(),
         "size": args.size, "train_size": args.train_size,
         "train_segments": args.train_segments, "criterion_segments": args.criterion_segments,
         "runs": args.runs, "train_runs": args.train_runs,
         "reference_criterion": (f"Mask2Former SetCriterion ({args.reference_repo})"
                                 if args.reference_repo else "ReferenceCriterion"),
         "command": "python benchmarks/compare_reference.py " + " ".join(
             sys.argv[1:] if argv is None else argv)}
    r["matmul_gflops_start"] = rb.matmul_gflops(matmul_n, 5)
    workers = {}
    started = time.perf_counter()
    failed = True
    try:
        for arm in ARMS:
            workers[arm] = Worker(arm, args)
        r["gflop"] = workers["dataseg"]("flops", size=args.size)["gflop"]
        r["inference"] = interleaved(workers, "inference", args.runs, 1, size=args.size)
        print("inference: " + ", ".join(f"{a} {v['s']:.2f} s" for a, v in r["inference"].items()),
              flush=True)
        r["train_step"] = interleaved(workers, "train", args.train_runs, 1 if args.quick else 2,
                                      size=args.train_size, segments=args.train_segments)
        print("training step: " + ", ".join(
            f"{a} {v['s']:.2f} s" for a, v in r["train_step"].items()), flush=True)
        steps = {arm: [] for arm in ARMS}
        crits = {arm: [] for arm in ARMS}
        for i in range(1 + args.train_runs):  # one warm-up step at the new GT count
            for arm in (ARMS if i % 2 == 0 else ARMS[::-1]):
                step = workers[arm]("train", size=args.train_size,
                                    segments=args.criterion_segments)
                crit = workers[arm]("criterion")
                if i:
                    steps[arm].append(step["s"])
                    crits[arm].append(crit["s"])
        r["criterion_at_100"] = {
            "step": {a: {"s": statistics.median(v)} for a, v in steps.items()},
            "criterion": {a: {"s": statistics.median(v)} for a, v in crits.items()}}
        failed = False
    finally:
        for w in workers.values():
            w.close(kill=failed)
    r["timing_wall_s"] = time.perf_counter() - started
    r["train_peak_rss_gib"] = measure_rss(args)
    r["matmul_gflops_end"] = rb.matmul_gflops(matmul_n, 5)
    r["matmul_gflops"] = max(r["matmul_gflops_start"], r["matmul_gflops_end"])
    r["load_average_end"] = rb.load_average()
    r["wall_s"] = time.perf_counter() - started
    r["table"] = build_table(r)
    print("\n".join(format_table(r)))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(r, f, indent=2)
    return r


if __name__ == "__main__":
    main()
