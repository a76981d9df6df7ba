"""The open-set decision rule (models/decision.py) on tiny hand-checkable numbers."""

import dataclasses

import numpy as np
import pytest

from models.decision import (
    ShotCalibration,
    best_with_margin,
    fit_logistic,
    rank,
    score_labels,
    unknown_threshold,
)

CAL = ShotCalibration(shots=(1, 4, 16), mean=(0.6, 0.8, 0.9), std=(0.1, 0.05, 0.05),
                      threshold=-1.0, logistic=(2.0, 0.5, 1.0))


def test_statistics_interpolate_in_log_shots_and_clamp():
    mean, std = CAL.at(np.array([1, 2, 4, 16, 100, 0]))
    np.testing.assert_allclose(mean, [0.6, 0.7, 0.8, 0.9, 0.9, 0.6])  # 2 = halfway in log
    np.testing.assert_allclose(std, [0.1, 0.075, 0.05, 0.05, 0.05, 0.1])


def test_a_one_shot_label_wins_when_its_cosine_is_typical_for_one_shot():
    # Label "many" (16 photos) scores cosine 0.85, "one" (1 photo) 0.7: plain cosines
    # pick "many"; standardised, 0.85 is below a 16-shot match's 0.9 and 0.7 is above a
    # 1-shot match's 0.6, so "one" wins.
    sums = np.array([[16.0, 0.0], [0.0, 1.0]])
    query = np.array([0.85, np.sqrt(1 - 0.85**2)])
    counts = np.array([16, 1])
    assert rank(query, ["many", "one"], sums, counts, None).labels[0] == "many"
    ranking = rank(query, ["many", "one"], sums, counts, CAL)
    assert ranking.labels == ["one", "many"]
    np.testing.assert_allclose(ranking.scores, [(0.5268 - 0.6) / 0.1, (0.85 - 0.9) / 0.05],
                               atol=1e-3)
    np.testing.assert_allclose(ranking.cosines, [0.5268, 0.85], atol=1e-3)
    assert ranking.counts.tolist() == [1, 16]


def test_the_few_shot_bonus_is_whole_at_one_photo_and_gone_from_five():
    boosted = dataclasses.replace(CAL, few_shot_bonus=0.5)
    np.testing.assert_allclose(boosted.bonus(np.array([0, 1, 2, 5, 40])),
                               [0.5, 0.5, 0.5 * (1 - np.log(2) / np.log(5)), 0.0, 0.0])
    cosines, counts = np.array([[0.7, 0.7]]), np.array([1, 5])
    np.testing.assert_allclose(boosted.standardise(cosines, counts) - CAL.standardise(cosines,
                                                                                      counts),
                               [[0.5, 0.0]])
    # z of "many" (16 photos): (0.87 - 0.9) / 0.05 = -0.6; of "few" (1 photo):
    # (0.493 - 0.6) / 0.1 = -1.07, which the bonus of 0.5 lifts to -0.57, ahead of "many".
    sums, query = np.array([[16.0, 0.0], [0.0, 1.0]]), np.array([0.87, np.sqrt(1 - 0.87**2)])
    counts = np.array([16, 1])
    assert rank(query, ["many", "few"], sums, counts, CAL).labels == ["many", "few"]
    assert rank(query, ["many", "few"], sums, counts, boosted).labels == ["few", "many"]


def test_a_calibration_without_a_bonus_reads_as_none():
    old = {k: v for k, v in dataclasses.replace(CAL, few_shot_bonus=0.2).to_dict().items()
           if k != "few_shot_bonus"}
    assert ShotCalibration.from_dict(old).few_shot_bonus == 0.0


def test_without_a_calibration_the_score_is_the_cosine():
    scores, cosines = score_labels(np.array([[1.0, 0.0]]), np.array([[3.0, 4.0]]),
                                   np.array([2]), None)
    assert scores is cosines and scores.tolist() == [[pytest.approx(0.6)]]


def test_confidence_is_the_logistic_of_the_score_and_the_margin():
    assert CAL.confidence(-0.5) == pytest.approx(0.5)
    assert CAL.confidence(1.0) == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert CAL.confidence(-0.5, margin=2.0) == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_a_calibration_without_the_margin_term_reads_as_zero_margin_weight():
    old = {**CAL.to_dict(), "logistic": [2.0, 1.0]}
    assert ShotCalibration.from_dict(old).logistic == (2.0, 0.0, 1.0)


def test_the_statistic_round_trips_and_older_files_read_as_genuine():
    assert ShotCalibration.from_dict(CAL.to_dict()) == CAL and CAL.statistic == "impostor"
    old = {k: v for k, v in CAL.to_dict().items() if k != "statistic"}
    assert ShotCalibration.from_dict(old).statistic == "genuine"


def test_the_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    y = rng.random(20000) < 1 / (1 + np.exp(-(1.5 * x[:, 0] + 0.7 * x[:, 1] - 0.5)))
    a, c, b = fit_logistic(x, y)
    assert a == pytest.approx(1.5, abs=0.08) and c == pytest.approx(0.7, abs=0.06)
    assert b == pytest.approx(-0.5, abs=0.05)
    (a1, b1) = fit_logistic(x[:, 0], y)  # one feature: one coefficient and the bias
    assert a1 > 1.0 and b1 < 0


def test_weights_count_like_repeated_samples():
    x = np.array([0.0, 1.0, 2.0, 0.5])
    y = np.array([False, True, True, True])
    repeated = fit_logistic(np.r_[x, x[:1], x[:1]], np.r_[y, y[:1], y[:1]])
    weighted = fit_logistic(x, y, weights=np.array([3.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(weighted, repeated, atol=1e-6)


def test_calibration_round_trips_through_a_dict():
    assert ShotCalibration.from_dict(CAL.to_dict()) == CAL


def test_the_margin_is_over_the_runner_up_or_over_zero_with_one_label():
    best, top, margin = best_with_margin(np.array([[0.2, 0.9, 0.5], [-1.0, -3.0, -2.0]]))
    assert best.tolist() == [1, 0]
    np.testing.assert_allclose(top, [0.9, -1.0])
    np.testing.assert_allclose(margin, [0.4, 1.0])
    _, _, alone = best_with_margin(np.array([[0.7]]))
    np.testing.assert_allclose(alone, [0.7])
    ranking = rank(np.array([1.0, 0.0]), ["a", "b"], np.array([[1.0, 0.0], [0.6, 0.8]]),
                   np.array([1, 1]), None)
    assert ranking.margin == pytest.approx(1.0 - 0.6)


def test_the_threshold_is_the_calibrations_else_the_plain_cosine_one():
    assert unknown_threshold(CAL) == -1.0
    assert unknown_threshold(None) == 0.89
