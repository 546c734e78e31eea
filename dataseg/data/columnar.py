"""A compact, memory-mapped cache of large COCO box jsons (Objects365-sized datasets).

Why: detectron2's ``load_coco_json`` holds the whole parsed json, pycocotools' index and one
Python dict per image and per box at once. For Objects365 v2 train (1.7 M images, 25 M boxes)
that is tens of GB in every training process. The cache turns the json, once, into a folder of
flat numpy arrays; every rank and every data-loader worker then memory-maps the same files
(the operating system keeps one copy in its page cache), and
:class:`ColumnarDatasetDicts` builds one detectron2 dataset dict at a time, on ``__getitem__``.

The dicts are those of the json path, key for key and value for value (``file_name``,
``height``, ``width``, ``image_id``, ``annotations`` with ``iscrowd``, ``bbox``,
``category_id`` contiguous in the registered order, ``bbox_mode``); the mappers see no
difference. Only box supervision is cached (no ``segmentation`` nor ``keypoints``): it is
used for box datasets registered without held-out masks (``register_box_dataset``).

Building streams through the json (``json.JSONDecoder.raw_decode`` one image / annotation at
a time) so the builder itself needs memory for the arrays only, never for the parsed json.

Layout of a cache folder (``<cache dir>/<json stem>-<key>/``, the key hashing the json's path,
size and modification time, so an edited json gets a new cache): ``meta.json`` (format,
source, categories, counts) and one ``.npy`` per column. A folder appears complete or not at
all (it is written under a temporary name and renamed); a lock file next to it lets the first
process build while the others wait.
"""

import array
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from detectron2.structures import BoxMode

__all__ = [
    "COLUMNAR_MIN_JSON_BYTES",
    "ColumnarDatasetDicts",
    "ColumnarUnsupported",
    "build_columnar_cache",
    "columnar_cache_folder",
    "default_columnar_cache_dir",
    "ensure_columnar_cache",
    "load_columnar_box_dicts",
    "read_coco_list",
    "use_columnar_cache",
]

logger = logging.getLogger(__name__)

# 2: repeated image ids are refused when building (format 1 kept the last entry), so caches
# built before that are rebuilt once and their json checked.
_FORMAT = 2
# Box jsons at least this large are loaded through the cache unless the registration says
# otherwise (``columnar_cache=``): Objects365 v2 val (~0.2 GB) and train (several GB) are, COCO-
# sized box sets stay on the plain path, whose load takes seconds. Not in the paper.
COLUMNAR_MIN_JSON_BYTES = 128 * 2 ** 20
# A lock untouched for this long belongs to a builder that died (a live one touches it every
# few seconds), so a waiting process takes over.
_STALE_LOCK_S = 300.0
_HEARTBEAT_EVERY = 100_000  # json elements between lock touches
_NO_ISCROWD = -1  # iscrowd column value of an annotation without the key

_COLUMNS = ("image_ids", "heights", "widths", "file_name_bytes", "file_name_offsets",
            "ann_offsets", "boxes", "category_index", "iscrowd")


class ColumnarUnsupported(ValueError):
    """The json holds something the cache does not represent (the plain json path is used)."""


def default_columnar_cache_dir() -> str:
    """``$DATASEG_CACHE/columnar`` if DATASEG_CACHE is set, else ``~/.cache/dataseg/columnar``
    (the text-embedding cache's root)."""
    root = os.environ.get("DATASEG_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dataseg")
    return os.path.join(root, "columnar")


def columnar_cache_folder(json_file: str, cache_dir: Optional[str] = None) -> str:
    """The cache folder of ``json_file`` as it is now (path, size and mtime are the key)."""
    st = os.stat(json_file)
    source = f"{os.path.realpath(json_file)}|{st.st_size}|{st.st_mtime_ns}|{_FORMAT}"
    key = hashlib.sha1(source.encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(json_file))[0]
    return os.path.join(os.path.expanduser(cache_dir or default_columnar_cache_dir()),
                        f"{stem}-{key}")


def use_columnar_cache(json_file: str, flag: Optional[bool]) -> bool:
    """``flag`` if given, else whether ``json_file`` is at least :data:`COLUMNAR_MIN_JSON_BYTES`."""
    if flag is not None:
        return bool(flag)
    return os.path.getsize(json_file) >= COLUMNAR_MIN_JSON_BYTES


# ----------------------------------------------------------------------------- streaming json
_WS = re.compile(r"[ \t\n\r]*")


class _JsonStream:
    """Walk a top-level json object, decoding the elements of its ``images`` and ``annotations``
    arrays one at a time (other values whole); memory stays at one read chunk."""

    _STREAMED = ("images", "annotations")

    def __init__(self, f, chunk_chars: int = 1 << 22):
        self.f, self.chunk = f, chunk_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least: int = 0):
        data = self.f.read(max(self.chunk, at_least))
        if not data:
            self.eof = True
        self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def _peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self._fill()

    def _expect(self, chars: str) -> str:
        c = self._peek()
        if not c or c not in chars:
            raise json.JSONDecodeError(f"expected one of {chars!r}", self.buf, self.pos)
        self.pos += 1
        return c

    def _value(self):
        self._peek()  # raw_decode does not skip leading whitespace
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                self._fill(len(self.buf) - self.pos)  # doubling: a large value costs O(n)
                continue
            if end == len(self.buf) and not self.eof:
                self._fill()  # a number may continue in the next chunk: decode it again
                continue
            self.pos = end
            return value

    def __iter__(self):
        """Yields ``(key, value, is_element)``: elements of the streamed arrays, else values."""
        self._fill()
        self._expect("{")
        if self._peek() == "}":
            return
        while True:
            key = self._value()
            self._expect(":")
            if key in self._STREAMED and self._peek() == "[":
                self.pos += 1
                if self._peek() == "]":
                    self.pos += 1
                else:
                    while True:
                        yield key, self._value(), True
                        if self._expect(",]") == "]":
                            break
            else:
                yield key, self._value(), False
            if self._expect(",}") == "}":
                return


# What each top-level list's elements must hold to be taken for that list (a key of the same
# name elsewhere in the file, inside a string or a nested object, is skipped).
_LIST_KEYS = {"categories": ("id", "name"), "images": ("id", "file_name")}


def read_coco_list(json_file: str, key: str, window: int = 1 << 20) -> Optional[List[Dict]]:
    """The top-level list ``key`` ("categories", "images") of a COCO json, without parsing
    the rest of it: registration needs only the categories, and ``json.load`` of an
    Objects365-sized file costs minutes and tens of GB.

    Looks for the ``"<key>"`` key in the file's first and last ``window`` bytes (where writers
    put it), then in the whole file, and decodes the list that follows. Returns ``None`` when
    no such list is found (the caller parses the whole json).
    """
    import mmap

    needle = f'"{key}"'.encode()
    with open(json_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        size = len(m)
        ranges = [(0, min(size, window)), (max(0, size - window), size), (0, size)]
        for lo, hi in ranges:
            pos = m.find(needle, lo, hi)
            while pos != -1:
                found = _decode_list(m, pos + len(needle), _LIST_KEYS[key],
                                     allow_empty=key != "categories")
                if found is not None:
                    return found
                pos = m.find(needle, pos + 1, hi)
    return None


def _decode_list(m, start: int, required: Sequence[str],
                 allow_empty: bool) -> Optional[List[Dict]]:
    text_len = 1 << 16
    decoder = json.JSONDecoder()
    while True:
        text = m[start:start + text_len].decode("utf-8", errors="replace")
        match = re.compile(r"\s*:\s*").match(text)
        if not match or text[match.end():match.end() + 1] != "[":
            return None
        try:
            value, _ = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            if start + text_len >= len(m):
                return None
            text_len *= 4
            continue
        ok = isinstance(value, list) and (value or allow_empty) and all(
            isinstance(c, dict) and all(k in c for k in required) for c in value)
        return value if ok else None


# ----------------------------------------------------------------------------- building
def _valid_polygons(segm) -> bool:
    """load_coco_json drops an annotation whose polygons are all invalid (< 3 points)."""
    if not segm or isinstance(segm, dict):
        return True
    return any(len(p) % 2 == 0 and len(p) >= 6 for p in segm)


def build_columnar_cache(json_file: str, folder: str, heartbeat=None) -> Dict:
    """Convert a COCO box json into the cache folder ``folder`` (which must not exist yet).

    Reproduces ``load_coco_json``'s reading: images sorted by id, annotations grouped by image
    in file order, annotations of unknown images dropped, annotations with only invalid
    polygons dropped, category ids checked against the json's categories, annotation ids
    unique (except for "minival" files, as detectron2).

    Args:
        json_file: the COCO json.
        folder: output folder (created).
        heartbeat: optional callable, called every ~100k json elements (lock keep-alive).
    Returns:
        the ``meta.json`` content.
    Raises:
        ColumnarUnsupported: keypoints, annotations without a 4-number ``bbox`` or with a
            non-integer ``category_id``, images without integer ``id``/``height``/``width``, or no
            categories.
        json.JSONDecodeError, KeyError, ValueError: an invalid json (callers turn these into
            actionable messages). An annotation without ``category_id`` is a ValueError when the
            json has categories (the json path fails on it too: pycocotools indexes every
            annotation by ``category_id``), and so is an image id given to several images
            (pycocotools would keep one of them and hand it the others' annotations).
    """
    start = time.perf_counter()
    img_ids, heights, widths = array.array("q"), array.array("q"), array.array("q")
    names, name_offsets = bytearray(), array.array("q", [0])
    ann_image, ann_ids, cats = array.array("q"), array.array("q"), array.array("q")
    boxes, crowd = array.array("d"), array.array("b")
    categories = None
    num_elements = num_invalid_segm = num_no_category = 0
    first_no_category = None
    with open(json_file, encoding="utf-8") as f:
        for key, value, is_element in _JsonStream(f):
            num_elements += 1
            if heartbeat is not None and num_elements % _HEARTBEAT_EVERY == 0:
                heartbeat()
            if not is_element:
                if key == "categories":
                    categories = value
                elif key in _JsonStream._STREAMED and value:
                    raise ColumnarUnsupported(f"{key!r} is not a list")
                continue
            if key == "images":
                try:
                    i, h, w = value["id"], value["height"], value["width"]
                    file_name = value["file_name"]
                except (KeyError, TypeError) as e:
                    raise ColumnarUnsupported(f"an image lacks {e}") from e
                if not all(type(x) is int for x in (i, h, w)):
                    raise ColumnarUnsupported(f"image id/height/width not integers: {value}")
                img_ids.append(i)
                heights.append(h)
                widths.append(w)
                names += file_name.encode("utf-8")
                name_offsets.append(len(names))
                continue
            # annotations
            if value.get("keypoints"):
                raise ColumnarUnsupported("annotations with keypoints")
            if value.get("ignore", 0) != 0:
                raise ValueError('"ignore" in COCO json file is not supported.')
            bbox = value.get("bbox")
            if bbox is not None and len(bbox) == 0:
                raise ValueError(
                    f"One annotation of image {value.get('image_id')} contains empty 'bbox' "
                    "value! This json does not have valid COCO format.")
            if bbox is None or len(bbox) != 4:
                raise ColumnarUnsupported(f"annotation {value.get('id')} has bbox {bbox}")
            if type(value.get("image_id")) is not int or type(value.get("id")) is not int:
                raise ColumnarUnsupported(f"annotation without integer id/image_id: {value}")
            if "category_id" not in value:
                # Counted before any filtering: pycocotools' index reads the key of every
                # annotation, kept or not. An error once the categories are known (below).
                num_no_category += 1
                if first_no_category is None:
                    first_no_category = value
                continue
            if type(value["category_id"]) is not int:
                raise ColumnarUnsupported(f"annotation {value['id']} has category_id "
                                          f"{value['category_id']!r}")
            if not _valid_polygons(value.get("segmentation")):
                num_invalid_segm += 1
                continue
            ann_image.append(value["image_id"])
            ann_ids.append(value["id"])
            cats.append(value["category_id"])
            boxes.extend(bbox)
            c = value.get("iscrowd", _NO_ISCROWD)
            crowd.append(int(c))
    if not categories:
        raise ColumnarUnsupported("no categories")
    if num_no_category:
        raise ValueError(
            f"{num_no_category} annotation(s) in '{json_file}' have no 'category_id' (the first: "
            f"id {first_no_category.get('id')} of image {first_no_category.get('image_id')}); "
            "every annotation of a COCO json needs one.")

    os.makedirs(folder)

    def save(key, arr):
        np.save(os.path.join(folder, key + ".npy"), np.ascontiguousarray(arr))
        if heartbeat is not None:  # sorting and writing 25 M boxes takes a while too
            heartbeat()

    def as_np(arr, dtype):
        return np.frombuffer(arr, dtype=dtype) if len(arr) else np.zeros(0, dtype)

    # Columns are written (and their inputs released) one by one: the build's peak is about
    # twice the boxes' raw columns, not the parsed json.
    img_ids = as_np(img_ids, np.int64)
    # Sorted ids and the rows of the json in that order; a repeated id is refused.
    sorted_ids, rows, counts = np.unique(img_ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        _refuse_repeated_image_ids(img_ids, sorted_ids[counts > 1], names, name_offsets,
                                   json_file)
    save("image_ids", sorted_ids)
    save("heights", as_np(heights, np.int64)[rows].astype(np.int32))
    save("widths", as_np(widths, np.int64)[rows].astype(np.int32))
    offsets = as_np(name_offsets, np.int64)
    names_arr = np.frombuffer(bytes(names), dtype=np.uint8)
    del names
    starts, ends = offsets[rows], offsets[rows + 1]
    lengths = ends - starts
    new_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if not np.array_equal(rows, np.arange(len(img_ids))):  # the json lists its images unsorted
        gather = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        names_arr = names_arr[gather]
        del gather
    save("file_name_bytes", names_arr)
    save("file_name_offsets", new_offsets)
    del names_arr, offsets, starts, ends, lengths, rows

    ann_image = as_np(ann_image, np.int64)
    pos = np.searchsorted(sorted_ids, ann_image)
    if len(sorted_ids):
        matched = (pos < len(sorted_ids)) & (
            sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == ann_image)
    else:
        matched = np.zeros(len(ann_image), bool)
    num_unmatched = int((~matched).sum())
    if num_unmatched:
        logger.warning(f"{json_file} contains {len(ann_image)} annotations, but only "
                       f"{len(ann_image) - num_unmatched} of them match to images in the file.")
    del ann_image
    order = np.flatnonzero(matched)
    order = order[np.argsort(pos[order], kind="stable")]
    del matched
    save("ann_offsets", np.concatenate(
        [[0], np.cumsum(np.bincount(pos[order], minlength=len(sorted_ids)))]).astype(np.int64))
    del pos
    if "minival" not in json_file and len(np.unique(as_np(ann_ids, np.int64)[order])) != len(
            order):
        raise ValueError(f"Annotation ids in '{json_file}' are not unique!")
    del ann_ids
    cat_ids = np.array(sorted(int(c["id"]) for c in categories), dtype=np.int64)
    ann_cats = as_np(cats, np.int64)[order]
    del cats
    cat_index = np.searchsorted(cat_ids, ann_cats)
    unknown = (cat_index >= len(cat_ids)) | (cat_ids[np.minimum(cat_index, len(cat_ids) - 1)]
                                              != ann_cats)
    if unknown.any():
        raise KeyError(f"Encountered category_id={int(ann_cats[unknown][0])} but this id does "
                       "not exist in 'categories' of the json file.")
    save("category_index", cat_index.astype(np.int32))
    del ann_cats, cat_index, unknown
    save("iscrowd", as_np(crowd, np.int8)[order])
    del crowd
    # float64: the json path's values exactly (float32 would round them).
    save("boxes", as_np(boxes, np.float64).reshape(-1, 4)[order])
    del boxes
    cats_sorted = sorted(categories, key=lambda c: c["id"])
    st = os.stat(json_file)
    meta = {
        "format": _FORMAT,
        "json_file": os.path.realpath(json_file),
        "json_size": st.st_size,
        "json_mtime_ns": st.st_mtime_ns,
        "category_ids": [int(c["id"]) for c in cats_sorted],
        "category_names": [c["name"] for c in cats_sorted],
        "num_images": int(len(sorted_ids)),
        "num_annotations": int(len(order)),
        "num_unmatched_annotations": num_unmatched,
        "num_invalid_segmentation": num_invalid_segm,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    # meta.json last: the folder is only used once renamed, but a reader of a folder built by
    # hand still never sees a meta.json without its columns.
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    if num_invalid_segm:
        logger.warning(f"Filtered out {num_invalid_segm} instances without valid segmentation "
                       f"in {json_file}.")
    return meta


def _refuse_repeated_image_ids(img_ids: np.ndarray, repeated: np.ndarray, names: bytearray,
                               name_offsets, json_file):
    """ValueError naming the first of the ``repeated`` image ids (sorted) and the file names of
    the images that share it (the message catalog.check_unique_image_ids gives on the json
    path)."""
    first = int(repeated[0])
    rows = np.flatnonzero(img_ids == first)
    files = [bytes(names[name_offsets[r]:name_offsets[r + 1]]).decode("utf-8") for r in rows]
    others = f" ({len(repeated)} ids are repeated: {repeated[:10].tolist()})" \
        if len(repeated) > 1 else ""
    raise ValueError(
        f"'{json_file}' gives image id {first} to {len(files)} images {files[:10]}{others}. "
        "Every image needs its own id: give each a distinct id and update the image_id of its "
        "annotations.")


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "meta.json"))


def _create_lock(lock: str, token: str) -> bool:
    """Create ``lock`` holding ``token`` unless it exists (O_EXCL: one creator wins)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, token.encode())
    finally:
        os.close(fd)
    return True


def _read_lock(lock: str) -> Optional[str]:
    try:
        with open(lock) as f:
            return f.read()
    except FileNotFoundError:
        return None


def _heartbeat(lock: str, token: str):
    """The builder's keep-alive: touch ``lock``; re-create it if a waiter removed it as stale
    (a stalled builder, or clocks that differ across a shared filesystem), so that the others
    keep waiting instead of the live build failing. A lock another process holds by then is
    left to it (both build; the atomic rename of the folder keeps one result)."""
    try:
        os.utime(lock)
    except FileNotFoundError:
        if _create_lock(lock, token):
            logger.warning(f"The columnar-cache lock {lock} vanished during the build (taken "
                           "as stale by a waiting process?); re-created it.")


def _newest_mtime(path: str) -> float:
    newest = os.path.getmtime(path)
    for entry in os.scandir(path):
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            pass
    return newest


def _remove_stale_leftovers(folder: str):
    """Remove ``<folder>.tmp-*`` build folders of killed builders (as large as the cache).
    Only those untouched for the stale-lock time: a live builder writes into its folder and
    touches the lock after every column."""
    parent, prefix = os.path.dirname(folder), os.path.basename(folder) + ".tmp-"
    for entry in os.scandir(parent):
        if not (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)):
            continue
        try:
            idle = time.time() - _newest_mtime(entry.path)
        except FileNotFoundError:
            continue
        if idle > _STALE_LOCK_S:
            logger.warning(f"Removing {entry.path}, left by a columnar-cache builder that died.")
            shutil.rmtree(entry.path, ignore_errors=True)


def _take_over_stale_lock(lock: str, folder: str, token: str) -> bool:
    """Remove ``lock``, judged stale by the caller, atomically: it is first renamed to a name of
    this process's own, which only one of several waiters can do, and checked again there (a
    waiter that judged the same lock stale may already have replaced it with its own fresh
    lock, which is then put back). Returns whether this process removed a stale lock (it then
    also removed the stale build folders); the caller then creates the lock as usual."""
    moved = f"{lock}.stale-{token.split()[-1]}"
    try:
        os.rename(lock, moved)
    except FileNotFoundError:
        return False  # another waiter took it over first
    try:
        idle = time.time() - os.path.getmtime(moved)
    except FileNotFoundError:
        return False
    if idle <= _STALE_LOCK_S:  # a live lock, created since the caller's look: put it back
        try:
            os.link(moved, lock)  # unless yet another process has created one meanwhile
        except OSError:
            pass  # its holder's heartbeat re-creates it
        os.remove(moved)
        return False
    os.remove(moved)
    logger.warning(f"Removed stale columnar-cache lock {lock} (untouched for {idle:.0f}s: its "
                   "builder died).")
    _remove_stale_leftovers(folder)
    return True


def ensure_columnar_cache(json_file: str, cache_dir: Optional[str] = None,
                          wait_timeout_s: float = 6 * 3600.0) -> str:
    """The complete cache folder of ``json_file``, built now if missing.

    Safe with many processes (ranks of one or several machines sharing ``cache_dir``): one
    takes the lock file ``<folder>.lock`` and builds into a temporary folder that is renamed
    into place; the others wait for the folder. A lock left by a killed builder is taken over
    (by one waiter, which also removes the killed builder's temporary folder) once it has not
    been touched for 5 minutes.
    """
    folder = columnar_cache_folder(json_file, cache_dir)
    if _is_complete(folder):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    lock = folder + ".lock"
    host, pid = socket.gethostname(), os.getpid()
    token = f"{host} {pid} {host}-{pid}-{os.urandom(4).hex()}\n"
    waited_since = time.monotonic()
    last_log = 0.0
    while not _is_complete(folder):
        if not _create_lock(lock, token):
            waited = time.monotonic() - waited_since
            try:
                idle = time.time() - os.path.getmtime(lock)
            except FileNotFoundError:
                continue
            if idle > _STALE_LOCK_S:
                _take_over_stale_lock(lock, folder, token)
                continue
            if waited > wait_timeout_s:
                raise TimeoutError(
                    f"Waited {waited:.0f}s for another process to build the columnar cache "
                    f"{folder} of {json_file}; if no process is building it, delete {lock}.")
            if waited - last_log >= 60:
                last_log = waited
                logger.info(f"Waiting for the columnar cache {folder} (being built by the "
                            f"holder of {lock}).")
            time.sleep(0.5)
            continue
        try:
            if _is_complete(folder):
                break
            tmp = f"{folder}.tmp-{host}-{pid}"
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info(f"Building the columnar cache of {json_file} in {folder} (once).")
            try:
                meta = build_columnar_cache(json_file, tmp,
                                            heartbeat=lambda: _heartbeat(lock, token))
                try:
                    os.rename(tmp, folder)
                except OSError:
                    if not _is_complete(folder):
                        raise
                    shutil.rmtree(tmp, ignore_errors=True)  # another builder won the race
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            logger.info(f"Columnar cache of {json_file}: {meta['num_images']} images, "
                        f"{meta['num_annotations']} boxes in {meta['build_seconds']:.1f}s.")
        finally:
            if _read_lock(lock) == token:  # not a lock another process has taken over since
                try:
                    os.remove(lock)
                except FileNotFoundError:
                    pass
    return folder


# ----------------------------------------------------------------------------- reading
def _open_column(path: str) -> np.ndarray:
    arr = np.load(path, mmap_mode="r")
    # A zero-length memmap cannot be created on some platforms; an empty array costs nothing.
    return np.load(path) if arr.size == 0 else arr


class ColumnarDatasetDicts(Sequence):
    """A read-only sequence of detectron2 dataset dicts backed by a columnar cache folder.

    ``dicts[i]`` builds record ``i`` (a fresh dict, safe to modify) from memory-mapped arrays;
    nothing per image is held in Python. Slices give lists; pickling (to spawned workers)
    carries the folder path, not the data.

    Args:
        folder: a complete cache folder (:func:`ensure_columnar_cache`).
        image_root: joined with the json's ``file_name`` as ``load_coco_json`` does.
        to_registered: per category of the json (sorted by id), its registered contiguous id;
            default the json's own order.
        indices: optional subset (record numbers of the cache), in order.
    """

    def __init__(self, folder: str, image_root: str, to_registered: Optional[Sequence[int]] = None,
                 indices: Optional[np.ndarray] = None):
        self.folder = folder
        self.image_root = image_root
        self._open()
        if to_registered is None:
            to_registered = range(len(self.meta["category_ids"]))
        self.to_registered = np.asarray(to_registered, dtype=np.int64)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def _open(self):
        with open(os.path.join(self.folder, "meta.json")) as f:
            self.meta = json.load(f)
        for key in _COLUMNS:
            setattr(self, "_" + key, _open_column(os.path.join(self.folder, key + ".npy")))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_") and k != "meta"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self):
        return len(self._image_ids) if self.indices is None else len(self.indices)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        n = len(self)
        idx = int(idx)
        if idx < 0:
            idx += n
        if not 0 <= idx < n:
            raise IndexError(f"index {idx} out of range for {n} dataset dicts")
        i = idx if self.indices is None else int(self.indices[idx])
        a, b = int(self._ann_offsets[i]), int(self._ann_offsets[i + 1])
        s, e = int(self._file_name_offsets[i]), int(self._file_name_offsets[i + 1])
        annotations = []
        for box, cat, crowd in zip(self._boxes[a:b].tolist(),
                                   self.to_registered[self._category_index[a:b]].tolist(),
                                   self._iscrowd[a:b].tolist()):
            obj = {} if crowd == _NO_ISCROWD else {"iscrowd": crowd}
            obj["bbox"] = box
            obj["category_id"] = cat
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            annotations.append(obj)
        return {
            "file_name": os.path.join(self.image_root,
                                      bytes(self._file_name_bytes[s:e]).decode("utf-8")),
            "height": int(self._heights[i]),
            "width": int(self._widths[i]),
            "image_id": int(self._image_ids[i]),
            "annotations": annotations,
        }

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def subset(self, indices: np.ndarray) -> "ColumnarDatasetDicts":
        """The records ``indices`` (positions in this sequence), as a new sequence."""
        indices = np.asarray(indices, dtype=np.int64)
        base = indices if self.indices is None else self.indices[indices]
        return ColumnarDatasetDicts(self.folder, self.image_root, self.to_registered, base)

    def file_names(self) -> List[str]:
        """``file_name`` of every record, in order, without building the records."""
        names = bytes(self._file_name_bytes)
        offsets = self._file_name_offsets
        rows = range(len(self._image_ids)) if self.indices is None else self.indices.tolist()
        root = self.image_root
        return [os.path.join(root, names[offsets[i]:offsets[i + 1]].decode("utf-8"))
                for i in rows]

    def without_crowd_only_images(self) -> "ColumnarDatasetDicts":
        """detectron2's ``filter_images_with_only_crowd_annotations`` on the arrays: keeps the
        images with at least one annotation whose ``iscrowd`` is 0 or absent."""
        usable = (self._iscrowd == 0) | (self._iscrowd == _NO_ISCROWD)
        cumulative = np.concatenate([[0], np.cumsum(usable, dtype=np.int64)])
        per_image = cumulative[self._ann_offsets[1:]] - cumulative[self._ann_offsets[:-1]]
        rows = np.arange(len(self._image_ids)) if self.indices is None else self.indices
        keep = np.flatnonzero(per_image[rows] > 0)
        logger.info(f"Removed {len(self) - len(keep)} images with no usable annotations. "
                    f"{len(keep)} images left.")
        return self.subset(keep)


# ----------------------------------------------------------------------------- catalog glue
def load_columnar_box_dicts(name: str, json_file: str, image_root: str):
    """Dataset dicts of a registered box dataset through the cache, or ``None`` for the json
    path (cache not wanted by the registration / size, or the json holds what it cannot keep).

    Does what ``catalog._load_coco`` does after reading the json: deferred category metadata,
    registered-vs-json category check, mapping to the registered contiguous ids, a check that
    every image file exists.
    """
    from detectron2.data import MetadataCatalog

    from . import catalog

    meta = MetadataCatalog.get(name)
    if not use_columnar_cache(json_file, meta.get("dataseg_columnar_cache", None)):
        return None
    try:
        folder = ensure_columnar_cache(json_file, meta.get("dataseg_columnar_cache_dir", None))
    except ColumnarUnsupported as e:
        logger.warning(f"Dataset {name!r}: {json_file} cannot be cached in columns ({e}); "
                       "loading the json itself.")
        return None
    except json.JSONDecodeError as e:
        raise catalog.DatasetValidationError(
            f"Dataset {name!r}: COCO json {json_file!r} is not valid JSON ({e}); the file is "
            "probably truncated or was only partly downloaded. Download or extract it again."
        ) from e
    except KeyError as e:
        raise catalog.DatasetValidationError(
            f"Dataset {name!r}: {json_file!r} has an annotation whose category_id is not among "
            f"its categories ({e}). Fix the annotation or add the category to the json."
        ) from e
    except ValueError as e:  # repeated annotation ids, "ignore", empty bbox, no category_id
        raise catalog.DatasetValidationError(
            f"Dataset {name!r}: {json_file!r} is not a valid COCO json: {e} Fix the json."
        ) from e
    dicts = ColumnarDatasetDicts(folder, image_root)
    json_ids, json_names = dicts.meta["category_ids"], dicts.meta["category_names"]
    if not meta.get("dataseg_classes", None):
        catalog._set_metadata(name, **catalog._coco_category_metadata(json_names, json_ids),
                              **catalog.dataseg_metadata("box", json_names, None, None, "coco",
                                                         {}))
    id_map = catalog._registered_id_map(name, json_file)
    catalog._check_category_ids(name, json_file, list(id_map), json_ids, json_names)
    dicts = ColumnarDatasetDicts(folder, image_root, [id_map[c] for c in json_ids])
    if not len(dicts):
        raise catalog.DatasetValidationError(f"Dataset {name!r}: {json_file!r} has no images.")
    catalog.require_files(dicts.file_names(), "image", name, catalog._hint(meta.as_dict()))
    return dicts


def is_columnar(dicts) -> bool:
    """Whether ``dicts`` is a :class:`ColumnarDatasetDicts` (kept lazy by the loaders)."""
    return isinstance(dicts, ColumnarDatasetDicts)
