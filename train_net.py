#!/usr/bin/env python
"""DaTaSeg training and evaluation, detectron2 style.

    python train_net.py --config-file configs/tiny/DaTaSeg-tiny.yaml
    python train_net.py --config-file configs/coco_ade_o365/DaTaSeg_R50.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume          # continue from last_checkpoint

Without GPUs, ``--num-gpus N`` runs N processes on the CPU (gloo backend).
"""

from detectron2.engine import default_argument_parser, launch

import dataseg  # noqa: F401  (registers DaTaSeg with detectron2)
from dataseg.engine import DaTaSegCheckpointer
from dataseg.engine import DaTaSegTrainer as Trainer
from dataseg.engine import setup
from dataseg.modeling.fast_paths.malloc import tune_malloc


def main(args):
    cfg = setup(args)
    # CPU fast paths: reuse large freed blocks instead of page-faulting them in again.
    tune_malloc(cfg.MODEL.DATASEG.FAST_PATHS, cfg.MODEL.DEVICE)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DaTaSegCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR,
            min_backbone_fraction=cfg.MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION,
            # Evaluating random weights in place of unfilled tensors would print wrong numbers.
            allow_partial=cfg.MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS,
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    # Without CUDA, launch() still spawns --num-gpus processes, which then talk gloo.
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
