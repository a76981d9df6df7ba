"""The open-set decision rule of ``/classify`` and of the offline evaluation: one copy.

A label's score is the cosine of the query to its prototype (the normalised sum of its
embeddings). Labels with many photos have prototypes that sit closer to everything, so raw
cosines favour them over a label enrolled from one shot. With a calibration, each label's
cosine is standardised by what a prototype of that many shots scores against the photos of
*other* classes nearest to it (its nearest impostors, as score normalisation does in speaker
verification): ``z = (cosine - mean(n)) / std(n)``, ``mean`` and ``std`` measured on
classes the checkpoint's own calibration saw (``python -m training.calibrate``) and
interpolated in log n. Files calibrated before measured a genuine match's cosine instead
(``statistic`` "genuine"); the formula is the same. A label of fewer than FEW_SHOTS photos
gets ``few_shot_bonus`` added to its ``z``, tapering in log n to nothing at FEW_SHOTS:
standardising makes a few-shot label as unlikely as any other to claim an unrelated photo,
but its own photos still match its noisy prototype less well, so without the bonus the
well-stocked labels take them. The best label wins; below ``threshold`` (on the score) the
answer is ``unknown``.
``confidence`` is a logistic fit of "the best label is right" on its score and on the
margin to the runner-up's. Without a calibration the score is the raw cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.prototypes import prototypes

FEW_SHOTS = 5  # labels of fewer photos than this get part of the few-shot bonus


@dataclass(frozen=True)
class ShotCalibration:
    shots: tuple[int, ...]  # increasing shot counts the statistics were measured at
    mean: tuple[float, ...]  # mean cosine of the measured statistic, per shot count
    std: tuple[float, ...]
    threshold: float  # on z: below it, "unknown"
    # confidence = sigmoid(a * z + c * margin + b), stored as (a, c, b); files with (a, b)
    # predate the margin term and read as c = 0
    logistic: tuple[float, float, float]
    # "impostor": the nearest other-class photos' cosines; "genuine": same-class photos'
    statistic: str = "impostor"
    few_shot_bonus: float = 0.0  # added to a one-photo label's z, less from 2 to 4 photos

    def to_dict(self) -> dict[str, object]:
        return {"shots": list(self.shots), "mean": list(self.mean), "std": list(self.std),
                "threshold": self.threshold, "logistic": list(self.logistic),
                "statistic": self.statistic, "few_shot_bonus": self.few_shot_bonus}

    @classmethod
    def from_dict(cls, data: dict) -> ShotCalibration:
        fit = [float(v) for v in data["logistic"]]
        a, c, b = (fit[0], 0.0, fit[1]) if len(fit) == 2 else fit
        return cls(tuple(int(n) for n in data["shots"]),
                   tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), float(data["threshold"]), (a, c, b),
                   str(data.get("statistic", "genuine")),
                   float(data.get("few_shot_bonus", 0.0)))

    def at(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) for labels of ``counts`` photos (clamped to the measured range)."""
        x = np.log(np.clip(np.asarray(counts, np.float64), self.shots[0], self.shots[-1]))
        grid = np.log(np.asarray(self.shots, np.float64))
        return np.interp(x, grid, self.mean), np.interp(x, grid, self.std)

    def bonus(self, counts: np.ndarray) -> np.ndarray:
        """``few_shot_bonus`` at one photo, tapering in log n to 0 at FEW_SHOTS and beyond."""
        n = np.maximum(np.asarray(counts, np.float64), 1)
        return self.few_shot_bonus * np.clip(1 - np.log(n) / np.log(FEW_SHOTS), 0, 1)

    def standardise(self, cosines: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The rule's score of each label: its cosine standardised, plus its bonus."""
        mean, std = self.at(counts)
        return (cosines - mean) / std + self.bonus(counts)

    def confidence(self, z: np.ndarray | float,
                   margin: np.ndarray | float = 0.0) -> np.ndarray | float:
        """P(the best label is right) for its score ``z`` and its ``margin`` over the
        runner-up."""
        a, c, b = self.logistic
        return 1.0 / (1.0 + np.exp(-(a * np.asarray(z) + c * np.asarray(margin) + b)))


COSINE_THRESHOLD = 0.89  # the unknown threshold on plain cosines (no calibration)


def unknown_threshold(calibration: ShotCalibration | None) -> float:
    """The threshold of the rule in use: the calibration's, else the plain-cosine one."""
    return calibration.threshold if calibration else COSINE_THRESHOLD


def rule_name(calibration: ShotCalibration | None) -> str:
    return "shot-calibrated" if calibration else "cosine"


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

    @property
    def margin(self) -> float:
        """The best label's score over the runner-up's (see :func:`best_with_margin`)."""
        return float(best_with_margin(self.scores[None])[2][0])


def best_with_margin(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of (Q, L) scores: the best column, its score, and its margin over the
    runner-up's score (with one label, over 0: the score itself)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(scores))
    top = scores[rows, order[:, 0]]
    runner_up = scores[rows, order[:, 1]] if scores.shape[1] > 1 else np.zeros_like(top)
    return order[:, 0], top, top - runner_up


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


def fit_logistic(features: np.ndarray, right: np.ndarray, weights: np.ndarray | None = None,
                 steps: int = 100) -> tuple[float, ...]:
    """Weighted logistic regression of ``right`` (bool) on ``features`` ((N,) or (N, F)), by
    Newton's method: F coefficients, then the bias."""
    x = np.asarray(features, np.float64).reshape(len(right), -1)
    x = np.hstack([x, np.ones((len(x), 1))])
    y = np.asarray(right, np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    theta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -50, 50)))
        grad = x.T @ (w * (p - y))
        hess = (x * (w * np.maximum(p * (1 - p), 1e-9))[:, None]).T @ x
        step = np.linalg.solve(hess + 1e-6 * np.eye(len(theta)), grad)
        theta -= step
        if np.linalg.norm(step) < 1e-10:
            break
    return tuple(float(v) for v in theta)
