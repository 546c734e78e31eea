#!/usr/bin/env python
"""ONNX export of one config: export time, file size, load time, parity, onnxruntime vs eager.

    python benchmarks/export_speed.py [--size 512] [--runs 5] [--threads 2] [--output out.json]
    python benchmarks/export_speed.py --quick --config configs/tiny/DaTaSeg-tiny.yaml

For the R50 recipe (default) with random weights and 133 random 768-d class embeddings
(COCO panoptic's classes; nothing is downloaded), in ONE run:

* exports the network (``dataseg.tools.export.export_onnx``): seconds and MiB;
* loads it: onnxruntime session creation, and an ``OnnxPredictor`` ready to run (session +
  vocabulary embedded);
* parity: the network's logits from onnxruntime vs eager PyTorch on one padded image, and
  ``OnnxPredictor`` vs ``DaTaSegPredictor`` outputs (semantic argmax agreement, panoptic
  segments, instance classes and scores) on a generated image;
* speed at ``--size`` x ``--size``: the network alone (onnxruntime ``session.run`` vs the
  eager model with its CPU fast paths, and vs the eager model running the plain
  computations the graph holds, on the same padded input) and end to end (``OnnxPredictor``
  vs ``DaTaSegPredictor``, same post-processing), medians of ``--runs`` after one warm-up,
  the arms alternating (their order reversed every round) so that a load spike hits all.
  ``ratio`` = onnxruntime / eager: below 1, onnxruntime is faster.

Both arms use ``--threads`` threads (onnxruntime without spinning between runs, as
``OnnxPredictor`` sets it up) and the allocator tuning of the demo and ``train_net.py``
(``--no-malloc-tuning``: glibc's defaults). ``--onnx FILE`` measures an existing export of the
config (with its ``MODEL.WEIGHTS`` in ``--opts``) instead of exporting.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    DEFAULT_CONFIG,
    bench_cfg,
    build_bench_model,
    median_time,
    vocabulary,
)

from dataseg.engine import DaTaSegCheckpointer, DaTaSegPredictor  # noqa: E402
from dataseg.modeling.fast_paths.malloc import tune_malloc  # noqa: E402
from dataseg.tools.export import (  # noqa: E402
    DEFAULT_OPSET,
    EXPORTER,
    ExportableNetwork,
    OnnxPredictor,
    plain_computations,
    onnx_session,
    compare_with_pytorch,
    export_onnx,
)

TASKS = ["panoptic", "semantic", "instance"]


def generated_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A BGR image of colour regions with noise (so that masks follow regions)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = (200, 30, 30)
    image[height // 2:, : width // 2] = (20, 200, 40)
    image[:, 2 * width // 3:] = (10, 10, 220)
    return (image + rng.integers(0, 40, image.shape)).astype(np.uint8)


def output_parity(eager: dict, exported: dict) -> dict:
    """How far ``OnnxPredictor``'s outputs are from ``DaTaSegPredictor``'s."""
    sem_a, sem_b = eager["sem_seg"], exported["sem_seg"]
    (ids_a, segs_a), (ids_b, segs_b) = eager["panoptic_seg"], exported["panoptic_seg"]
    ins_a, ins_b = eager["instances"], exported["instances"]
    same_instances = len(ins_a) == len(ins_b) and torch.equal(ins_a.pred_classes,
                                                                ins_b.pred_classes)
    return {
        "semantic_argmax_agreement_pct": float((sem_a.argmax(0) == sem_b.argmax(0))
                                               .float().mean() * 100),
        "semantic_max_abs_diff": float((sem_a - sem_b).abs().max()),
        "panoptic_segments": len(segs_a),
        "panoptic_segments_identical": segs_a == segs_b,
        "panoptic_pixel_agreement_pct": float((ids_a == ids_b).float().mean() * 100),
        "instances": len(ins_a),
        "instance_classes_identical": bool(same_instances),
        "instance_score_max_abs_diff": float((ins_a.scores - ins_b.scores).abs().max())
        if same_instances and len(ins_a) else 0.0,
    }


def alternating_medians(arms: dict, runs: int) -> dict:
    """Median seconds of each arm, one call of each per round, the first swapped each round."""
    names = list(arms)
    for name in names:  # warm-up
        arms[name]()
    times = {name: [] for name in names}
    for r in range(max(1, runs)):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(median_time(arms[name], runs=1, warmup=0))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--classes", type=int, default=133)
    p.add_argument("--text-dim", type=int, default=768, help="width of the random embeddings")
    p.add_argument("--onnx", default="", help="measure this export instead of exporting")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 run, 1 thread")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's allocator defaults (the demo and train_net.py tune them)")
    p.add_argument("--output", default="", help="also write the results as JSON")
    p.add_argument("--opts", nargs="*", default=[], help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.runs, args.threads = 64, 1, 1
    torch.set_num_threads(args.threads)
    if not args.no_malloc_tuning:
        tune_malloc()
    load_start = os.getloadavg()[0]
    opts = ["INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST", str(args.size)]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_cfg(args.config, cache_dir=os.path.join(tmp, "text"),
                        opts=opts + list(args.opts), text_dim=args.text_dim)
        if not cfg.MODEL.WEIGHTS:  # the predictors load weights: save the seeded model's
            DaTaSegCheckpointer(build_bench_model(cfg), save_dir=tmp).save("random")
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.WEIGHTS = os.path.join(tmp, "random.pth")
            cfg.freeze()
        names, isthing = vocabulary(args.classes)
        vocab = dict(classes=names, task=TASKS, isthing=isthing)
        eager = DaTaSegPredictor(cfg, **vocab)
        result = {"config": args.config, "size": args.size, "threads": args.threads,
                  "classes": args.classes, "runs": args.runs, "exporter": EXPORTER,
                  "opset": DEFAULT_OPSET, "torch": torch.__version__}
        import onnxruntime

        result["onnxruntime"] = onnxruntime.__version__
        path = args.onnx or os.path.join(tmp, "model.onnx")
        if not args.onnx:
            start = time.perf_counter()
            export_onnx(cfg, path, model=eager.model)
            result["export_s"] = time.perf_counter() - start
        result["file_mib"] = os.path.getsize(path) / 2**20
        start = time.perf_counter()
        onnx_session(path)
        result["session_load_s"] = time.perf_counter() - start
        start = time.perf_counter()
        exported = OnnxPredictor(path, cfg, **vocab)
        result["predictor_load_s"] = time.perf_counter() - start

        result["network_parity"] = compare_with_pytorch(
            eager.model, path, args.size, args.size, args.classes)
        image = generated_image(args.size, args.size)
        result["output_parity"] = output_parity(eager(image), exported(image))

        padded, _ = exported.preprocess(image)
        x = torch.from_numpy(padded)
        rows = torch.from_numpy(exported.text_embeddings)
        network = ExportableNetwork(eager.model).eval()

        def eager_network():
            with torch.no_grad():
                network(x, rows)

        def eager_plain_network():
            with plain_computations(eager.model), torch.no_grad():
                network(x, rows)

        network_s = alternating_medians(
            {"eager": eager_network, "eager_plain": eager_plain_network,
             "onnxruntime": lambda: exported.run_network(padded)}, args.runs)
        end_to_end_s = alternating_medians(
            {"eager": lambda: eager(image), "onnxruntime": lambda: exported(image)}, args.runs)
        result["network_s"] = network_s
        result["end_to_end_s"] = end_to_end_s
        result["network_ratio"] = network_s["onnxruntime"] / network_s["eager"]
        result["network_ratio_vs_plain"] = network_s["onnxruntime"] / network_s["eager_plain"]
        result["end_to_end_ratio"] = end_to_end_s["onnxruntime"] / end_to_end_s["eager"]
        result["loadavg_start_end"] = [load_start, os.getloadavg()[0]]

    par, out = result["network_parity"], result["output_parity"]
    print(f"ONNX export of {args.config} ({EXPORTER}, opset {DEFAULT_OPSET}, torch "
          f"{result['torch']}, onnxruntime {result['onnxruntime']}), {args.size}x{args.size}, "
          f"{args.classes} classes, {args.threads} thread(s)")
    if "export_s" in result:
        print(f"  export             {result['export_s']:8.1f} s")
    print(f"  file               {result['file_mib']:8.1f} MiB")
    print(f"  load               {result['session_load_s']:8.2f} s session, "
          f"{result['predictor_load_s']:.2f} s OnnxPredictor")
    print(f"  parity (network)   class logits max |diff| "
          f"{par['class_logits_max_abs_diff']:.2e} (of {par['class_logits_max_abs']:.3g}), "
          f"mask logits {par['mask_logits_max_abs_diff']:.2e} (of "
          f"{par['mask_logits_max_abs']:.3g}), mask signs {par['mask_sign_agreement_pct']:.3f} %")
    print(f"  parity (outputs)   semantic argmax {out['semantic_argmax_agreement_pct']:.3f} %, "
          f"panoptic {out['panoptic_segments']} segments identical: "
          f"{out['panoptic_segments_identical']} (pixels {out['panoptic_pixel_agreement_pct']:.3f}"
          f" %), {out['instances']} instances, classes identical: "
          f"{out['instance_classes_identical']}, scores max |diff| "
          f"{out['instance_score_max_abs_diff']:.1e}")
    s = result["network_s"]
    print(f"  network            eager {s['eager']:.3f} s, onnxruntime {s['onnxruntime']:.3f} s:"
          f" ratio {result['network_ratio']:.2f}; eager plain computations "
          f"{s['eager_plain']:.3f} s: ratio {result['network_ratio_vs_plain']:.2f}")
    s = result["end_to_end_s"]
    print(f"  end to end         eager {s['eager']:.3f} s, onnxruntime {s['onnxruntime']:.3f} s:"
          f" ratio {result['end_to_end_ratio']:.2f}")
    print(f"  load average {result['loadavg_start_end'][0]:.2f} -> "
          f"{result['loadavg_start_end'][1]:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
