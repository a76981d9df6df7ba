"""Calibrate ``/classify`` for a checkpoint: the shot statistics, the ``unknown`` threshold
and the confidence, stored in the checkpoint's metadata with ``--write``.

    python -m training.calibrate --checkpoint runs/encoder.pt \\
        --gallery ../shared/data/grocery/train --queries ../shared/data/grocery/test --write

Measured on the checkpoint's own training classes (``--classes`` to choose others, and
``--exclude-classes`` to keep an evaluation's classes out): shots come from ``--gallery``,
the photos they are compared with from ``--queries`` (another session of the same kinds).
Shots are embedded as the service stores gallery photos, with the checkpoint's
``gallery_views`` (``--gallery-views 2`` measures with the mirror image too, and ``--write``
stores that with the calibration).

1. Shot statistics: for n = 1, 2, 3, 5, 10, 20, 40 shots, the mean and spread of the cosine
   between the prototype of n shots of a class and its nearest impostors, the 10% of the
   other classes' queries closest to it, over resampled shots (``--statistic genuine``: its
   own class's queries, the previous rule).
2. Threshold and confidence: the open-set protocol of ``training.openset`` simulated on
   these classes (seeded splits: some classes in the gallery, some enrolled from 1 and 5
   shots, the rest unknown, plus synthetic other-domain scenes). The threshold maximises
   the mean service accuracy over 1 and 5 shots (known kinds right, new kinds right,
   unknowns rejected); the confidence is a logistic fit of
   "the best label is right" on the calibrated score and the margin. Classes the encoder
   trained on are easier to tell apart than new ones, so this threshold is a fallback: the
   one to ship is chosen on classes the encoder never saw (``training.openset --write-threshold``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from models.checkpoint import load_checkpoint, set_checkpoint_extra, with_gallery_views
from models.decision import ShotCalibration
from models.preprocessing import GALLERY_VIEWS
from models.prototypes import prototypes
from models.runtimes.factory import open_embedder
from training.data import ImageFolder, class_list
from training.embedding import embed_folder_cached
from training.openset import (
    ClassPhotos,
    class_vectors,
    gallery_of,
    other_domain,
    split_metrics,
    split_scores,
    summarise,
    threshold_and_confidence,
)
from training.results import write_json

SHOTS = (1, 2, 3, 5, 10, 20, 40)
# The share of another class's photos, nearest first, that stand for a label's impostors:
# the look-alikes a query of an unknown kind resembles, not the easy bulk.
IMPOSTOR_SHARE = 0.1


def shot_statistics(vectors: dict[str, ClassPhotos], rng: np.random.Generator,
                    statistic: str = "impostor",
                    resamples: int = 5) -> tuple[list[float], list[float]]:
    """(mean, std) per entry of SHOTS of the cosine between the prototype of n shots of a
    class and, for "impostor", the IMPOSTOR_SHARE of other classes' queries nearest to it;
    for "genuine", its own class's queries."""
    queries = {c: photos.queries[photos.pool:] for c, photos in vectors.items()}
    compared = {name: own if statistic == "genuine" else
                np.concatenate([q for c, q in queries.items() if c != name])
                for name, own in queries.items()}
    means, stds = [], []
    for n in SHOTS:
        cosines = []
        for name, photos in vectors.items():
            if photos.pool < n or len(queries[name]) == 0:
                continue
            for _ in range(resamples):
                shots = photos.stored[rng.choice(photos.pool, n, replace=False)]
                values = compared[name] @ prototypes(shots.sum(0, keepdims=True))[0]
                if statistic == "impostor":
                    values = np.sort(values)[-max(1, round(IMPOSTOR_SHARE * len(values))):]
                cosines.append(values)
        if not cosines:  # no class has that many shots: carry the last measurement
            means.append(means[-1])
            stds.append(stds[-1])
            continue
        values = np.concatenate(cosines)
        means.append(float(values.mean()))
        stds.append(float(max(values.std(), 1e-3)))
    return means, stds


def stacked(parts: list[tuple[np.ndarray, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of several classes as one array, and each row's class."""
    return (np.concatenate([v for v, _ in parts]),
            np.concatenate([[c] * len(v) for v, c in parts]).astype(object))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--gallery", type=Path, required=True, help="<class>/* shots (e.g. train)")
    p.add_argument("--queries", type=Path, required=True, help="<class>/* (e.g. test)")
    p.add_argument("--classes", type=class_list,
                   help="comma-separated (default: the checkpoint's training classes)")
    p.add_argument("--exclude-classes", type=class_list, default=[])
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--statistic", choices=["impostor", "genuine"], default="impostor",
                   help="standardise by the nearest impostors' cosines (default) or by a "
                        "genuine match's")
    p.add_argument("--few-shot-bonus", type=float, default=0.0,
                   help="added to a one-shot label's score (models/decision.py); "
                   "training.openset --write-threshold chooses the one to ship with")
    p.add_argument("--gallery-views", type=int, choices=GALLERY_VIEWS,
                   help="embed gallery photos and shots as the mean of this many views (2: "
                   "also the mirror image); default: the checkpoint's; --write stores it")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "int8"], default="onnx")
    p.add_argument("--cache", type=Path)
    p.add_argument("--write", action="store_true",
                   help="store the calibration in the checkpoint (extra.openset)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    if args.gallery_views is not None:
        loaded = with_gallery_views(loaded, args.gallery_views)
    opened = open_embedder(loaded, args.runtime, "cpu")

    def embed(folder: ImageFolder, gallery: bool = False) -> np.ndarray:
        return embed_folder_cached(opened.embedder, folder, args.cache, opened.fingerprint,
                                   gallery=gallery)

    available = sorted(d.name for d in args.gallery.iterdir() if d.is_dir())
    wanted = args.classes or loaded.meta.class_names or available
    classes = [c for c in wanted if c in available and c not in args.exclude_classes]
    if len(classes) < 6:
        raise SystemExit(f"calibration needs at least 6 classes, found {len(classes)}")
    vectors = class_vectors(embed, functools.partial(embed, gallery=True), args.gallery,
                            args.queries, classes)
    rng = np.random.default_rng(0)
    means, stds = shot_statistics(vectors, rng, args.statistic)
    stats = ShotCalibration(SHOTS, tuple(means), tuple(stds), 0.0, (1.0, 0.0, 0.0),
                            args.statistic, args.few_shot_bonus)
    other, _ = other_domain(opened.embedder, embed, None)
    simulated = {}
    for shots in (1, 5):
        splits = []
        for seed in range(args.splits):
            split_rng = np.random.default_rng(seed)
            order = split_rng.permutation(len(classes))
            candidates = [classes[i] for i in order[: max(4, len(classes) * 3 // 10)]]
            known = [classes[i] for i in order if classes[i] not in candidates]
            shots_of = [(vectors[c].stored, c) for c in known]
            queries_of = [(vectors[c].queries[vectors[c].pool :], c) for c in known]
            gallery = gallery_of(*stacked(shots_of), known, *stacked(queries_of))
            splits.append(split_scores(vectors, gallery, candidates, other, shots, stats,
                                       split_rng))
        simulated[shots] = splits
    threshold, accuracy, logistic = threshold_and_confidence(simulated)
    calibration = dataclasses.replace(stats, threshold=threshold, logistic=logistic)
    summaries = {k: summarise([split_metrics(s, threshold) for s in splits])
                 for k, splits in simulated.items()}
    result = {
        "checkpoint": str(args.checkpoint),
        "classes": len(classes),
        "gallery_views": loaded.meta.preprocessing.gallery_views,
        "calibration": calibration.to_dict(),
        "simulated_service_accuracy": accuracy,
        **{f"simulated_{k}_shot": {key: summary[key]["mean"]
                                   for key in ("new_accuracy", "unknown_rejection",
                                               "balanced_accuracy", "known_accuracy")}
           for k, summary in summaries.items()},
    }
    print(json.dumps(result, indent=2))
    if args.write:
        set_checkpoint_extra(args.checkpoint, "openset", calibration.to_dict(),
                             gallery_views=loaded.meta.preprocessing.gallery_views)
        print(f"wrote the calibration into {args.checkpoint}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
