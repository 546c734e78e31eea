"""Time embedding the three paper vocabularies with MiniLM: cold (empty cache, model load
included) vs cached (a NEW provider reading the cache; the text model must not load).

    python benchmarks/text_embedding_bench.py [--templates imagenet_short] [--threads 2]

Vocabularies: COCO panoptic (133) and ADE20k (150) from detectron2's builtin_meta, and the
365 Objects365 v2 names from dataseg/data/vocabularies/objects365_v2.txt when that file exists
(else 365 synthetic object names, flagged in the output).
"""

import argparse
import itertools
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

O365_FILE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "dataseg",
    "data",
    "vocabularies",
    "objects365_v2.txt",
)


def objects365_names():
    if os.path.isfile(O365_FILE):
        with open(O365_FILE, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        return names, "objects365_v2.txt"
    # Stand-in of the same size: realistic "adjective noun" object names.
    adjectives = [
        "red",
        "small",
        "wooden",
        "plastic",
        "metal",
        "electric",
        "glass",
        "paper",
        "leather",
        "folding",
        "round",
        "toy",
        "kitchen",
        "office",
        "garden",
    ]
    nouns = [
        "chair",
        "lamp",
        "bottle",
        "cup",
        "box",
        "bag",
        "knife",
        "basket",
        "clock",
        "bucket",
        "brush",
        "fan",
        "scissors",
        "mirror",
        "tray",
        "kettle",
        "ladder",
        "stool",
        "vase",
        "hanger",
        "helmet",
        "drum",
        "trolley",
        "pillow",
        "speaker",
    ]
    names = [f"{a} {n}" for a, n in itertools.product(adjectives, nouns)][:365]
    return names, "synthetic (objects365_v2.txt not found)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--templates", default="imagenet_short")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES, COCO_CATEGORIES

    from dataseg.text import TextEmbeddingProvider
    from dataseg.text.templates import get_templates

    o365, o365_source = objects365_names()
    vocabs = {
        "coco_panoptic": [c["name"] for c in COCO_CATEGORIES],
        "ade20k": list(ADE20K_SEM_SEG_CATEGORIES),
        "objects365": o365,
    }
    n_templates = len(get_templates(args.templates))
    print(
        "vocabularies: "
        + ", ".join(f"{k} {len(v)}" for k, v in vocabs.items())
        + f"  (objects365 names: {o365_source})"
    )
    print(f"templates: {args.templates} ({n_templates}), torch threads: {args.threads}")

    with tempfile.TemporaryDirectory() as cache_dir:

        def provider():
            return TextEmbeddingProvider(
                encoder_name="MiniLM", templates=args.templates, cache_dir=cache_dir
            )

        cold_provider = provider()
        start = time.perf_counter()
        cold_provider.encoder  # noqa: B018  (import + load the model; timed separately)
        load_s = time.perf_counter() - start
        cold = {k: cold_provider.embed_classes(v) for k, v in vocabs.items()}
        cold_s = time.perf_counter() - start

        cached_provider = provider()
        start = time.perf_counter()
        cached = {k: cached_provider.embed_classes(v) for k, v in vocabs.items()}
        cached_s = time.perf_counter() - start

    prompts = sum(len(n.split(",")) for v in vocabs.values() for n in v) * n_templates
    assert all(torch.equal(cold[k], cached[k]) for k in vocabs)
    assert not cached_provider.encoder_loaded
    print(
        f"cold   (empty cache, incl. model load): {cold_s:7.2f} s   "
        f"[model import+load {load_s:.2f} s, {prompts} prompts {cold_s - load_s:.2f} s]"
    )
    print(f"cached (new provider, model not loaded): {cached_s:7.3f} s")
    print(f"speed-up: {cold_s / cached_s:.0f}x")


if __name__ == "__main__":
    main()
