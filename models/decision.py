"""The open-set decision rule of ``/classify`` and of the offline evaluation: one copy.

A label's score is the cosine of the query to its prototype (the normalised sum of its
embeddings). Labels with many photos have prototypes that sit closer to everything, so raw
cosines favour them over a label enrolled from one shot. With a calibration, each label's
cosine is standardised by what a genuine match scores against a prototype of that many
shots: ``z = (cosine - mean(n)) / std(n)``, ``mean`` and ``std`` measured on classes the
checkpoint's own calibration saw (``python -m training.calibrate``) and interpolated in
log n. The best label wins; below ``threshold`` (on ``z``) the answer is ``unknown``.
``confidence`` is a logistic fit of "the answer is right" on ``z``. Without a calibration
the score is the raw cosine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.prototypes import prototypes


@dataclass(frozen=True)
class ShotCalibration:
    shots: tuple[int, ...]  # increasing shot counts the statistics were measured at
    mean: tuple[float, ...]  # mean cosine of a genuine match, per shot count
    std: tuple[float, ...]
    threshold: float  # on z: below it, "unknown"
    logistic: tuple[float, float]  # confidence = sigmoid(a * z + b)

    def to_dict(self) -> dict[str, object]:
        return {"shots": list(self.shots), "mean": list(self.mean), "std": list(self.std),
                "threshold": self.threshold, "logistic": list(self.logistic)}

    @classmethod
    def from_dict(cls, data: dict) -> ShotCalibration:
        return cls(tuple(int(n) for n in data["shots"]),
                   tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), float(data["threshold"]),
                   (float(data["logistic"][0]), float(data["logistic"][1])))

    def at(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) for labels of ``counts`` photos (clamped to the measured range)."""
        x = np.log(np.clip(np.asarray(counts, np.float64), self.shots[0], self.shots[-1]))
        grid = np.log(np.asarray(self.shots, np.float64))
        return np.interp(x, grid, self.mean), np.interp(x, grid, self.std)

    def standardise(self, cosines: np.ndarray, counts: np.ndarray) -> np.ndarray:
        mean, std = self.at(counts)
        return (cosines - mean) / std

    def confidence(self, z: np.ndarray | float) -> np.ndarray | float:
        a, b = self.logistic
        return 1.0 / (1.0 + np.exp(-(a * np.asarray(z) + b)))


def shot_calibration(extra: dict) -> ShotCalibration | None:
    """The calibration a checkpoint's metadata carries (``extra["openset"]``), if any."""
    raw = extra.get("openset")
    return ShotCalibration.from_dict(raw) if raw else None


@dataclass(frozen=True)
class Ranking:
    """Labels best first, for one query."""

    labels: list[str]
    scores: np.ndarray  # the rule's score (z with a calibration, else cosine)
    cosines: np.ndarray
    counts: np.ndarray


def score_labels(queries: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                 calibration: ShotCalibration | None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, cosines), both (Q, L): each query against each label's prototype."""
    cosines = np.atleast_2d(queries) @ prototypes(sums).T
    if calibration is None:
        return cosines, cosines
    return calibration.standardise(cosines, counts), cosines


def rank(query: np.ndarray, labels: list[str], sums: np.ndarray, counts: np.ndarray,
         calibration: ShotCalibration | None, top: int = 5) -> Ranking:
    scores, cosines = score_labels(query, sums, counts, calibration)
    order = np.argsort(-scores[0], kind="stable")[:top]
    return Ranking([labels[i] for i in order], scores[0][order], cosines[0][order],
                   np.asarray(counts)[order])


def fit_logistic(scores: np.ndarray, right: np.ndarray, steps: int = 500) -> tuple[float, float]:
    """Logistic regression of ``right`` (bool) on one score, by Newton's method."""
    x, y = np.asarray(scores, np.float64), np.asarray(right, np.float64)
    a, b = 1.0, 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = np.maximum(p * (1 - p), 1e-9)
        grad = np.array([np.sum((p - y) * x), np.sum(p - y)])
        hess = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        hess += 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if math.hypot(*step) < 1e-10:
            break
    return float(a), float(b)
