"""The CPU fast paths: every speed-up of the project, in one place, behind one switch.

The model's code is written with the plain computations (what Mask2Former / Deformable DETR
compute, what a reader meets first, what runs on a GPU). On CPU, where this project trains its
out-of-the-box model, these modules replace some of them by cheaper equivalents. One key
decides: ``MODEL.DATASEG.FAST_PATHS``

* ``"auto"`` (default): the fast paths run on CPU tensors; every other device runs the plain
  computations (the fast paths are only verified on CPU);
* ``"off"``: the plain computations everywhere (the reference arm of the benchmarks; the ONNX
  export, whose graph needs standard operators, switches it off itself).

Each fast path, the plain computation it replaces, and the tests (under ``tests/modeling/``)
that pin the two together, values and gradients:

* ``pointwise_conv``: 1x1 ``Conv2d`` of the backbone and pixel decoder as batched GEMMs;
  ``fast_paths/test_pointwise_conv.py``.
* ``msda_embedding_bag``: ``ops.ms_deform_attn_grid_sample`` (one ``grid_sample`` per level);
  ``fast_paths/test_msda_embedding_bag.py``, ``test_ms_deform_attn.py``.
* the encoder FFN recomputed in backward instead of keeping its hidden activation (a
  ``torch.utils.checkpoint`` call in ``DeformableEncoderLayer``);
  ``fast_paths/test_msda_embedding_bag.py``.
* ``head_broadcast_attention``: ``nn.MultiheadAttention`` with a mask per head (the query
  decoder); ``test_parts.py``, and ``test_gpu_paths.py`` on CUDA.
* ``point_losses``: the focal / dice formulas of ``criterion.losses`` and
  ``criterion.merge.sigmoid_with_logs``; ``fast_paths/test_point_losses.py``.
* ``grid_point_sampler``: detectron2's continuous importance sampling, masks read bilinearly;
  ``criterion/test_criterion.py``, ``criterion/test_parts.py``.
* ``malloc``: glibc's default allocator thresholds; ``fast_paths/test_malloc.py``.

The switch itself: ``fast_paths/test_switch.py``.

Only the point sampler changes what is estimated (points on ground-truth pixel centres, read
exactly, instead of continuous points read bilinearly, docs/merge.md); the others compute the
same function, equal up to float rounding. The measurements are in docs/benchmarks.md.
"""

import contextlib

import torch
from torch import nn

__all__ = ["FAST_PATHS_CHOICES", "check_fast_paths", "plain_computations", "use_fast_paths"]

FAST_PATHS_CHOICES = ("auto", "off")


def check_fast_paths(setting: str) -> str:
    """Return ``setting`` (the value of ``MODEL.DATASEG.FAST_PATHS``) or raise naming the
    accepted values."""
    if setting not in FAST_PATHS_CHOICES:
        raise ValueError(
            f"MODEL.DATASEG.FAST_PATHS must be one of {FAST_PATHS_CHOICES}, got {setting!r}: "
            "'auto' runs the CPU fast paths on CPU tensors, 'off' the plain computations.")
    return setting


def use_fast_paths(setting: str, tensor: torch.Tensor) -> bool:
    """True when the fast paths run for ``tensor``: ``setting`` is "auto" and it is on CPU."""
    return setting == "auto" and tensor.device.type == "cpu"


@contextlib.contextmanager
def plain_computations(model: nn.Module):
    """Within the block, every part of ``model`` runs its plain computations (as with
    ``FAST_PATHS "off"``), whatever the device; restored on exit. The ONNX export uses it:
    the fast paths' custom autograd functions and batched GEMMs have no place in a graph."""
    parts = [(m, m.fast_paths) for m in model.modules() if isinstance(
        getattr(m, "fast_paths", None), str)]
    try:
        for m, _ in parts:
            m.fast_paths = "off"
        yield model
    finally:
        for m, setting in parts:
            m.fast_paths = setting
