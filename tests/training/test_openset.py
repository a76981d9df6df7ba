"""The open-set few-shot evaluation: its metrics by hand, one split on vectors whose answers
are known, and the CLI on synthetic photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.preprocessing import load_image, preprocess
from tests.helpers import COLOURS, make_image_folder
from training import openset


def test_auroc_by_hand():
    assert openset.auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert openset.auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert openset.auroc(np.array([0.5, 0.9]), np.array([0.5])) == pytest.approx(0.75)


def test_classify_answers_unknown_below_the_threshold():
    sums = np.array([[2.0, 0.0], [0.0, 3.0]])  # prototypes (1, 0) and (0, 1)
    queries = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    best, score, answer = openset.classify(queries, sums, np.array([2, 3]), ["a", "b"], None,
                                           threshold=0.9)
    assert list(best) == ["a", "b", "b"] and list(answer) == ["a", "unknown", "b"]
    np.testing.assert_allclose(score, [1.0, 0.8, 1.0])


def single_view(vectors: np.ndarray, pool: int) -> openset.ClassPhotos:
    """A class whose first ``pool`` photos may be shots, stored as their one view."""
    return openset.ClassPhotos(vectors, vectors[:pool])


def unit(*v):
    v = np.array(v, dtype=float)
    return v / np.linalg.norm(v)


def test_one_split_on_vectors_whose_answers_are_known():
    # Known class k0 along x; held-out h0, h1 along y and z: whichever is enrolled is found,
    # the other is unknown (its photos are far from every prototype), as is the other domain.
    gallery = openset.Gallery(["k0"], np.array([unit(1, 0, 0, 0) * 3]), np.array([3]),
                              np.stack([unit(1, 0.1, 0, 0), unit(0, 1, 0, 0)]),
                              np.array(["k0", "k0"], dtype=object))
    held = {"h0": single_view(np.stack([unit(0, 1, 0, 0)] * 4), 2),
            "h1": single_view(np.stack([unit(0, 0, 1, 0)] * 4), 2)}
    other = np.stack([unit(0, 0, 0, 1)] * 3)
    scores = openset.split_scores(held, gallery, ["h0", "h1"], other, shots=1,
                                  calibration=None, rng=np.random.default_rng(0))
    assert len(scores.new_truth) == 3 and len(scores.unknown.score) == 4
    result = openset.split_metrics(scores, threshold=0.5)
    assert result["new_top_label_accuracy"] == result["new_accuracy"] == 1.0
    # The second known query points at the enrolled kind: wrong.
    assert result["known_top_label_accuracy"] == result["known_accuracy"] == 0.5
    enrolled = scores.new_truth[0]
    assert list(scores.known.label) == ["k0", enrolled]
    # margin: best minus runner-up (cosines 0.995 to k0 and 0.0995 to the enrolled kind)
    np.testing.assert_allclose(scores.known.margin[0], 0.995 - 0.0995, atol=1e-3)
    assert result["unknown_rejection"] == result["other_domain_rejection"] == 1.0
    assert result["balanced_accuracy"] == 1.0 and result["auroc_unknown"] == 1.0


def test_the_few_shot_bonus_kept_is_the_one_with_the_best_service_accuracy():

    def answers(label: str, score: float) -> openset.Answers:
        return openset.Answers(np.array([label], dtype=object), np.array([score]),
                               np.array([score]))

    def score_splits(bonus: float) -> dict[int, list[openset.SplitScores]]:
        # The new kind's photo scores the bonus; the known kind's 1.0, unknowns 0.5. Only
        # a bonus above 0.5 lets one threshold take both kinds and turn the unknowns away.
        split = openset.SplitScores(np.array(["a"], dtype=object),
                                    answers("a", bonus), answers("a", 0.5),
                                    answers("a", 0.5), np.array(["k"], dtype=object),
                                    answers("k", 1.0))
        return {1: [split]}

    chosen, threshold, rows = openset.best_few_shot_bonus(score_splits, [0.0, 2.0, 0.4])
    assert chosen == 2.0 and 0.5 < threshold <= 1.0
    assert [r["few_shot_bonus"] for r in rows] == [0.0, 2.0, 0.4]
    # Below 0.5 one of the three accuracies is lost whatever the threshold; above, none is.
    assert [r["service_accuracy"] for r in rows] == pytest.approx([2 / 3, 1.0, 2 / 3])


def test_the_cli_reports_each_k_over_seeded_splits(tiny_checkpoint, tmp_path):
    classes = {k: COLOURS[k] for k in COLOURS}
    train = make_image_folder(tmp_path / "train", classes, per_class=4, seed=1)
    test = make_image_folder(tmp_path / "test", classes, per_class=3, seed=2)
    out = tmp_path / "openset.json"
    results = openset.main(["--checkpoint", str(tiny_checkpoint), "--gallery", str(train),
                            "--queries", str(test), "--heldout", "red,green,blue,cyan",
                            "--shots", "1,3", "--splits", "3", "--json", str(out),
                            "--plot", str(tmp_path / "curves.png")])
    assert Image.open(tmp_path / "curves.png").size[0] > 600  # two panels, one per K
    assert json.loads(out.read_text())["1_shot"]["summary"] == results["1_shot"]["summary"]
    [run] = results["checkpoints"]
    assert run["heldout"] == ["red", "green", "blue", "cyan"]
    assert run["gallery_classes"] == 2 and len(results["3_shot"]["splits"]) == 3
    for k in ("1_shot", "3_shot"):
        summary = results[k]["summary"]
        for key in ("new_top_label_accuracy", "new_accuracy", "unknown_rejection",
                    "other_domain_rejection", "balanced_accuracy", "auroc_unknown"):
            assert 0.0 <= summary[key]["mean"] <= 1.0 and summary[key]["std"] >= 0.0
    assert openset.default_heldout([f"c{i:02d}" for i in range(61)])[:2] == ["c01", "c05"]


def test_the_held_out_classes_are_those_the_encoder_never_trained_on():
    classes = [f"c{i:02d}" for i in range(12)]
    trained = [c for c in classes if c not in ("c03", "c07", "c08", "c11")]
    assert openset.never_trained_on(classes, trained) == ["c03", "c07", "c08", "c11"]
    # Trained on all, on too many of the others, or no names: every fourth from the second.
    for names in (classes, trained + ["c03"], None):
        assert openset.never_trained_on(classes, names) == ["c01", "c05", "c09"]


def test_several_checkpoints_pool_their_splits_under_one_threshold(tiny_checkpoint, tmp_path):
    classes = {k: COLOURS[k] for k in COLOURS}
    train = make_image_folder(tmp_path / "train", classes, per_class=4, seed=1)
    test = make_image_folder(tmp_path / "test", classes, per_class=3, seed=2)
    common = ["--gallery", str(train), "--queries", str(test), "--heldout",
              "red,green,blue,cyan", "--shots", "1", "--splits", "2", "--threshold", "0.5"]
    alone = openset.main(["--checkpoint", str(tiny_checkpoint), *common])
    twice = openset.main(["--checkpoint", str(tiny_checkpoint), str(tiny_checkpoint), *common])
    assert twice["splits"] == 4 and len(twice["checkpoints"]) == 2
    assert twice["1_shot"]["splits"] == alone["1_shot"]["splits"] * 2
    assert len(openset.default_heldout([f"c{i:02d}" for i in range(61)])) == 15


def test_threshold_and_confidence_by_hand():
    # New kinds score 2 and 1 (both right) and 0 (wrong); unknowns -1 and 0.5; the other
    # domain -2. Balanced accuracy alone would cut at 0.75: both right answers kept, every
    # unknown rejected.
    def answers(labels, scores, margins):
        return openset.Answers(np.array(labels, dtype=object), np.array(scores, float),
                               np.array(margins, float))

    scores = openset.SplitScores(
        np.array(["a", "a", "a"], dtype=object),
        answers(["a", "a", "b"], [2.0, 1.0, 0.0], [1.5, 0.2, 0.1]),
        answers(["a", "b"], [-1.0, 0.5], [0.1, 0.3]), answers(["b"], [-2.0], [0.0]),
        np.array(["k", "k"], dtype=object), answers(["k", "a"], [0.5, -0.5], [2.0, 0.1]))
    # Known kinds: the right one scores 0.5, the wrong one -0.5. A cut in (0.5, 1] gives new
    # 2/3, rejection 1 and known 0: (2/3 + 1 + 0) / 3 = 0.556; a cut in (-1, 0.5] gives 2/3,
    # (1/2 + 1) / 2 and 1/2: 0.639, so the known kind's right answer moves the cut down.
    threshold, accuracy, (a, c, b) = openset.threshold_and_confidence({1: [scores]})
    assert -1.0 < threshold <= 0.5
    assert accuracy == pytest.approx((2 / 3 + 0.75 + 0.5) / 3)
    assert openset.service_accuracy(openset.thresholded(scores, 0.75)) == pytest.approx(
        (2 / 3 + 1 + 0) / 3)
    assert a + c > 0  # higher score and margin, more likely right


def test_threshold_sweep_by_hand():
    # New kinds score 2 (right), 1 (right), 0 (wrong label); unknowns -1 and 0.5; the other
    # domain -2; known kinds 0.5 (right) and -0.5 (wrong label).
    def answers(labels, scores):
        return openset.Answers(np.array(labels, dtype=object), np.array(scores, float),
                               np.zeros(len(scores)))

    split = openset.SplitScores(
        np.array(["a", "a", "a"], dtype=object), answers(["a", "a", "b"], [2.0, 1.0, 0.0]),
        answers(["a", "b"], [-1.0, 0.5]), answers(["b"], [-2.0]),
        np.array(["k", "k"], dtype=object), answers(["k", "a"], [0.5, -0.5]))
    curves = openset.threshold_sweep([split, split], np.array([-3.0, 0.75, 3.0]))
    np.testing.assert_allclose(curves["new kinds answered right"], [2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(curves["unknown kinds rejected"], [0, 1, 1])
    np.testing.assert_allclose(curves["other domain rejected"], [0, 1, 1])
    np.testing.assert_allclose(curves["known kinds answered right"], [0.5, 0, 0])
    np.testing.assert_allclose(curves["balanced (new right, unknowns rejected)"],
                               [1 / 3, (2 / 3 + 1) / 2, 0.5])


def test_calibrate_then_choose_the_threshold_on_held_out_classes(tiny_checkpoint, tmp_path):
    from models.checkpoint import load_checkpoint
    from models.decision import shot_calibration
    from training import calibrate

    classes = {k: COLOURS[k] for k in COLOURS}
    train = make_image_folder(tmp_path / "train", classes, per_class=6, seed=1)
    test = make_image_folder(tmp_path / "test", classes, per_class=3, seed=2)
    checkpoint = tmp_path / "c.pt"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    result = calibrate.main(["--checkpoint", str(checkpoint), "--gallery", str(train),
                             "--queries", str(test), "--classes", ",".join(COLOURS),
                             "--splits", "2", "--write", "--json", str(tmp_path / "c.json")])
    stored = shot_calibration(load_checkpoint(checkpoint).meta.extra)
    assert stored is not None and stored.to_dict() == result["calibration"]
    assert stored.shots[0] == 1 and all(s > 0 for s in stored.std)
    assert json.loads((tmp_path / "c.json").read_text()) == result
    # The evaluation uses the stored rule, and stores the threshold it chose.
    results = openset.main(["--checkpoint", str(checkpoint), "--gallery", str(train),
                            "--queries", str(test), "--heldout", "red,green,blue,cyan",
                            "--shots", "1", "--splits", "2", "--few-shot-bonus", "0,0.25",
                            "--write-threshold", str(checkpoint)])
    assert results["rule"] == "shot-calibrated"
    best = max(results["few_shot_bonus_sweep"], key=lambda row: row["service_accuracy"])
    assert results["few_shot_bonus"] == best["few_shot_bonus"]
    chosen = shot_calibration(load_checkpoint(checkpoint).meta.extra)
    assert chosen.threshold == results["threshold"] == best["threshold"]
    assert chosen.mean == stored.mean and stored.few_shot_bonus == 0.0
    assert chosen.few_shot_bonus == best["few_shot_bonus"]


def test_calibrating_with_two_gallery_views_measures_and_stores_them(tiny_checkpoint, tmp_path):
    from models.base import embed_for_gallery
    from models.checkpoint import load_checkpoint
    from models.runtimes.factory import open_embedder
    from training import calibrate

    classes = {k: COLOURS[k] for k in COLOURS}
    train = make_image_folder(tmp_path / "train", classes, per_class=4, seed=1)
    test = make_image_folder(tmp_path / "test", classes, per_class=2, seed=2)
    checkpoint, cache = tmp_path / "c.pt", tmp_path / "cache"
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    common = ["--checkpoint", str(checkpoint), "--gallery", str(train), "--queries", str(test),
              "--classes", ",".join(COLOURS), "--splits", "1", "--cache", str(cache)]
    one = calibrate.main(common)
    two = calibrate.main([*common, "--gallery-views", "2", "--write"])
    assert (one["gallery_views"], two["gallery_views"]) == (1, 2)
    assert one["calibration"]["mean"] != two["calibration"]["mean"]  # shots: other vectors
    loaded = load_checkpoint(checkpoint)
    assert loaded.meta.preprocessing.gallery_views == 2
    # The shots were cached apart from the queries, as the gallery embeds them.
    [views_cache] = cache.glob("*-views2.npz")
    with np.load(views_cache) as stored:
        paths, vectors = stored["paths"].tolist(), stored["vectors"]
    embedder = open_embedder(loaded, "onnx", "cpu").embedder
    inputs = np.stack([preprocess(load_image(path), embedder.preprocessing) for path in paths])
    np.testing.assert_allclose(vectors, embed_for_gallery(embedder, inputs), atol=1e-5)
    assert paths and all(Path(path).is_relative_to(train) for path in paths)
    # A threshold chosen on two-view splits goes only into a two-view checkpoint, and only
    # encoders calibrated alike are pooled.
    single = tmp_path / "single.pt"
    single.write_bytes(tiny_checkpoint.read_bytes())
    calibrate.main([*common[:1], str(single), *common[2:], "--write"])
    evaluation = ["--gallery", str(train), "--queries", str(test), "--heldout",
                  "red,green,blue,cyan", "--shots", "1", "--splits", "1"]
    with pytest.raises(SystemExit, match="gallery photos as 1 view"):
        openset.main(["--checkpoint", str(checkpoint), *evaluation,
                      "--write-threshold", str(single)])
    with pytest.raises(SystemExit, match="calibrated alike"):
        openset.main(["--checkpoint", str(checkpoint), str(single), *evaluation])
    result = openset.main(["--checkpoint", str(checkpoint), *evaluation,
                           "--write-threshold", str(checkpoint)])
    assert result["checkpoints"][0]["gallery_views"] == 2


def test_shot_statistics_by_hand():
    from training.calibrate import SHOTS, shot_statistics

    def at(degrees: float) -> np.ndarray:
        return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])

    # One shot and one query per class, the query 10 degrees from its shot.
    photos = single_view
    vectors = {"a": photos(np.stack([at(0), at(10)]), 1),
               "b": photos(np.stack([at(90), at(80)]), 1),
               "c": photos(np.stack([at(180), at(190)]), 1)}
    genuine_mean, genuine_std = shot_statistics(vectors, np.random.default_rng(0), "genuine")
    assert genuine_mean[0] == pytest.approx(np.cos(np.radians(10)))
    assert genuine_std[0] == pytest.approx(1e-3)  # no spread: the floor
    # The nearest other-class query of each shot: 80 degrees from a (b's), 80 from b (a's),
    # 100 from c (b's); more shots than a class has repeat the last measurement.
    mean, std = shot_statistics(vectors, np.random.default_rng(0), "impostor")
    nearest = np.cos(np.radians([80, 80, 100]))
    assert mean[0] == pytest.approx(nearest.mean()) and std[0] == pytest.approx(nearest.std())
    assert len(mean) == len(SHOTS) and mean[-1] == mean[0]
