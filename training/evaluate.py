"""Evaluate an encoder: retrieval and few-shot accuracy, with pictures.

    python -m training.evaluate --checkpoint models/checkpoints/default.pt \\
        --data ../shared/data/grocery/test --gallery ../shared/data/grocery/train \\
        --json eval.json --grid grid.png --plot tsne.png

``--checkpoint imagenet`` evaluates the backbone's ImageNet features with no triplet
training: the baseline every result is compared with.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
from pathlib import Path

import numpy as np

from models.base import DEFAULT_CHECKPOINT, IMAGENET
from models.checkpoint import load_checkpoint, with_gallery_views
from models.preprocessing import GALLERY_VIEWS
from models.runtimes.eager import resolve_device
from models.runtimes.factory import open_embedder
from training.data import ImageFolder, class_list, scan_image_folder
from training.embedding import default_workers, embed_folder_cached
from training.metrics import fewshot_accuracy, retrieval_metrics
from training.plots import embedding_map, retrieval_grid
from training.results import write_json

log = logging.getLogger("training.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                   help=f"checkpoint path, or '{IMAGENET}' for the untrained baseline")
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="one or more <dir>/<class>/* trees (merged by class name)")
    p.add_argument("--gallery", type=Path, nargs="+",
                   help="retrieve --data queries against this gallery instead of leave-one-out")
    p.add_argument("--classes", type=class_list, help="comma-separated subset of classes")
    p.add_argument("--exclude-classes", type=class_list,
                   help="comma-separated classes to leave out")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", default="1,5", help="comma-separated K values for K-shot")
    p.add_argument("--queries", type=int, default=10, help="queries per class per episode")
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the metrics here")
    p.add_argument("--grid", type=Path, help="write the top-5 picture here (PNG)")
    p.add_argument("--grid-rows", type=int, default=6)
    p.add_argument("--plot", type=Path, help="write a 2-D embedding map here (PNG)")
    p.add_argument("--plot-method", choices=["tsne", "pca"], default="tsne")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="onnx: ONNX Runtime, ~3x faster on CPU (cosine > 0.999 to torch)")
    p.add_argument("--cache", type=Path,
                   help="folder for per-image embedding caches, reused across runs")
    p.add_argument("--image-size", type=int,
                   help="test-time input size instead of the checkpoint's (e.g. to compare "
                        "an encoder and imagenet at one size)")
    p.add_argument("--gallery-views", type=int, choices=GALLERY_VIEWS,
                   help="embed the gallery and the few-shot supports as the mean of this "
                        "many views instead of the checkpoint's (2: also the mirror image)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=default_workers())
    return p.parse_args(argv)


def evaluate(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device, image_size=args.image_size)
    if args.gallery_views is not None:
        loaded = with_gallery_views(loaded, args.gallery_views)
    embedder = open_embedder(loaded, args.runtime, str(device),
                             cache_dir=args.cache or Path(tempfile.gettempdir())).embedder

    def embed(folder: ImageFolder, desc: str, gallery: bool = False) -> np.ndarray:
        """Queries, or (``gallery``) photos as the service's gallery stores them."""
        return embed_folder_cached(embedder, folder, args.cache, loaded.fingerprint,
                                   gallery=gallery, batch_size=args.batch_size,
                                   workers=args.workers, desc=desc)

    include, exclude = args.classes, args.exclude_classes
    data = scan_image_folder(args.data, include=include, exclude=exclude)
    emb = embed(data, "embedding data")
    labels = np.asarray(data.labels)

    gallery: ImageFolder | None = None
    if args.gallery:
        gallery = scan_image_folder(args.gallery, include=include, exclude=exclude)
        g_emb = embed(gallery, "embedding gallery", gallery=True)
        # Compare by class name: the two folders may hold different class lists.
        g_labels = np.asarray([data.classes.index(gallery.classes[s.label])
                               if gallery.classes[s.label] in data.classes else -1
                               for s in gallery.samples])
        retrieval = retrieval_metrics(emb, labels, g_emb, g_labels)
    else:
        g_emb, g_labels = emb, labels
        retrieval = retrieval_metrics(emb, labels)

    # Supports are enrolled photos: embedded as the gallery stores them.
    supports = (embed(data, "embedding supports", gallery=True)
                if embedder.preprocessing.gallery_views > 1 else emb)
    fewshot = {}
    for shot in [int(s) for s in args.shots.split(",")]:
        name = f"{args.ways}-way-{shot}-shot"
        try:
            fewshot[name] = fewshot_accuracy(emb, labels, args.ways, shot, args.queries,
                                             args.episodes, args.seed, supports)
        except ValueError as exc:
            log.warning("%s skipped: %s", name, exc)
    result = {
        "retrieval": retrieval,
        "fewshot": fewshot,
        "n_images": len(data),
        "n_classes": len(data.classes),
        "n_gallery_images": len(gallery) if gallery else None,
        "checkpoint": str(args.checkpoint),
        "image_size": loaded.meta.preprocessing.image_size,
        "gallery_views": loaded.meta.preprocessing.gallery_views,
        "data": [str(d) for d in args.data],
        "gallery": [str(g) for g in args.gallery] if args.gallery else None,
    }
    if args.grid:
        _draw_grid(args, data, emb, gallery or data, g_emb)
    if args.plot:
        embedding_map(args.plot, emb, labels, data.classes, args.plot_method,
                      title=f"{Path(str(args.checkpoint)).name}: {len(data.classes)} classes")
    return result


def _draw_grid(args: argparse.Namespace, data: ImageFolder, emb: np.ndarray,
               gallery: ImageFolder, g_emb: np.ndarray) -> None:
    rng = random.Random(args.seed)
    picks = rng.sample(range(len(data)), min(args.grid_rows, len(data)))
    rows = []
    for q in picks:
        scores = g_emb @ emb[q]
        if gallery is data:
            scores[q] = -np.inf  # leave-one-out: never show the query itself
        top = np.argsort(-scores)[:5]
        rows.append([(gallery.samples[i].path, gallery.classes[gallery.samples[i].label],
                      float(scores[i])) for i in top])
    retrieval_grid(args.grid, [data.samples[q].path for q in picks],
                   [data.classes[data.samples[q].label] for q in picks], rows)


def format_table(result: dict) -> str:
    r = result["retrieval"]
    lines = [
        f"checkpoint: {result['checkpoint']}",
        f"images: {result['n_images']} in {result['n_classes']} classes"
        + (f"; gallery {result['n_gallery_images']}" if result["n_gallery_images"] else ""),
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {r[k]:.4f} |" for k in ("recall@1", "recall@5", "precision@5", "map@r")),
        *(f"| {name} accuracy | {v['accuracy']:.4f} ± {v['ci95']:.4f} |"
          for name, v in result["fewshot"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    result = evaluate(args)
    print(format_table(result))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
