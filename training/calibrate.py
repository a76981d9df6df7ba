"""Choose the service's ``CLASSIFY_THRESHOLD`` from validation data.

    python -m training.calibrate --checkpoint runs/heldout.pt \\
        --gallery ../shared/data/grocery/train --queries ../shared/data/grocery/test \\
        --unknown-classes Lemon,Asparagus,...

Gallery photos of the known classes form the prototypes (normalised mean embedding per
class, as ``/classify`` does). Query photos of known classes should be accepted (best score
at or above the threshold), photos of the unknown classes - which the encoder never saw and
the gallery doesn't hold - rejected. The threshold maximises balanced accuracy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.checkpoint import load_checkpoint
from models.prototypes import prototypes
from models.runtimes.factory import open_embedder
from training.data import class_list, scan_image_folder
from training.embedding import embed_folder_cached
from training.results import write_json


def choose_threshold(known: np.ndarray, unknown: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy): accept scores >= threshold. Candidates are midpoints
    between neighbouring observed scores."""
    scores = np.unique(np.concatenate([known, unknown]))
    candidates = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2,
                                 [scores[-1] + 1e-6]])
    accept_known = (known[None, :] >= candidates[:, None]).mean(1)
    reject_unknown = (unknown[None, :] < candidates[:, None]).mean(1)
    balanced = (accept_known + reject_unknown) / 2
    best = int(np.argmax(balanced))
    return float(candidates[best]), float(balanced[best])


def best_prototype_scores(queries: np.ndarray, gallery: np.ndarray,
                          gallery_labels: np.ndarray) -> np.ndarray:
    classes = np.unique(gallery_labels)
    sums = np.stack([gallery[gallery_labels == c].sum(0) for c in classes])
    return (queries @ prototypes(sums).T).max(1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--gallery", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--unknown-classes", type=class_list, required=True,
                   help="comma-separated")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--cache", type=Path)
    p.add_argument("--image-size", type=int, help="test-time input size instead of the "
                   "checkpoint's (calibrate at the size the service will run)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    unknown = args.unknown_classes
    loaded = load_checkpoint(args.checkpoint, image_size=args.image_size)
    embedder = open_embedder(loaded, args.runtime, "cpu", cache_dir=args.cache).embedder

    def embed(folder):
        return embed_folder_cached(embedder, folder, args.cache, loaded.fingerprint)

    gallery = scan_image_folder(args.gallery, exclude=unknown)
    known_q = scan_image_folder(args.queries, include=[c for c in gallery.classes if
                                                       (args.queries / c).is_dir()])
    unknown_q = scan_image_folder(args.queries, include=unknown)
    g = embed(gallery)
    labels = np.asarray(gallery.labels)
    known_scores = best_prototype_scores(embed(known_q), g, labels)
    unknown_scores = best_prototype_scores(embed(unknown_q), g, labels)
    threshold, balanced = choose_threshold(known_scores, unknown_scores)
    result = {
        "threshold": round(threshold, 3),
        "balanced_accuracy": balanced,
        "known_accepted": float((known_scores >= threshold).mean()),
        "unknown_rejected": float((unknown_scores < threshold).mean()),
        "known_queries": len(known_scores),
        "unknown_queries": len(unknown_scores),
        "checkpoint": str(args.checkpoint),
        "image_size": loaded.meta.preprocessing.image_size,
    }
    print(json.dumps(result, indent=2))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
