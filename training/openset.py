"""Open-set few-shot evaluation: new kinds enrolled from K photos, and photos of kinds nobody
enrolled, as the service's ``/classify`` sees them.

    python -m training.openset --checkpoint models/checkpoints/default.pt \\
        --gallery ../shared/data/grocery/train --queries ../shared/data/grocery/test \\
        --shots 1,5 --splits 5 --json runs/openset.json

The held-out classes (``--heldout``; default the classes the encoder never trained on, or
for an encoder that trained on them all every fourth class in sorted order from the second,
the model card's 15) are left out of the gallery, which holds every other class with all its
``--gallery`` photos. Several ``--checkpoint`` encoders (each trained without its own
held-out classes) pool their splits: one threshold and one bonus are reported and chosen for all,
each encoder scored with its own shot statistics. Each seeded split enrols K shots (from
``--gallery``) of half the held-out classes; their other photos (both roots) must get their
label, and the photos of the other half must get ``unknown``, as must other-domain photos
(``--other-domain``, or generated synthetic scenes). Gallery photos and shots are embedded
as the service stores them (with the checkpoint's ``gallery_views``), queries as the service
embeds a query. The rule is the service's
(``models/decision.py``): with the checkpoint's shot calibration, each label's cosine is
standardised by its number of photos (plus the few-shot bonus) and ``unknown`` falls below
the calibrated threshold; ``--raw`` uses plain cosines instead, ``--threshold`` replaces the
threshold and ``--few-shot-bonus`` the bonus (given several, the one with the best mean
service accuracy at its best threshold is kept, and written with ``--write-threshold``).

Reported per K, mean and spread over the splits: new kinds' top-label accuracy (no
threshold) and accuracy (thresholded), unknown rejection (held-out grocery kinds, other
domain), balanced accuracy (the mean of new-kind accuracy and rejection, the two kinds of
unknown weighted equally), the AUROC of the best score, new kinds against unknowns, the
gallery's own kinds' accuracy, and service accuracy (the mean of known-kind accuracy,
new-kind accuracy and rejection), which ``--write-threshold`` maximises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.base import Embedder, embed_images
from models.checkpoint import load_checkpoint, set_checkpoint_extra
from models.decision import (
    ShotCalibration,
    best_with_margin,
    fit_logistic,
    rule_name,
    score_labels,
    shot_calibration,
    unknown_threshold,
)
from models.preprocessing import class_folder_images
from models.runtimes.factory import open_embedder
from training.data import ImageFolder, class_list, scan_image_folder
from training.embedding import embed_folder_cached
from training.plots import threshold_curves
from training.results import write_json


def default_heldout(classes: list[str]) -> list[str]:
    """Every fourth class in sorted order from the second (15 of the 61 grocery classes)."""
    return sorted(classes)[1::4]


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    above = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positive) * len(negative)))


def classify(queries: np.ndarray, sums: np.ndarray, counts: np.ndarray, labels: list[str],
             calibration: ShotCalibration | None,
             threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The service's rule: (best label, its score, answer with "unknown" below threshold)."""
    answers = best_answers(queries, sums, counts, labels, calibration)
    return answers.label, answers.score, np.where(answers.score >= threshold, answers.label,
                                                  "unknown")


@dataclass
class Answers:
    """Per query: the best label, its score and its margin over the runner-up's score (with
    one label, its score, as ``/classify`` reports)."""

    label: np.ndarray
    score: np.ndarray
    margin: np.ndarray


def best_answers(queries: np.ndarray, sums: np.ndarray, counts: np.ndarray, labels: list[str],
                 calibration: ShotCalibration | None) -> Answers:
    scores, _ = score_labels(queries, sums, counts, calibration)
    best, top, margin = best_with_margin(scores)
    return Answers(np.array(labels, dtype=object)[best], top, margin)


@dataclass
class Gallery:
    """Known classes: the sum of each one's embeddings and how many there are, and photos of
    them that are not in the gallery (queries that must get their label)."""

    labels: list[str]
    sums: np.ndarray
    counts: np.ndarray
    query_vectors: np.ndarray
    query_labels: np.ndarray


@dataclass
class SplitScores:
    new_truth: np.ndarray  # the enrolled kinds' queries: their label
    new: Answers
    unknown: Answers  # queries of kinds nobody enrolled
    other: Answers  # other-domain photos
    known_truth: np.ndarray  # queries of the gallery's own classes
    known: Answers


@dataclass
class ClassPhotos:
    """One class's embeddings: all its photos as queries are embedded (its ``--gallery``
    photos first, then its ``--queries`` photos), and its ``--gallery`` photos as the
    gallery stores them (each the mean of its views, where the checkpoint has several)."""

    queries: np.ndarray
    stored: np.ndarray

    @property
    def pool(self) -> int:
        """How many photos may be enrolled as shots: the first rows of ``queries``."""
        return len(self.stored)


def split_scores(vectors: dict[str, ClassPhotos], gallery: Gallery, heldout: list[str],
                 other: np.ndarray, shots: int, calibration: ShotCalibration | None,
                 rng: np.random.Generator) -> SplitScores:
    """One seeded split: half of ``heldout`` enrolled from ``shots`` photos of its pool, the
    other half unknown; every photo not enrolled is a query."""
    order = rng.permutation(len(heldout))
    new = [heldout[i] for i in order[: len(heldout) // 2]]
    unknown = [heldout[i] for i in order[len(heldout) // 2 :]]
    sums, counts, labels = [gallery.sums], [gallery.counts], list(gallery.labels)
    queries, truth = [], []
    for name in new:
        photos = vectors[name]
        chosen = rng.choice(photos.pool, size=min(shots, photos.pool - 1), replace=False)
        rest = np.setdiff1d(np.arange(len(photos.queries)), chosen)
        sums.append(photos.stored[chosen].sum(0, keepdims=True))
        counts.append(np.array([len(chosen)]))
        labels.append(name)
        queries.append(photos.queries[rest])
        truth += [name] * len(rest)
    all_sums, all_counts = np.concatenate(sums), np.concatenate(counts)

    def answer(q: np.ndarray) -> Answers:
        return best_answers(q, all_sums, all_counts, labels, calibration)

    unknown_q = np.concatenate([vectors[name].queries for name in unknown])
    return SplitScores(np.array(truth, dtype=object), answer(np.concatenate(queries)),
                       answer(unknown_q), answer(other), gallery.query_labels,
                       answer(gallery.query_vectors))


def thresholded(s: SplitScores, threshold: float) -> dict[str, float]:
    """The accuracies ``threshold`` decides: new kinds and the gallery's own kinds answered
    right (nan without known-kind queries), and each kind of unknown rejected."""
    def answered_right(answers: Answers, truth: np.ndarray) -> float:
        if not len(truth):
            return float("nan")
        return float(np.mean((answers.label == truth) & (answers.score >= threshold)))

    return {"new_accuracy": answered_right(s.new, s.new_truth),
            "unknown_rejection": float(np.mean(s.unknown.score < threshold)),
            "other_domain_rejection": float(np.mean(s.other.score < threshold)),
            "known_accuracy": answered_right(s.known, s.known_truth)}


def rejection(a: dict[str, float]) -> float:
    """Unknowns rejected, of :func:`thresholded`'s accuracies: the two kinds alike."""
    return (a["unknown_rejection"] + a["other_domain_rejection"]) / 2


def balanced_accuracy(a: dict[str, float]) -> float:
    """The mean of new kinds answered right and :func:`rejection`."""
    return (a["new_accuracy"] + rejection(a)) / 2


def service_accuracy(a: dict[str, float]) -> float:
    """What the threshold is chosen for, of :func:`thresholded`'s accuracies: the mean of
    new kinds answered right, :func:`rejection` and, where the split has them (not nan), the
    gallery's own kinds answered right. Balanced accuracy alone would buy rejection with the
    known kinds' photos, which are most of what a service is asked."""
    parts = [a["new_accuracy"], rejection(a)]
    if not np.isnan(a["known_accuracy"]):
        parts.append(a["known_accuracy"])
    return float(np.mean(parts))


def split_metrics(s: SplitScores, threshold: float) -> dict[str, float]:
    known_right = s.known.label == s.known_truth
    result = {
        "new_top_label_accuracy": float(np.mean(s.new.label == s.new_truth)),
        **thresholded(s, threshold),
        "auroc_unknown": auroc(s.new.score, s.unknown.score),
        "auroc_other_domain": auroc(s.new.score, s.other.score),
        "known_top_label_accuracy": float(np.mean(known_right)) if len(known_right) else
        float("nan"),
    }
    result["balanced_accuracy"] = balanced_accuracy(result)
    result["service_accuracy"] = service_accuracy(result)
    return result


SWEPT = {"new kinds answered right": "new_accuracy",
         "unknown kinds rejected": "unknown_rejection",
         "other domain rejected": "other_domain_rejection",
         "known kinds answered right": "known_accuracy",
         "balanced (new right, unknowns rejected)": "balanced_accuracy"}


def threshold_sweep(splits: list[SplitScores], thresholds: np.ndarray
                    ) -> dict[str, np.ndarray]:
    """Each accuracy of :data:`SWEPT` at every threshold, the mean over the splits."""
    curves: dict[str, list[float]] = {name: [] for name in SWEPT}
    for t in thresholds:
        per_split = [thresholded(s, t) for s in splits]
        per_split = [{**a, "balanced_accuracy": balanced_accuracy(a)} for a in per_split]
        for name, key in SWEPT.items():
            curves[name].append(float(np.mean([m[key] for m in per_split])))
    return {name: np.array(values) for name, values in curves.items()}


def gallery_of(vectors: np.ndarray, labels: np.ndarray, names: list[str],
               query_vectors: np.ndarray, query_labels: np.ndarray) -> Gallery:
    return Gallery(list(names), np.stack([vectors[labels == c].sum(0) for c in names]),
                   np.array([int(np.sum(labels == c)) for c in names]), query_vectors,
                   np.asarray(query_labels, dtype=object))


def synthetic_scenes(count: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """Other-domain stand-ins: random shapes on gradients, nothing like a grocery photo."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        ramp = np.linspace(0, 1, size)[None, :, None]
        base = rng.uniform(0, 255, 3) * ramp + rng.uniform(0, 255, 3) * (1 - ramp)
        image = Image.fromarray(np.repeat(base, size, 0).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, size - 20, 2)
            x1, y1 = x0 + rng.integers(10, size // 2), y0 + rng.integers(10, size // 2)
            fill = tuple(int(v) for v in rng.integers(0, 255, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
        scenes.append(image)
    return scenes


def names_of(folder: ImageFolder) -> np.ndarray:
    """The class name of each of the folder's samples."""
    return np.array([folder.classes[s.label] for s in folder.samples], dtype=object)


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": float(np.mean([r[key] for r in runs])),
                  "std": float(np.std([r[key] for r in runs]))} for key in runs[0]}


def class_vectors(embed: Callable[[ImageFolder], np.ndarray],
                  embed_gallery: Callable[[ImageFolder], np.ndarray], shots_root: Path,
                  queries_root: Path, names: list[str]) -> dict[str, ClassPhotos]:
    """Per class: its photos, those of ``shots_root`` (which may be enrolled) first, then
    those of ``queries_root``, embedded as queries (``embed``), and those of ``shots_root``
    as the gallery stores them (``embed_gallery``)."""
    vectors = {}
    for name in names:
        pool = scan_image_folder(shots_root, include=[name])
        as_queries = embed(pool)
        others = (embed(scan_image_folder(queries_root, include=[name]))
                  if (queries_root / name).is_dir() else as_queries[:0])
        vectors[name] = ClassPhotos(np.concatenate([as_queries, others]), embed_gallery(pool))
    return vectors


def other_domain(embedder: Embedder, embed: Callable[[ImageFolder], np.ndarray],
                 root: Path | None) -> tuple[np.ndarray, str]:
    if root is not None:
        return embed(scan_image_folder(root)), str(root)
    scenes = synthetic_scenes(100)
    return np.concatenate([embed_images(embedder, scenes[i : i + 25])
                           for i in range(0, len(scenes), 25)]), "100 synthetic scenes"


def threshold_and_confidence(scored: dict[int, list[SplitScores]]
                             ) -> tuple[float, float, tuple[float, ...]]:
    """From splits scored for each K: the threshold with the best mean service accuracy
    over the K's (:func:`service_accuracy`), that accuracy, and the confidence: a logistic
    fit of "the best label is right" on the score and the margin over every kind of query
    (:func:`query_kinds`)."""
    pooled = [np.concatenate([np.concatenate([s.new.score, s.unknown.score, s.known.score])
                              for s in splits]) for splits in scored.values()]
    candidates = np.unique(np.quantile(np.concatenate(pooled), np.linspace(0, 1, 401)))
    every = [s for group in scored.values() for s in group]
    per_split = [1 / len(group) for group in scored.values() for _ in group]  # each K alike

    def mean_service_accuracy(t: float) -> float:
        return float(np.average([service_accuracy(thresholded(s, t)) for s in every],
                               weights=per_split))

    best = float(max(candidates, key=mean_service_accuracy))
    groups = [(answers, right, weight / len(splits))  # every K weighs the same
              for splits in scored.values() for s in splits
              for _, answers, right, weight in query_kinds(s) if len(right)]
    features = np.concatenate([np.stack([a.score, a.margin], 1) for a, _, _ in groups])
    right = np.concatenate([r for _, r, _ in groups])
    weights = np.concatenate([np.full(len(r), w / len(r)) for _, r, w in groups])
    return round(best, 4), mean_service_accuracy(best), fit_logistic(features, right, weights)


def query_kinds(s: SplitScores) -> list[tuple[str, Answers, np.ndarray, float]]:
    """A split's kinds of query: (name, answers, whether each best label is right, the
    kind's weight in the confidence fit: known, new and unknown alike, the unknown kinds
    and the other domain half each)."""
    return [("known", s.known, s.known.label == s.known_truth, 1.0),
            ("new", s.new, s.new.label == s.new_truth, 1.0),
            ("unknown", s.unknown, np.zeros(len(s.unknown.score), bool), 0.5),
            ("other_domain", s.other, np.zeros(len(s.other.score), bool), 0.5)]


def confidence_by_group(splits: list[SplitScores],
                        calibration: ShotCalibration) -> dict[str, dict[str, float]]:
    """Per kind of query: the mean confidence of its best label, and how often that label
    is right (a calibrated confidence keeps the two close)."""
    report = {}
    for kind in ("known", "new", "unknown", "other_domain"):
        parts = [(a, r) for s in splits for name, a, r, _ in query_kinds(s) if name == kind]
        right = np.concatenate([r for _, r in parts])
        if len(right):
            confidence = np.concatenate([calibration.confidence(a.score, a.margin)
                                         for a, _ in parts])
            report[kind] = {"mean_confidence": float(confidence.mean()),
                            "right": float(right.mean())}
    return report


def best_few_shot_bonus(score_splits: Callable[[float], dict[int, list[SplitScores]]],
                        bonuses: list[float]) -> tuple[float, float, list[dict[str, float]]]:
    """Of ``bonuses``, the one whose best threshold gives the best mean service accuracy
    (:func:`threshold_and_confidence`) on the splits ``score_splits(bonus)`` scores, that
    threshold, and one row per bonus."""
    rows = []
    for bonus in bonuses:
        threshold, accuracy, _ = threshold_and_confidence(score_splits(bonus))
        rows.append({"few_shot_bonus": bonus, "threshold": threshold,
                     "service_accuracy": accuracy})
    best = max(rows, key=lambda row: row["service_accuracy"])
    return best["few_shot_bonus"], best["threshold"], rows


@dataclass
class Run:
    """One encoder's part of an evaluation: its splits scored under its own calibration
    (``None``: plain cosines) with a given few-shot bonus."""

    checkpoint: str
    runtime: str
    heldout: list[str]
    gallery_classes: int
    gallery_views: int  # how its gallery photos and shots were embedded
    calibration: ShotCalibration | None
    score_splits: Callable[[ShotCalibration | None], dict[int, list[SplitScores]]]

    def rule(self, bonus: float | None) -> ShotCalibration | None:
        if self.calibration is None or bonus is None:
            return self.calibration
        return dataclasses.replace(self.calibration, few_shot_bonus=bonus)

    def scored(self, bonus: float | None) -> dict[int, list[SplitScores]]:
        return self.score_splits(self.rule(bonus))


def never_trained_on(classes: list[str], trained: list[str] | None) -> list[str]:
    """The held-out classes of an encoder: those of ``classes`` it never trained on, where it
    names its training classes and left out a few (at least 4), else
    :func:`default_heldout`."""
    unseen = [c for c in sorted(classes) if trained and c not in trained]
    return unseen if 4 <= len(unseen) < len(classes) else default_heldout(classes)


def plot_title(runs: list[Run], splits: int) -> str:
    if len(runs) == 1:
        return f"{Path(runs[0].checkpoint).name}: {len(runs[0].heldout)} held-out kinds; " \
               f"{splits} splits"
    return (f"{len(runs)} encoders pooled, {sum(len(r.heldout) for r in runs)} held-out kinds "
            f"in all; {splits} splits each")


def pooled(runs: list[Run], bonus: float | None) -> dict[int, list[SplitScores]]:
    """Every run's splits of each K, as one list per K."""
    scored = [run.scored(bonus) for run in runs]
    return {k: [s for part in scored for s in part[k]] for k in scored[0]}


def write_threshold(checkpoint: Path, scored: dict[int, list[SplitScores]],
                    scored_with: ShotCalibration | None, gallery_views: int) -> ShotCalibration:
    """Store the threshold with the best mean service accuracy over the K's, the confidence
    fit (:func:`threshold_and_confidence`) and the few-shot bonus the splits were scored
    with, in ``checkpoint``, whose gallery must embed its photos as the splits' did."""
    meta = load_checkpoint(checkpoint).meta
    target = shot_calibration(meta.extra)
    stored_views = meta.preprocessing.gallery_views
    if stored_views != gallery_views:
        raise SystemExit(f"{checkpoint} stores gallery photos as {stored_views} view(s), these "
                         f"splits as {gallery_views}: calibrate both with the same "
                         "--gallery-views first")
    if target is None:
        raise SystemExit(f"{checkpoint} has no shot statistics: run training.calibrate on it "
                         "first")
    if scored_with is None or scored_with.statistic != target.statistic:
        raise SystemExit(f"{checkpoint}'s scores are standardised by the {target.statistic} "
                         "statistic, these splits' are not: calibrate both alike first")
    threshold, _, logistic = threshold_and_confidence(scored)
    chosen = dataclasses.replace(target, threshold=threshold, logistic=logistic,
                                 few_shot_bonus=scored_with.few_shot_bonus)
    set_checkpoint_extra(checkpoint, "openset", chosen.to_dict())
    print(f"wrote threshold {chosen.threshold}, few-shot bonus {chosen.few_shot_bonus} and "
          f"confidence {chosen.logistic} into {checkpoint}")
    return chosen


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.openset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one encoder, or several whose splits are pooled (one threshold and "
                   "bonus for all, each scored with its own shot statistics)")
    p.add_argument("--gallery", type=Path, required=True, help="<class>/* (e.g. train)")
    p.add_argument("--queries", type=Path, required=True, help="<class>/* (e.g. test)")
    p.add_argument("--heldout", type=class_list,
                   help="comma-separated (default: the classes the encoder never trained on, "
                   "else see above)")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--raw", action="store_true", help="plain cosines, no shot calibration")
    p.add_argument("--threshold", type=float,
                   help="default: the calibration's, or the plain-cosine one (models/decision.py)")
    p.add_argument("--few-shot-bonus", type=lambda text: [float(v) for v in text.split(",")],
                   help="score with this few-shot bonus (default: the calibration's); "
                   "several, comma-separated: keep the one whose best threshold gives the "
                   "best mean service accuracy over --shots")
    p.add_argument("--other-domain", type=Path, help="<class>/* photos that are all unknown")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "int8"], default="auto")
    p.add_argument("--cache", type=Path, help="reuse embeddings across runs")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, metavar="PNG",
                   help="draw the accuracies against the threshold, one panel per K")
    p.add_argument("--write-threshold", type=Path, metavar="CHECKPOINT",
                   help="choose the threshold (best mean service accuracy over --shots) and "
                   "the confidence fit on these splits, and store both, with the few-shot "
                   "bonus they were scored with, in CHECKPOINT's calibration (its shot "
                   "statistics stay; calibrate it first)")
    args = p.parse_args(argv)
    shot_counts = [int(k) for k in args.shots.split(",")]

    def open_run(checkpoint: str) -> tuple[Run, str]:
        loaded = load_checkpoint(checkpoint)
        opened = open_embedder(loaded, args.runtime, "cpu")
        embedder = opened.embedder

        def embed(folder: ImageFolder) -> np.ndarray:
            return embed_folder_cached(embedder, folder, args.cache, opened.fingerprint)

        def embed_gallery(folder: ImageFolder) -> np.ndarray:
            return embed_folder_cached(embedder, folder, args.cache, opened.fingerprint,
                                       gallery=True)

        heldout = args.heldout or never_trained_on(list(class_folder_images(args.gallery)),
                                                   loaded.meta.class_names)
        known = scan_image_folder(args.gallery, exclude=heldout)
        scanned = scan_image_folder(args.queries, exclude=heldout)
        known_queries = ImageFolder(scanned.root, scanned.classes, [
            s for s in scanned.samples if scanned.classes[s.label] in known.classes])
        gallery = gallery_of(embed_gallery(known), names_of(known), list(known.classes),
                             embed(known_queries), names_of(known_queries))
        vectors = class_vectors(embed, embed_gallery, args.gallery, args.queries, heldout)
        other, other_source = other_domain(embedder, embed, args.other_domain)

        def score_splits(rule: ShotCalibration | None) -> dict[int, list[SplitScores]]:
            return {shots: [split_scores(vectors, gallery, heldout, other, shots, rule,
                                         np.random.default_rng(seed))
                            for seed in range(args.splits)] for shots in shot_counts}

        calibration = None if args.raw else shot_calibration(loaded.meta.extra)
        return Run(checkpoint, embedder.name, heldout, len(gallery.labels),
                   embedder.preprocessing.gallery_views, calibration, score_splits), other_source

    opened_runs = [open_run(c) for c in args.checkpoint]
    runs, other_source = [r for r, _ in opened_runs], opened_runs[0][1]
    if len({r.calibration is None for r in runs}) > 1 or len(
            {r.calibration.statistic for r in runs if r.calibration}) > 1 or len(
            {r.gallery_views for r in runs}) > 1:
        raise SystemExit("pooled checkpoints must be calibrated alike (training.calibrate, "
                         "the same statistic and --gallery-views)")
    first = runs[0].calibration
    bonus = first.few_shot_bonus if first else None
    threshold, sweep = unknown_threshold(first), []
    if first is not None and args.few_shot_bonus:
        if len(args.few_shot_bonus) > 1:
            bonus, threshold, sweep = best_few_shot_bonus(lambda b: pooled(runs, b),
                                                          args.few_shot_bonus)
        else:
            bonus = args.few_shot_bonus[0]
    if args.threshold is not None:
        threshold = args.threshold
    calibration = runs[0].rule(bonus)
    scored = pooled(runs, bonus)
    results: dict = {"checkpoints": [{"checkpoint": r.checkpoint, "runtime": r.runtime,
                                      "gallery_views": r.gallery_views,
                                      "heldout": r.heldout,
                                      "gallery_classes": r.gallery_classes} for r in runs],
                     "rule": rule_name(calibration), "few_shot_bonus": bonus,
                     "threshold": threshold, "other_domain": other_source,
                     "splits": args.splits * len(runs)}
    if sweep:
        results["few_shot_bonus_sweep"] = sweep
    confidence_of = calibration  # the confidence fit reported: the one written, if any
    if args.write_threshold:
        confidence_of = write_threshold(args.write_threshold, scored, calibration,
                                        runs[0].gallery_views)
        threshold = results["threshold"] = confidence_of.threshold
    for shots, splits in scored.items():
        metrics = [split_metrics(s, threshold) for s in splits]
        results[f"{shots}_shot"] = {"summary": summarise(metrics), "splits": metrics}
        if confidence_of is not None:
            results[f"{shots}_shot"]["confidence"] = confidence_by_group(splits, confidence_of)
    if args.plot:
        scores = np.concatenate([np.concatenate([s.new.score, s.unknown.score, s.other.score,
                                                 s.known.score])
                                 for splits in scored.values() for s in splits])
        thresholds = np.linspace(*np.quantile(scores, [0.01, 0.99]), 200)
        threshold_curves(args.plot, thresholds,
                         {f"{k} shot{'s' if k > 1 else ''}": threshold_sweep(splits, thresholds)
                          for k, splits in scored.items()}, threshold,
                         title=plot_title(runs, args.splits))
    print(json.dumps({k: {**v["summary"], "confidence": v.get("confidence")}
                      if isinstance(v, dict) and "summary" in v else v
                      for k, v in results.items()}, indent=1))
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
