"""Open-set few-shot evaluation: new kinds enrolled from K photos, and photos of kinds nobody
enrolled, as the service's ``/classify`` sees them.

    python -m training.openset --checkpoint models/checkpoints/default.pt \\
        --gallery ../shared/data/grocery/train --queries ../shared/data/grocery/test \\
        --shots 1,5 --splits 5 --json runs/openset.json

The held-out classes (``--heldout``; default every fourth class in sorted order from the
second, the model card's 15) are left out of the gallery, which holds every other class
with all its ``--gallery`` photos. Each seeded split enrols K shots (from ``--gallery``) of
half the held-out classes; their other photos (both roots) must get their label, and the
photos of the other half must get ``unknown``, as must other-domain photos
(``--other-domain``, or generated synthetic scenes). The rule is the service's: the label
of the best prototype (normalised mean embedding), ``unknown`` below ``--threshold``.

Reported per K, mean and spread over the splits: new kinds' top-label accuracy (no
threshold) and accuracy (thresholded), unknown rejection (held-out grocery kinds, other
domain), balanced accuracy (the mean of new-kind accuracy and rejection, the two kinds of
unknown weighted equally) and the AUROC of the best score, new kinds against unknowns.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.base import embed_images
from models.checkpoint import load_checkpoint
from models.preprocessing import class_folder_images
from models.prototypes import prototypes
from models.runtimes.factory import open_embedder
from training.data import ImageFolder, class_list, scan_image_folder
from training.embedding import embed_folder_cached
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


def classify(queries: np.ndarray, sums: np.ndarray, labels: list[str],
             threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The service's rule: (best label, its score, answer with "unknown" below threshold)."""
    scores = queries @ prototypes(sums).T
    best = scores.argmax(1)
    best_labels = np.array(labels, dtype=object)[best]
    top = scores[np.arange(len(queries)), best]
    return best_labels, top, np.where(top >= threshold, best_labels, "unknown")


def one_split(vectors: dict[str, tuple[np.ndarray, int]], gallery_sums: np.ndarray,
              gallery_labels: list[str], heldout: list[str], other: np.ndarray, shots: int,
              threshold: float, rng: np.random.Generator) -> dict[str, float]:
    """One seeded split. ``vectors[c]`` is held-out class c's embeddings and how many of
    them, at the front, may be enrolled as shots (its ``--gallery`` photos)."""
    order = rng.permutation(len(heldout))
    new = [heldout[i] for i in order[: len(heldout) // 2]]
    unknown = [heldout[i] for i in order[len(heldout) // 2 :]]
    sums, labels, queries, truth = [gallery_sums], list(gallery_labels), [], []
    for name in new:
        vecs, n_shot_pool = vectors[name]
        chosen = rng.choice(n_shot_pool, size=min(shots, n_shot_pool - 1), replace=False)
        rest = np.setdiff1d(np.arange(len(vecs)), chosen)
        sums.append(vecs[chosen].sum(0, keepdims=True))
        labels.append(name)
        queries.append(vecs[rest])
        truth += [name] * len(rest)
    new_q = np.concatenate(queries)
    unknown_q = np.concatenate([vectors[name][0] for name in unknown])
    all_sums = np.concatenate(sums)
    best_new, score_new, answer_new = classify(new_q, all_sums, labels, threshold)
    _, score_unknown, answer_unknown = classify(unknown_q, all_sums, labels, threshold)
    _, score_other, answer_other = classify(other, all_sums, labels, threshold)
    truth_arr = np.array(truth, dtype=object)
    result = {
        "new_top_label_accuracy": float(np.mean(best_new == truth_arr)),
        "new_accuracy": float(np.mean(answer_new == truth_arr)),
        "unknown_rejection": float(np.mean(answer_unknown == "unknown")),
        "other_domain_rejection": float(np.mean(answer_other == "unknown")),
        "auroc_unknown": auroc(score_new, score_unknown),
        "auroc_other_domain": auroc(score_new, score_other),
    }
    rejection = (result["unknown_rejection"] + result["other_domain_rejection"]) / 2
    result["balanced_accuracy"] = (result["new_accuracy"] + rejection) / 2
    return result


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


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {key: {"mean": float(np.mean([r[key] for r in runs])),
                  "std": float(np.std([r[key] for r in runs]))} for key in runs[0]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.openset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--gallery", type=Path, required=True, help="<class>/* (e.g. train)")
    p.add_argument("--queries", type=Path, required=True, help="<class>/* (e.g. test)")
    p.add_argument("--heldout", type=class_list, help="comma-separated (default: see above)")
    p.add_argument("--shots", default="1,5")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.89)
    p.add_argument("--other-domain", type=Path, help="<class>/* photos that are all unknown")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "int8"], default="auto")
    p.add_argument("--cache", type=Path, help="reuse embeddings across runs")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    opened = open_embedder(loaded, args.runtime, "cpu")
    embedder, fingerprint = opened.embedder, opened.fingerprint

    def embed(folder: ImageFolder) -> np.ndarray:
        return embed_folder_cached(embedder, folder, args.cache, fingerprint)

    heldout = args.heldout or default_heldout(list(class_folder_images(args.gallery)))
    known = scan_image_folder(args.gallery, exclude=heldout)
    known_vectors = embed(known)
    known_labels = np.array([known.classes[s.label] for s in known.samples])
    gallery_labels = list(known.classes)
    gallery_sums = np.stack([known_vectors[known_labels == c].sum(0) for c in gallery_labels])
    vectors: dict[str, tuple[np.ndarray, int]] = {}
    for name in heldout:
        shots_pool = embed(scan_image_folder(args.gallery, include=[name]))
        others = embed(scan_image_folder(args.queries, include=[name])) if (
            args.queries / name).is_dir() else shots_pool[:0]
        vectors[name] = (np.concatenate([shots_pool, others]), len(shots_pool))
    if args.other_domain:
        other = embed(scan_image_folder(args.other_domain))
        other_source = str(args.other_domain)
    else:
        scenes = synthetic_scenes(100)
        other = np.concatenate([embed_images(embedder, scenes[i : i + 25])
                                for i in range(0, len(scenes), 25)])
        other_source = "100 synthetic scenes"
    results: dict = {"checkpoint": args.checkpoint, "runtime": embedder.name,
                     "threshold": args.threshold, "heldout": heldout,
                     "gallery_classes": len(gallery_labels), "other_domain": other_source,
                     "splits": args.splits}
    for shots in (int(k) for k in args.shots.split(",")):
        runs = [one_split(vectors, gallery_sums, gallery_labels, heldout, other, shots,
                          args.threshold, np.random.default_rng(seed))
                for seed in range(args.splits)]
        results[f"{shots}_shot"] = {"summary": summarise(runs), "splits": runs}
    print(json.dumps({k: v["summary"] if isinstance(v, dict) and "summary" in v else v
                      for k, v in results.items()}, indent=1))
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
