"""A compact, memory-mapped cache of large COCO box jsons (Objects365-sized datasets).

Why: detectron2's ``load_coco_json`` holds the whole parsed json, pycocotools' index and one
Python dict per image and per box at once. For Objects365 v2 train (1.7 M images, 25 M boxes)
that is tens of GB in every training process. The cache turns the json, once, into a folder of
flat numpy arrays; every rank and every data-loader worker then memory-maps the same files
(the operating system keeps one copy in its page cache), and
:class:`ColumnarDatasetDicts` builds one detectron2 dataset dict at a time, on ``__getitem__``.

The dicts are those of the json path, key for key and value for value (``file_name``,
``height``, ``width``, ``image_id``, ``annotations`` with ``iscrowd``, ``bbox``,
``category_id`` contiguous in the json's order of ids, or the order given as
``to_registered``, ``bbox_mode``); the mappers see no difference. Only box supervision is
cached (no ``segmentation`` nor ``keypoints``): it is used for box datasets registered without
held-out masks (``register_box_dataset``, whose loader in ``dataseg.data.catalog`` decides when
to use the cache and checks the result against the registration as it does the json path's).

Building streams through the json (``dataseg.data.json_stream.JsonStream``, one image /
annotation at a time) so the builder itself needs memory for the arrays only, never for the
parsed json.

Layout of a cache folder (``<cache dir>/<json stem>-<key>/``, the key hashing the json's path,
size and modification time, so an edited json gets a new cache): ``meta.json`` (format,
source, categories, counts) and one ``.npy`` per column. A folder appears complete or not at
all, and one process builds it while the others wait (``dataseg.data.file_lock``).
"""

import array
import hashlib
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from detectron2.structures import BoxMode

from .file_lock import build_folder_once
from .json_stream import JsonStream

__all__ = [
    "COLUMNAR_MIN_JSON_BYTES",
    "ColumnarDatasetDicts",
    "ColumnarUnsupported",
    "RepeatedImageIds",
    "build_columnar_cache",
    "columnar_cache_folder",
    "default_columnar_cache_dir",
    "ensure_columnar_cache",
    "is_columnar",
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
_HEARTBEAT_EVERY = 100_000  # json elements between lock touches
_NO_ISCROWD = -1  # iscrowd column value of an annotation without the key

_COLUMNS = ("image_ids", "heights", "widths", "file_name_bytes", "file_name_offsets",
            "ann_offsets", "boxes", "category_index", "iscrowd")


class ColumnarUnsupported(ValueError):
    """The json holds something the cache does not represent (the plain json path is used)."""


class RepeatedImageIds(ValueError):
    """Several images of the json share an id (pycocotools would keep one of them and hand it
    the others' annotations).

    ``images`` lists every image whose id is repeated, as ``{"id", "file_name"}`` dicts in the
    json's order: what ``dataseg.data.catalog.check_unique_image_ids`` takes, so that the
    loader reports it with the json path's message.
    """

    def __init__(self, json_file: str, images: List[Dict]):
        ids = sorted({image["id"] for image in images})
        super().__init__(f"repeated image ids in {json_file!r}: {ids[:10]}")
        self.images = images


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
        RepeatedImageIds: an image id given to several images (a ValueError).
        json.JSONDecodeError, KeyError, ValueError: an invalid json (callers turn these into
            actionable messages). An annotation without ``category_id`` is a ValueError when the
            json has categories (the json path fails on it too: pycocotools indexes every
            annotation by ``category_id``).
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
        for key, value, is_element in JsonStream(f):
            num_elements += 1
            if heartbeat is not None and num_elements % _HEARTBEAT_EVERY == 0:
                heartbeat()
            if not is_element:
                if key == "categories":
                    categories = value
                elif key in JsonStream.STREAMED and value:
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
        raise RepeatedImageIds(json_file, _repeated_images(img_ids, sorted_ids[counts > 1],
                                                           names, name_offsets))
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


def _repeated_images(img_ids: np.ndarray, repeated: np.ndarray, names: bytearray,
                     name_offsets) -> List[Dict]:
    """The images whose id is one of ``repeated``, in the json's order (``id``,
    ``file_name``)."""
    rows = np.flatnonzero(np.isin(img_ids, repeated))
    return [{"id": int(img_ids[r]),
             "file_name": bytes(names[name_offsets[r]:name_offsets[r + 1]]).decode("utf-8")}
            for r in rows]


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "meta.json"))


def ensure_columnar_cache(json_file: str, cache_dir: Optional[str] = None,
                          wait_timeout_s: float = 6 * 3600.0) -> str:
    """The complete cache folder of ``json_file``, built now if missing.

    Safe with many processes (ranks of one or several machines sharing ``cache_dir``): one
    takes the lock file ``<folder>.lock`` and builds into a temporary folder that is renamed
    into place; the others wait for the folder. A lock left by a killed builder is taken over
    (by one waiter, which also removes the killed builder's temporary folder) once it has not
    been touched for 5 minutes (``dataseg.data.file_lock``).
    """
    folder = columnar_cache_folder(json_file, cache_dir)

    def build(tmp: str, keep_alive):
        logger.info(f"Building the columnar cache of {json_file} in {folder} (once).")
        meta = build_columnar_cache(json_file, tmp, heartbeat=keep_alive)
        logger.info(f"Columnar cache of {json_file}: {meta['num_images']} images, "
                    f"{meta['num_annotations']} boxes in {meta['build_seconds']:.1f}s.")

    build_folder_once(folder, build, _is_complete, f"the columnar cache {folder} of {json_file}",
                      wait_timeout_s)
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
        self.map_categories(range(len(self.meta["category_ids"])) if to_registered is None
                            else to_registered)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def map_categories(self, to_registered: Sequence[int]) -> None:
        """Give annotations the registered contiguous id of their json category from now on:
        ``to_registered`` holds it per category of the json (sorted by id)."""
        self.to_registered = np.asarray(to_registered, dtype=np.int64)

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


def is_columnar(dicts) -> bool:
    """Whether ``dicts`` is a :class:`ColumnarDatasetDicts` (kept lazy by the loaders)."""
    return isinstance(dicts, ColumnarDatasetDicts)
