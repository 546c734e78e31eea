"""Registering + loading Objects365-sized COCO box jsons: the json path vs the columnar cache.

Generates an Objects365-v2-like box json (same fields, ~14.6 boxes per image, 365 categories)
at fractions of the real train set (1.74 M images, 25.4 M boxes), once, under ``--out``; then
measures, each in a fresh process (peak memory is the process's ``VmHWM``; "dataset" memory
is that minus the process's size right after its imports):

* ``json``: ``register_box_dataset`` + ``DatasetCatalog.get`` + detectron2's ``DatasetFromList``
  (what every rank holds on the plain path);
* ``build``: building the columnar cache (once per json, by one process);
* ``cached``: register + get through the cache + the empty-image filter, then reading every
  dataset dict once (what every rank and loader worker does on the cached path). Its private
  (anonymous) memory is what each process pays; the memory-mapped columns are shared page cache.

Full-size figures are a least-squares line through the measured sizes, evaluated at 25.4 M
boxes. Targets are printed as measured / target.

    python benchmarks/annotation_scale_bench.py [--fractions 0.01 0.05 0.1] [--out output/...]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from any directory
    sys.path.insert(0, ROOT)

FULL_IMAGES = 1_742_289  # Objects365 v2 train
FULL_BOXES = 25_400_000
BOXES_PER_IMAGE = FULL_BOXES / FULL_IMAGES
NUM_CATEGORIES = 365
# Targets (per training process unless noted).
TARGET_CACHED_PRIVATE_GB = 1.0  # dataset memory of each rank / worker on the cached path
TARGET_CACHED_LOAD_S = 30.0  # register + load + filter per rank, cache built
TARGET_BUILD_PEAK_GB = 8.0  # the one-time build, one process
SPOT_CHECKS = 2000


# ----------------------------------------------------------------------------- generation
def generate_json(path: str, num_images: int, seed: int = 0):
    """Write an Objects365-like box json with ``num_images`` images (atomically)."""
    from dataseg.utils.atomic_file import atomic_write

    rng = np.random.default_rng(seed)
    counts = rng.poisson(BOXES_PER_IMAGE - 1, num_images) + 1
    heights = rng.integers(300, 1025, num_images)
    widths = rng.integers(300, 1025, num_images)
    # Images listed in a shuffled order, as merged dataset dumps often are.
    order = rng.permutation(num_images)

    def write(f):
        f.write(b'{"images": [')
        for k, i in enumerate(order):
            f.write((", " if k else "").encode() + (
                f'{{"height": {heights[i]}, "id": {i + 1}, "license": 5, "width": {widths[i]}, '
                f'"file_name": "images/v2/patch{i % 51}/objects365_v2_{i + 1:08d}.jpg", '
                f'"url": ""}}').encode())
        f.write(b'], "annotations": [')
        ann_id, first = 1, True
        chunk = 20_000
        for lo in range(0, num_images, chunk):
            idx = np.arange(lo, min(num_images, lo + chunk))
            image_of_box = np.repeat(idx, counts[idx])
            n = len(image_of_box)
            w = rng.uniform(0.02, 0.6, n) * widths[image_of_box]
            h = rng.uniform(0.02, 0.6, n) * heights[image_of_box]
            x = rng.uniform(0, 1, n) * (widths[image_of_box] - w)
            y = rng.uniform(0, 1, n) * (heights[image_of_box] - h)
            cats = rng.integers(1, NUM_CATEGORIES + 1, n)
            crowd = (rng.uniform(0, 1, n) < 0.01).astype(int)
            parts = []
            for j in range(n):
                parts.append(
                    f'{{"id": {ann_id + j}, "iscrowd": {crowd[j]}, "isfake": 0, '
                    f'"area": {w[j] * h[j]:.4f}, "isreflected": 0, "bbox": [{x[j]:.4f}, '
                    f'{y[j]:.4f}, {w[j]:.4f}, {h[j]:.4f}], "image_id": {image_of_box[j] + 1}, '
                    f'"category_id": {cats[j]}}}')
            ann_id += n
            f.write(((", " if not first else "") + ", ".join(parts)).encode())
            first = False
        cats = [{"name": f"class {c}", "id": c} for c in range(1, NUM_CATEGORIES + 1)]
        f.write(('], "categories": ' + json.dumps(cats) + ', "licenses": []}').encode())

    atomic_write(path, write)
    return int(counts.sum())


def _image_root(out: str) -> str:
    # The loader checks the first 8 image files (by image id) exist; their content is unused.
    root = os.path.join(out, "images")
    for i in range(1, 9):
        p = os.path.join(root, f"images/v2/patch{(i - 1) % 51}/objects365_v2_{i:08d}.jpg")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "ab").close()
    return root


# ----------------------------------------------------------------------------- children
def _proc_status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) / 2 ** 20  # GB
    return fields


def _peak_gb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking parent (this
    # script, after generating a json), which would floor every child's peak at its size.
    return _proc_status()["VmHWM"]


def child(mode: str, json_file: str, image_root: str, cache_dir: str):
    from detectron2.data import DatasetCatalog
    from detectron2.data.build import filter_images_with_only_crowd_annotations
    from detectron2.data.common import DatasetFromList

    import dataseg.data  # noqa: F401  (builtin registrations, as in training)
    from dataseg.data import register_box_dataset
    from dataseg.data.columnar import ensure_columnar_cache

    base = _proc_status()
    result = {"base_gb": base["VmRSS"], "base_anon_gb": base["RssAnon"],
              "base_file_gb": base["RssFile"]}
    start = time.perf_counter()
    if mode == "build":
        ensure_columnar_cache(json_file, cache_dir)
        result["seconds"] = time.perf_counter() - start
    elif mode == "json":
        register_box_dataset("bench_scale", json_file, image_root, columnar_cache=False)
        dicts = filter_images_with_only_crowd_annotations(DatasetCatalog.get("bench_scale"))
        dataset = DatasetFromList(dicts, copy=False)
        del dicts
        result["seconds"] = time.perf_counter() - start
        result["len"] = len(dataset)
    elif mode == "cached":
        register_box_dataset("bench_scale", json_file, image_root, columnar_cache=True,
                             columnar_cache_dir=cache_dir)
        dataset = DatasetCatalog.get("bench_scale").without_crowd_only_images()
        result["seconds"] = time.perf_counter() - start
        result["len"] = len(dataset)
        t = time.perf_counter()
        boxes = sum(len(d["annotations"]) for d in dataset)
        result["read_all_seconds"] = time.perf_counter() - t
        result["boxes"] = boxes
    elif mode == "check":  # the cache's dicts equal the json path's on a random sample
        register_box_dataset("bench_json", json_file, image_root, columnar_cache=False)
        register_box_dataset("bench_cols", json_file, image_root, columnar_cache=True,
                             columnar_cache_dir=cache_dir)
        want, have = DatasetCatalog.get("bench_json"), DatasetCatalog.get("bench_cols")
        picks = np.random.default_rng(0).choice(len(want), min(SPOT_CHECKS, len(want)),
                                                replace=False)
        result["equal"] = int(sum(want[i] == have[i] for i in picks)) if len(want) == len(
            have) else 0
        result["checked"] = len(picks)
    status = _proc_status()
    result.update(peak_gb=_peak_gb(), rss_gb=status["VmRSS"], anon_gb=status["RssAnon"],
                  file_gb=status["RssFile"])
    print("RESULT " + json.dumps(result), flush=True)


def run_child(mode, json_file, image_root, cache_dir):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--json", json_file,
           "--image-root", image_root, "--cache-dir", cache_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-3000:]}")


def _fit(x, y, at):
    """Least-squares line through (x, y) at ``at``; a flat (noise-dominated) series whose
    slope comes out negative is reported as its largest measurement instead."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return slope * at + intercept if slope > 0 else float(max(y))


def _private(r):  # anonymous memory the process added (its own copy, not shareable)
    return max(0.0, r["anon_gb"] - r["base_anon_gb"])


def _mapped(r):  # file-backed pages the process added: the cache's columns (page cache)
    return max(0.0, r["file_gb"] - r["base_file_gb"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    parser.add_argument("--out", default=os.path.join(ROOT, "output", "annotation_scale"))
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="", help=argparse.SUPPRESS)
    parser.add_argument("--image-root", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.json, args.image_root, args.cache_dir)

    os.makedirs(args.out, exist_ok=True)
    image_root = _image_root(args.out)
    rows = []
    for fraction in args.fractions:
        num_images = int(round(FULL_IMAGES * fraction))
        json_file = os.path.join(args.out, f"o365_like_{num_images}.json")
        if not os.path.isfile(json_file):
            t = time.perf_counter()
            generate_json(json_file, num_images)
            print(f"generated {json_file} in {time.perf_counter() - t:.0f}s", flush=True)
        cache_dir = os.path.join(args.out, f"cache_{num_images}")
        shutil.rmtree(cache_dir, ignore_errors=True)  # measure a cold build
        row = {"fraction": fraction, "images": num_images,
               "json_gb": os.path.getsize(json_file) / 2 ** 30}
        for mode in ("json", "build", "cached"):
            row[mode] = run_child(mode, json_file, image_root, cache_dir)
            print(f"  {fraction:5.0%} {mode:>6s}: {row[mode]}", flush=True)
        row["boxes"] = row["cached"]["boxes"]
        if fraction == min(args.fractions):
            row["check"] = run_child("check", json_file, image_root, cache_dir)
        rows.append(row)

    print()
    print("| size | images | boxes | json GB | json path: s / peak GB / dataset GB | "
          "cache build: s / peak GB | cached: s / private dataset GB / shared mapped GB | "
          "read all dicts s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        j, b, c = r["json"], r["build"], r["cached"]
        print(f"| {r['fraction']:.0%} | {r['images']} | {r['boxes']} | {r['json_gb']:.2f} | "
              f"{j['seconds']:.1f} / {j['peak_gb']:.2f} / {j['peak_gb'] - j['base_gb']:.2f} | "
              f"{b['seconds']:.1f} / {b['peak_gb']:.2f} | "
              f"{c['seconds']:.2f} / {_private(c):.3f} / "
              f"{_mapped(c):.2f} | {c['read_all_seconds']:.1f} |")
    for r in rows:
        if "check" in r:
            ch = r["check"]
            print(f"spot check at {r['fraction']:.0%}: {ch['equal']}/{ch['checked']} cached "
                  "dicts equal the json path's")

    boxes = [r["boxes"] for r in rows]

    def full(fn):
        return _fit(boxes, [fn(r) for r in rows], FULL_BOXES)

    json_peak = full(lambda r: r["json"]["peak_gb"] - r["json"]["base_gb"])
    json_s = full(lambda r: r["json"]["seconds"])
    build_peak = full(lambda r: r["build"]["peak_gb"])
    build_s = full(lambda r: r["build"]["seconds"])
    cached_private = full(lambda r: _private(r["cached"]))
    cached_s = full(lambda r: r["cached"]["seconds"])
    mapped = full(lambda r: _mapped(r["cached"]))
    print()
    print(f"extrapolated to Objects365 v2 train ({FULL_IMAGES} images, {FULL_BOXES} boxes), "
          "linear in boxes:")
    print(f"  json path, every rank:          {json_s:7.0f} s, {json_peak:6.1f} GB dataset "
          "memory at peak (times ranks per machine)")
    print(f"  cache build, once:              {build_s:7.0f} s, {build_peak:6.1f} GB peak")
    print(f"  cached, every rank and worker:  {cached_s:7.1f} s, {cached_private:6.3f} GB "
          f"private; {mapped:.1f} GB of columns mapped, shared by all processes of a machine")
    print()
    print("targets (measured / target):")
    print(f"  cached private dataset memory per process at full size: "
          f"{cached_private:.3f} / {TARGET_CACHED_PRIVATE_GB:.1f} GB "
          f"{'OK' if cached_private <= TARGET_CACHED_PRIVATE_GB else 'MISSED'}")
    print(f"  cached register + load per rank at full size: {cached_s:.1f} / "
          f"{TARGET_CACHED_LOAD_S:.0f} s {'OK' if cached_s <= TARGET_CACHED_LOAD_S else 'MISSED'}")
    build_ok = build_peak <= TARGET_BUILD_PEAK_GB
    print(f"  one-time cache build peak memory at full size: {build_peak:.1f} / "
          f"{TARGET_BUILD_PEAK_GB:.0f} GB {'OK' if build_ok else 'MISSED'}")
    checks = [r["check"] for r in rows if "check" in r]
    if checks:
        ch = checks[0]
        print(f"  cached dicts equal to the json path's (spot check): {ch['equal']} / "
              f"{ch['checked']} {'OK' if ch['equal'] == ch['checked'] else 'MISSED'}")


if __name__ == "__main__":
    main()
