"""Helpers shared by the preparation scripts in this folder (``datasets/prepare_*.py``).

The scripts are run from the repository root (``python datasets/prepare_x.py``) and find the
data under ``$DETECTRON2_DATASETS`` (default ``datasets``), like detectron2's own scripts.
Heavy libraries are imported by the scripts that need them, after ``--help`` has been served.
"""

import argparse
import importlib
import importlib.util
import json
import os
from multiprocessing import Pool
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable, List, Sequence

import numpy as np


class PreparationError(SystemExit):
    """A missing input or a bad file: the message says what was expected and where.

    A ``SystemExit`` so that a script run from the shell prints the message without a
    traceback and exits with status 1.
    """

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.message = message


class _WorkerFailure(Exception):
    """A ``SystemExit`` raised in a pool worker, carried to the parent as an ordinary exception.

    ``multiprocessing.Pool`` only sends ``Exception``s back: a ``SystemExit`` ends the worker
    process, its task is lost and ``imap`` waits for it forever.
    """


class _ExitsAsFailure:
    """``fn`` for a pool worker: a ``SystemExit`` becomes a picklable ``_WorkerFailure``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, item):
        try:
            return self.fn(item)
        except PreparationError as e:
            raise _WorkerFailure(e.message) from None
        except SystemExit as e:
            raise _WorkerFailure(f"a worker exited with {e.code!r} on {item!r}.") from None


def dataset_root() -> Path:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), read when called."""
    return Path(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))


def make_parser(description: str, layout: str, workers: bool = True) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the input/output layout of the script."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=layout + "\nPaths are relative to $DETECTRON2_DATASETS (default 'datasets'; "
        f"now {str(dataset_root())!r}).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if workers:
        parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                            help="processes converting files in parallel (default: %(default)s)")
    return parser


def require_dir(path: Path, what: str, how: str = "") -> Path:
    if not path.is_dir():
        raise PreparationError(f"{what} folder not found at {str(path)!r}. {how}".rstrip())
    return path


def require_file(path: Path, what: str, how: str = "") -> Path:
    if not path.is_file():
        raise PreparationError(f"{what} not found at {str(path)!r}. {how}".rstrip())
    return path


def relative_entry(entry: str, where: str) -> str:
    """``entry``, a file name read from a list or a json, once it is known to stay inside the
    folder it is joined to.

    The scripts join such names to their input and output folders: an absolute path, a drive
    or a ``..`` component would read or write outside ``$DETECTRON2_DATASETS``.

    Args:
        entry: the name as read.
        where: where it was read, for the message (``"'val.txt', line 3"``).
    """
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    if (not entry.strip() or entry.startswith(("/", "\\")) or PureWindowsPath(entry).drive
            or ".." in parts):
        raise PreparationError(
            f"{where}: the entry {entry!r} is not a relative path inside the dataset folder "
            "(it is empty, absolute or contains '..'), so the script would read or write "
            "outside $DETECTRON2_DATASETS. Replace it with the plain file name the original "
            "download has, or restore the file from the download.")
    return entry


def import_optional(module: str, pip_name: str, purpose: str):
    """Import ``module`` or fail saying which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PreparationError(
            f"{purpose} needs the Python package {pip_name!r} ({e}). Install it with "
            f"`pip install {pip_name}` and run again."
        ) from e


def vocabulary(name: str) -> List[str]:
    """Class names shipped with the ``dataseg`` package, read without importing it.

    (Importing ``dataseg.data`` registers every dataset and loads torch: seconds per script.)
    """
    spec = importlib.util.find_spec("dataseg")
    if spec is None or spec.origin is None:
        raise PreparationError("the 'dataseg' package is not importable; run `pip install -e .` "
                               "in the repository root first.")
    path = Path(spec.origin).parent / "data" / "vocabularies" / f"{name}.txt"
    return [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]


def bbox_xywh(mask: np.ndarray) -> List[int]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty boolean mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def segments_of(ids: np.ndarray, info: dict) -> List[dict]:
    """COCO panoptic ``segments_info`` of an id map: area and box measured on the map.

    ``info`` maps segment id -> its other fields (``category_id``, ``iscrowd``); ids absent
    from the final map (painted over entirely) are dropped.
    """
    segments = []
    for seg_id in np.unique(ids):
        if seg_id == 0:
            continue
        mask = ids == seg_id
        segments.append(dict(id=int(seg_id), area=int(mask.sum()), bbox=bbox_xywh(mask),
                             **info[int(seg_id)]))
    return segments


def write_json(obj, path: Path):
    """Write ``obj`` atomically: an interrupted run never leaves a truncated json behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: Path, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PreparationError(f"{what} {str(path)!r} is not valid JSON ({e}); it is probably "
                               "truncated: download or extract it again.") from e


def run_parallel(fn: Callable, items: Sequence, workers: int, what: str) -> list:
    """``[fn(x) for x in items]``, in ``workers`` processes when more than one, with progress."""
    items = list(items)
    step = max(1, len(items) // 10)
    results = []

    def report(i):
        if (i + 1) % step == 0 or i + 1 == len(items):
            print(f"  {what}: {i + 1}/{len(items)}", flush=True)

    if workers <= 1 or len(items) < 2:
        for i, item in enumerate(items):
            results.append(fn(item))
            report(i)
        return results
    with Pool(workers) as pool:
        try:
            for i, result in enumerate(pool.imap(_ExitsAsFailure(fn), items, chunksize=16)):
                results.append(result)
                report(i)
        except _WorkerFailure as e:
            raise PreparationError(e.args[0]) from None
    return results


def files_with_suffix(folder: Path, suffix: str) -> Iterable[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
