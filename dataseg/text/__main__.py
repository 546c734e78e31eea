"""Precompute vocabulary text embeddings and show which classes of different datasets are close.

Examples::

    python -m dataseg.text --encoder MiniLM --datasets coco_2017_val_panoptic ade20k_sem_seg_val
    python -m dataseg.text --encoder MiniLM --classes "cilantro,truck" \\
        --classes "coriander;lorry, truck"
    python -m dataseg.text --config-file configs/x.yaml --datasets ... --output vocab.pt \\
        MODEL.DATASEG.TEXT.TEMPLATES single

``--classes`` takes one vocabulary per flag; classes are separated by ";" when the string holds
one (so commas stay synonym separators), else by ",". ``--output`` writes a file the
``Precomputed`` encoder reads (MODEL.DATASEG.TEXT.PRECOMPUTED_PATH): every distinct class with
its (synonym-averaged) embedding, plus the vocabularies and the encoder identity.
"""

import argparse
import logging
import sys
from typing import Dict, List, Optional, Sequence

import torch

from .vocabulary import parse_classes

__all__ = ["main", "parse_classes", "nearest_classes"]


def nearest_classes(
    vocabularies: Dict[str, List[str]], embeddings: Dict[str, torch.Tensor], topk: int
) -> Dict[str, List[tuple]]:
    """For every class, its ``topk`` most similar classes of the OTHER vocabularies (or of its
    own vocabulary, excluding itself, when only one is given).

    Returns:
        ``{"vocab/class": [(score, "other_vocab/class"), ...]}`` best first.
    """
    names = list(vocabularies)
    labels = [(v, c) for v in names for c in vocabularies[v]]
    emb = torch.cat([embeddings[v] for v in names], dim=0)
    owner = torch.tensor([i for i, v in enumerate(names) for _ in vocabularies[v]])
    sims = emb @ emb.t()
    if len(names) > 1:
        sims.masked_fill_(owner[:, None] == owner[None, :], float("-inf"))
    else:
        sims.fill_diagonal_(float("-inf"))
    result = {}
    k = min(topk, sims.shape[1])
    if k <= 0:
        return result
    scores, idx = sims.topk(k, dim=1)
    for row, (v, c) in enumerate(labels):
        result[f"{v}/{c}"] = [
            (float(s), f"{labels[j][0]}/{labels[j][1]}")
            for s, j in zip(scores[row].tolist(), idx[row].tolist())
            if s != float("-inf")  # fewer candidates than k (own vocabulary masked out)
        ]
    return result


def _build_cfg(args):
    from detectron2.config import get_cfg

    from ..config import add_dataseg_config

    cfg = add_dataseg_config(get_cfg())
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.encoder:
        cfg.MODEL.DATASEG.TEXT.ENCODER = args.encoder
    if args.templates:
        cfg.MODEL.DATASEG.TEXT.TEMPLATES = args.templates
    if args.cache_dir:
        cfg.MODEL.DATASEG.TEXT.CACHE_DIR = args.cache_dir
    return cfg


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataseg.text",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", default="", help="DaTaSeg yaml config (MODEL.DATASEG.TEXT.*)")
    p.add_argument("--encoder", default="", help="override MODEL.DATASEG.TEXT.ENCODER, e.g. MiniLM")
    p.add_argument("--templates", default="", help="override MODEL.DATASEG.TEXT.TEMPLATES")
    p.add_argument("--cache-dir", default="", help="override MODEL.DATASEG.TEXT.CACHE_DIR")
    p.add_argument(
        "--datasets", nargs="*", default=[], help="names in detectron2's MetadataCatalog"
    )
    p.add_argument(
        "--classes", action="append", default=[], help='a vocabulary: "a,b,c" or "a, syn;b"'
    )
    p.add_argument("--topk", type=int, default=3, help="nearest classes to print per class")
    p.add_argument("--output", default="", help="save embeddings to this .pt file")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import dataseg  # noqa: F401  (registers the DaTaSeg datasets in MetadataCatalog)

    from .provider import build_text_embedding_provider
    from .vocabulary import class_name_warning, dataset_class_names

    vocabularies: Dict[str, List[str]] = {d: dataset_class_names(d) for d in args.datasets}
    for i, spec in enumerate(args.classes):
        vocabularies[f"classes{i}" if len(args.classes) > 1 else "classes"] = parse_classes(spec)
    if not vocabularies:
        get_parser().error("give --datasets and/or --classes")
    for v, names in vocabularies.items():
        for name in names:
            warning = class_name_warning(name)
            if warning:
                logging.getLogger("dataseg.text").warning(f"{v}: {warning}")

    provider = build_text_embedding_provider(_build_cfg(args))
    embeddings = {v: provider.embed_classes(names) for v, names in vocabularies.items()}
    print(
        f"encoder: {provider.info.identity}  dim: {provider.text_dim}  "
        f"templates: {len(provider.templates)}  (text model loaded: {provider.encoder_loaded})"
    )
    for v, names in vocabularies.items():
        print(f"  {v}: {len(names)} classes")

    if args.topk > 0:
        print(f"\nnearest classes (cosine, top {args.topk}):")
        for label, neighbours in nearest_classes(vocabularies, embeddings, args.topk).items():
            print(f"  {label:40s} -> " + ", ".join(f"{n} ({s:.2f})" for s, n in neighbours))

    if args.output:
        # One row per distinct class so the Precomputed encoder can look names up directly.
        rows: Dict[str, torch.Tensor] = {}
        for v, names in vocabularies.items():
            for name, row in zip(names, embeddings[v]):
                rows.setdefault(name, row)
        torch.save(
            {
                "class_names": list(rows),
                "embeddings": torch.stack(list(rows.values())),
                "vocabularies": vocabularies,
                "encoder": provider.info.identity,
                "templates": list(provider.templates),
            },
            args.output,
        )
        print(f"\nsaved {len(rows)} class embeddings to {args.output}")
    return embeddings


if __name__ == "__main__":
    main(sys.argv[1:])
