"""Config set-up shared by train_net.py, the demo and the benchmarks."""

import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_dataseg_config, check_dataseg_config, merge_dataseg_config_file
from ..data.sampler import check_sampling_ratios

__all__ = ["get_dataseg_cfg", "setup"]


def get_dataseg_cfg(config_file: str = "", opts=(), check: bool = True):
    """A detectron2 config with DaTaSeg keys, a yaml file and ``KEY VALUE`` overrides merged.

    Args:
        config_file: yaml path ("" keeps the defaults).
        opts: flat ``[KEY, VALUE, ...]`` list, as given on the command line.
        check: run :func:`check_dataseg_config` (refuses non-DaTaSeg configs) and the check
            of the sampling ratios (``data.sampler.check_sampling_ratios``).

    ``MODEL.DEVICE`` "cuda" (detectron2's default) becomes "cpu" when no GPU is present.
    """
    cfg = add_dataseg_config(get_cfg())
    if config_file:
        merge_dataseg_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE == "cuda" and not torch.cuda.is_available():
        # Users without a GPU should not need to know detectron2's default is "cuda".
        logging.getLogger(__name__).warning("No CUDA device: running on the CPU.")
        cfg.MODEL.DEVICE = "cpu"
    if check:
        check_dataseg_config(cfg)
        check_sampling_ratios(cfg.DATALOADER.DATASEG.SAMPLING_RATIOS, cfg.DATASETS.TRAIN)
    return cfg


def setup(args):
    """Build, freeze and log the config of a ``default_argument_parser`` run."""
    cfg = get_dataseg_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # default_setup only configures detectron2's loggers; DaTaSeg logs under "dataseg".
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dataseg")
    return cfg

