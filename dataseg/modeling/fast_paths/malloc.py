"""Allocator tuning for CPU runs (the process-level CPU fast path; its plain counterpart is
glibc's default thresholds).

glibc serves allocations above ``M_MMAP_THRESHOLD`` (dynamic, at most 32 MB by default) with
fresh ``mmap`` pages and returns freed heap tops to the OS above ``M_TRIM_THRESHOLD``. The
model's large temporaries (FFN activations of the deformable encoder, mask logits, point
losses: tens of MB each) are allocated and freed on every layer, so with the defaults each
call page-faults its memory in again; on the machines measured this was ~20 % system time.
Raising the thresholds keeps freed memory in the heap for the next call. Peak memory does not
grow (the same blocks are reused), only the process keeps what it has touched.
"""

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["tune_malloc"]

logger = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# Above the recurring per-layer temporaries (the deformable encoder's FFN activation is
# 44 MB at batch 2, 512x512). Not higher: blocks moved from mmap into the heap fragment it,
# and a 1 GB threshold was measured to raise the training peak RSS by ~0.4 GB.
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20

_tuned = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # musl and other libcs have no gnu_get_libc_version (nor glibc's mallopt semantics).
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune_malloc(fast_paths: str = "auto", device: str = "cpu", force: bool = False) -> bool:
    """Raise glibc's mmap / trim thresholds so large freed blocks are reused, not unmapped.

    Call it once, early (before the model allocates), with the run's
    ``MODEL.DATASEG.FAST_PATHS`` and ``MODEL.DEVICE``: it applies to the CPU fast paths on CPU
    and is a no-op otherwise and on non-glibc platforms. Values set by the user through
    ``MALLOC_MMAP_THRESHOLD_`` etc. are left alone.

    Args:
        fast_paths, device: the config's values.
        force: apply again even if an earlier call already did (tests).

    Returns:
        True if the thresholds were changed (now or by an earlier call).
    """
    global _tuned
    if _tuned is not None and not force:
        return _tuned
    if fast_paths != "auto" or str(device).split(":")[0] != "cpu":
        _tuned = False
        return False
    libc = _glibc()
    if libc is None:
        _tuned = False
        return False
    settings = [
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        ("MALLOC_TOP_PAD_", _M_TOP_PAD, _TOP_PAD),
    ]
    ok = True
    for env_name, param, value in settings:
        if env_name in os.environ:  # the user's explicit choice wins
            continue
        ok = bool(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))) and ok
    if not ok:
        logger.warning("mallopt rejected a DaTaSeg allocator setting; continuing with defaults.")
    _tuned = ok
    return ok
